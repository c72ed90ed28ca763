"""Default settings, importable without the numerical libraries.

The Slicer panel reads these before scipy, scikit-image and edt are installed into
Slicer's Python; the algorithms import them from here too, so there is one value.
"""

#: Lower bound of mineralised bone: cancellous bone and immature HO start around
#: 150-250 HU, well above muscle (40-60 HU) and non-enhanced blood (30-45 HU).
DEFAULT_BONE_THRESHOLD_HU = 200.0
#: Below this, muscle (40-60 HU), non-enhanced blood (30-45 HU) and the organs pass for
#: bone: the whole body is one bone, and no HO can be told from it.
MIN_BONE_THRESHOLD_HU = 100.0
#: Above the densest cortical bone (about 1900 HU) no bone is left to find.
MAX_BONE_THRESHOLD_HU = 2000.0
#: Smallest island reported: vascular calcifications are mostly < 0.03 mL, HO that
#: matters surgically is >= 0.1 mL; 0.05 mL is a sphere of 4.6 mm diameter.
DEFAULT_MIN_ISLAND_ML = 0.05
#: About one CT voxel: closer than this, HO and nerve cannot be told apart from touching.
DEFAULT_CONTACT_TOLERANCE_MM = 1.0
#: A wider tolerance would call a nerve in contact with bone a finger's width away.
MAX_CONTACT_TOLERANCE_MM = 10.0
#: Fat on CT, the nerve's sheath and the subcutaneous layer alike.
CT_FAT_HU = (-190.0, -30.0)
SIDES = ("right", "left")
MODALITIES = ("ct", "mr")
#: Python packages the algorithms need beyond what the Slicer application ships.
REQUIRED_PACKAGES = {"scipy": "scipy", "skimage": "scikit-image", "edt": "edt",
                     "cc3d": "connected-components-3d", "fill_voids": "fill-voids"}


def opposite_side(side: str) -> str:
    """The other of the two SIDES."""
    return SIDES[1 - SIDES.index(side)]
