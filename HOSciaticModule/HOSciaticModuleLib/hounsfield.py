"""What a CT's values say before anything is segmented on it: whether an image holds
Hounsfield units at all (an MR, or a CT stored without its rescale, is refused for
HO), the level above which a voxel is metal and how far its streaks reach, how noisy
the soft tissue is and how much smoothing bone must be looked for on. The HO step,
the nerve tracing and the contact step all read these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .defaults import CT_FAT_HU
from .errors import InputError
from .geometry import VolumeGeometry

#: Metal (steel 6000+, titanium 3000+ HU, capped at the scanner's range) lies far above
#: the densest cortical bone (about 1900 HU).
METAL_THRESHOLD_HU = 2500.0
#: A CT in Hounsfield units of the hip region holds fat (-190..-30 HU: subcutaneous,
#: between the muscles, around the nerve), and air around the body (about -1000 HU) or,
#: in a field of view inside the body, the cortex of the femur and pelvis. MR signal has
#: no such levels; a CT without its rescale intercept has them 1024 higher (a padding
#: value outside the field of view, -2000 or so, lies below all of them).
CT_AIR_RANGE_HU = (-1100.0, -900.0)
#: Dense cortical bone (femoral shaft, acetabulum) measures 1000-1900 HU, even in an
#: osteoporotic patient; a shifted or normalised MR seldom reaches it.
CT_DENSE_CORTEX_HU = 1000.0
CT_MIN_FAT_SHARE = 0.005
CT_MIN_AIR_OR_CORTEX_SHARE = 0.0005
#: Most of what is denser than fat in a body CT is soft tissue (muscle 40-60 HU, blood,
#: nerve, organs, unenhanced up to about 150 HU), not bone: even a field of view close
#: around the hip holds more muscle than bone, so the lower quartile of the voxels
#: denser than fat lies in soft tissue (42 HU on the phantom and the benchmark pelvis,
#: 24 HU with 80 HU of noise). An MR whose offset and scale put its suppressed fat in
#: the fat range has its muscle far above (stored as int16 with fat at -65: muscle at
#: 280, lower quartile 228), while its nerve passes for cortex.
CT_SOFT_TISSUE_MAX_HU = 150.0
CT_SOFT_TISSUE_QUANTILE = 25.0
#: Bright streaks from an implant (beam hardening, photon starvation) reach several
#: centimetres and look like immature bone, without a cortex.
STREAK_REACH_MM = 50.0
#: Bone is found by a threshold about 150 HU above muscle (50 HU). A sharp (bone)
#: reconstruction kernel or a low dose gives soft tissue 50-150 HU of voxel noise, and
#: specks of noise then pass the threshold by the thousand (the real example CT at
#: 1.5 mm with 80 HU of noise: 328 islands, and no midline). When the noise exceeds a
#: quarter of that margin, bone is looked for on the CT smoothed just enough to bring it
#: there (Gaussian, 0.5-2 mm); the islands' HU figures are read on the CT as it is.
MUSCLE_HU = 50.0
BONE_MARGIN_NOISE_SIGMAS = 4.0
BONE_SMOOTHING_MM = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
#: The noise is read on a central block of at most 96 voxels a side (the body's centre,
#: where a CT is noisiest), as the spread of soft-tissue voxels about their local mean
#: (over a box reaching 3 mm either way, in whole voxels): voxels in SOFT_TISSUE_HU whose
#: local mean lies in SOFT_TISSUE_MEAN_HU (fat to unenhanced vessels). Differences of
#: neighbours would miss the part of the noise a sharp kernel spreads over a voxel or two.
NOISE_SAMPLE_VOXELS = 96
NOISE_LOCAL_MEAN_MM = 3.0
SOFT_TISSUE_HU = (-250.0, 350.0)
SOFT_TISSUE_MEAN_HU = (-250.0, 200.0)


def _ct_sample(ct_hu: np.ndarray) -> np.ndarray:
    """Every voxel of a small image, one in 64 of a large one: enough to see fat or air.
    Gathered into one block first: counting three levels over a strided view of a full
    CT took 27 ms, over its copy 6 ms (and a block cut from a CT is such a view)."""
    return np.ascontiguousarray(ct_hu[::4, ::4, ::4] if ct_hu.size > 4_000_000 else ct_hu)


def percentile_of_many(values: np.ndarray, percentile: float) -> float:
    """``np.percentile(values, percentile)`` (linear between the two nearest ranks) of
    a large 1-D sample, from one partition and a minimum. NumPy partitions at both
    ranks at once, which on CT values (a few thousand levels, so long runs of ties)
    took eight times as long."""
    position = (values.size - 1) * percentile / 100.0
    below = int(np.floor(position))
    ordered = np.partition(values, below)
    low = float(ordered[below])
    high = float(ordered[below + 1:].min()) if below + 1 < values.size else low
    return low + (high - low) * (position - below)


@dataclass(frozen=True)
class HounsfieldEvidence:
    """Shares of an image's voxels at the levels every body CT in HU shows, and the
    level of its tissue denser than fat."""

    fat: float      # CT_FAT_HU
    air: float      # CT_AIR_RANGE_HU
    cortex: float   # at least CT_DENSE_CORTEX_HU
    #: Lower quartile (CT_SOFT_TISSUE_QUANTILE) of the voxels denser than fat; NaN for none.
    denser_than_fat: float = float("nan")

    @property
    def soft_tissue_in_hu(self) -> bool:
        """Whether the tissue denser than fat is mostly soft tissue in HU (see
        CT_SOFT_TISSUE_MAX_HU); with none at all nothing speaks against it."""
        return not self.denser_than_fat > CT_SOFT_TISSUE_MAX_HU

    @property
    def is_ct(self) -> bool:
        return (self.fat >= CT_MIN_FAT_SHARE and self.soft_tissue_in_hu
                and max(self.air, self.cortex) >= CT_MIN_AIR_OR_CORTEX_SHARE)


def hounsfield_evidence(ct_hu: np.ndarray) -> HounsfieldEvidence:
    """Fat, air and cortical-bone shares of a sample of the image's voxels, and the
    level of its tissue denser than fat. A padding value below air outside the
    scanner's circular field of view (-2000, -3024) counts as none of them, so it
    cannot pass for fat or air."""
    sample = _ct_sample(ct_hu)
    if sample.size == 0:
        return HounsfieldEvidence(0.0, 0.0, 0.0)

    def share(low, high=np.inf):
        return float(np.count_nonzero((sample >= low) & (sample <= high))) / sample.size

    denser = sample[sample > CT_FAT_HU[1]]
    level = percentile_of_many(denser, CT_SOFT_TISSUE_QUANTILE) if denser.size else float("nan")
    return HounsfieldEvidence(share(*CT_FAT_HU), share(*CT_AIR_RANGE_HU), share(CT_DENSE_CORTEX_HU), level)


def looks_like_ct(ct_hu: np.ndarray) -> bool:
    """Whether an image holds fat in Hounsfield units, soft tissue as most of what is
    denser than fat, and air near -1000 HU or cortical bone, as every CT of the hip
    region does."""
    return hounsfield_evidence(ct_hu).is_ct


def _central_block(shape) -> tuple:
    return tuple(slice(max(0, (n - NOISE_SAMPLE_VOXELS) // 2), max(0, (n - NOISE_SAMPLE_VOXELS) // 2)
                       + NOISE_SAMPLE_VOXELS) for n in shape)


def soft_tissue_noise_hu(sample: np.ndarray, geometry: VolumeGeometry, smoothing_mm: float = 0.0) -> float:
    """Standard deviation (HU) of the voxel noise in the soft tissue of ``sample`` (a
    float32 block), once smoothed by ``smoothing_mm``: the spread of its soft-tissue
    voxels about their local mean, read as a median of absolute deviations so that the
    edges between tissues, a minority, do not count. 0 without enough soft tissue."""
    spacing = np.asarray(geometry.spacing_kji)
    box = 2 * np.maximum(1, np.rint(NOISE_LOCAL_MEAN_MM / spacing)).astype(int) + 1
    local_mean = ndimage.uniform_filter(sample, box, mode="nearest")
    smoothed = ndimage.gaussian_filter(sample, smoothing_mm / spacing, mode="nearest") if smoothing_mm else sample
    soft = ((local_mean > SOFT_TISSUE_MEAN_HU[0]) & (local_mean < SOFT_TISSUE_MEAN_HU[1])
            & (sample > SOFT_TISSUE_HU[0]) & (sample < SOFT_TISSUE_HU[1]))
    if np.count_nonzero(soft) < 1000:
        return 0.0
    # Every few voxels suffice for a median; neighbours share their noise anyway.
    residual = (smoothed - local_mean)[soft][::4]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


@dataclass(frozen=True)
class BoneSmoothing:
    """How a noisy CT was smoothed before bone was looked for on it."""
    noise_hu: float
    sigma_mm: float
    noise_after_hu: float


def _allowed_noise_hu(bone_threshold_hu: float) -> float:
    """The soft-tissue noise (HU) under which specks of it stay below the bone threshold:
    a quarter of the threshold's margin above muscle (see BONE_MARGIN_NOISE_SIGMAS)."""
    return (bone_threshold_hu - MUSCLE_HU) / BONE_MARGIN_NOISE_SIGMAS


def smoothed_for_bone(ct_hu: np.ndarray, geometry: VolumeGeometry, bone_threshold_hu: float):
    """``ct_hu`` as it is when its soft-tissue noise is under the allowed noise (see
    :func:`_allowed_noise_hu`), else smoothed just enough; with a
    :class:`BoneSmoothing`, or None when left as is."""
    allowed = _allowed_noise_hu(bone_threshold_hu)
    centre = _central_block(ct_hu.shape)
    sample, sample_geometry = ct_hu[centre].astype(np.float32), geometry.cropped(centre)
    noise = soft_tissue_noise_hu(sample, sample_geometry)
    if allowed <= 0 or noise <= allowed:
        return ct_hu, None
    for sigma_mm in BONE_SMOOTHING_MM:
        after = soft_tissue_noise_hu(sample, sample_geometry, sigma_mm)
        if after <= allowed:
            break
    smoothed = ndimage.gaussian_filter(ct_hu.astype(np.float32), sigma_mm / np.asarray(geometry.spacing_kji),
                                       mode="nearest")
    return smoothed, BoneSmoothing(noise, sigma_mm, after)


def smoothed_ct_warning(smoothing: BoneSmoothing, bone_threshold_hu: float) -> str:
    warning = (f"The CT is noisy (about {smoothing.noise_hu:.0f} HU of voxel noise in soft tissue, as with a sharp bone "
               f"kernel or a low dose): bone was looked for on the CT smoothed by {smoothing.sigma_mm:.2g} mm, so that "
               f"specks of noise do not pass the {bone_threshold_hu:.0f} HU bone threshold; the islands' HU figures are "
               "read on the CT as it is. Islands of a few voxels may be missed, and thin cortices read thicker. A "
               "soft-tissue kernel reconstruction of the same scan, where one exists, gives the most reliable HO.")
    if smoothing.noise_after_hu > _allowed_noise_hu(bone_threshold_hu):
        warning += (f" Even smoothed, the noise (about {smoothing.noise_after_hu:.0f} HU) stays high for that threshold: "
                    "small islands may be noise.")
    return warning


def check_looks_like_ct(ct_hu: np.ndarray) -> None:
    """Refuse images whose values cannot be Hounsfield units of a body CT."""
    evidence = hounsfield_evidence(ct_hu)
    if evidence.is_ct:
        return
    sample = _ct_sample(ct_hu)
    low, high = (float(v) for v in np.percentile(sample, [1, 99])) if sample.size else (0.0, 0.0)
    if evidence.fat < CT_MIN_FAT_SHARE:
        seen = f"no fat ({CT_FAT_HU[0]:.0f} to {CT_FAT_HU[1]:.0f} HU)"
    elif not evidence.soft_tissue_in_hu:
        seen = (f"fat-like values but tissue denser than fat far above soft tissue (three quarters of it above "
                f"{evidence.denser_than_fat:.0f}, where muscle is 40-60 HU), as in an MR image whose values were "
                "shifted and scaled")
    else:
        seen = (f"fat-like values but neither air (near -1000 HU) nor dense cortical bone "
                f"(above {CT_DENSE_CORTEX_HU:.0f} HU), "
                "as in an MR image whose values were shifted or normalised")
    raise InputError(
        f"The image values (1st to 99th percentile {low:.0f} to {high:.0f}) show {seen}: this does not look like a "
        "CT in Hounsfield units (an MR image?). HO segmentation needs a CT; for an MR use the nerve tracing with "
        "modality 'mr'. A CT stored without its rescale intercept (air near 0, soft tissue near 1024, perhaps with "
        "a padding value such as -2000 outside the field of view) must be converted to HU first: subtract the "
        "intercept, usually 1024; one whose values were scaled (a rescale slope other than 1 left out or applied "
        "twice: air then reads near -100 or -10000) must be multiplied back by that slope. Importing the DICOM "
        "series applies both.")


def at_least(values: np.ndarray, threshold: float) -> np.ndarray:
    """``values >= threshold`` without promoting an integer CT to float64 on the way."""
    if values.dtype.kind in "iu":
        info = np.iinfo(values.dtype)
        limit = int(np.ceil(threshold))
        if limit > info.max:
            return np.zeros(values.shape, bool)
        return values >= values.dtype.type(max(limit, info.min))
    return values >= values.dtype.type(threshold)


def extent_at_least(values: np.ndarray, threshold: float, slab_voxels: int = 8_000_000):
    """Bounding slices of the voxels ``>= threshold`` (None if there are none).

    Read slab by slab, so a full CT never needs a full-size mask; the slab's mask
    memory is reused from one slab to the next.
    """
    shape = values.shape
    if values.dtype.kind in "iu" and values.ndim == 3 and values.size:
        # An integer CT: the largest value along a row reaches the threshold where any
        # of its voxels does. Two reductions (about 35 ms of 110 on the benchmark's
        # CT), and no mask at all.
        limit = int(np.ceil(threshold))
        if limit > np.iinfo(values.dtype).max:
            return None
        limit = values.dtype.type(max(limit, np.iinfo(values.dtype).min))
        across_i = values.max(axis=2) >= limit
        across_k = values.max(axis=0) >= limit
        along_k, along_j, along_i = across_i.any(axis=1), across_i.any(axis=0), across_k.any(axis=0)
        if not along_k.any():
            return None
        return tuple(slice(int(np.argmax(a)), int(len(a) - np.argmax(a[::-1]))) for a in (along_k, along_j, along_i))
    step = max(1, slab_voxels // max(shape[1] * shape[2], 1))
    along_k = np.zeros(shape[0], bool)
    along_j = np.zeros(shape[1], bool)
    along_i = np.zeros(shape[2], bool)
    for start in range(0, shape[0], step):
        slab = at_least(values[start:start + step], threshold)
        across_i = slab.any(axis=2)
        along_k[start:start + step] = across_i.any(axis=1)
        along_j |= across_i.any(axis=0)
        along_i |= slab.any(axis=(0, 1))
    if not along_k.any():
        return None
    return tuple(slice(int(np.argmax(a)), int(len(a) - np.argmax(a[::-1]))) for a in (along_k, along_j, along_i))
