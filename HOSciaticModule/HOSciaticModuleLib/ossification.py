"""Heterotopic ossification (HO) on CT: bone outside the native skeleton.

The chain, each step a small function below:

1. **Bone** — voxels at or above the bone threshold and below the metal threshold,
   inside the ROI. Metal (a prosthesis, screws) and its blooming rim are excluded
   and reported, never called HO.
2. **Islands** — 6-connected components of bone with their enclosed marrow filled.
3. **Native skeleton** — from a native-bone mask when given (e.g. TotalSegmentator's
   hip, femur and sacrum segments); otherwise estimated: components big enough to be
   a hip-region bone, or thick bone cut by the edge of the analysed region. A compact
   mass below a whole bone's size, whole in the image, off the midline and without a
   mirror image in bone, is a free mass of HO.
4. **Fused HO** — outgrowths of a native component: the parts of the component that
   a ball of ``NATIVE_BALL_RADIUS_MM`` rolled inside it cannot reach (a
   morphological opening), kept only if they protrude far enough, are big enough
   and are not a thin sheet or rod (the free edge of a native bone). Masses too
   thick for the ball are found when both hips are imaged: the part of a native
   bone with no counterpart in the bone of the other side, once the bone's mirror
   image is fitted there (:func:`asymmetric_outgrowth`). Bone whose mirror image falls
   beyond the image is compared with nothing: it may widen such a mass, never start
   one, and the mass is named.
5. **Boundary** — each island's edge is placed at half the attenuation step between
   the surrounding soft tissue and the island's own bone (full width at half
   maximum), the standard partial-volume boundary, so volumes do not depend on the
   detection threshold. Only the outer edge moves; the marrow stays inside.
6. **Figures** — volume, mean and max HU, centroid, fused flag, and maturity:
   *mature* when a cortical rim is clearly denser than a marrow interior
   (corticomedullary differentiation), *immature* for amorphous mineralisation.
7. **Checks** — bone-dense objects surrounded by air lie outside the body (the
   table, external devices) and are left out; an island at the edge of the image,
   a fused island whose mirror image across the body's midline is bone (a normal
   prominence comes in pairs), an island shaped like a vessel, an island without a
   cortex near metal (a streak, or cement?), an island in the subcutaneous fat or touching gas
   (bowel content) and many small bones close together (a hand in the field) are named
   in warnings for the reader. Bone on or near the body's midline (coccyx, sacrum,
   symphysis, calcified iliac arteries, prostate) or wholly above the hip bones (ribs,
   spine) is set apart, not counted as HO.

Limits (also in the README): without a native-bone segmentation, an outgrowth
thicker than the ball (about 20 mm) fused to native bone stays part of the native
bone when the other side is not imaged or bears the same (when it wraps the nerve,
the contact step flags it), and a pointed native process (ischial spine) can be
reported as fused HO (flagged when the other side is imaged and matches).
Contrast-enhanced vessels above the bone threshold are bone-dense too (vessel-shaped
islands are flagged with their level): analyse a non-contrast CT or raise the threshold.
"""

from __future__ import annotations

import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cc3d
import fill_voids
import numpy as np
from scipy import ndimage
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .defaults import (CT_FAT_HU, DEFAULT_BONE_THRESHOLD_HU, DEFAULT_MIN_ISLAND_ML, MAX_BONE_THRESHOLD_HU,
                       MIN_BONE_THRESHOLD_HU)
from .errors import InputError, as_number
from .geometry import (VolumeGeometry, block_relative_to, block_within, bounding_block, bounding_slices, column_max,
                       column_min, distance_inside, distance_outside, grown_across_faces, label_boxes,
                       pad_block, within_or_next_to)
from .hounsfield import (CT_SOFT_TISSUE_MAX_HU, METAL_THRESHOLD_HU, STREAK_REACH_MM, at_least, check_looks_like_ct,
                         extent_at_least, smoothed_ct_warning, smoothed_for_bone)
from .memorypages import with_single_threaded_blas
from .midline import (MIRROR_TILTS_DEG, MIRROR_TOLERANCE_MM, MIRROR_TURNS_DEG, BoneAcrossMidline, MirrorPlane,
                      body_midline, bone_lattice, lattice_voxels, mirrored_in_bone, sampled_bone_points,
                      side_of_body)
from .progress import ProgressCallback, report

#: Beam-hardening and blooming make bone-like values around metal.
METAL_MARGIN_MM = 3.0
#: A native hip-region bone inside a hip CT (femur, hip bone, sacrum, a lumbar vertebra)
#: is tens to hundreds of mL; most free HO islands are below 20 mL (larger free masses:
#: see NATIVE_WHOLE_MIN_ML).
NATIVE_MIN_ML = 30.0
#: A whole native bone of the hip region that the image does not cut (hip bone, femur,
#: sacrum) is 100 mL or more. Below that, a component is native unless it is a compact
#: mass off the body's midline: a vertebra lies on the midline, and bone split
#: off a native bone by the threshold is a plate or a rod, whereas neurogenic HO often
#: grows into a free mass of tens of mL.
NATIVE_WHOLE_MIN_ML = 100.0
#: Compact: the component fills at least this share of the ellipsoid of its principal
#: spreads (1 for a solid ellipsoid; a curved plate of bone fills far less).
LARGE_HO_MIN_FILL = 0.5
#: Ball rolled inside native bone: a 20 mm ball fits in the femoral head, neck and shaft,
#: the acetabular roof and the ischial body; HO outgrowths near the sciatic nerve are
#: mostly thinner, so the ball does not reach into them.
NATIVE_BALL_RADIUS_MM = 10.0
#: A given native-bone segmentation may miss the cortex by this much (resampling,
#: a model's boundary), or by a voxel on a coarser grid; bone this close to it is native.
GIVEN_NATIVE_TOLERANCE_MM = 2.0
#: Bone rims thinner than this against a given native mask are missed cortex, not HO.
MISSED_CORTEX_MM = 3.0
#: Thick bone cut by the ROI or field-of-view edge is native (shaft of femur: 25 mm).
NATIVE_CUT_MIN_THICKNESS_MM = 16.0
#: An outgrowth must stand this far beyond the native envelope to be called fused HO.
FUSED_MIN_PROTRUSION_MM = 3.0
#: Residual skins thinner than twice this (or one voxel thick) are partial volume along
#: the envelope.
RESIDUAL_SKIN_MM = 1.5
#: A residual longer than this many times its thickness is a native edge or process,
#: unless it is a bar joining two bones (HO bridging the hip joint): one that meets
#: them at places at least this share of its length apart.
FUSED_MAX_ELONGATION = 5.0
BRIDGE_MIN_SPAN = 0.5
#: A bar of HO from one bone to the other may stop short of them, a fibrous gap at
#: each end: Brooker grade III leaves under 1 cm between the opposing bone surfaces,
#: about half of it at each end of a bar. Within this of bone at both ends, and as
#: clear of it between, a rod is such a bar, not a vessel.
BAR_END_GAP_MM = 5.0
#: Marrow sealed only within slices (thick slices miss a thin cortical cap) is filled when
#: thinner than this: wider than the marrow in the wall of an HO shell, narrower than the
#: thinnest compressed sciatic nerve (about 5 mm), which a ring of HO must never swallow.
SLICE_MARROW_MAX_RADIUS_MM = 2.5
#: A tube's inside seen in this many planes or more can be told from marrow by its ends
#: (see _open_tube_pockets); a short marrow cavity cut by three thick slices has end
#: planes nearly as large as its middle one, as a collar's are.
OPEN_TUBE_MIN_PLANES = 4
#: Cortex: mineralised bone at cortical density; the interior of a mature island is
#: marrow (fatty -100..100 HU, red marrow up to ~300 HU).
CORTICAL_HU = 600.0
CORTEX_MARROW_CONTRAST_HU = 300.0
#: Depth of the rim whose density is compared with the interior: a typical HO cortex
#: (and at least the island's outermost layer of voxels).
CORTEX_RIM_MM = 2.0
#: Tissue around an island whose level sets the island's edge and tells where it lies:
#: within 2.5 mm, and at least the voxels next to it (on a 3 mm grid none lies within
#: 2.5 mm, and the edge, the air, fat and gas around islands went unread there).
SURROUND_RING_MM = 2.5
#: The zone of an island, next to the soft tissue, where its edge moves to the half step:
#: the edge's blur (a CT's point spread is about 1 mm wide) and a cortex's thickness.
#: Deeper lies the island's marrow, kept whatever its value. A zone of 1 mm also kept
#: the native cortex under an outgrowth's base that the bone split gives the island (a
#: dome on the greater trochanter read 36 % large on a 1 mm grid; 15 % with this zone).
EDGE_ZONE_MM = 2.5
#: The bone whose level sets an edge's half step lies within the edge zone and a
#: cortex's thickness (about 2 mm) of it.
LOCAL_PEAK_EXTRA_MM = 2.0
#: How far a blurred edge reaches past the half step: a CT's point spread is about 1 mm
#: wide (full width at half maximum) with soft-tissue and bone kernels alike.
EDGE_BLUR_MM = 1.0
#: HO forms in soft tissue. A bone-dense object surrounded mostly by air (air and the
#: table's foam pad are below -500 HU; fat is never below -190 HU) lies outside the
#: body: the table, a positioning aid, an external device.
OUTSIDE_BODY_HU = -500.0
#: Below any tissue, and below air (-1000 HU, noise included): the value a scanner writes
#: outside its circular field of view (-2048 or -3024 once rescaled). Such voxels were not
#: imaged: they are neither air nor gas, and an island next to them is cut there.
FIELD_OF_VIEW_PADDING_HU = -1500.0
OUTSIDE_BODY_AIR_FRACTION = 0.75
#: A CT reformatted (turned, resliced) or resampled onto a larger grid is filled where the
#: original image ended, often with air's value (-1024 or -1000 HU) or 0 rather than one
#: below air: bone cut there is cut as at the image's edge. Such a fill is told by its
#: lack of noise, on this many slices spread over the image.
CONSTANT_FILL_SAMPLE_SLICES = 16
#: Air at 15-20 HU of noise clamped at -1024 with half its voxels at the clamp has about
#: one voxel in 130 equal to its six neighbours (0.5 to the 7th power), and air is at most
#: a third of a hip CT: a fill holds at least this share of the sampled voxels.
CONSTANT_FILL_MIN_SHARE = 0.01
#: Elsewhere, flat voxels are at most this share of the image: none in noisy tissue (a
#: noise-free image has most of its tissue flat).
CONSTANT_FILL_MAX_FLAT_ELSEWHERE = 0.002
#: A sharp (bone) reconstruction kernel overshoots where tissue meets air: the skin and
#: the walls of gas-filled bowel become rims a voxel or two thick above the bone
#: threshold (the real example CT sharpened: 49 such islands, each with all its voxels
#: within reach of air; its islands: at most 2 %). HO forms in muscle, never as a rim on air:
#: an island with at least half its voxels within 2 mm (or one and a half of the finest
#: voxel side) of air or gas is left out.
AIR_RIM_REACH_MM = 2.0
AIR_RIM_MIN_SHARE = 0.5
#: HO forms in muscle and around joints. An unfused dense object wrapped in fat and
#: reached from the skin through fat alone lies in the subcutaneous fat: in the buttock
#: of an older or long-ill patient mostly a calcified injection granuloma or fat
#: necrosis. The way out is looked for along 26 directions up to this far; skin (dermis,
#: 1-3 mm of soft tissue) and the island's own blurred edge are left out of the way; at
#: least this share of the way, and of the ring around the island, is fat.
SUBCUTANEOUS_SEARCH_MM = 80.0
SUBCUTANEOUS_FAT_SHARE = 0.9
SUBCUTANEOUS_RING_FAT_SHARE = 0.75
SKIN_MM = 4.0
#: HO forms in muscle and around joints, where there is no gas. An unfused dense object
#: with gas (below OUTSIDE_BODY_HU) on at least this share of the ring around it, but not
#: surrounded by it, lies against bowel gas (oral or rectal contrast, dense stool, swallowed
#: tablets), gas in a wound, or the air against the skin (an object on the skin). Even a
#: small bubble above a contrast level covers this much of a 2.5 mm ring; fat and muscle,
#: noise included, never reach -500 HU.
GAS_RING_MIN_SHARE = 0.05
#: The bony prominences a ball of 20 mm cannot enter (ischial spine, lesser trochanter,
#: iliac spines) are a few mL; a larger fused mass on both sides is bilateral HO.
PROMINENCE_MAX_ML = 10.0
#: A growth centre of a young patient (femoral head epiphysis, trochanteric or iliac
#: apophysis) is parted from its bone by a growth plate, a band of cartilage 1-5 mm
#: thick on CT; a thin osteoporotic cortex split by the threshold leaves gaps as narrow.
#: Bone this close to native bone, unfused, and mirrored on the other side, may be native.
GROWTH_PLATE_GAP_MM = 5.0
#: HO of the hip forms around the joint, whose centre lies 80-100 mm from the body's
#: midline in adults (femoral heads 160-200 mm apart); the acetabulum's inner wall lies
#: 55 mm or more out, and the sciatic nerve leaves the pelvis 55-80 mm out. An island
#: centred within this distance of the midline is something else: the coccyx, pieces of
#: the sacrum and spine, an ossicle at the pubic symphysis, calcified iliac arteries at
#: the aortic bifurcation, calcifications of the prostate, bladder or uterus.
MIDLINE_ISLAND_MM = 40.0
#: Such parts are set apart from the islands, shown as this segment for review.
MIDLINE_SEGMENT_NAME = "On the midline (not counted as HO)"
#: The iliac wings reach 100-140 mm from the body's midline, while the sacrum, the lumbar
#: spine and the necks of ribs that partial volume joins to it lie within about 70 mm:
#: the highest native bone beyond this is the top of the hip bones, the iliac crests when
#: the image reaches them.
HIP_BONE_LATERAL_MM = 90.0
#: Bone lying wholly this far above the top of the hip bones is the ribs or the spine of
#: an abdominal CT, not HO of the hip (whose highest reach is the gluteal muscles'
#: attachment on the iliac crest).
ABOVE_HIP_BONES_MM = 20.0
ABOVE_HIP_SEGMENT_NAME = "Above the hip bones (not counted as HO)"
SET_APART_SEGMENT_NAMES = (MIDLINE_SEGMENT_NAME, ABOVE_HIP_SEGMENT_NAME)
#: HO fused to native bone and thicker than the fused-outgrowth ball (Brooker III-IV masses
#: bridging pelvis and femur) is found, when both hips are imaged, as bone without a
#: counterpart across the midline, once each native bone's mirror image is fitted onto
#: the bone there (:class:`~.midline.BoneAcrossMidline`). Bone then lying more than 6 mm
#: from any bone across the midline (left-right differences of normal bone surfaces are a
#: few mm), in parts holding an 8 mm ball, is HO; it extends through the bone more than
#: 2 mm from the counterpart.
#: Read on a 3 mm grid first. A part over 30 % of its bone means a wrong fit, not HO.
ASYMMETRY_GRID_MM = 3.0
ASYMMETRY_CORE_MM = 6.0
ASYMMETRY_MIN_RADIUS_MM = 4.0
ASYMMETRY_EDGE_MM = 2.0
ASYMMETRY_MAX_SHARE = 0.3
#: A mass's skirt, from where it stands ASYMMETRY_CORE_MM off the other side's bone down
#: to where it meets it (ASYMMETRY_EDGE_MM), spans at most this much around its core.
#: Farther, a surface a few mm off its counterpart is left-right variation of normal
#: bone: on a real pelvis it ran on along the whole hip bone (57 mL instead of 8).
ASYMMETRY_SKIRT_MM = 10.0
#: A native bone whose comparison with the other side was not trusted (no fit, or a part
#: without counterpart over ASYMMETRY_MAX_SHARE of it) is named when at least this much of
#: it has no counterpart: a mass of HO as large as the bone it grew from is lost otherwise.
UNCOMPARED_MIN_ML = 10.0
#: A thick fused mass reaching this much bone whose mirror image lies beyond the image
#: is named (less is the fit's edge, a few voxels).
BEYOND_IMAGE_MIN_ML = 0.1
#: Contrast-filled or calcified vessels are bone-dense tubes: the iliac and femoral
#: arteries and veins are 5-14 mm wide; a stretch at least 30 mm long and four times
#: longer along its axis than across is vessel-shaped.
VESSEL_MAX_WIDTH_MM = 14.0
VESSEL_MIN_LENGTH_MM = 30.0
VESSEL_ELONGATION = 4.0
#: Allowance for a gently curving vessel: its cross-section seen along the main axis may
#: spread this many times a straight tube's.
VESSEL_MAX_SECTION_SPREAD = 2.5
#: Once tubes show the CT is contrast-enhanced, an island without a cortex no denser
#: than they are (their 95th percentile, plus this for noise and partial volume) may be
#: a shorter or curving vessel: the gluteal vessels run beside the sciatic nerve.
VESSEL_LEVEL_MARGIN_HU = 50.0
#: Iodinated contrast fills arteries to 150-500 HU (about 600 on a CT angiogram); denser
#: tubes are calcified walls, which say nothing of contrast.
CONTRAST_MAX_HU = 600.0
#: A calcified arterial wall encloses its lumen (blood, 30-60 HU), which the marrow fill
#: takes into the island; a contrast-filled vessel is dense throughout. A tube with this
#: share of its voxels or more below half its dense end (95th percentile) is hollow: a
#: calcified wall, which says nothing of contrast however faint the blur leaves it (a
#: continuous 600 HU wall, 1.2 mm thick, read 440 HU at its 95th percentile).
HOLLOW_TUBE_MIN_SHARE = 0.3
#: A hand in the field of view (arms down beside or across the pelvis, common in patients
#: who cannot raise them) is many small bones close together: 27 bones of 0.1-5 mL, each
#: within about 40 mm of the next. HO around a hip seldom comes as more than a few islands.
HAND_MIN_BONES = 8
HAND_MAX_BONE_ML = 5.0
HAND_BONE_LINK_MM = 40.0
#: A hand's bones have a cortex (1500-2000 HU): even 3 mm voxels, which average a 1 mm
#: cortex with the marrow beside it, reach 600 HU. Early, immature HO comes as flecks
#: of amorphous mineral (200-500 HU), often many in one muscle: they are not a hand.
HAND_BONE_MIN_PEAK_HU = 600.0
#: Calcified plaques dot an artery's wall (the femoral and iliac arteries run beside the
#: hip, calcified in many older and ICU patients) as specks of 0.01-0.5 mL, a few to 30 mm
#: apart along it; their centres lie within the artery's width (8-10 mm) of its axis, so
#: within 5 mm of a line through them where it runs straight. Four such in a row, over
#: 20 mm or more, are the pattern of plaques rather than of HO (any three islands close
#: together lie near some line: on the real example CT, three small prominences did).
PLAQUE_MAX_ML = 0.5
PLAQUE_LINK_MM = 30.0
PLAQUE_MIN_COUNT = 4
PLAQUE_ROW_MAX_OFFSET_MM = 5.0
PLAQUE_ROW_MIN_LENGTH_MM = 20.0
#: An island of fewer voxels than a cube two voxels on a side is the blur of a speck
#: smaller than a voxel (a vessel cut across, a calcification, a noisy voxel), whose
#: size and density cannot be measured. It matters on coarse grids only: 0.005 mL at
#: 0.8 x 0.8 x 1 mm, but 0.2 mL at 3 mm, where a contrast-enhanced abdominal CT held
#: 250 such specks above 200 HU.
MIN_ISLAND_VOXELS = 8
#: Between the short reasons of an island's doubts.
DOUBT_SEPARATOR = "; "
#: A given native bone names an island when it lies this near (the bone it is fused to
#: is within a voxel and a half): HO of the hip forms in the muscles against the pelvis
#: and the femur, and a bone farther off says little about where a mass lies. Bones are
#: looked for within the first reach, then, for an island with none there, the second.
NATIVE_BONE_NAMING_REACHES_MM = (10.0, 40.0)
#: Blocks smaller than this are not worth a thread.
PARALLEL_MIN_VOXELS = 2_000_000


@dataclass
class OssificationIsland:
    label: int
    volume_ml: float
    mean_hu: float
    max_hu: float
    centroid_ras: tuple
    #: None when it cannot be judged (a segment added by hand, no native skeleton known).
    fused_to_native_bone: bool | None
    maturity: str
    #: Why the island may not be HO, as short reasons separated by "; " (the warnings
    #: that name it say more); empty when nothing speaks against it.
    doubts: str = ""
    #: Extent (mm) along the patient's right-left, anterior-posterior and
    #: superior-inferior axes, over the outer faces of its voxels (see :func:`extent_ras_mm`).
    size_ras_mm: tuple = (float("nan"),) * 3
    #: The patient's side of the body's midline the island lies on, 'right' or 'left';
    #: '' when it cannot be told (see :func:`midline.side_of_body`).
    side: str = ""
    #: The given native-bone segments it lies on, nearest first (see
    #: :func:`native_bones_near`); '' without a native-bone segmentation.
    native_bone: str = ""


@dataclass
class OssificationResult:
    labelmap: np.ndarray
    islands: list
    warnings: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    #: Bounding slices of each island in ``labelmap`` (island n at index n - 1).
    island_blocks: list = field(default_factory=list)
    #: The native skeleton used, inside the bone's block (``native_bone_slices`` of the CT).
    native_bone_block: np.ndarray | None = None
    native_bone_slices: tuple | None = None
    #: The body's midline, when there were islands to check against it and it was found.
    body_midline: "MirrorPlane | None" = None
    #: Bone-dense parts set apart from the islands as not HO of the hip, by the name of
    #: the segment that shows them (see SET_APART_SEGMENT_NAMES): masks inside
    #: ``native_bone_slices``; only the kinds found.
    set_apart: dict = field(default_factory=dict)
    #: The contrast-filled vessels' level (HU) when tubes show the CT is enhanced.
    contrast_level_hu: float | None = None

    @property
    def native_bone_mask(self) -> np.ndarray:
        """The native skeleton used, on the whole CT grid."""
        mask = np.zeros(self.labelmap.shape, bool)
        if self.native_bone_block is not None:
            mask[self.native_bone_slices] = self.native_bone_block
        return mask


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
def _check_mask(mask, shape, what):
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InputError(f"The {what} has shape {mask.shape} but the CT has {tuple(shape)}; "
                         "resample it onto the CT grid.")
    return mask.astype(bool, copy=False)


# ---------------------------------------------------------------------------------------
# Small building blocks
# ---------------------------------------------------------------------------------------
def fill_cavities(mask: np.ndarray) -> np.ndarray:
    """Fill background pockets fully enclosed in 3D (marrow inside a closed cortex);
    the background is 6-connected."""
    return fill_voids.fill(np.ascontiguousarray(mask, bool), in_place=False)


def _fill_within_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Pockets of background enclosed within each plane orthogonal to ``axis``
    (4-connected background in the plane), filled."""
    filled = mask.copy()
    planes = np.moveaxis(mask, axis, 0)
    filled_planes = np.moveaxis(filled, axis, 0)
    for index in np.flatnonzero(planes.any(axis=(1, 2))):
        filled_planes[index] = fill_voids.fill(np.ascontiguousarray(planes[index]), in_place=False)
    return filled


def fill_slice_cavities(mask: np.ndarray, geometry: VolumeGeometry | None = None,
                        max_hole_radius_mm: float | None = None) -> np.ndarray:
    """Fill pockets enclosed within a plane, along each of the three axes.

    Long bones are tubes open where the field of view cuts them, so their marrow is
    enclosed only slice by slice. With ``max_hole_radius_mm`` only pockets thinner than
    that are filled (see :data:`SLICE_MARROW_MAX_RADIUS_MM`); a pocket's thickness is
    judged in 3D, over the pocket as connected within its plane. The pockets of a tube
    open at an end are not filled at all (see :func:`_open_tube_pockets`): filling a
    collar of HO's end planes, thin across the planes, closed it around the nerve, whose
    inside, nerve and all, was then filled as a cavity.
    """
    def enclosed_along(axis):
        return _fill_within_slices(mask, axis) & ~mask

    def thin_along(axis, holes, enclosed):
        if max_hole_radius_mm is None or not holes.any():
            return holes
        structure = np.zeros((3, 3, 3), bool)
        index = [slice(None)] * 3
        index[axis] = 1
        structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
        pockets, count = ndimage.label(holes, structure=structure)
        depth = distance_inside(holes, geometry)
        thin = _label_maximum(pockets[holes], depth[holes], count) <= max_hole_radius_mm
        thin[0] = False
        thin &= ~_open_tube_pockets(holes, pockets, count, depth, enclosed, axis, max_hole_radius_mm)
        return thin[pockets]

    filled = mask.copy()
    # The three directions are independent, and filling mostly runs outside the GIL:
    # on a large block they run side by side. A tube's ends are judged against what no
    # direction encloses (marrow enclosed only along another axis is no open outside).
    if mask.size >= PARALLEL_MIN_VOXELS:
        with ThreadPoolExecutor(min(3, os.cpu_count() or 1), thread_name_prefix="hosciatic-fill") as executor:
            holes = list(executor.map(enclosed_along, range(3)))
            enclosed = mask | holes[0] | holes[1] | holes[2]
            along = list(executor.map(thin_along, range(3), holes, [enclosed] * 3))
    else:
        holes = [enclosed_along(axis) for axis in range(3)]
        enclosed = mask | holes[0] | holes[1] | holes[2]
        along = [thin_along(axis, holes[axis], enclosed) for axis in range(3)]
    for holes in along:
        filled |= holes
    return filled


def _open_tube_pockets(holes: np.ndarray, pockets: np.ndarray, count: int, depth: np.ndarray, enclosed: np.ndarray,
                       axis: int, max_radius_mm: float) -> np.ndarray:
    """For each in-plane pocket (``pockets``, index 0..count), whether it belongs to the
    inside of a tube open at both ends, as a collar of HO around the nerve is: its
    pockets, connected across the planes over OPEN_TUBE_MIN_PLANES planes or more, are
    wider than ``max_radius_mm`` somewhere, and at each end the last plane's pocket is at
    least half as large as the largest and lies mostly against the open outside (neither
    bone nor enclosed within a plane along any axis: ``enclosed`` is False) beyond it.
    Marrow tapers towards its ends, where a cortex closes it (or the slices, cut through
    a thin cap, lose it): its end planes are small, or few planes hold it all, and they
    are filled."""
    tubes, tube_count = ndimage.label(holes)
    tube_of = np.zeros(count + 1, np.int64)
    tube_of[pockets[holes]] = tubes[holes]
    wide = _label_maximum(tubes[holes], depth[holes], tube_count) > max_radius_mm
    wide[0] = False
    if not wide.any():
        return wide[tube_of]
    planes = holes.shape[axis]
    plane_of = np.broadcast_to(np.arange(planes).reshape([-1 if a == axis else 1 for a in range(3)]), holes.shape)
    area = np.bincount(tubes[holes] * planes + plane_of[holes], minlength=(tube_count + 1) * planes).reshape(-1, planes)
    present = area > 0
    first = np.argmax(present, axis=1)
    last = planes - 1 - np.argmax(present[:, ::-1], axis=1)
    rows = np.arange(tube_count + 1)
    largest = area.max(axis=1)
    open_tube = wide & (last - first + 1 >= OPEN_TUBE_MIN_PLANES)
    for end, beyond in ((first, first - 1), (last, last + 1)):
        inside_array = (beyond >= 0) & (beyond < planes)
        end_area = area[rows, end]
        open_tube &= inside_array & (end_area >= 0.5 * np.maximum(largest, 1))
        for tube in np.flatnonzero(open_tube):
            index = [slice(None)] * 3
            index[axis] = int(end[tube])
            at_end = tubes[tuple(index)] == tube
            index[axis] = int(beyond[tube])
            outside = ~enclosed[tuple(index)]
            open_tube[tube] = np.count_nonzero(at_end & outside) >= 0.5 * np.count_nonzero(at_end)
    return open_tube[tube_of]


def fill_per_group(mask: np.ndarray, fill) -> np.ndarray:
    """``mask`` with ``fill(group, block)`` added for each group of touching voxels,
    each inside its own bounding ``block`` (padded by a voxel).

    Groups are 26-connected, so no cavity is enclosed by two groups together: the
    result is that of filling the whole mask at once, but separate bones and small
    scattered islands cost their own boxes, not the whole bone block.
    """
    filled = mask.copy()
    # A mask in a small part of its array (the bone left outside the native skeleton)
    # is labelled within its box and the layer round it, which holds every group's
    # padded box: labelling and the box scan cost per voxel scanned.
    around = _sparse_box(mask, 1) or tuple(slice(0, n) for n in mask.shape)
    local = mask[around]
    groups, count = cc3d.connected_components(np.ascontiguousarray(local, bool), connectivity=26, return_N=True)
    for label, box in enumerate(label_boxes(groups, count), start=1):
        # A pocket needs at least 3 x 3 voxels in some plane.
        if box is None or sum(s.stop - s.start >= 3 for s in box) < 2:
            continue
        # ``around`` holds the layer round every group: padded within it as within the mask.
        local_padded = pad_block(box, local.shape, 1)
        padded = block_within(around, local_padded)
        filled[padded] |= fill(groups[local_padded] == label, padded)
    return filled


#: A mask whose bounding box fills at most this share of its array is labelled within
#: that box (see :func:`_sparse_box`).
SPARSE_BOX_MAX_SHARE = 0.5


def _sparse_box(mask: np.ndarray, margin: int = 0):
    """The bounding slices of ``mask`` grown by ``margin`` voxels (clipped to the array),
    when they hold at most SPARSE_BOX_MAX_SHARE of the array; None otherwise (or for an
    empty mask): labelling components and scanning their boxes cost per voxel scanned,
    and finding the box costs a pass that only asks whether a voxel is set."""
    box = bounding_slices(mask)
    if box is None:
        return None
    box = pad_block(box, mask.shape, margin)
    return box if np.prod([s.stop - s.start for s in box]) <= SPARSE_BOX_MAX_SHARE * mask.size else None


def fill_bone_cavities(mask: np.ndarray) -> np.ndarray:
    """Cavities closed in 3D and pockets closed within slices, of any size (marrow of
    native bones, whole or cut by the field of view)."""
    def fill(group, _):
        if group.size < PARALLEL_MIN_VOXELS:
            return fill_slice_cavities(group) | fill_cavities(group)
        with ThreadPoolExecutor(1, thread_name_prefix="hosciatic-fill") as executor:
            closed = executor.submit(fill_cavities, group)
            return fill_slice_cavities(group) | closed.result()

    return fill_per_group(mask, fill)


def fill_island_marrow(mask: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Marrow of HO islands: cavities closed in 3D, and thin ones sealed within slices."""
    return fill_per_group(mask, lambda group, block: fill_cavities(group) | fill_slice_cavities(
        group, geometry.cropped(block), SLICE_MARROW_MAX_RADIUS_MM))


def _label_maximum(labels_1d: np.ndarray, values_1d: np.ndarray, count: int) -> np.ndarray:
    """Largest value per label (index 0..count) from the labelled voxels only."""
    deepest = np.zeros(count + 1)
    np.maximum.at(deepest, labels_1d, values_1d)
    return deepest


def _components(mask: np.ndarray, connectivity: int = 6):
    """6-connected components (or ``connectivity``): labels 1..count and the size of
    each (index 0 unused)."""
    mask = np.ascontiguousarray(mask, bool)
    labels, count = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    # Counted over the mask's voxels only: a bone mask is a few percent of its block.
    sizes = np.bincount(labels[mask], minlength=count + 1)
    sizes[0] = 0
    return labels, count, sizes


def _components_and_boxes(mask: np.ndarray, connectivity: int = 6):
    """:func:`_components` of ``mask`` and the components' bounding slices (as
    :func:`label_boxes` gives them). A mask in a small part of its array is labelled
    within its box (labels, numbered in scan order, are the same there). Where the
    components' boxes hold few voxels together (a few bones in a large block), each
    size is counted in its own box: a pass over all the mask's voxels costs several
    times that."""
    around = _sparse_box(mask)
    if around is not None:
        local, count, sizes = _components(mask[around], connectivity)
        labels = np.zeros(mask.shape, local.dtype)
        labels[around] = local
        boxes = [None if box is None else block_within(around, box) for box in label_boxes(local, count)]
        return labels, count, sizes, boxes
    mask = np.ascontiguousarray(mask, bool)
    labels, count = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    boxes = label_boxes(labels, count)
    if sum(np.prod([s.stop - s.start for s in box]) for box in boxes if box is not None) > 0.25 * labels.size:
        sizes = np.bincount(labels[mask], minlength=count + 1)
    else:
        sizes = np.zeros(count + 1, np.int64)
        for label, box in enumerate(boxes, start=1):
            if box is not None:
                sizes[label] = np.count_nonzero(labels[box] == label)
    sizes[0] = 0
    return labels, count, sizes, boxes


def _touches(island: np.ndarray, native: np.ndarray, island_block, geometry: VolumeGeometry) -> bool:
    """Whether native bone lies within one and a half voxels of the island (fused)."""
    return _native_within(island, native, island_block, geometry, _touch_reach_mm(geometry))


def _joined_to_native(island: np.ndarray, bone_found: np.ndarray, native: np.ndarray, island_block,
                      geometry: VolumeGeometry) -> bool:
    """Whether an island is fused to native bone: it touches native bone, or the bone at
    the detection threshold it was found in (``bone_found``, over the same block) runs on
    into native bone, the two sharing a face.

    The island's edge moves to the half step once found. A stalk thinner than the
    voxels, or a junction blurred with a faint native cortex, reads below the half step
    (partial volume) and falls outside that edge: a gap of a voxel or two opened
    between the measured island and the bone it grows from, although the bone at the
    threshold runs on without a break (an outgrowth on an 8 mm stalk from the greater
    trochanter read unfused on 3 mm voxels). Bone that the threshold shows apart from
    native bone is fused only within the reach of :func:`_touches`."""
    if _touches(island, native, island_block, geometry):
        return True
    return bool(np.any(grown_across_faces(bone_found) & native[island_block]))


def _touch_reach_mm(geometry: VolumeGeometry) -> float:
    """How near native bone an island must come to be fused to it: one and a half voxels."""
    return 1.5 * max(geometry.spacing_kji)


def _distance_to_native(native: np.ndarray, island_block, geometry: VolumeGeometry, reach_mm: float):
    """Distance (mm) from each voxel of ``island_block`` (slices of ``native``'s grid) to
    native bone, exact up to ``reach_mm``; None when no native bone lies that near the
    block."""
    around = pad_block(island_block, native.shape, int(np.ceil(reach_mm / min(geometry.spacing_kji))))
    near_native = native[around]
    if not near_native.any():
        return None
    inner = block_relative_to(island_block, around)
    return distance_inside(~near_native, geometry)[inner]


def native_bones_near(island: np.ndarray, island_block, bone_labels: np.ndarray, geometry: VolumeGeometry,
                      reaches_mm=NATIVE_BONE_NAMING_REACHES_MM) -> list[int]:
    """The labels of the native bones an island lies on, nearest first (``bone_labels``:
    a label map of the given bones on the island's grid; ``island``: a mask over
    ``island_block`` of it): every bone about as near as the nearest (within a voxel's
    diagonal, so an island fused to two bones, bridging them, names both); [] when no
    bone lies within the last of ``reaches_mm``."""
    diagonal = float(np.linalg.norm(geometry.spacing_kji))
    for reach in reaches_mm:
        around = pad_block(island_block, bone_labels.shape, int(np.ceil(reach / min(geometry.spacing_kji))))
        labels = bone_labels[around]
        bone = labels > 0
        if not bone.any():
            continue
        # One distance map from the island serves every bone: a bone's distance is
        # that of its nearest voxel (voxel centre to voxel centre, both ways the same).
        placed = np.zeros(labels.shape, bool)
        placed[block_relative_to(island_block, around)] = island
        from_island = distance_outside(placed, geometry.cropped(around))[bone]
        nearest = np.full(int(labels.max()) + 1, np.inf)
        np.minimum.at(nearest, labels[bone], from_island)
        closest = float(nearest.min())
        if closest > reach:
            continue
        named = np.flatnonzero(nearest <= closest + diagonal)
        return [int(label) for label in named[np.lexsort((named, nearest[named]))]]
    return []


def _native_within(island: np.ndarray, native: np.ndarray, island_block, geometry: VolumeGeometry,
                   reach_mm: float) -> bool:
    """Whether native bone lies within ``reach_mm`` of the island (a mask over
    ``island_block`` of ``native``'s grid)."""
    distance = _distance_to_native(native, island_block, geometry, reach_mm)
    return distance is not None and bool(np.any(island & (distance <= reach_mm)))


def _meets_bone_at_both_ends(island: np.ndarray, distance: np.ndarray, geometry: VolumeGeometry,
                             reach_mm: float) -> bool:
    """Whether native bone lies within ``reach_mm`` of the island at both ends of its
    main axis and nowhere along its middle half (``distance``: to native bone, over the
    island's block)."""
    points = np.argwhere(island) * np.asarray(geometry.spacing_kji)
    axis = np.linalg.eigh(np.cov(points.T))[1][:, -1]
    along = (points - points.mean(axis=0)) @ axis
    low, high = np.percentile(along, [2, 98])
    position = (along - low) / max(high - low, 1e-6)
    contact = position[distance[island] <= reach_mm]
    return bool(contact.size and contact.min() <= 0.25 and contact.max() >= 0.75
                and not np.any((contact > 0.25) & (contact < 0.75)))


def _bar_between_bones(island: np.ndarray, island_block, native: np.ndarray, geometry: VolumeGeometry) -> bool:
    """Whether the island is a bar from one bone to another (Brooker III-IV): it meets
    native bone at both ends of its main axis and nowhere along its middle half, fused
    to both (within the reach of :func:`_touches`) or stopping short of them across a
    gap (within BAR_END_GAP_MM of each, and as clear of bone between), whether or not
    the two bones also meet at the joint, as on coarse voxels. A vessel beside a bone
    lies against it along its length, if at all, and one leaving a bone runs on into
    the soft tissue."""
    touch = _touch_reach_mm(geometry)
    reaches = sorted({touch, max(touch, BAR_END_GAP_MM)})
    distance = _distance_to_native(native, island_block, geometry, reaches[-1])
    return distance is not None and any(_meets_bone_at_both_ends(island, distance, geometry, reach)
                                        for reach in reaches)


def _touches_border(block, shape) -> bool:
    return any(s.start == 0 or s.stop == n for s, n in zip(block, shape))


def _reaches_image_edge(island: np.ndarray, island_slices, shape) -> bool:
    """Whether an island (a mask over ``island_slices`` of the image) has voxels on the
    image's first or last layer along any axis."""
    extent = bounding_slices(island)
    return any(offset.start + s.start == 0 or offset.start + s.stop == n
               for s, offset, n in zip(extent, island_slices, shape))


def field_of_view_padding(ct_hu: np.ndarray) -> np.ndarray | None:
    """The voxels where nothing was imaged: outside the scanner's circular field of view
    (see FIELD_OF_VIEW_PADDING_HU) and a reformat's fill (see :func:`constant_fill_value`);
    None when the image has neither (padding below air is found on a coarse sample: it
    fills the corners of every slice)."""
    padding = ct_hu < FIELD_OF_VIEW_PADDING_HU if np.any(ct_hu[::4, ::4, ::4] < FIELD_OF_VIEW_PADDING_HU) else None
    fill = constant_fill_value(ct_hu)
    filled = fill_region(ct_hu, fill) if fill is not None else None
    if filled is None:
        return padding
    return filled if padding is None else padding | filled


def fill_region(ct_hu: np.ndarray, fill: float) -> np.ndarray | None:
    """Where a reformat's ``fill`` lies: the regions of that one value that reach the
    image's faces, as the space beyond the original image does, and hold voxels equal to
    all six neighbours. Single voxels of that value in tissue (a fat-bone border at
    exactly 0 HU), and clamped gas inside the body, are no fill. None when none is found."""
    equal = ct_hu == fill
    labels, count = ndimage.label(equal)
    if count == 0:
        return None
    faces = np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel(),
                            labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])
    solid = labels[ndimage.binary_erosion(equal, border_value=1)]
    kept = np.intersect1d(faces[faces > 0], solid[solid > 0])
    return np.isin(labels, kept) if len(kept) else None


def constant_fill_value(ct_hu: np.ndarray) -> float | None:
    """The value a reformat or resampling wrote where the original image ended (air's
    -1024, water's 0: any value from below air to soft tissue), or None.

    Imaged tissue and air carry noise, so a voxel equal to all six of its neighbours is
    rare in them (air clamped at the scanner's lowest value included, see
    CONSTANT_FILL_MIN_SHARE); a fill is such voxels throughout. Nearly all of them must
    hold that one value, and the rest of the image must be noisy: an image without noise
    (a synthetic one) has flat tissue too, and is not taken for filled."""
    if min(ct_hu.shape) < 3:
        return None
    step = max(1, (ct_hu.shape[0] - 2) // CONSTANT_FILL_SAMPLE_SLICES)
    sampled_slices = np.arange(1, ct_hu.shape[0] - 1, step)
    flat_values = []
    for k in sampled_slices:
        middle = ct_hu[k, 1:-1, 1:-1]
        flat = ((middle == ct_hu[k - 1, 1:-1, 1:-1]) & (middle == ct_hu[k + 1, 1:-1, 1:-1])
                & (middle == ct_hu[k, :-2, 1:-1]) & (middle == ct_hu[k, 2:, 1:-1])
                & (middle == ct_hu[k, 1:-1, :-2]) & (middle == ct_hu[k, 1:-1, 2:]))
        flat_values.append(middle[flat])
    flat_values = np.concatenate(flat_values)
    # The scanner's padding below air is found on its own (see field_of_view_padding).
    flat_values = flat_values[flat_values >= FIELD_OF_VIEW_PADDING_HU]
    sampled = len(sampled_slices) * (ct_hu.shape[1] - 2) * (ct_hu.shape[2] - 2)
    if flat_values.size < CONSTANT_FILL_MIN_SHARE * sampled:
        return None
    values, counts = np.unique(flat_values, return_counts=True)
    fill = values[np.argmax(counts)]
    if not FIELD_OF_VIEW_PADDING_HU <= fill < CT_SOFT_TISSUE_MAX_HU:
        return None
    elsewhere = sum(np.count_nonzero(ct_hu[k, 1:-1, 1:-1] != fill) for k in sampled_slices)
    if flat_values.size - counts.max() > CONSTANT_FILL_MAX_FLAT_ELSEWHERE * max(elsewhere, 1):
        return None
    return float(fill)


def _next_to_field_of_view_edge(unimaged: np.ndarray, island: np.ndarray) -> bool:
    """Whether an island touches the padding outside the scanner's circular field of view
    (``unimaged``, over the island's block): it is cut there as at the image's edge."""
    return bool(np.any(grown_across_faces(island) & unimaged))


def _component_thickness_mm(labels: np.ndarray, label: int, block, geometry: VolumeGeometry) -> float:
    """Twice the depth of the deepest voxel of one labelled component (in ``block``).

    Measured with a voxel of background around the block, so that only the array's own
    edge (where the bone is cut) is not a boundary: a component filling its block
    exactly is not taken for a thick one.
    """
    padded = pad_block(block, labels.shape, 1)
    return 2.0 * float(distance_inside(labels[padded] == label, geometry).max())


# ---------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------
def bone_and_metal_masks(ct_hu, geometry, bone_threshold_hu, ct_as_given=None):
    """Bone voxels (metal and its margin removed), the metal mask, and each voxel's
    distance to metal in mm (None without metal). When bone is found on a smoothed copy,
    the metal found there takes in the voxels of ``ct_as_given`` at the metal level that
    join it: smoothing lowers an implant's edge under that level. Such voxels apart from
    it are noise in dense cortex, which a noisy CT lifts to 2500 HU too."""
    metal = at_least(ct_hu, METAL_THRESHOLD_HU)
    if ct_as_given is not None and ct_as_given is not ct_hu and metal.any():
        labels = cc3d.connected_components(np.ascontiguousarray(metal | at_least(ct_as_given, METAL_THRESHOLD_HU)),
                                           connectivity=26)
        joined = np.unique(labels[metal])
        metal = np.isin(labels, joined[joined > 0])
    bone = at_least(ct_hu, bone_threshold_hu)
    metal_distance = None
    if metal.any():
        metal_distance = distance_inside(~metal, geometry)
        bone &= metal_distance > METAL_MARGIN_MM
    return bone, metal, metal_distance


def missed_cortex(outside_bone: np.ndarray, native_zone: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Thin bone hugging a given native-bone mask: cortex the segmentation missed.

    HO fused to bone is a thick outgrowth; a rim no thicker than MISSED_CORTEX_MM
    lying against the native mask is the native cortex itself.
    """
    labels, count, _ = _components(outside_bone)
    if count == 0:
        return np.zeros_like(outside_bone)
    touching = np.zeros(count + 1, bool)
    touching[np.unique(labels[grown_across_faces(native_zone) & (labels > 0)])] = True
    touching[0] = False
    inside = labels > 0
    deepest = _label_maximum(labels[inside], distance_inside(outside_bone, geometry)[inside], count)
    thin = 2.0 * deepest <= MISSED_CORTEX_MM
    return (touching & thin)[labels]


def estimate_native_components(labels, count, sizes, blocks, bone, geometry, midline=lambda: None,
                               cut_zone: np.ndarray | None = None) -> np.ndarray:
    """Which components (index 0..count) are native bones: big ones, unless a compact
    mass off the midline and whole in the image (large free HO), and thick bone cut by
    the region edge. ``blocks`` are the components' bounding slices and ``bone`` the
    mask that was labelled; ``midline()`` gives the body's midline (or None), asked for
    only when needed; a component meeting ``cut_zone`` (next to the padding outside the
    field of view) is cut there too."""
    native = np.zeros(count + 1, bool)
    min_voxels = NATIVE_MIN_ML / geometry.voxel_volume_ml
    native[1:] = sizes[1:] >= min_voxels
    for label in range(1, count + 1):
        if blocks[label - 1] is None:
            continue
        block = blocks[label - 1]
        cut = _touches_border(block, labels.shape) or (
            cut_zone is not None and bool(np.any(cut_zone[block] & (labels[block] == label))))
        if native[label]:
            if not cut and sizes[label] * geometry.voxel_volume_ml < NATIVE_WHOLE_MIN_ML:
                native[label] = not _free_mass(labels[blocks[label - 1]] == label, blocks[label - 1], bone,
                                               geometry, midline)
            continue
        if cut:
            thickness = _component_thickness_mm(labels, label, blocks[label - 1], geometry)
            native[label] = thickness >= NATIVE_CUT_MIN_THICKNESS_MM
    return native


def _free_mass(component: np.ndarray, block, all_bone: np.ndarray, geometry: VolumeGeometry, midline) -> bool:
    """Whether a component (a mask over ``block``) is a compact mass lying off the
    body's midline and unmatched by bone across it (``all_bone``: a mass with a mirror
    image in bone is paired anatomy). Without a known midline, compactness decides.
    ``midline()`` is asked for only when needed."""
    spreads = _principal_spreads_mm(component, geometry)
    ellipsoid_ml = 4.0 / 3.0 * np.pi * 5.0 ** 1.5 * float(np.prod(spreads)) / 1000.0
    if np.count_nonzero(component) * geometry.voxel_volume_ml < LARGE_HO_MIN_FILL * ellipsoid_ml:
        return False
    plane = midline()
    if plane is None:
        return True
    if _on_midline(component, geometry.cropped(block), plane):
        return False
    return not mirrored_in_bone(component, block, all_bone, geometry, plane)


def region_edge_zone(block, shape) -> np.ndarray:
    """Voxels of the block (slices of an image of ``shape``) on the image's last voxel
    layer, where the analysed region ends.

    Bone there is cut by the field of view: its shape says nothing about
    outgrowths, so no fused HO is called there.
    """
    edge = np.zeros(tuple(s.stop - s.start for s in block), bool)
    for axis, (s, n) in enumerate(zip(block, shape)):
        index = [slice(None)] * 3
        if s.start == 0:
            index[axis] = slice(0, 1)
            edge[tuple(index)] = True
        if s.stop == n:
            index[axis] = slice(-1, None)
            edge[tuple(index)] = True
    return edge


def ball_opening(mask: np.ndarray, geometry: VolumeGeometry, radius_mm: float) -> np.ndarray:
    """The opening of ``mask`` with a ball of ``radius_mm``: erosion, then dilation, both by
    exact Euclidean distance, so anisotropic voxels are honoured.

    The erosion's distance map is taken over the mask's box and a layer of background
    round it alone: every voxel outside the mask is farther than that layer, so the
    distances are those over the whole array. The dilation's is taken over the box of
    what the erosion left and the ball's reach round it (and a layer), which holds
    every voxel of it: no voxel beyond is within the ball's reach. On a bone with thin
    plates the ball cannot enter (an iliac wing) that box is much smaller than the bone's.
    """
    opened = np.zeros(mask.shape, bool)
    if not mask.any():
        return opened
    box = bounding_block(mask, 1)
    mask_in_box = np.asarray(mask[box], bool)
    core = distance_inside(mask_in_box, geometry) >= radius_mm
    if core.any():
        reach = bounding_block(core, 1, radius_mm, geometry)
        opened[block_within(box, reach)] = (distance_inside(~core[reach], geometry) <= radius_mm) & mask_in_box[reach]
    return opened


def fused_outgrowths(native_component: np.ndarray, geometry: VolumeGeometry, min_voxels: float,
                     region_edge: np.ndarray) -> np.ndarray:
    """Parts of one native component that stand out of its smooth envelope.

    The envelope is the opening with a ball of NATIVE_BALL_RADIUS_MM (see
    :func:`ball_opening`). What the ball cannot reach is kept as fused HO when it protrudes at
    least FUSED_MIN_PROTRUSION_MM, holds at least ``min_voxels`` and is not a thin
    sheet or rod.
    """
    envelope = ball_opening(native_component, geometry, NATIVE_BALL_RADIUS_MM)
    if not envelope.any():
        return envelope
    residual = native_component & ~envelope
    if not residual.any():
        return residual
    # Skins a voxel or two thick along the envelope (partial volume on a curved cortex)
    # would join real outgrowths to far-away edges; open them away first.
    skin = RESIDUAL_SKIN_MM
    residual_core = np.zeros_like(residual)
    residual_block = bounding_block(residual, 1)
    depth_in_residual = distance_inside(residual[residual_block], geometry)
    # On a coarse grid a skin one voxel thick is already RESIDUAL_SKIN_MM deep: it is
    # partial volume all the same.
    residual_core[residual_block] = (depth_in_residual >= skin) & (depth_in_residual > min(geometry.spacing_kji))
    if not residual_core.any():
        return np.zeros_like(residual)
    # The rest happens within a few mm of the residual's core (its skin, then the
    # protrusion test and the skin given back): that block gives the same answer.
    work = bounding_block(residual_core, 1, 2.0 * skin + FUSED_MIN_PROTRUSION_MM, geometry)
    work_geometry = geometry.cropped(work)
    outgrowths = np.zeros_like(residual)

    def joins_two_bones(part_in_work):
        removed = np.zeros_like(native_component)
        removed[work] = part_in_work
        return bridges_two_bones(native_component, removed, geometry)

    outgrowths[work] = _outgrowths_near_core(residual_core[work], residual[work], envelope[work], work_geometry,
                                             min_voxels, region_edge[work], joins_two_bones)
    return outgrowths


def bridges_two_bones(component: np.ndarray, part: np.ndarray, geometry: VolumeGeometry) -> bool:
    """Whether ``part`` is a bar from one bone to another in ``component``: without it
    the component falls apart into two or more pieces each of a native bone's size
    (NATIVE_MIN_ML), and the part runs from one to the other (where it meets them lies
    BRIDGE_MIN_SPAN of its length apart). A bar of HO from the femur to the pelvis
    (Brooker IV ankylosis) does; a native bone's edge or process, taken away, leaves one
    bone, and a joint fused along its line (a sacroiliac joint on coarse voxels) meets
    both bones along its whole length, its two contacts side by side."""
    pieces, _, sizes = _components(component & ~part)
    bones = np.flatnonzero(sizes * geometry.voxel_volume_ml >= NATIVE_MIN_ML)
    if len(bones) < 2:
        return False
    near = bounding_block(part, 1)
    local_part, local_pieces = part[near], pieces[near]
    first, second = bones[np.argsort(sizes[bones])[-2:]]
    contacts = [local_part & grown_across_faces(local_pieces == bone) for bone in (first, second)]
    if not all(contact.any() for contact in contacts):
        return False
    centres = [geometry.cropped(near).kji_to_ras_points(np.argwhere(contact).mean(axis=0)[None])[0]
               for contact in contacts]
    return float(np.linalg.norm(centres[0] - centres[1])) >= BRIDGE_MIN_SPAN * _extent_mm(part, geometry)


def _outgrowths_near_core(residual_core, residual, envelope, geometry, min_voxels, region_edge,
                          joins_two_bones=lambda part: False):
    """Residual parts kept as fused HO (see :func:`fused_outgrowths`); a part as long
    as a native edge or process is kept when ``joins_two_bones(part)`` (the part with its
    skin, over the whole block) says it bridges two bones."""
    skin = RESIDUAL_SKIN_MM
    opened = within_or_next_to(residual_core, geometry, skin) & residual
    labels, count, sizes = _components(opened)
    keep = np.zeros(count + 1, bool)
    blocks = label_boxes(labels, count)
    protrusion = _protrusion_of_parts(envelope, {label: blocks[label - 1] for label in range(1, count + 1)
                                                 if sizes[label] >= min_voxels}, geometry)
    clear_of_staircase = np.zeros(residual.shape, bool)
    for label in range(1, count + 1):
        block = blocks[label - 1]
        if sizes[label] < min_voxels:
            continue
        part = labels[block] == label
        depth = protrusion(label)
        if float(depth[part].max()) < FUSED_MIN_PROTRUSION_MM or _within_one_thick_layer(part, geometry):
            continue
        if not np.any(part & region_edge[block]):
            thickness = _component_thickness_mm(labels, label, block, geometry)
            extent = _extent_mm(part, geometry)
            keep[label] = extent <= FUSED_MAX_ELONGATION * max(thickness, 1e-6)
            if not keep[label]:
                whole = np.zeros_like(residual)
                whole[block] = part
                keep[label] = joins_two_bones(within_or_next_to(whole, geometry, skin) & residual)
        if not keep[label] and max(geometry.spacing_kji) >= FUSED_MIN_PROTRUSION_MM - 1e-6:
            clear_of_staircase[block] |= _compact_parts_clear_of_staircase(
                part, depth, geometry.cropped(block), min_voxels, region_edge[block])
    kept = keep[labels] | clear_of_staircase
    if not kept.any():
        return kept
    # Give back the outgrowth's own surface voxels that the opening took.
    return within_or_next_to(kept, geometry, skin) & residual


def _protrusion_of_parts(envelope: np.ndarray, part_blocks: dict, geometry: VolumeGeometry):
    """A function giving, over the block of a part (``part_blocks``: the block of each
    part judged, by its label), each voxel's distance (mm) beyond
    ``envelope`` as over the whole array wherever it is at most the largest protrusion
    the parts are judged by (FUSED_MIN_PROTRUSION_MM, or a coarse grid's slice), and
    beyond that elsewhere: only comparisons with those figures are made.

    Each part's map is taken over its block and a layer that thick round it, which holds
    every envelope voxel so near; the parts kept for judging are few and small beside the
    block around the residual's core (on a pelvis, its iliac wings far apart), so unless
    their layered blocks hold more voxels together, one map over the whole array serves.
    """
    exact_mm = max(FUSED_MIN_PROTRUSION_MM, max(geometry.spacing_kji))
    layer = np.ceil(exact_mm / np.asarray(geometry.spacing_kji)).astype(int) + 1
    around = {label: tuple(slice(max(s.start - int(e), 0), min(s.stop + int(e), n))
                           for s, e, n in zip(block, layer, envelope.shape)) for label, block in part_blocks.items()}
    if sum(np.prod([s.stop - s.start for s in box]) for box in around.values()) >= envelope.size:
        whole = distance_inside(~envelope, geometry)
        return lambda label: whole[part_blocks[label]]

    def protrusion(label):
        box = around[label]
        inner = block_relative_to(part_blocks[label], box)
        return distance_inside(~envelope[box], geometry)[inner]
    return protrusion


def _compact_parts_clear_of_staircase(part: np.ndarray, protrusion: np.ndarray, geometry: VolumeGeometry,
                                      min_voxels: int, region_edge: np.ndarray) -> np.ndarray:
    """The compact outgrowths of a part too long for one, once its fringe within a slice
    of the envelope is set aside (``protrusion``: each voxel's distance beyond the
    envelope, mm).

    On thick slices a bone surface that the slices cut at a shallow angle (the top of a
    femoral neck or trochanter, an acetabular roof on axial slices) leaves a staircase of
    bone outside the ball's envelope, up to a slice thick, along the whole surface; an
    outgrowth there joins it into one part as long as a native edge, and was dropped
    with it (a 2.5 mL island on 5 mm slices), or, the staircase running on to where the
    image cuts the bone, with the bone cut there. What stands more than a slice off the
    envelope is judged again on its own shape, with the part's voxels within a slice of
    it; a native edge or process stays as long as it is, and bone the image cuts stays
    native.
    """
    slice_mm = max(geometry.spacing_kji)
    cores, count, _ = _components(part & (protrusion > slice_mm))
    kept = np.zeros(part.shape, bool)
    for core in range(1, count + 1):
        outgrowth = within_or_next_to(cores == core, geometry, slice_mm) & part
        if np.count_nonzero(outgrowth) < min_voxels or np.any(outgrowth & region_edge):
            continue
        thickness = 2.0 * float(distance_inside(np.pad(outgrowth, 1), geometry).max())
        if _extent_mm(outgrowth, geometry) <= FUSED_MAX_ELONGATION * thickness:
            kept |= outgrowth
    return kept


def _within_one_thick_layer(part: np.ndarray, geometry: VolumeGeometry) -> bool:
    """Whether a part lies within one layer of voxels as thick as the least protrusion
    or thicker (a thick slice, 3 mm being the commonest reconstruction): there the
    partial volume of a native bone's rounded end, cut by the slice, looks just like an
    outgrowth, and one layer cannot show a protrusion of that size along it."""
    for axis, spacing in enumerate(geometry.spacing_kji):
        if spacing >= FUSED_MIN_PROTRUSION_MM - 1e-6:
            others = tuple(a for a in range(3) if a != axis)
            if np.count_nonzero(part.any(axis=others)) <= 1:
                return True
    return False


def _principal_spreads_mm(part: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Standard deviations (mm) of a voxel set along its three principal axes, largest first."""
    points = np.argwhere(part).astype(np.float64) * np.asarray(geometry.spacing_kji)
    if len(points) < 2:
        return np.zeros(3)
    return np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov(points.T))[::-1], 0.0))


def _extent_mm(part: np.ndarray, geometry: VolumeGeometry) -> float:
    """Largest dimension of a voxel set (4 x the standard deviation along its main axis)."""
    return 4.0 * float(_principal_spreads_mm(part, geometry)[0])


def vessel_like(island: np.ndarray, depth: np.ndarray, geometry: VolumeGeometry) -> tuple[bool, float, float]:
    """Whether an island is a long, thin, solid tube, the shape of a contrast-filled or
    calcified vessel; with its width and length (mm). ``depth`` is each island voxel's
    distance (mm) to the outside. HO is a blob, a plate along a muscle plane, or a
    sleeve around the nerve, not a thin rod."""
    spreads = _principal_spreads_mm(island, geometry)
    width = 2.0 * float(depth.max())
    length = 4.0 * float(spreads[0])
    # A round cross-section of width w spreads w / 4 either way; a band along a muscle
    # plane spreads far more across than its thickness.
    round_section = spreads[1] <= VESSEL_MAX_SECTION_SPREAD * width / 4.0
    tube = (spreads[0] >= VESSEL_ELONGATION * spreads[1] and width <= VESSEL_MAX_WIDTH_MM
            and length >= VESSEL_MIN_LENGTH_MM and round_section)
    return bool(tube), width, length


def _surrounding_ring(island: np.ndarray, other_bone: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """The tissue within SURROUND_RING_MM of an island, and at least the voxels next to
    it, other bone left out."""
    return within_or_next_to(island, geometry, SURROUND_RING_MM) & ~island & ~other_bone


def rim_along_air(ct_hu, island: np.ndarray, geometry: VolumeGeometry) -> bool:
    """Whether most of an island (a mask over the block ``ct_hu``, with a margin of
    background) lies against air or gas: a sharp kernel's overshoot at the skin or a
    bowel wall (see AIR_RIM_MIN_SHARE)."""
    air = is_gas(ct_hu)
    if not air.any():
        return False
    reach = max(AIR_RIM_REACH_MM, 1.5 * min(geometry.spacing_kji))
    against_air = distance_outside(air, geometry)[island] <= reach
    return bool(np.mean(against_air) >= AIR_RIM_MIN_SHARE)


def outside_body(ct_hu, ring: np.ndarray) -> bool:
    """Whether the ring around an island (see :func:`_surrounding_ring`) is mostly air:
    an object outside the patient."""
    return bool(ring.any()) and gas_share(ct_hu[ring]) >= OUTSIDE_BODY_AIR_FRACTION


def refine_boundary(ct_hu, island: np.ndarray, ring: np.ndarray, geometry, bone_threshold_hu) -> np.ndarray:
    """Move an island's outer edge to half the step between its bone and the soft
    tissue around it (``ring``, see :func:`_surrounding_ring`).

    Only the outer edge moves: the voxels within EDGE_ZONE_MM of that tissue (and at
    least those next to it). Deeper in, the island is bone whatever its value:
    trabecular bone or red marrow (200-400 HU) under the cortex of a mass fused to a
    bone, where no cortex encloses it to be filled back, was cut away with the edge (a
    mass on the ilium read 61 % small). The marrow filled at the detection threshold
    stays too: a cortex thinner than the scanner resolves (thick slices) falls below
    the half step in places, and the marrow must not be lost through them. What the
    bone and marrow enclose (the cortex's inner partial-volume band) is filled back.
    """
    if not ring.any():
        return island
    background = float(np.median(ct_hu[ring]))
    peak = float(np.percentile(ct_hu[island], 95))
    half_step = 0.5 * (background + peak)
    # The peak is that of the bone next to each edge, where lower than the island's: an
    # immature part (under 500 HU) joined to a mature one (cortex about 1000 HU) lay all
    # below the pair's half step, and lost its outer 2.5 mm (a third of the pair).
    reach = np.maximum(np.round((EDGE_ZONE_MM + LOCAL_PEAK_EXTRA_MM) / np.asarray(geometry.spacing_kji)), 1)
    local_peak = ndimage.maximum_filter(np.where(island, ct_hu, -np.inf).astype(np.float32),
                                        size=tuple(int(2 * r + 1) for r in reach), mode="nearest")
    half_maximum = np.maximum(bone_threshold_hu, 0.5 * (background + np.minimum(peak, local_peak)))
    marrow = island & ~at_least(ct_hu, bone_threshold_hu)
    inner = island & ~within_or_next_to(ring, geometry, EDGE_ZONE_MM)
    refined = island & ((ct_hu >= half_maximum) | marrow | inner)
    if half_step < bone_threshold_hu:
        # HO without a cortex, under twice the threshold: its half step lies outside the
        # threshold's edge, in the blur around it, which the edge now takes in (a 250 HU
        # mass read 12 % small at 200 HU on a 1 mm grid, 4 % at 150 HU).
        refined |= ring & within_or_next_to(island, geometry, EDGE_BLUR_MM) & at_least(ct_hu, half_step)
    if not refined.any():
        return island
    refined = fill_island_marrow(refined, geometry)
    labels, count, sizes = _components(refined)
    if count <= 1:
        return refined
    # Pieces of equal size are told apart by their content, not by which comes first in
    # the array (that depends on how the CT's axes are stored).
    content = np.bincount(labels[refined], weights=ct_hu[refined].astype(np.float64), minlength=count + 1)
    return labels == int(np.lexsort((content[1:], sizes[1:]))[-1]) + 1


def asymmetric_outgrowth(component: np.ndarray, block, across: BoneAcrossMidline, geometry: VolumeGeometry,
                         min_voxels: float, rejected: list | None = None,
                         beyond_image: np.ndarray | None = None) -> np.ndarray | None:
    """The part of a native bone (``component``, a mask over ``block``) that has no
    counterpart across the body's midline: HO fused to it, thicker than the
    fused-outgrowth ball. None when there is none or the comparison cannot be trusted.
    ``beyond_image`` (optional, shaped as ``component``) receives the part's bone whose
    mirror image lies beyond the image: compared with nothing, it joins a skirt only."""
    component_geometry = geometry.cropped(block)
    offset = np.array([s.start for s in block])
    steps = np.maximum(1, np.rint(ASYMMETRY_GRID_MM / np.asarray(geometry.spacing_kji))).astype(int)
    coarse = lattice_voxels(component, component_geometry, steps)
    if len(coarse) < 100:
        return None
    ras = geometry.kji_to_ras_points(coarse + offset)
    motion = across.fit(ras)
    if motion is None:
        if rejected is not None:
            # How much of the bone has no bone at all near its plain mirror image.
            mirrored = across.plane.mirror(ras)
            lone = across.inside(mirrored) & (across.coarse_distance(mirrored) > ASYMMETRY_CORE_MM)
            lone_ml = np.count_nonzero(lone) * np.prod(steps) * geometry.voxel_volume_ml
            if lone_ml >= UNCOMPARED_MIN_ML:
                rejected.append((float(np.count_nonzero(component) * geometry.voxel_volume_ml), float(lone_ml)))
        return None
    mapped = across.counterpart(ras, motion)
    unmatched = across.inside(mapped) & (across.coarse_distance(mapped) > ASYMMETRY_CORE_MM)
    if np.count_nonzero(unmatched) * np.prod(steps) < min_voxels:
        return None
    # Read voxel by voxel around what the coarse grid found.
    near = coarse[unmatched]
    reach = tuple(slice(max(int(low) - int(e), 0), min(int(high) + st + int(e), n))
                  for low, high, st, e, n in zip(column_min(near), column_max(near), steps,
                                                 np.ceil(ASYMMETRY_CORE_MM / np.asarray(geometry.spacing_kji)),
                                                 component.shape))
    voxels = np.argwhere(component[reach])
    ras_fine = geometry.kji_to_ras_points(voxels + offset + [s.start for s in reach])
    mapped_fine = across.counterpart(ras_fine, motion)
    distance = np.zeros(tuple(s.stop - s.start for s in reach), np.float32)
    # Bone whose mirror image lies beyond the image was compared with nothing: it may join
    # a mass's skirt, but never makes a core.
    distance[tuple(voxels.T)] = np.where(across.inside(mapped_fine),
                                         across.fine_distance(mapped_fine, ASYMMETRY_CORE_MM), np.inf)
    # Beyond the block lies no bone where it ends at the bone's outermost face (often the
    # mass's own), and elsewhere none that the coarse reading found off the other side: the
    # ball must fit inside it (unpadded, a part 4 mm thick at that face read 4 mm deep).
    far = np.pad(np.isfinite(distance) & (distance > ASYMMETRY_CORE_MM), 1)
    core = distance_inside(far, component_geometry)[1:-1, 1:-1, 1:-1] >= ASYMMETRY_MIN_RADIUS_MM
    if not core.any():
        return None
    apart = (distance > ASYMMETRY_EDGE_MM) & (distance_outside(core, component_geometry) <= ASYMMETRY_SKIRT_MM)
    labels, count, sizes = _components(apart)
    keep = np.zeros(count + 1, bool)
    keep[np.unique(labels[core & (labels > 0)])] = True
    keep &= sizes >= min_voxels
    part = np.zeros_like(component)
    part[reach] = keep[labels]
    found = np.count_nonzero(part)
    if found > ASYMMETRY_MAX_SHARE * np.count_nonzero(component) and rejected is not None:
        rejected.append((float(np.count_nonzero(component) * geometry.voxel_volume_ml),
                         float(found * geometry.voxel_volume_ml)))
    if found == 0 or found > ASYMMETRY_MAX_SHARE * np.count_nonzero(component):
        return None
    if beyond_image is not None:
        beyond_image[reach] |= np.isinf(distance) & part[reach]
    return part


def measure_island(label: int, ct_hu: np.ndarray, island: np.ndarray, geometry: VolumeGeometry,
                   fused_to_native_bone: bool | None) -> tuple[OssificationIsland, np.ndarray]:
    """Figures of one island, a mask over the block ``ct_hu`` (on ``geometry``) with
    background around it, and its depth map: each voxel's distance (mm) to the outside,
    which serves the cortex and the vessel shape alike."""
    values = ct_hu[island]
    depth = distance_inside(island, geometry)
    voxels = np.argwhere(island)
    figures = OssificationIsland(
        label=label,
        volume_ml=float(len(voxels) * geometry.voxel_volume_ml),
        mean_hu=float(values.mean()),
        max_hu=float(values.max()),
        centroid_ras=tuple(float(v) for v in geometry.kji_to_ras_points(voxels.mean(axis=0))[0]),
        fused_to_native_bone=fused_to_native_bone,
        maturity=classify_maturity(ct_hu, island, depth),
        size_ras_mm=extent_ras_mm(voxels, geometry),
    )
    return figures, depth


def extent_ras_mm(voxels_kji: np.ndarray, geometry: VolumeGeometry) -> tuple:
    """Extent (mm) of a set of voxels along R, A and S: the span of their centres plus
    one voxel's own extent along each axis (its edges projected onto it), so that a
    single voxel of an axial grid measures its spacing, and a box of voxels its sides
    as a ruler laid on its outer faces reads them (the sizes a radiologist reports)."""
    centres = geometry.kji_to_ras_points(voxels_kji)
    voxel_extent = np.abs(geometry.ijk_to_ras[:3, :3]).sum(axis=1)
    return tuple(float(v) for v in column_max(centres) - column_min(centres) + voxel_extent)


def classify_maturity(ct_hu: np.ndarray, island: np.ndarray, depth: np.ndarray) -> str:
    """'mature' when a cortical rim is clearly denser than the interior (marrow);
    ``depth`` is each island voxel's distance (mm) to the outside."""
    # At least the outermost layer of voxels, along every axis: on a grid of 2 mm or
    # coarser in every direction no voxel lies within CORTEX_RIM_MM, and every island was
    # called immature; on thick slices the depth (to the nearest voxel centre outside) of
    # a face's outermost voxels is a slice thick, so only faces along the fine axes had a
    # rim and a cortex across the slices read as marrow.
    # The image's edge is no outside (as for the depth): a face cut by the field of view is no rim.
    outermost = island & ~ndimage.binary_erosion(island, border_value=1)
    rim = island & ((depth <= CORTEX_RIM_MM) | outermost)
    interior = island & ~rim
    if np.count_nonzero(interior) < 0.05 * np.count_nonzero(island) or not rim.any():
        return "immature"
    rim_level = float(np.percentile(ct_hu[rim], 90))
    interior_level = float(np.median(ct_hu[interior]))
    if rim_level >= CORTICAL_HU and rim_level - interior_level >= CORTEX_MARROW_CONTRAST_HU:
        return "mature"
    return "immature"


# ---------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------
def _island_names(numbers) -> str:
    return ", ".join(f"HO {number}" for number in numbers)


def _edge_warning(numbers, within_roi: bool) -> str:
    names = _island_names(numbers)
    one = len(numbers) == 1
    # With an ROI the analysed region is the ROI and its surroundings, not the whole image.
    edge, beyond = (("the edge of the analysed region (the ROI and its surroundings)",
                     "beyond it (enlarge the ROI)") if within_roi else
                    ("the edge of the image", "outside the field of view"))
    return (f"{names} reach{'es' if one else ''} {edge}: {'it' if one else 'each'} may continue {beyond}, its volume "
            "then being a lower bound, or be a sliver of native bone cut there. Check it on the images; a native-bone "
            "segmentation removes native bone from the search.")


def _vessel_warning(vessel_shaped, bone_threshold_hu) -> str:
    names = ", ".join(f"HO {number} ({width:.0f} mm wide, {length:.0f} mm long)"
                      for number, width, length, _ in vessel_shaped)
    level = max(hu for *_, hu in vessel_shaped)
    one = len(vessel_shaped) == 1
    delete = "that segment if it is a vessel or a rib" if one else "those segments that are vessels or ribs"
    return (f"{names} {'is a long thin tube' if one else 'are long thin tubes'}, the shape of a contrast-filled or "
            f"calcified vessel (or, at the top of an abdominal CT, of a rib) rather than HO. If the CT is "
            f"contrast-enhanced, run again with the bone threshold "
            f"above {'its' if one else 'their'} level ({'its' if one else 'their'} voxels reach {level:.0f} HU; the "
            f"threshold is {bone_threshold_hu:.0f} HU), or delete {delete}.")


def _vessel_level_warning(numbers, vessel_level_hu: float) -> str:
    one = len(numbers) == 1
    return (f"{_island_names(numbers)} {'has' if one else 'have'} no cortex and {'is' if one else 'are'} no denser "
            f"than the contrast-filled vessels (up to {vessel_level_hu:.0f} HU): on this contrast-enhanced CT "
            f"{'it' if one else 'they'} may be {'a vessel' if one else 'vessels'} too (a short or curving branch, such "
            "as the gluteal vessels beside the sciatic nerve) rather than HO. Check on the images; a bone threshold "
            f"above the vessels' level leaves vessels out, or delete {'the segment' if one else 'those segments'}.")


def _large_mass_warning(islands) -> str:
    one = len(islands) == 1
    names = ", ".join(f"HO {island.label} ({island.volume_ml:.0f} mL)" for island in islands)
    return (f"{names} {'is a large compact mass' if one else 'are large compact masses'} standing free in the soft "
            f"tissue, as neurogenic HO often grows, and {'was' if one else 'were'} reported as HO although bone of "
            f"that size could be native. If {'it is' if one else 'one is'} a piece of native bone (a fracture "
            "fragment, or bone that a thin cortex let the threshold split off), delete its segment.")


def _streak_warning(numbers) -> str:
    one = len(numbers) == 1
    return (f"{_island_names(numbers)} {'lies' if one else 'lie'} within {STREAK_REACH_MM:.0f} mm of metal and "
            f"{'has' if one else 'have'} no cortex: {'it' if one else 'they'} may be streak artefacts from the metal, "
            "or bone cement pressed out of an implant's bed (dense throughout, without a marrow), rather than HO. "
            "Check on a metal-artefact-reduction reconstruction, against the streaks' direction on the images, and "
            "for cement against the operation notes.")


def fat_share(hu: np.ndarray) -> float:
    """Share of the values in the fat range (0 for none)."""
    return float(np.mean((hu >= CT_FAT_HU[0]) & (hu <= CT_FAT_HU[1]))) if hu.size else 0.0


def is_gas(hu: np.ndarray) -> np.ndarray:
    """Which values are gas or air: below OUTSIDE_BODY_HU, but not the padding outside
    the field of view."""
    return (hu < OUTSIDE_BODY_HU) & (hu >= FIELD_OF_VIEW_PADDING_HU)


def gas_share(hu: np.ndarray) -> float:
    """Share of the values that are gas or air (0 for none)."""
    return float(np.mean(is_gas(hu))) if hu.size else 0.0


def in_subcutaneous_fat(ct_hu: np.ndarray, geometry: VolumeGeometry, centre_ras, bone_threshold_hu: float) -> bool:
    """Whether the shortest way from an island's centre out of the body (to air)
    crosses fat alone, skin and the island's edge left out (see SUBCUTANEOUS_FAT_SHARE)."""
    directions = np.array([d for d in itertools.product((-1.0, 0.0, 1.0), repeat=3) if any(d)])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    step = 0.5 * float(min(geometry.spacing_kji))
    steps = np.arange(0.0, SUBCUTANEOUS_SEARCH_MM, step)
    points = np.asarray(centre_ras, float)[None, None, :] + steps[None, :, None] * directions[:, None, :]
    kji = geometry.ras_to_kji_points(points.reshape(-1, 3)).T
    # Beyond the image nothing is known: such a way out does not count.
    values = ndimage.map_coordinates(ct_hu, kji, output=np.float32, order=1, mode="constant",
                                     cval=np.nan).reshape(len(directions), len(steps))
    # Nor is anything known beyond the scanner's field of view.
    values[values < FIELD_OF_VIEW_PADDING_HU] = np.nan
    best_reach = np.inf
    fatty = False
    for ray in values:
        outside = np.flatnonzero(~(ray >= OUTSIDE_BODY_HU))  # air, or off the image
        if not len(outside) or np.isnan(ray[outside[0]]) or steps[outside[0]] >= best_reach:
            continue
        reach = outside[0]
        left = np.flatnonzero(ray[:reach] < bone_threshold_hu)
        start = (left[0] if len(left) else reach) + int(np.ceil(SURROUND_RING_MM / step))
        way = ray[start:max(start, reach - int(np.ceil(SKIN_MM / step)))]
        best_reach = steps[reach]
        fatty = (not len(way)) or fat_share(way) >= SUBCUTANEOUS_FAT_SHARE
    return fatty


def _chained_groups(centres: np.ndarray, link_mm: float) -> np.ndarray:
    """A group number per point: points within ``link_mm`` of one another, and so on in
    a chain, share one."""
    tree = cKDTree(centres)
    return connected_components(tree.sparse_distance_matrix(tree, link_mm), directed=False)[1]


def clustered_small_islands(results) -> list[int]:
    """Numbers of the small, corticated islands lying in a chain of at least
    HAND_MIN_BONES, each within HAND_BONE_LINK_MM of the next: the pattern of a hand's
    bones."""
    small = [r for r in results if r.volume_ml <= HAND_MAX_BONE_ML and r.max_hu >= HAND_BONE_MIN_PEAK_HU]
    if len(small) < HAND_MIN_BONES:
        return []
    group = _chained_groups(np.array([r.centroid_ras for r in small]), HAND_BONE_LINK_MM)
    sizes = np.bincount(group)
    return sorted(r.label for r, g in zip(small, group) if sizes[g] >= HAND_MIN_BONES)


def small_islands_in_a_row(results) -> list[list[int]]:
    """Groups (island numbers) of at least PLAQUE_MIN_COUNT small free islands, each within
    PLAQUE_LINK_MM of another, whose centres lie within PLAQUE_ROW_MAX_OFFSET_MM of one
    line over PLAQUE_ROW_MIN_LENGTH_MM or more: the pattern of calcified plaques along
    an artery."""
    # A plaque lies in an artery's wall, never on a bone: spurs along a bone stay HO.
    small = [r for r in results if r.volume_ml <= PLAQUE_MAX_ML and not r.fused_to_native_bone]
    if len(small) < PLAQUE_MIN_COUNT:
        return []
    centres = np.array([r.centroid_ras for r in small])
    group = _chained_groups(centres, PLAQUE_LINK_MM)
    rows = []
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        if len(members) < PLAQUE_MIN_COUNT:
            continue
        points = centres[members] - centres[members].mean(axis=0)
        direction = np.linalg.svd(points, full_matrices=False)[2][0]
        along = points @ direction
        off_line = np.linalg.norm(points - np.outer(along, direction), axis=1)
        if off_line.max() <= PLAQUE_ROW_MAX_OFFSET_MM and np.ptp(along) >= PLAQUE_ROW_MIN_LENGTH_MM:
            rows.append(sorted(small[m].label for m in members))
    return rows


def _plaque_warning(rows) -> str:
    names = "; ".join(_island_names(row) for row in rows)
    return (f"{names}: {'each group is' if len(rows) > 1 else 'these are'} small islands (under {PLAQUE_MAX_ML:g} mL "
            f"each) in a row, within {PLAQUE_ROW_MAX_OFFSET_MM:.0f} mm of one line: the pattern of calcified plaques "
            "along an artery (the femoral and iliac arteries run beside the hip) rather than of HO. Check them on the "
            "images, against the artery's course; delete the segments that are plaques and recompute contact.")


def _hand_warning(numbers) -> str:
    return (f"{_island_names(numbers)} are {len(numbers)} small bones close together, the pattern of a hand "
            "in the field of view, as when the arms lie beside or across the pelvis, rather than HO. Check "
            "them on the images; delete the segments that are a hand and recompute contact.")


def _subcutaneous_warning(numbers) -> str:
    one = len(numbers) == 1
    return (f"{_island_names(numbers)} {'lies' if one else 'lie'} in the subcutaneous fat (reached from the skin "
            f"through fat alone): {'it is' if one else 'they are'} more likely a calcified injection granuloma or fat "
            "necrosis, common in the buttocks, than HO, which forms in muscle and around the joint. Check on the "
            f"images; if so, delete {'the segment' if one else 'those segments'}.")


def _gas_warning(numbers) -> str:
    one = len(numbers) == 1
    return (f"{_island_names(numbers)} {'touches' if one else 'touch'} gas (below {OUTSIDE_BODY_HU:.0f} HU on at "
            f"least {100 * GAS_RING_MIN_SHARE:.0f} % of the tissue around {'it' if one else 'them'}): HO forms in "
            "muscle, where there is no gas, so this is more likely dense bowel content (oral or rectal contrast, "
            "stool, tablets), a gas-filled wound, or an object against the skin. Check on the images; if it is not "
            f"HO, delete {'the segment' if one else 'those segments'} and recompute contact.")


def _set_apart_warning(count: int, volume_ml: float, where: str, why: str, segment_name: str) -> str:
    one = count == 1
    return (f"{count} bone-dense object{'' if one else 's'} ({volume_ml:.1f} mL) {where} {'is' if one else 'are'} not "
            f"counted as HO: {why} {'It is' if one else 'They are'} shown as the segment '{segment_name}'; a part of "
            "it renamed 'HO <n>' counts as HO.")


#: Where each kind of set-apart object lies, and why it is not HO of the hip.
_SET_APART_REASONS = {
    MIDLINE_SEGMENT_NAME: (
        f"on or near the body's midline (centre within {MIDLINE_ISLAND_MM:.0f} mm)",
        "HO of the hip forms around the joint, 55 mm or more from the midline, while near the midline lie the "
        "coccyx, the sacrum's and the spine's processes, the pubic symphysis, calcified iliac arteries at the "
        "aortic bifurcation and calcifications of the prostate, bladder or uterus (or, without a cortex, contrast "
        "in the bladder or the rectum)."),
    ABOVE_HIP_SEGMENT_NAME: (
        f"lying wholly {ABOVE_HIP_BONES_MM:.0f} mm or more above the top of the hip bones",
        "on an abdominal CT these are the lower ribs, the spine's processes or contrast-filled vessels and bowel, "
        "while HO of the hip reaches no higher than the iliac crest."),
}


def _mirror_warning(numbers) -> str:
    one = len(numbers) == 1
    return (f"{_island_names(numbers)} {'has a mirror image' if one else 'have mirror images'} in bone on the other "
            f"side of the body (within {MIRROR_TOLERANCE_MM:.0f} mm): {'it' if one else 'each'} may be a normal bony "
            "prominence (ischial spine, trochanter, iliac spine) rather than HO. Compare both sides; if it is normal "
            "anatomy, delete the segment and recompute contact.")


def _growth_centre_warning(numbers) -> str:
    one = len(numbers) == 1
    return (f"{_island_names(numbers)} {'lies' if one else 'lie'} within {GROWTH_PLATE_GAP_MM:.0f} mm of native bone "
            f"without touching it and {'has a mirror image' if one else 'have mirror images'} in bone on the other "
            f"side of the body: {'it' if one else 'each'} may be native bone rather than HO - a growth centre "
            "(epiphysis or apophysis) parted "
            "by its growth plate in a patient under about 18, a small bone beside a joint (the patella or the head "
            "of the fibula, when the image reaches the knees), or a piece of a thin, osteoporotic bone split off by "
            f"the bone threshold. Compare both sides; if {'it is' if one else 'one is'} native, delete "
            f"{'the' if one else 'its'} segment (or give a native-bone segmentation) and recompute contact.")


def _no_midline_warning(native_given: bool) -> str:
    cause = ("The body's midline was not found (the image probably holds one hip only, or no hip at all, as a slab "
             f"of the abdomen; or the patient lies turned by more than about {MIRROR_TURNS_DEG[-1] + 10:.0f} degrees "
             f"or tilted sideways by more than about {MIRROR_TILTS_DEG[-1] + 10:.0f}), so the checks that need it did "
             "not run: "
             "bone on the midline (spine, sacrum, pubic symphysis, pelvic and iliac-artery calcifications) and above "
             "the hip bones (ribs) is not set apart, and normal prominences and growth centres are not named")
    if native_given:
        return f"{cause}. Check the islands on the images."
    return (f"{cause}; HO fused to native bone and thicker than the {2 * NATIVE_BALL_RADIUS_MM:.0f} mm outgrowth ball "
            "stays native. Check the islands and the native bone on the images; a CT of both hips, or a native-bone "
            "segmentation (--bones, or the panel's native-bone input, such as TotalSegmentator's bones), lets every "
            "check run.")


def _unpaired_mass_warning(numbers) -> str:
    one = len(numbers) == 1
    return (f"{_island_names(numbers)} {'is' if one else 'are'} fused to native bone and thicker than an outgrowth: "
            f"found as bone without a counterpart on the other side of the body (more than {ASYMMETRY_CORE_MM:.0f} mm "
            "from it once the other side's bone is fitted). Compare both sides: an operated or malformed hip or a "
            "healed fracture is asymmetric too; if it is native anatomy, delete the segment and recompute contact.")


def _masses_reaching_beyond_the_image(results, islands, split, geometry: VolumeGeometry) -> list:
    """(number, mL) of the islands holding at least BEYOND_IMAGE_MIN_ML of bone whose
    mirror image lies beyond the image."""
    if split.asymmetric_beyond_image is None:
        return []
    found = [(result.label, np.count_nonzero(island & split.asymmetric_beyond_image[island_block])
              * geometry.voxel_volume_ml) for result, (island_block, island) in zip(results, islands)]
    return [(number, ml) for number, ml in found if ml >= BEYOND_IMAGE_MIN_ML]


def _beyond_image_warning(cut_off) -> str:
    parts = [f"{ml:.1f} mL of HO {number}" for number, ml in cut_off]
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    one = len(parts) == 1
    return (f"{listed} {'lies' if one else 'lie'} where the other side of the body was not imaged (the mirror image "
            f"across the midline falls beyond the image), so {'it was' if one else 'they were'} compared with "
            f"nothing: such bone is counted as HO only within {ASYMMETRY_SKIRT_MM:.0f} mm of the part that was "
            f"compared, and {'the mass' if one else 'each mass'} may reach farther as native bone. Check "
            f"{'its' if one else 'their'} extent on the images; a CT wide enough for both sides, or a native-bone "
            f"segmentation, measures {'it' if one else 'them'} whole.")


def thick_fused_masses(labels, is_native, blocks, filled_bone, geometry, plane, min_voxels, bone_block,
                       image_shape, unimaged, rejected: list | None, bone_points,
                       beyond_image: np.ndarray | None = None) -> np.ndarray:
    """The parts of the native components (``labels`` whose ``is_native``) without a
    counterpart across the midline ``plane`` (none without a plane). ``bone_block`` is
    where the labels lie in the image of ``image_shape`` (see :class:`BoneAcrossMidline`);
    ``bone_points()`` gives the bone's :func:`sampled_bone_points`, or None to have them made.
    ``beyond_image`` (optional, shaped as ``labels``) receives the bone of those parts
    whose mirror image lies beyond the image."""
    found = np.zeros(labels.shape, bool)
    if plane is None or not is_native.any():
        return found
    across = BoneAcrossMidline(filled_bone, geometry, plane, bone_block, image_shape, unimaged, bone_points())
    # Python ints: a NumPy int64 label would compare each uint32 label as an int64 copy.
    for label in np.flatnonzero(is_native).tolist():
        block = blocks[label - 1]
        part = asymmetric_outgrowth(labels[block] == label, block, across, geometry, min_voxels, rejected,
                                    None if beyond_image is None else beyond_image[block])
        if part is not None:
            found[block] |= part
    return found


def _union(parts, shape) -> np.ndarray:
    """One mask of ``shape`` from (block, mask) parts."""
    union = np.zeros(shape, bool)
    for block, mask in parts:
        union[block] |= mask
    return union


def _top_of_hip_bones(native: np.ndarray, geometry: VolumeGeometry, plane: MirrorPlane | None) -> float | None:
    """S (mm) of the highest native bone more than HIP_BONE_LATERAL_MM from the body's
    midline; None without a midline or such bone."""
    if plane is None or not native.any():
        return None
    points = sampled_bone_points(native, geometry)
    lateral = np.abs(plane.signed_distance(points)) > HIP_BONE_LATERAL_MM
    return float(points[lateral, 2].max()) if lateral.any() else None


def _above(island: np.ndarray, geometry: VolumeGeometry, top_s: float | None) -> bool:
    """Whether all of an island lies ABOVE_HIP_BONES_MM or more above ``top_s`` (False
    when it is None)."""
    if top_s is None:
        return False
    return float(geometry.kji_to_ras_points(np.argwhere(island))[:, 2].min()) >= top_s + ABOVE_HIP_BONES_MM


def _doubt(doubts: dict, numbers, reason: str) -> None:
    for number in numbers:
        doubts.setdefault(number, []).append(reason)


def _on_midline(island: np.ndarray, geometry: VolumeGeometry, plane: MirrorPlane | None) -> bool:
    """Whether an island's centre (``island`` a mask on ``geometry``) lies on the body's
    midline (False without a known midline)."""
    if plane is None:
        return False
    centre = geometry.kji_to_ras_points(np.argwhere(island).mean(axis=0)[None])[0]
    return abs(float(plane.signed_distance(centre))) <= MIDLINE_ISLAND_MM


def _paired_islands_beside_native_bone(results, islands, native, filled_bone, geometry,
                                      plane: MirrorPlane) -> list[int]:
    """Numbers of the unfused islands, smaller than a native bone, within a growth
    plate's width of native bone and mirrored by bone on the other side of the body."""
    return [result.label for result, (island_block, island) in zip(results, islands)
            if not result.fused_to_native_bone and result.volume_ml < NATIVE_MIN_ML
            and _native_within(island, native, island_block, geometry, GROWTH_PLATE_GAP_MM)
            and mirrored_in_bone(island, island_block, filled_bone, geometry, plane)]


def _mirrored_fused_islands(results, islands, filled_bone, geometry, plane: MirrorPlane) -> list[int]:
    """Numbers of the fused islands, prominence-sized, that mirror bone on the other side
    of the body."""
    return [result.label for result, (island_block, island) in zip(results, islands)
            if result.fused_to_native_bone and result.volume_ml <= PROMINENCE_MAX_ML
            and mirrored_in_bone(island, island_block, filled_bone, geometry, plane)]


@with_single_threaded_blas
def segment_ossifications(ct_hu: np.ndarray, geometry: VolumeGeometry, *,
                          bone_threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU,
                          min_island_ml: float = DEFAULT_MIN_ISLAND_ML,
                          native_bone_mask: np.ndarray | None = None,
                          roi_mask: np.ndarray | None = None,
                          progress: ProgressCallback = None) -> OssificationResult:
    """Segment HO islands on a CT (HU) of any spacing and orientation.

    Returns a label map (island n = n, largest first), one
    :class:`OssificationIsland` per island, the native skeleton used and warnings.
    """
    bone_threshold_hu = as_number(bone_threshold_hu, "The bone threshold (HU)")
    min_island_ml = as_number(min_island_ml, "The minimum island size (mL)")
    native_bone_mask, roi_mask = _checked_inputs(ct_hu, geometry, bone_threshold_hu, min_island_ml,
                                                 native_bone_mask, roi_mask)
    parameters = {"bone_threshold_hu": float(bone_threshold_hu), "min_island_ml": float(min_island_ml),
                  "native_bone": "given" if native_bone_mask is not None else "estimated"}
    warnings: list[str] = []
    labelmap = np.zeros(ct_hu.shape, np.uint16)

    report(progress, 0.05, "Thresholding bone")
    # Bone is found on a smoothed CT when the noise would pass the threshold; the
    # islands' HU figures are read on the CT as given.
    figures_ct = ct_hu
    unimaged = field_of_view_padding(figures_ct)
    ct_hu, smoothing = smoothed_for_bone(ct_hu, geometry, bone_threshold_hu)
    if smoothing is not None:
        warnings.append(smoothed_ct_warning(smoothing, bone_threshold_hu))
        parameters["bone_smoothing_mm"] = smoothing.sigma_mm
    # Work inside the block that holds bone (metal is denser still, so it lies inside
    # too): the rest of the volume is soft tissue and air.
    bone_extent = extent_at_least(ct_hu, bone_threshold_hu)
    block = pad_block(bone_extent, ct_hu.shape, 3) if bone_extent is not None else None
    if block is not None:
        ct_block = ct_hu[block]
        block_geometry = geometry.cropped(block)
        # Native bone is judged on all bone given (the caller adds context around an
        # ROI); islands are reported where they meet the ROI.
        bone_block, metal, metal_distance = bone_and_metal_masks(ct_block, block_geometry, bone_threshold_hu,
                                                                 figures_ct[block])
        if metal_distance is not None:
            warnings.append(_metal_warning(np.count_nonzero(metal) * geometry.voxel_volume_ml))
    roi_block = roi_mask[block] if roi_mask is not None and block is not None else None
    if block is None or not bone_block.any() or (roi_block is not None and not np.any(bone_block & roi_block)):
        warnings.append(f"No voxel reaches the bone threshold ({bone_threshold_hu:.0f} HU) in the analysed region: "
                        "no bone, so no HO.")
        return OssificationResult(labelmap, [], warnings, parameters)
    min_voxels = max(min_island_ml / geometry.voxel_volume_ml, MIN_ISLAND_VOXELS)

    report(progress, 0.2, "Finding native bone")
    native_block = native_bone_mask[block] if native_bone_mask is not None else None
    filled_bone = bone_block | native_block if native_block is not None else fill_bone_cavities(bone_block)
    # The body's midline from all bone, found once and only when asked for: the
    # native-bone estimate and several checks use it.
    lattice_points = functools.cache(lambda: bone_lattice(filled_bone, block_geometry))
    midline = functools.cache(lambda: body_midline(filled_bone, block_geometry, lattice_points()))
    if native_block is not None:
        split = _split_given_native_bone(bone_block, native_block, block_geometry)
    else:
        split = _split_estimated_native_bone(filled_bone, bone_block, block, ct_hu.shape, block_geometry, midline,
                                             min_voxels, progress, unimaged, lambda: lattice_points()[2])

    report(progress, 0.6, "Measuring islands")
    top_of_hip_bones = functools.cache(lambda: _top_of_hip_bones(split.excluded, block_geometry, midline()))
    # Metal and its margin are no HO, even where filling a bone's cavities or a mass
    # without a counterpart took them in.
    near_metal = metal_distance <= METAL_MARGIN_MM if metal_distance is not None else None
    found = _collect_islands(split, ct_block, bone_block, block_geometry, roi_block, min_voxels, bone_threshold_hu,
                             midline, top_of_hip_bones, near_metal)
    labelmap_block = labelmap[block]
    results, result_blocks, facts = _measure_islands(found.islands, found.fused, labelmap_block, ct_block,
                                                     figures_ct[block], bone_block, split, block, block_geometry,
                                                     ct_hu.shape, metal_distance, progress,
                                                     unimaged[block] if unimaged is not None else None)

    set_apart = {}
    for name, parts in ((MIDLINE_SEGMENT_NAME, found.on_midline), (ABOVE_HIP_SEGMENT_NAME, found.above_hip_bones)):
        if parts:
            set_apart[name] = _union(parts, labelmap_block.shape)
            warnings.append(_set_apart_warning(len(parts), np.count_nonzero(set_apart[name]) * geometry.voxel_volume_ml,
                                               *_SET_APART_REASONS[name], name))
    if found.outside_count:
        warnings.append(_outside_body_warning(found.outside_count, found.outside_ml))
    if found.air_rims_count:
        warnings.append(_air_rims_warning(found.air_rims_count, found.air_rims_ml))
    if found.whole_bones_missing_ml:
        warnings.append(_missing_native_bones_warning(found.whole_bones_missing_ml))
    if not results:
        warnings.append("No heterotopic ossification was found in the analysed region.")
    # Both-sides checks need the body's midline, found when both hips are imaged.
    plane = midline() if results or set_apart else None
    doubts: dict = {}
    vessel_level = _name_doubtful_islands(results, found.islands, facts, split, filled_bone, block_geometry, plane,
                                          ct_hu, geometry, bone_threshold_hu, warnings, doubts)
    for result in results:
        result.doubts = DOUBT_SEPARATOR.join(doubts.get(result.label, []))
        result.side = side_of_body(result.centroid_ras, plane)
    if facts.cut_by_edge:
        warnings.append(_edge_warning(facts.cut_by_edge, roi_mask is not None))
    # With native bone estimated the midline was always looked for (the thick-mass
    # check needs it); with native bone given, only when there were islands to check.
    if midline.cache_info().currsize and midline() is None:
        warnings.append(_no_midline_warning(native_given=native_bone_mask is not None))
    return OssificationResult(labelmap, results, warnings, parameters, result_blocks, split.native, block, plane,
                              set_apart, vessel_level)


def _checked_inputs(ct_hu, geometry, bone_threshold_hu, min_island_ml, native_bone_mask, roi_mask):
    """The native-bone and ROI masks as booleans, after refusing inputs the HO step
    cannot work on."""
    geometry.validate("The CT")
    if ct_hu.shape != geometry.shape_kji:
        raise InputError(f"The CT array shape {ct_hu.shape} does not match its geometry {geometry.shape_kji}.")
    if not np.isfinite(bone_threshold_hu) or not MIN_BONE_THRESHOLD_HU <= bone_threshold_hu <= MAX_BONE_THRESHOLD_HU:
        raise InputError(f"The bone threshold {bone_threshold_hu} HU is outside the useful range "
                         f"({MIN_BONE_THRESHOLD_HU:.0f} to {MAX_BONE_THRESHOLD_HU:.0f} HU: below it muscle and blood "
                         "pass for bone, above it no bone is left); "
                         f"{DEFAULT_BONE_THRESHOLD_HU:.0f} HU suits most CTs.")
    if not np.isfinite(min_island_ml) or min_island_ml < 0:
        raise InputError(f"The minimum island size must be a non-negative number of mL; got {min_island_ml}.")
    native_bone_mask = _check_mask(native_bone_mask, ct_hu.shape, "native-bone mask")
    roi_mask = _check_mask(roi_mask, ct_hu.shape, "ROI mask")
    check_looks_like_ct(ct_hu)
    return native_bone_mask, roi_mask


@dataclass
class _NativeSplit:
    """Native bone and the bone that may be HO, as masks over the bone's block."""
    #: Bone outside the native skeleton, with the marrow of islands: where HO is looked for.
    candidates: np.ndarray
    #: The native skeleton used.
    native: np.ndarray
    #: What islands must stay out of (the native skeleton, given masks with a tolerance).
    excluded: np.ndarray
    #: An island touching this is fused to native bone.
    fused_to: np.ndarray
    #: Thick fused masses found as bone without a counterpart across the midline
    #: (None when the native skeleton was given).
    asymmetric: np.ndarray | None
    #: (bone mL, mL without a counterpart) of native bones whose comparison with the
    #: other side was not trusted although much of them has none.
    uncompared: list = field(default_factory=list)
    #: The part of ``asymmetric`` whose mirror image lies beyond the image (None when
    #: the native skeleton was given).
    asymmetric_beyond_image: np.ndarray | None = None

    @property
    def given(self) -> bool:
        """Whether the native skeleton was given (a segmentation) rather than estimated."""
        return self.asymmetric is None


def _split_given_native_bone(bone_block, native_block, geometry: VolumeGeometry) -> _NativeSplit:
    """The given native skeleton, widened by the cortex a resampled mask misses; all
    other bone may be HO."""
    # Resampled segmentations miss the cortex by a voxel or so.
    native_zone = (within_or_next_to(native_block, geometry, GIVEN_NATIVE_TOLERANCE_MM)
                   if native_block.any() else native_block)
    native_zone |= missed_cortex(bone_block & ~native_zone, native_zone, geometry)
    candidates = fill_island_marrow(bone_block & ~native_zone, geometry)
    return _NativeSplit(candidates, native_block, native_zone, native_zone, None)


def _split_estimated_native_bone(filled_bone, bone_block, block, image_shape, geometry: VolumeGeometry, midline,
                                 min_voxels, progress, unimaged, bone_points) -> _NativeSplit:
    """Native bones told from HO by size and shape: big components are native, less
    what stands out of their smooth envelope and what the other side lacks. ``unimaged``
    is the padding outside the field of view (over the whole image), or None;
    ``bone_points()`` gives ``filled_bone``'s :func:`sampled_bone_points` (see
    :func:`thick_fused_masses`)."""
    # Counted by faces, a native plate a voxel thick and oblique to the grid (an iliac
    # wing on 3 mm voxels) falls into strips, each a small piece of bone beside it.
    labels, count, sizes, component_blocks = _components_and_boxes(filled_bone, 26)
    # Bone next to the padding is cut by the field of view, as at the image's edge.
    cut_zone = grown_across_faces(unimaged[block]) if unimaged is not None else None
    is_native = estimate_native_components(labels, count, sizes, component_blocks, filled_bone, geometry, midline,
                                           cut_zone)
    report(progress, 0.4, "Separating HO fused to native bone")
    # Built component by component (a lookup of every voxel's label costs several times
    # the few boxes the native bones fill).
    native = np.zeros(labels.shape, bool)
    for label in np.flatnonzero(is_native).tolist():  # Python ints (see thick_fused_masses)
        padded = pad_block(component_blocks[label - 1], native.shape, int(np.ceil(NATIVE_BALL_RADIUS_MM)))
        component = labels[padded] == label
        edge = region_edge_zone(block_within(block, padded), image_shape)
        if cut_zone is not None:
            edge |= cut_zone[padded]
        # An outgrowth lies within its own component: each component goes in less its own.
        native[padded] |= component & ~fused_outgrowths(component, geometry.cropped(padded), min_voxels, edge)
    # What the ball left in the native bone: the masses too thick for it.
    uncompared: list = []
    beyond_image = np.zeros(labels.shape, bool)
    asymmetric = thick_fused_masses(labels, is_native, component_blocks, filled_bone, geometry, midline(),
                                    min_voxels, block, image_shape, unimaged, uncompared, bone_points,
                                    beyond_image) & native
    native &= ~asymmetric
    # The mass's marrow, open towards the bone it grew from, is in the part already.
    candidates = fill_island_marrow(bone_block & ~native, geometry) | asymmetric
    return _NativeSplit(candidates, native, native, native, asymmetric, uncompared, beyond_image & asymmetric)


@dataclass
class _FoundIslands:
    """The candidates' components that stay islands, and those set aside, each as
    (block, mask) over the bone's block."""
    islands: list
    on_midline: list
    above_hip_bones: list
    outside_count: int
    outside_ml: float
    #: Rims along air or gas (a sharp kernel's overshoot), left out.
    air_rims_count: int = 0
    air_rims_ml: float = 0.0
    #: Volumes (mL) of the pieces of bone outside a given native skeleton that are as
    #: large as a whole native bone: bones the segmentation lacks.
    whole_bones_missing_ml: list = field(default_factory=list)
    #: Whether each island (in the order of ``islands``) is fused to native bone.
    fused: list = field(default_factory=list)


def _collect_islands(split: _NativeSplit, ct_block, bone_block, geometry: VolumeGeometry, roi_block, min_voxels,
                     bone_threshold_hu, midline, top_of_hip_bones, near_metal=None) -> _FoundIslands:
    """Components of the candidates large enough, inside the body, their edges moved to
    the half step, less those on the midline or above the hip bones; largest first.
    No island keeps a voxel of ``near_metal`` (metal and its margin), if given."""
    candidates = split.candidates if near_metal is None else split.candidates & ~near_metal
    labels, count, sizes, blocks = _components_and_boxes(candidates)
    if roi_block is not None:
        in_roi = np.zeros(count + 1, bool)
        in_roi[np.unique(labels[roi_block & (labels > 0)])] = True
        sizes = np.where(in_roi, sizes, 0)
    found = _FoundIslands([], [], [], 0, 0.0)
    if split.given:
        found.whole_bones_missing_ml = sorted(
            (float(size * geometry.voxel_volume_ml) for size in sizes[1:]
             if size * geometry.voxel_volume_ml >= NATIVE_WHOLE_MIN_ML), reverse=True)
    kept = []  # (block, mask, whether fused to native bone) of each island
    for label in range(1, count + 1):
        if sizes[label] < min_voxels:
            continue
        island_block = pad_block(blocks[label - 1], labels.shape, 4)
        island = labels[island_block] == label
        island_geometry = geometry.cropped(island_block)
        ring = _surrounding_ring(island, bone_block[island_block] & ~island, island_geometry)
        if outside_body(ct_block[island_block], ring):
            found.outside_ml += np.count_nonzero(island) * geometry.voxel_volume_ml
            found.outside_count += 1
            continue
        if rim_along_air(ct_block[island_block], island, island_geometry):
            found.air_rims_ml += np.count_nonzero(island) * geometry.voxel_volume_ml
            found.air_rims_count += 1
            continue
        bone_found = island & bone_block[island_block]
        island = refine_boundary(ct_block[island_block], island, ring, island_geometry,
                                 bone_threshold_hu) & ~split.excluded[island_block]
        if near_metal is not None:
            island &= ~near_metal[island_block]
        if np.count_nonzero(island) < min_voxels:
            continue
        if _on_midline(island, island_geometry, midline()):
            found.on_midline.append((island_block, island))
        elif _above(island, island_geometry, top_of_hip_bones()):
            found.above_hip_bones.append((island_block, island))
        else:
            kept.append((island_block, island,
                         _joined_to_native(island, bone_found, split.fused_to, island_block, geometry)))

    # Islands of one size are numbered by where they lie, not by how the CT is stored.
    def size_then_position(kept_island):
        island_block, island, _ = kept_island
        centre = geometry.kji_to_ras_points([np.argwhere(island).mean(axis=0) + [b.start for b in island_block]])[0]
        return (-np.count_nonzero(island), *np.round(centre, 3))

    kept.sort(key=size_then_position)
    found.islands = [(island_block, island) for island_block, island, _ in kept]
    found.fused = [fused for _, _, fused in kept]
    return found


@dataclass
class _IslandFacts:
    """What the checks after measuring need to know of the islands, by number."""
    cut_by_edge: list = field(default_factory=list)
    near_metal_immature: list = field(default_factory=list)
    #: (number, width mm, length mm, 95th percentile HU) of the vessel-shaped ones.
    vessel_shaped: list = field(default_factory=list)
    dense_end_hu: dict = field(default_factory=dict)
    #: Share of each island's voxels below half its dense end (see HOLLOW_TUBE_MIN_SHARE).
    hollow_share: dict = field(default_factory=dict)
    ring_fat_share: dict = field(default_factory=dict)
    ring_gas_share: dict = field(default_factory=dict)


def _measure_islands(islands, fused, labelmap_block, ct_block, figures_ct_block, bone_block, split: _NativeSplit,
                     block, geometry: VolumeGeometry, image_shape, metal_distance, progress, unimaged_block=None):
    """Number the islands into ``labelmap_block`` and measure each (``fused`` says
    which are fused to native bone): their figures (on
    ``figures_ct_block``, the CT as given), their bounding slices on the whole image, and
    the facts the checks use (on ``ct_block``, the CT bone was found on; an island
    touching ``unimaged_block``, the padding outside the field of view, is cut there)."""
    results = []
    result_blocks = []
    facts = _IslandFacts()
    for number, ((island_block, island), fused_to_native) in enumerate(zip(islands, fused), start=1):
        target = labelmap_block[island_block]
        target[island & (target == 0)] = number
        values = ct_block[island_block][island]
        island_geometry = geometry.cropped(island_block)
        figures, depth = measure_island(number, figures_ct_block[island_block], island, island_geometry,
                                        fused_to_native)
        results.append(figures)
        result_blocks.append(block_within(block, island_block))
        if _reaches_image_edge(island, result_blocks[-1], image_shape) or (
                unimaged_block is not None and _next_to_field_of_view_edge(unimaged_block[island_block], island)):
            facts.cut_by_edge.append(number)
        if (metal_distance is not None and figures.maturity == "immature"
                and float(metal_distance[island_block][island].min()) <= STREAK_REACH_MM):
            facts.near_metal_immature.append(number)
        tube, width, length = vessel_like(island, depth, island_geometry)
        # A bar from one bone to another (Brooker III-IV) is a rod too, but no vessel:
        # named one, its 95th percentile also set a "contrast" level that doubted others.
        tube = tube and not _bar_between_bones(island, island_block, split.fused_to, geometry)
        facts.dense_end_hu[number] = float(np.percentile(values, 95))
        facts.hollow_share[number] = float(np.mean(values < 0.5 * facts.dense_end_hu[number]))
        ring = _surrounding_ring(island, bone_block[island_block] & ~island, island_geometry)
        if unimaged_block is not None:
            # A fill (air's value, say) is no gas: nothing was imaged there.
            ring &= ~unimaged_block[island_block]
        around = ct_block[island_block][ring]
        # The layer next to a dense island is its blur (partial volume), above fat's range
        # even in fat: the share of fat is read beyond it.
        beyond_blur = ring & ~within_or_next_to(island, island_geometry, 2.0 * EDGE_BLUR_MM)
        facts.ring_fat_share[number] = fat_share(ct_block[island_block][beyond_blur] if beyond_blur.any() else around)
        facts.ring_gas_share[number] = gas_share(around)
        if tube:
            facts.vessel_shaped.append((number, width, length, facts.dense_end_hu[number]))
        report(progress, 0.6 + 0.4 * number / max(len(islands), 1), f"Island {number} of {len(islands)}")
    return results, result_blocks, facts


def _name_doubtful_islands(results, islands, facts: _IslandFacts, split: _NativeSplit, filled_bone,
                           geometry: VolumeGeometry, plane, ct_hu, image_geometry: VolumeGeometry, bone_threshold_hu,
                           warnings: list, doubts: dict):
    """Name, in ``warnings``, the islands that may not be HO, and keep why in ``doubts``
    (island number -> short reasons). Returns the contrast-filled vessels' level (HU),
    when tubes show the CT is enhanced."""
    vessel_level = None
    if facts.vessel_shaped:
        warnings.append(_vessel_warning(facts.vessel_shaped, bone_threshold_hu))
        _doubt(doubts, [number for number, *_ in facts.vessel_shaped], "shaped like a vessel")
        contrast_levels = [hu for number, *_, hu in facts.vessel_shaped
                           if hu <= CONTRAST_MAX_HU and facts.hollow_share[number] < HOLLOW_TUBE_MIN_SHARE]
        vessel_level = max(contrast_levels, default=None)
        tubes = {number for number, *_ in facts.vessel_shaped}
        at_vessel_level = [result.label for result in results
                           if vessel_level is not None and result.label not in tubes
                           and result.maturity == "immature"
                           and facts.dense_end_hu[result.label] <= vessel_level + VESSEL_LEVEL_MARGIN_HU]
        if at_vessel_level:
            warnings.append(_vessel_level_warning(at_vessel_level, vessel_level))
            _doubt(doubts, at_vessel_level, "without a cortex at the contrast-filled vessels' level")
    if facts.near_metal_immature:
        warnings.append(_streak_warning(facts.near_metal_immature))
        _doubt(doubts, facts.near_metal_immature, "without a cortex near metal (a streak or bone cement?)")
    if plane is not None:
        mirrored = _mirrored_fused_islands(results, islands, filled_bone, geometry, plane)
        if mirrored:
            warnings.append(_mirror_warning(mirrored))
            _doubt(doubts, mirrored, "mirrored by bone on the other side (a normal prominence?)")
        paired = _paired_islands_beside_native_bone(results, islands, split.fused_to, filled_bone, geometry, plane)
        if paired:
            warnings.append(_growth_centre_warning(paired))
            _doubt(doubts, paired, "possibly native bone (a growth centre or a split-off piece)")
    unpaired = [result.label for result, (island_block, island) in zip(results, islands)
                if split.asymmetric is not None
                and np.count_nonzero(island & split.asymmetric[island_block]) >= 0.5 * np.count_nonzero(island)]
    if unpaired:
        warnings.append(_unpaired_mass_warning(unpaired))
    cut_off = _masses_reaching_beyond_the_image(results, islands, split, geometry)
    if cut_off:
        warnings.append(_beyond_image_warning(cut_off))
    for bone_ml, lone_ml in split.uncompared:
        warnings.append(
            f"A piece of bone taken as native ({bone_ml:.0f} mL) could not be compared with the other side of the "
            f"body: about {lone_ml:.0f} mL of it has no counterpart there, more than a bone's normal asymmetry. It "
            "may hold a large HO mass fused to the bone (or be a free mass as large as a bone), which is not "
            "reported. Check it on the images; a native-bone segmentation (--bones, a case list's bones column, or "
            "the panel's native-bone input) separates it.")
    large = [result for result in results if not result.fused_to_native_bone and result.volume_ml >= NATIVE_MIN_ML]
    if large:
        warnings.append(_large_mass_warning(large))
    plaques = small_islands_in_a_row(results)
    if plaques:
        warnings.append(_plaque_warning(plaques))
        _doubt(doubts, [n for row in plaques for n in row], "in a row like an artery's calcified plaques")
    hand = clustered_small_islands(results)
    if hand:
        warnings.append(_hand_warning(hand))
        _doubt(doubts, hand, "clustered like a hand's bones")
    subcutaneous = [result.label for result in results
                    if not result.fused_to_native_bone
                    and facts.ring_fat_share[result.label] >= SUBCUTANEOUS_RING_FAT_SHARE
                    and in_subcutaneous_fat(ct_hu, image_geometry, result.centroid_ras, bone_threshold_hu)]
    if subcutaneous:
        warnings.append(_subcutaneous_warning(subcutaneous))
        _doubt(doubts, subcutaneous, "in the subcutaneous fat")
    against_gas = [result.label for result in results
                   if not result.fused_to_native_bone and facts.ring_gas_share[result.label] >= GAS_RING_MIN_SHARE]
    if against_gas:
        warnings.append(_gas_warning(against_gas))
        _doubt(doubts, against_gas, "touching gas")
    return vessel_level


def _metal_warning(volume_ml: float) -> str:
    return (f"Metal (> {METAL_THRESHOLD_HU:.0f} HU, {volume_ml:.1f} mL) was found and excluded with a "
            f"{METAL_MARGIN_MM:.0f} mm margin: it is not HO. Bone next to metal may be missed because of artefacts; "
            "a metal-artefact-reduction reconstruction, where the scanner offers one, gives the most reliable HO near "
            "an implant.")


def _missing_native_bones_warning(volumes_ml: list) -> str:
    pieces = (f"a piece of {volumes_ml[0]:.0f} mL, as large as" if len(volumes_ml) == 1
              else f"{len(volumes_ml)} pieces ({', '.join(f'{v:.0f}' for v in volumes_ml)} mL), each as large as")
    return (f"Bone outside the given native-bone segmentation includes {pieces} a whole native bone "
            f"({NATIVE_WHOLE_MIN_ML:.0f} mL or more; HO masses are seldom that large): the segmentation most "
            "likely lacks bones of this image (its task or field of view did not include the hip bones, sacrum or "
            "femora). HO fused to such a bone cannot be told from it, and the bone itself is reported as HO or set "
            "apart. Give a segmentation holding every bone of the image, or run without one (native bone is then "
            "estimated from the CT).")


def _left_out_warning(count: int, volume_ml: float, noun: str, where: str, reason: str) -> str:
    many = count > 1
    return (f"{count} bone-dense {noun}{'s' if many else ''} {where} ({volume_ml:.1f} mL) "
            f"{'were' if many else 'was'} left out: {reason}")


def _air_rims_warning(count: int, volume_ml: float) -> str:
    return _left_out_warning(
        count, volume_ml, "rim", "along air or gas",
        f"at least half of {'each' if count > 1 else 'it'} lies within {AIR_RIM_REACH_MM:.0f} mm of air (a voxel and "
        "a half on a coarser grid), where a sharp (bone) reconstruction kernel overshoots at the skin and at the walls "
        "of gas-filled bowel; HO forms in muscle. A soft-tissue kernel reconstruction avoids them.")


def _outside_body_warning(count: int, volume_ml: float) -> str:
    return _left_out_warning(count, volume_ml, "object", "surrounded by air",
                             "outside the body (the table, a positioning aid or an external device), not in soft "
                             "tissue where HO forms.")
