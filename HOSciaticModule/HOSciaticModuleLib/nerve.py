"""Sciatic nerve tracing on CT or MRI from a few clicked points.

1. **Seeds** — validated (two or more, inside the volume, not in air or on an MR signal
   void, not all in one spot) and sorted along the nerve.
2. **Appearance** — the nerve's own level is read near the seeds and its surround
   further out; the nerve boundary is the half-way level between them (full width at
   half maximum). On CT the nerve is soft tissue (20-50 HU) in a fat sheath
   (-190..-30 HU); on T2 fat-saturated MR it is a bright tube. Bone (CT, above the
   bone threshold) and HO segments are never nerve. An MR is first divided by its
   smooth coil shading (N4), so one level fits the nerve all along.
3. **Path** — a minimal path between consecutive seeds on a cost that is low in
   nerve-like tissue at the nerve's typical distance from its boundary and high
   elsewhere (skimage's geometric minimal cost path, on a grid of about 1.5 mm so a
   long nerve costs little). Where no nerve-like path exists the trace fails with a
   message; it never falls back to straight lines.
4. **Cross-sections** — every 1 mm, in the plane orthogonal to the centreline, rays
   from the nerve's core find the boundary; leaks into touching muscle are clipped.
   The centreline is moved to the section centroids and smoothed, twice. On MR slices
   cut along the nerve (voxels 2 mm or longer across it) the outline fades at the
   nerve's edges: each section is sized by the nerve's partial volume in its voxels.
5. **Figures and segment** — area, equivalent diameter, min/max caliper width per
   station; the nerve segment is the union of the cross-sections.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .defaults import CT_FAT_HU
from .errors import InputError
from .geometry import VolumeGeometry, arc_length_mm
from .hounsfield import METAL_THRESHOLD_HU, STREAK_REACH_MM, at_least, looks_like_ct
from .memorypages import with_single_threaded_blas
from .progress import ProgressCallback, report

STATION_SPACING_MM = 1.0
#: Margin around the seeds where the nerve may run between them.
SEARCH_MARGIN_MM = 25.0
#: Grid of the minimal-path search: fine enough for a 5-8 mm thick nerve.
PATH_GRID_MM = 1.5
#: A stretch between two seeds is judged on its own (whether its path keeps to
#: nerve-like tissue) over at least this much path beyond the seeds' reach; shorter
#: stretches (seeds clicked close together) only count towards the whole path's share.
JUDGED_STRETCH_MM = 10.0
#: Half the thickness of a normal flattened sciatic nerve (5-8 mm thick).
NERVE_HALF_THICKNESS_MM = 3.0
#: Half the thickness of a markedly swollen nerve; tissue deeper than this is muscle.
MAX_NERVE_HALF_THICKNESS_MM = 8.0
#: Longest boundary ray: the largest swollen sciatic nerve is about 25 mm wide.
MAX_RAY_MM = 15.0
#: Rays are sampled on the trilinearly interpolated image and their crossing of the
#: half-way level interpolated between samples: 0.5 mm steps, finer than the voxels,
#: gave calibres within 0.01 mm of 0.25 mm steps.
RAY_STEP_MM = 0.5
RAY_COUNT = 90
#: Re-centring needs each section's centroid only: a coarser star of rays finds it.
RECENTRING_RAY_COUNT = 30
RECENTRING_RAY_STEP_MM = 0.5
#: Where the nerve abuts muscle without a fat plane rays run on; a ray longer than this
#: factor times the section's median ray is clipped to it, or times the ray of the
#: ellipse fitted to the section's other rays where that is longer: at the gluteal
#: level the sciatic nerve is a flat band (15-20 x 4-6 mm), whose long rays are up to
#: three times its median one (a 16 x 5 mm band read 12 mm wide against the median alone).
RAY_LEAK_FACTOR = 1.8
#: How far the section's core may be from the current centreline point (clicks are
#: often 2-3 mm off centre).
CORE_SEARCH_MM = 5.0
CORE_GRID_MM = 1.25
#: A section whose centroid lies farther than this from the core its rays started from
#: is read again from that centroid.
OFF_CENTRE_CORE_MM = 1.0
#: A section's core is the candidate deepest in nerve-like tissue less this much per mm
#: from the current point: of two equally deep places, the nearer.
CORE_OFFSET_PENALTY = 0.15
#: Seeds are moved onto the nerve in the plane across the seeds' course, read between
#: the seeds this far either side; moved seeds closer together than MIN_SEED_GAP_MM are one.
SEED_COURSE_MM = 15.0
MIN_SEED_GAP_MM = 1.0
#: Half-width of the plane read around a seed: a flat band of a nerve 20 mm wide whose
#: centre lies CORE_SEARCH_MM from the click stays within it.
SEED_PLANE_REACH_MM = CORE_SEARCH_MM + MAX_RAY_MM
#: Smoothing of the centreline (Gaussian along the arc, mm): the sciatic nerve bends
#: gently; shorter wiggles are noise of the path on a voxel grid.
CENTRELINE_SMOOTHING_MM = 3.0
RECENTRING_PASSES = 3
#: Re-centring stops early once no station moves further than this.
RECENTRING_CONVERGED_MM = 0.1
#: Threads measuring cross-sections, and the fewest stations worth a thread.
SECTION_WORKERS = min(4, os.cpu_count() or 1)
MIN_STATIONS_PER_PART = 40
#: On MR the nerve's level near the seeds is this percentile of the values there, less
#: the amount by which voxel noise lifts that percentile of a uniform tissue (its z-score).
NERVE_LEVEL_PERCENTILE = 90.0
NERVE_LEVEL_PERCENTILE_Z = 1.2816
#: The nerve's level is read within this of a click (half a nerve width plus a click
#: 2-3 mm off centre), its surround in this ring (its fat sheath and what lies beyond).
NEAR_SEED_MM = 4.0
SEED_RING_MM = (6.0, 15.0)
#: CT tissue windows used to read levels near the seeds.
CT_SOFT_TISSUE_HU = (-30.0, 150.0)
CT_AIR_HU = -400.0
#: On MR a seed darker than this share of the image's 99th percentile lies on a signal void.
MR_SIGNAL_VOID_SHARE = 0.05
#: The widest sciatic nerve, even swollen, is about 25 x 15 mm (equivalent diameter near
#: 20 mm): an outline wider than that over half the traced length has run into muscle.
MAX_NERVE_DIAMETER_MM = 20.0
#: A normal adult sciatic nerve at the hip is 7-11 mm across (equivalent diameter of a
#: 40-90 mm^2 section): an outline wider than this along most of its length is either a
#: nerve swollen all along (a neuropathy) or bright tissue around it taken for nerve
#: (failed fat suppression on MR: over 80 mm of a trace it read 15.8 mm for 9.2, and no
#: stretch stood out from the rest, just as wide).
WIDE_NERVE_MEDIAN_MM = 13.0
#: An adult sciatic nerve's cross-section at the hip and thigh is 35-80 mm^2 (7-10 mm
#: across), over 20 mm^2 (5 mm) even when flattened by compression: an outline thinner
#: than this over most of the traced length is not the nerve's.
MIN_NERVE_DIAMETER_MM = 5.0
#: An outline wider than this (equivalent diameter) over a stretch of TOO_WIDE_SHARE of
#: the length or more has left the nerve: a quarter above MAX_NERVE_DIAMETER_MM, so a
#: swollen nerve at the top of its range is not taken for one (most of the length wider
#: than MAX_NERVE_DIAMETER_MM is refused).
TOO_WIDE_STRETCH_MM = 25.0
TOO_WIDE_SHARE = 0.05
#: A stretch of at least BULGE_MIN_STATIONS stations wider than BULGE_FACTOR times the
#: nerve's median calibre, and at least BULGE_MIN_EXCESS_MM more, is named for a check:
#: a compressed nerve swells (a pseudo-neuroma), but bright tissue touching the nerve
#: (fluid, a haematoma, an enhanced vessel) widens an outline just as much. A thickening
#: ratio of 1.3, common next to HO, is not named.
BULGE_FACTOR = 1.5
BULGE_MIN_EXCESS_MM = 3.0
BULGE_MIN_STATIONS = 3
#: A named stretch reaches on along the stations next to it that are still this much
#: wider than the median: bright tissue and swelling taper off (the stations at the
#: edges of failed fat suppression read 29-45 % wide, unnamed).
BULGE_EDGE_FACTOR = 1.2
#: Fat (about -100 HU) the CT resolves around the nerve keeps the tissue just outside the
#: outline far below the nerve's level. Where it stays less than halfway down towards
#: fat, the fat plane is thinner than the CT's blur (the nerve abuts muscle) and the
#: half-way boundary is drawn inside the nerve.
CT_FAT_REFERENCE_HU = -100.0
THIN_FAT_PLANE_CONTRAST = 0.5
#: Share of the stations with such a thin fat plane that is worth a warning.
THIN_FAT_PLANE_SHARE = 0.1
#: On a CT smoothed for its noise, no fat plane (or an outline wider than a nerve) along
#: this much of the length means the fat planes were lost in the noise and the trace ran
#: through muscle: on the CT phantom with 85 HU of noise (contrast 1.4 times the noise)
#: it lay 16 mm off the nerve on average, with no fat plane along 68 % of it; on the
#: benchmark CT with 80 HU (1.3 times), 361 mm long for 300, 18 mm wide for 9, with no
#: fat plane along 49 % and wider than a nerve along 8 %.
NOISY_NO_FAT_PLANE_MAX_SHARE = 0.5
#: The short reasons of the station caveats that rule reads.
NO_FAT_PLANE_REASON = "no fat plane"
WIDER_THAN_NERVE_REASON = "wider than a nerve"
COLLAPSED_REASON = "outline collapsed"
THINNER_THAN_NERVE_REASON = "thinner than a nerve"
#: A path between seeds outside nerve-like tissue over more than this share of its
#: length has not followed the nerve: the trace is refused (see the README).
MAX_PATH_OUTSIDE_SHARE = 0.35
#: A voxel longer than this across the nerve (in its cross-section's plane) blurs its
#: outline over more than a third of a 9-12 mm nerve: a coronal or sagittal series of
#: 4-5 mm slices, the nerve running along the slices, reads its calibre a quarter small.
THICK_ACROSS_NERVE_MM = 3.0
#: Share of the traced length with such voxels that is worth a warning.
THICK_ACROSS_NERVE_SHARE = 0.1
ACROSS_NERVE_REMEDY = ("Trace on a series whose slices cross the nerve (axial at the hip, not tilted along it), or a "
                       f"reconstruction, with slices of {THICK_ACROSS_NERVE_MM:.0f} mm or thinner")
#: On MR slices cut along the nerve, each voxel averages the tissue through its slice
#: (linear partial volume): the nerve's share of a voxel is (value - surround) /
#: (nerve - surround), and summed over the section that share gives its area however far
#: the slices blur the outline (linear interpolation between slices keeps the sum). It is
#: summed on a grid of this step, finer than any voxel.
PARTIAL_VOLUME_STEP_MM = 0.25
#: The sections are so read where a voxel is this long or longer across the nerve (a fifth
#: of a 9-12 mm nerve): there the half-way outline alone reads small by more than the
#: partial volume's own error (on a slab-averaged coronal phantom the diameter read 0.3 mm
#: small at 2 mm, 0.5 mm at 2.5 mm and 0.9 mm at 3 mm, against 0.2 mm at 1.5 mm); an axial series'
#: in-plane voxels (0.6-1 mm) stay well below it.
PARTIAL_VOLUME_ACROSS_MM = 2.0
#: Along the fine direction an in-plane voxel and point spread under 1 mm leave the
#: nerve's tips no signal this far past its half-way outline.
PARTIAL_VOLUME_FINE_MARGIN_MM = 2.0
#: Across the slices the nerve's partial volume reaches up to a voxel's length past the
#: half-way outline, and the in-plane point spread and the interpolation this much further.
PARTIAL_VOLUME_EXTRA_REACH_MM = 2.0
#: The surround beside the nerve's tips is read this far past the half-way outline along
#: the fine direction, clear of the tips' own blur (under 1 mm).
PARTIAL_VOLUME_BESIDE_MM = 1.0
#: What shares the nerve's edge voxels is its fat sheath. On thick slices every reading of
#: it is lifted by the muscle the slices mix in beyond a thin sheath (never lowered, noise
#: aside), and the sheath changes over centimetres, not from one station to the next: the
#: surround at a station is the lower quartile of the lower of its two readings within
#: this many stations either side.
PARTIAL_VOLUME_SURROUND_STATIONS = 10
#: Sections are so sized only where the surround's uncertainty (its two readings'
#: difference over the summed reach), in the median over the stretch so read, moves the area by less
#: than this share: beyond, the sum is less certain than the half-way outline's own
#: shortfall (a third at 5 mm, up to a half for a nerve thinner than the slices) that it
#: corrects. On phantoms it is 0.14-0.37 with fat suppressed and 0.74-0.86 with the fat
#: left bright (250-380 against a nerve of 520 and muscle of 160).
PARTIAL_VOLUME_MAX_AMBIGUITY = 0.5
PARTIAL_VOLUME_SURROUND_PERCENTILE = 25.0
#: Seeds closer than this together do not define a stretch of nerve.
MIN_SEED_SPREAD_MM = 5.0
#: MR shading (the receive coils' sensitivity) varies over tens of mm: it is estimated
#: on a grid this coarse, in two fitting levels, and only from tissue brighter than a
#: tenth of the bright end of the histogram (air and suppressed fat say nothing of it).
#: N4 takes out part of the shading per iteration: 30 and 20 left a fourfold shading
#: along 200 mm of nerve at 0.75 and 1.4 of its level (the dim end's outline then read
#: 1-3 mm for 9), 50 and 50 within 8 %; the 8 mm grid keeps the cost as it was.
SHADING_GRID_MM = 8.0
SHADING_ITERATIONS = (50, 50)
#: Threads of the shading fit, the same on every machine: its sums split over as many
#: threads as a machine has cores came out up to 1e-4 apart, so a curve traced on one
#: computer differed in its last digits from the same case traced on another.
SHADING_THREADS = 2
#: A nerve this many times as bright near one seed as near another, once the shading is
#: corrected, lies across a step in the coils' sensitivity.
UNEVEN_NERVE_BRIGHTNESS = 1.5
#: On MR a nerve must be this many times as bright as its surround (above the image's
#: dark floor) to be told from it.
MIN_MR_NERVE_CONTRAST = 1.15
SHADING_TISSUE_FRACTION = 0.1
#: Below this contrast-to-noise ratio (nerve level against its surround, over the
#: voxel noise) noise breaks the outline (a low-dose or obese-patient CT): a noisy
#: voxel at a section's core or along a ray cuts it short (at 45 HU of noise single
#: sections collapsed to 0.3 mm), and blobs of correlated noise open the fat plane
#: between the nerve and the muscle beside it, as dense as the nerve, so that the path
#: runs off into the muscle (at 30 HU of noise correlated over 0.7 mm, on a phantom
#: whose fat lies 130 HU below its nerve). The block is then smoothed by a Gaussian of
#: NOISE_SMOOTHING_MM first, which narrows a 7 x 12 mm nerve's half-way outline by
#: about 0.3 mm in diameter.
MIN_CONTRAST_TO_NOISE = 4.0
NOISE_SMOOTHING_MM = 0.6
#: Below this contrast-to-noise ratio the smoothed outline still reads up to about 1 mm
#: small (see :func:`_smoothed_warning`).
NOISY_CALIBRE_CONTRAST_TO_NOISE = 2.0
#: What lowers the noise of the image around the nerve, by modality.
NOISE_REMEDIES = {"ct": "A smoother (soft-tissue) reconstruction or a higher dose",
                  "mr": "A series with more signal (more averages, a surface coil over the buttock and thigh)"}
#: CT reconstruction kernels and MR zero-filled interpolation correlate the noise of
#: voxels up to about a millimetre apart, so neighbours differ by less than the noise
#: is; voxels this far apart differ by all of it.
NOISE_LAG_MM = 2.0
#: Parallel imaging (SENSE, GRAPPA) makes an MR's noise vary several-fold across the
#: field of view (the g-factor), highest in bands and at the centre: the noise read over
#: the whole block, a median over mostly quiet tissue, then misses the noise where the
#: nerve lies (47 for about 125 in a band of fourfold noise across it: stations read up
#: to a quarter small, unsmoothed, without a word). Once traced, the noise is read again
#: inside the nerve, from voxels NOISE_LAG_MM apart straddling its centreline, their
#: middles within this of each station (well inside a nerve 5-7 mm thick), and the
#: outline is measured on the block smoothed when that noise calls for it.
NERVE_NOISE_REACH_MM = 1.0
#: ... and it counts where it is this many times the block's: in even noise the block's
#: reading runs up to a quarter low (a magnitude image's dark tissue, air and suppressed
#: fat, holds less spread than the noise has), which is no sign of uneven noise.
UNEVEN_NOISE_FACTOR = 1.5
#: A section whose median ray is under this share of its neighbours' (5 stations
#: either side) started from a core outside the nerve.
COLLAPSED_SECTION_FRACTION = 0.3
COLLAPSE_WINDOW_STATIONS = 5
#: A section whose median ray, as finally read, is under this share of its neighbours'
#: (the same window) is not the nerve's: a compression narrows the nerve over 1-3 cm, by
#: a fraction of its width over 5 mm, never to half of it. Its figures carry a caveat
#: (a section read again with rays forced COLLAPSE_MIN_RAY_MM long stays near 0.3).
COLLAPSED_OUTLINE_FRACTION = 0.5
#: A stretch read thinner than any nerve is read again at the nerve's own level there
#: with this many stations either side, so the steps judging a section by its
#: neighbours see nerve on both sides.
OWN_LEVEL_MARGIN_STATIONS = 2 * COLLAPSE_WINDOW_STATIONS
#: Against bone a ray looks this far ahead for the bone's own level: a cortex is 1-4 mm
#: thick, and blurred by 1.5 mm (thick slices) it reaches 95 % of its level 4 mm past
#: the point where the blur first passes the bone threshold.
BONE_PLATEAU_MM = 4.0
#: Soft tissue this close to bone is lifted by the bone's blur (a CT's point spread of
#: 0.6-1 mm leaves under 3 % of a cortex's step 2 mm away).
DENSE_BLUR_MM = 2.0
#: On CT, unenhanced soft tissue stays within this much of the nerve's own level (nerve
#: 20-50 HU, muscle and blood 40-60, a fresh haematoma up to 90), while contrast-filled
#: veins reach 120-200 HU and arteries more: tissue this much denser than the nerve is
#: not nerve, and the outline ends where the nerve meets it, as it does against bone.
CT_DENSER_THAN_NERVE_HU = 80.0
#: ... but never within this many deviations of the voxel noise above the nerve's level,
#: or noise inside the nerve would stop its rays.
CT_DENSE_NOISE_DEVIATIONS = 4.0
#: A nerve swells over centimetres too (a pseudo-neuroma is 1-3 cm long): a section
#: whose area is over SWOLLEN_SECTION_FACTOR times its neighbours' (the same window)
#: ran out of the nerve with a few rays, along a bright rim such as the blurred edge
#: of an HO shell. Its rays are held to SWOLLEN_RAY_FACTOR times the same ray of the
#: sections around it (2 stations either side).
SWOLLEN_SECTION_FACTOR = 1.6
SWOLLEN_RAY_FACTOR = 1.2
SWOLLEN_NEIGHBOURS = 2
#: Such a section is measured again with rays counted inside for this first stretch:
#: even a compressed sciatic nerve is over 2 mm thick.
COLLAPSE_MIN_RAY_MM = 1.0
#: On MR a section's signal is read from its core out to half-way to its outline: the
#: outer half averages the nerve with the fat, muscle or HO around it (partial volume),
#: which would read a nerve pressed thin by HO as darker than it is.
SIGNAL_SAMPLE_FRACTIONS = (0.0, 0.25, 0.5)


@dataclass
class StationCaveat:
    """Why the figures of some stations are less reliable: a short reason for the
    stations table, the stations it covers, and the warning naming their stretch."""
    reason: str
    stations: np.ndarray
    warning: str


@dataclass
class NerveTrace:
    side: str
    modality: str
    points_ras: np.ndarray
    s_mm: np.ndarray
    area_mm2: np.ndarray
    diameter_mm: np.ndarray
    min_diameter_mm: np.ndarray
    max_diameter_mm: np.ndarray
    boundary_ras: list
    mask_block: np.ndarray             # the nerve's voxels inside ``mask_slices`` of the volume
    mask_slices: tuple
    volume_shape: tuple
    warnings: list = field(default_factory=list)
    #: Per station, the reasons (joined by "; ") of the caveats that cover it ("" for none).
    station_caveats: list = field(default_factory=list)
    #: MR only: per station, the nerve's signal (see :func:`section_signal`); None on CT.
    signal: np.ndarray | None = None

    @property
    def length_mm(self) -> float:
        return float(self.s_mm[-1]) if len(self.s_mm) else 0.0

    @property
    def mask(self) -> np.ndarray:
        """The nerve's voxels on the whole volume grid."""
        mask = np.zeros(self.volume_shape, bool)
        mask[self.mask_slices] = self.mask_block
        return mask


@dataclass
class _Appearance:
    nerve_level: float
    surround_level: float
    #: CT only: at or above this it is bone.
    bone_level: float | None
    #: CT only: at or above this, tissue is denser than any nerve (bone, contrast in a vessel).
    dense_level: float | None
    #: The voxel noise of the block the levels were read on (see :func:`voxel_noise`).
    noise: float

    @property
    def boundary_level(self) -> float:
        return 0.5 * (self.nerve_level + self.surround_level)

    @property
    def on_mr(self) -> bool:
        """Whether the levels were read on an MR (which has no bone level)."""
        return self.bone_level is None


# ---------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------
def sort_seeds_along_nerve(seeds_ras: np.ndarray) -> np.ndarray:
    """Order clicked points along the nerve: by their position along the main axis of
    the point cloud (the sciatic nerve runs without doubling back)."""
    seeds = np.asarray(seeds_ras, float)
    centred = seeds - seeds.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    order = np.argsort(centred @ axis, kind="stable")
    ordered = seeds[order]
    # Deterministic direction: from superior to inferior end as Slicer users read a curve.
    if ordered[0, 2] < ordered[-1, 2]:
        ordered = ordered[::-1]
    return ordered


def check_seeds_inside(seeds: np.ndarray, geometry: VolumeGeometry) -> None:
    """Refuse seed points outside the volume, naming the first."""
    inside = geometry.contains_ras(seeds)
    if not inside.all():
        n = int(np.flatnonzero(~inside)[0])
        where = ", ".join(f"{v:.1f}" if abs(v) < 1e5 else f"{v:.3g}" for v in seeds[n])
        raise InputError(f"Seed point {n + 1} at RAS ({where}) lies outside the volume. Move it onto the nerve in "
                         "this image (check that the points were placed on this volume and not on another series).")


def validate_seeds(seeds_ras, image, geometry: VolumeGeometry, modality: str) -> np.ndarray:
    seeds = np.asarray(seeds_ras, float).reshape(-1, 3)
    if len(seeds) < 2:
        raise InputError(f"Nerve tracing needs at least two seed points along the nerve; got {len(seeds)}. Click a "
                         "point near each end of the stretch to analyse (more points help through difficult parts).")
    if not np.all(np.isfinite(seeds)):
        raise InputError("A seed point has undefined coordinates. Re-place the points.")
    check_seeds_inside(seeds, geometry)
    spread = float(np.max(np.linalg.norm(seeds[:, None] - seeds[None], axis=-1)))
    if spread < MIN_SEED_SPREAD_MM:
        raise InputError(f"The seed points coincide (all within {spread:.1f} mm of each other). Place them along "
                         "the nerve, at least one near each end of the stretch to analyse.")
    values = ndimage.map_coordinates(image, geometry.ras_to_kji_points(seeds).T, order=1, mode="nearest")
    if modality == "ct":
        darkest_seed_value = CT_AIR_HU
    else:
        sample = image[::3, ::3, ::3]
        floor = mr_zero_level(sample)
        darkest_seed_value = floor + MR_SIGNAL_VOID_SHARE * (float(np.percentile(sample, 99)) - floor)
    dark = values < darkest_seed_value
    if dark.any():
        n = int(np.flatnonzero(dark)[0])
        # On MR air, cortex, tendon and flowing blood are all dark: name what it may be.
        where = (f"in air (value {values[n]:.0f} HU)" if modality == "ct" else
                 f"on a signal void (value {values[n]:.0f}, under {MR_SIGNAL_VOID_SHARE:.0%} of the image's brightest "
                 "tissue): air, cortical bone, a tendon or flowing blood")
        raise InputError(f"Seed point {n + 1} lies {where}. Move it onto the sciatic nerve.")
    return sort_seeds_along_nerve(seeds)


# ---------------------------------------------------------------------------------------
# Appearance
# ---------------------------------------------------------------------------------------
def _values_near_seeds(image, geometry, seeds_ras, inner_mm, ring_mm):
    """Image values within ``inner_mm`` of any seed, and in the ring ``ring_mm`` around
    the seeds, each seed read in its own small block (seeds span the whole nerve)."""
    near, ring = [], []
    for seed in seeds_ras:
        block = geometry.bounding_slices_of_ras_box(seed[None], ring_mm[1])
        distance = np.linalg.norm(geometry.voxel_ras_grid(block) - seed.astype(np.float32), axis=-1)
        values = image[block]
        near.append(values[distance <= inner_mm])
        ring.append(values[(distance > ring_mm[0]) & (distance <= ring_mm[1])])
    return np.concatenate(near).astype(np.float32), np.concatenate(ring).astype(np.float32)


def _nerve_levels_at_seeds(image, geometry, seeds_ras) -> np.ndarray:
    """Per seed, the NERVE_LEVEL_PERCENTILE of the values within NEAR_SEED_MM of it
    (before any allowance for noise)."""
    return np.array([float(np.percentile(_values_near_seeds(image, geometry, seed[None], NEAR_SEED_MM,
                                                            SEED_RING_MM)[0], NERVE_LEVEL_PERCENTILE))
                     for seed in np.asarray(seeds_ras, float).reshape(-1, 3)])


def ct_given_as_mr(image, geometry: VolumeGeometry, seeds_ras, bone_threshold_hu: float) -> bool:
    """Whether an image to be traced as MR is a CT in Hounsfield units: it shows a CT's
    levels (see :func:`looks_like_ct`) and the clicked nerve reads as soft tissue, below
    the bone threshold. On CT a nerve is 20-50 HU; on a T2 fat-saturated MR it is the
    brightest tissue near the clicks, so an MR whose offset and scale put its fat at fat's
    HU and its nerve at cortex's (int16 with fat at -65 and the nerve at 1360) shows its
    nerve as dense as bone, which no nerve is. Seeds outside the volume say nothing."""
    if not looks_like_ct(image):
        return False
    seeds = np.asarray(seeds_ras, float).reshape(-1, 3)
    seeds = seeds[np.all(np.isfinite(seeds), axis=1)]
    seeds = seeds[geometry.contains_ras(seeds)] if len(seeds) else seeds
    if len(seeds) == 0:
        return True
    near, _ = _values_near_seeds(image, geometry, seeds, NEAR_SEED_MM, SEED_RING_MM)
    return near.size == 0 or float(np.median(near)) < bone_threshold_hu


def estimate_appearance(image, geometry, seeds, modality, bone_threshold_hu) -> _Appearance:
    """Nerve and surround levels read from the image near the seeds: within 4 mm of a
    click (half a nerve width plus a click 2-3 mm off centre) and 6-15 mm out (the
    perineural fat sheath and what lies beyond it)."""
    near, ring = _values_near_seeds(image, geometry, seeds, NEAR_SEED_MM, SEED_RING_MM)
    noise = voxel_noise(image, geometry)
    if modality == "ct":
        soft = near[(near >= CT_SOFT_TISSUE_HU[0]) & (near <= CT_SOFT_TISSUE_HU[1])]
        fat = ring[(ring >= CT_FAT_HU[0]) & (ring <= CT_FAT_HU[1])]
        nerve_level = float(np.median(soft)) if soft.size >= 5 else 35.0
        fat_level = float(np.median(fat)) if fat.size >= 5 else -100.0
        denser = max(CT_DENSER_THAN_NERVE_HU, CT_DENSE_NOISE_DEVIATIONS * noise)
        return _Appearance(nerve_level, fat_level, bone_threshold_hu, min(bone_threshold_hu, nerve_level + denser),
                           noise)
    # A high percentile stays on the nerve when a click is off centre, but noise lifts it
    # by about NERVE_LEVEL_PERCENTILE_Z noise deviations: that much is taken off, or a
    # noisy series sets the boundary too high and draws the outline inside the nerve.
    nerve_level = _mr_nerve_level(near, noise)
    surround = float(np.median(ring))
    if not _brighter_than_surround(image, nerve_level, surround):
        raise InputError("Near the seed points the nerve is not brighter than its surroundings. On MR, trace on a "
                         "T2-weighted fat-saturated (or STIR) series where the sciatic nerve is bright, or place the "
                         "points on the nerve itself.")
    return _Appearance(nerve_level, surround, None, None, noise)


def _mr_nerve_level(near: np.ndarray, noise: float) -> float:
    """An MR nerve's level from the values near it: their NERVE_LEVEL_PERCENTILE less the
    NERVE_LEVEL_PERCENTILE_Z noise deviations by which noise lifts that percentile."""
    return float(np.percentile(near, NERVE_LEVEL_PERCENTILE)) - NERVE_LEVEL_PERCENTILE_Z * noise


def _brighter_than_surround(image, nerve_level: float, surround: float) -> bool:
    """Whether an MR nerve at ``nerve_level`` stands out from tissue at ``surround``:
    MIN_MR_NERVE_CONTRAST times as bright, above the image's dark floor (air, suppressed
    fat, cortex; a series stored with an offset of +2300 and more read as a nerve no
    brighter than its surroundings, and one stored below 0 passed whatever its contrast)."""
    floor = min(float(np.percentile(image[::2, ::2, ::2], 1)), surround)
    return nerve_level - floor > (surround - floor) * MIN_MR_NERVE_CONTRAST


def mr_zero_level(image: np.ndarray) -> float:
    """The level an MR's brightness counts from: 0, or the image's dark floor (its 1st
    percentile) when that lies below 0. A magnitude image has no value below 0, but a
    series stored with a negative offset (an intercept of -1000, say) or rescaled to
    zero mean does: its nerve can read below 0, and shares of its brightest tissue,
    and N4's logarithm of it, only mean something from its floor."""
    return min(float(np.percentile(image, 1)), 0.0)


def spacing_without_roundoff(spacing) -> tuple:
    """Voxel spacing to 0.1 um: a header stored in single precision (NIfTI) and one in
    decimal (DICOM) then give the same figures to the steps that turn on tiny
    differences (a shading fit, a choice among equally good paths)."""
    return tuple(round(float(s), 4) for s in spacing)


def flatten_mr_shading(block: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """The MR block divided by its smooth shading, estimated with N4 (SimpleITK) on a
    coarse copy. Surface coils make a nerve brighter at one end of a long stretch than
    at the other; after this one boundary level fits it all along. The shading is far
    smoother than a nerve, so the nerve's own brightness and width are kept."""
    import SimpleITK as sitk

    # N4's fit turns on a header's round-off (the same series as DICOM or as NIfTI, its
    # spacing 1e-7 mm apart, gave shadings 10 % apart).
    spacing_ijk = spacing_without_roundoff(geometry.spacing_kji)[::-1]
    factors = [max(1, int(round(SHADING_GRID_MM / s))) for s in spacing_ijk]
    zero = mr_zero_level(block[::2, ::2, ::2])
    image = sitk.GetImageFromArray(np.ascontiguousarray(block - zero, np.float32))
    image.SetSpacing(spacing_ijk)
    coarse = sitk.Shrink(image, factors)
    values = sitk.GetArrayViewFromImage(coarse)
    bright = float(np.percentile(values, 99))
    tissue = values > SHADING_TISSUE_FRACTION * bright
    # Too few coarse voxels to fit a shading to: the block is small enough to need none.
    if bright <= 0 or min(values.shape) < 4 or np.count_nonzero(tissue) < 500:
        return block
    mask = sitk.GetImageFromArray(tissue.astype(np.uint8))
    mask.CopyInformation(coarse)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(SHADING_ITERATIONS))
    # The fit's inner filters take ITK's default thread count, not the filter's own.
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(SHADING_THREADS)
    try:
        corrector.Execute(coarse, mask)
        log_shading = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    except RuntimeError:
        # The correction only helps: an image N4 cannot fit is traced as it is.
        return block
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if not np.all(np.isfinite(log_shading)):
        return block
    return ((block - zero) / np.exp(log_shading) + zero).astype(np.float32)


def voxel_noise(block: np.ndarray, geometry: VolumeGeometry) -> float:
    """Standard deviation of the voxel noise: from the differences of voxels
    NOISE_LAG_MM apart along the finest axis (robust: a median, edges are a minority),
    read on every fourth layer along each of the other axes."""
    fine, lag = _noise_axis_and_lag(geometry)
    index = [slice(None, None, 4)] * 3
    index[fine] = slice(None)
    layers = block[tuple(index)]
    differences = (np.take(layers, np.arange(lag, layers.shape[fine]), axis=fine)
                   - np.take(layers, np.arange(layers.shape[fine] - lag), axis=fine)).ravel()
    return _noise_of_differences(differences)


def _noise_axis_and_lag(geometry: VolumeGeometry) -> tuple:
    """The axis the voxel noise is read along, the finest (of two equally fine, the
    first, whatever the header's round-off), and the lag in voxels, NOISE_LAG_MM."""
    fine = int(np.argmin(spacing_without_roundoff(geometry.spacing_kji)))
    return fine, max(1, int(round(NOISE_LAG_MM / geometry.spacing_kji[fine])))


def _noise_of_differences(differences: np.ndarray) -> float:
    """Standard deviation of the noise of single voxels from the differences of pairs of
    them (robust: a median of absolute deviations, so edges, a minority, do not count);
    0 without any."""
    if differences.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(differences - np.median(differences))) / np.sqrt(2.0))


def _smoothed_for_noise(block: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """The block smoothed by a Gaussian of NOISE_SMOOTHING_MM."""
    return ndimage.gaussian_filter(block, NOISE_SMOOTHING_MM / np.asarray(geometry.spacing_kji), mode="nearest")


def smooth_if_noisy(block: np.ndarray, geometry: VolumeGeometry, appearance: _Appearance):
    """The block smoothed by NOISE_SMOOTHING_MM when the nerve's contrast is below
    MIN_CONTRAST_TO_NOISE times the noise; with that ratio (None when left as is).
    ``appearance`` must have been read on ``block``: its noise is used."""
    noise = appearance.noise
    contrast = abs(appearance.nerve_level - appearance.surround_level)
    if noise <= 0 or contrast >= MIN_CONTRAST_TO_NOISE * noise:
        return block, None
    return _smoothed_for_noise(block, geometry), contrast / noise


def noise_inside_nerve(block: np.ndarray, geometry: VolumeGeometry, points: np.ndarray) -> float:
    """Standard deviation of the voxel noise inside the nerve whose centreline
    ``points`` (RAS) are: from the differences of voxels NOISE_LAG_MM apart along the
    finest axis, each pair straddling a voxel within NERVE_NOISE_REACH_MM of a station
    (a robust median, as :func:`voxel_noise`). Voxels are read as they are, not
    interpolated, which would average part of the noise away. 0 without pairs."""
    fine, lag = _noise_axis_and_lag(geometry)
    spacing = np.asarray(spacing_without_roundoff(geometry.spacing_kji))
    reach = np.maximum(0, np.floor(NERVE_NOISE_REACH_MM / spacing + 1e-6)).astype(int)
    offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), axis=-1).reshape(-1, 3)
    step = np.zeros(3, int)
    step[fine] = lag
    middles = (np.rint(geometry.ras_to_kji_points(points)).astype(int)[:, None, :] + offsets[None]).reshape(-1, 3)
    first = middles - step // 2
    second = first + step
    shape = np.asarray(block.shape)
    inside = np.all((first >= 0) & (first < shape) & (second >= 0) & (second < shape), axis=1)
    differences = (block[tuple(second[inside].T)].astype(np.float64) - block[tuple(first[inside].T)])
    return _noise_of_differences(differences)


def smoothed_where_the_nerve_is_noisy(block, geometry, seeds, points, appearance, modality, bone_threshold_hu):
    """On MR, the block smoothed as :func:`smooth_if_noisy` does when the noise inside
    the traced nerve (see NERVE_NOISE_REACH_MM), well above the block's (see
    UNEVEN_NOISE_FACTOR), leaves its contrast under MIN_CONTRAST_TO_NOISE times the
    noise: with the appearance read again on it and that ratio (None, and all as given,
    otherwise)."""
    if modality != "mr":
        return block, appearance, None
    noise = noise_inside_nerve(block, geometry, points)
    contrast = abs(appearance.nerve_level - appearance.surround_level)
    if noise <= UNEVEN_NOISE_FACTOR * appearance.noise or contrast >= MIN_CONTRAST_TO_NOISE * noise:
        return block, appearance, None
    smoothed = _smoothed_for_noise(block, geometry)
    return smoothed, estimate_appearance(smoothed, geometry, seeds, modality, bone_threshold_hu), contrast / noise


def nerve_like_tissue(image_block, appearance: _Appearance, excluded_block) -> np.ndarray:
    tissue = image_block > appearance.boundary_level
    # Only bone bars the path, not the denser-than-nerve cut of the sections: a bright
    # streak from metal lifts the nerve itself over that cut along a stretch, and the
    # path would leave it there for the muscle beside it.
    if appearance.bone_level is not None:
        tissue &= image_block < appearance.bone_level
    if excluded_block is not None:
        tissue &= ~excluded_block
    return tissue


# ---------------------------------------------------------------------------------------
# Minimal path
# ---------------------------------------------------------------------------------------
def path_cost(tissue: np.ndarray, spacing_kji) -> np.ndarray:
    """Cost per voxel: 1 at the nerve's core depth, more off it, much more outside tissue."""
    import edt

    depth = edt.edt(np.ascontiguousarray(tissue, np.uint8), anisotropy=spacing_kji, black_border=False,
                    parallel=0).astype(np.float32)
    too_shallow = np.clip(1.0 - depth / NERVE_HALF_THICKNESS_MM, 0.0, 1.0)
    too_deep = np.clip((depth - MAX_NERVE_HALF_THICKNESS_MM) / MAX_NERVE_HALF_THICKNESS_MM, 0.0, 4.0)
    cost = 1.0 + 4.0 * too_shallow + 6.0 * too_deep
    cost[~tissue] = 60.0
    return cost


def _pool(array: np.ndarray, factors) -> np.ndarray:
    shape = tuple(n // f for n, f in zip(array.shape, factors))
    trimmed = array[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    return trimmed.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2]).mean(axis=(1, 3, 5))


def minimal_path(cost: np.ndarray, spacing_kji, start_kji, end_kji) -> np.ndarray:
    from skimage.graph import MCP_Geometric

    mcp = MCP_Geometric(cost, sampling=spacing_kji, fully_connected=True)
    start = tuple(int(v) for v in start_kji)
    end = tuple(int(v) for v in end_kji)
    mcp.find_costs([start], [end])
    return np.asarray(mcp.traceback(end), float)


def trace_path(image, geometry, seeds, appearance, excluded) -> tuple[np.ndarray, float]:
    """Minimal path through all seeds (RAS points) and its fraction outside nerve-like
    tissue, judged beyond CORE_SEARCH_MM of the seeds: a click beside the nerve (in
    its fat sheath) is reached through fat, which says nothing of whether the nerve
    was followed. That fraction is the largest of a stretch between two seeds (one
    with at least JUDGED_STRETCH_MM so judged) and of the whole path."""
    points = []
    counted = []
    for a, b in zip(seeds[:-1], seeds[1:]):
        block = geometry.bounding_slices_of_ras_box(np.vstack([a, b]), SEARCH_MARGIN_MM)
        block_geometry = geometry.cropped(block)
        tissue = nerve_like_tissue(image[block], appearance, excluded[block] if excluded is not None else None)
        # Many paths along a nerve cost about the same: a header's round-off (a spacing of
        # 3.6 or 3.6000001 mm) must not choose among them.
        spacing_kji = spacing_without_roundoff(block_geometry.spacing_kji)
        cost = path_cost(tissue, spacing_kji)
        factors = [max(1, int(round(PATH_GRID_MM / s))) for s in spacing_kji]
        coarse = _pool(cost, factors)
        coarse_spacing = tuple(s * f for s, f in zip(spacing_kji, factors))
        # The coarse cell holding the voxel the point lies in (a point on a voxel's centre
        # stays in its cell whatever the header's round-off).
        to_coarse = lambda p: np.clip(np.rint(block_geometry.ras_to_kji_points(p)[0]) // factors, 0,
                                      np.array(coarse.shape) - 1)
        path = minimal_path(coarse, coarse_spacing, to_coarse(a), to_coarse(b))
        fine_kji = path * factors + (np.asarray(factors) - 1) / 2.0
        segment = block_geometry.kji_to_ras_points(fine_kji)
        segment[0], segment[-1] = a, b
        on_tissue = ndimage.map_coordinates(tissue.astype(np.float32), fine_kji.T, order=1, mode="nearest")
        from_seeds = np.minimum(np.linalg.norm(segment - a, axis=1), np.linalg.norm(segment - b, axis=1))
        beyond_seeds = from_seeds > CORE_SEARCH_MM
        steps_mm = np.linalg.norm(np.diff(segment, axis=0), axis=1)
        step_mm = np.r_[steps_mm, 0.0] / 2 + np.r_[0.0, steps_mm] / 2
        off_nerve = (on_tissue < 0.5) & beyond_seeds
        counted.append((float(np.sum(step_mm * off_nerve)), float(np.sum(step_mm * beyond_seeds))))
        points.append(segment if not points else segment[1:])
    off_mm, judged_mm = np.array(counted).T
    judged = judged_mm >= JUDGED_STRETCH_MM
    fractions = [off_mm.sum() / judged_mm.sum()] if judged_mm.sum() > 0 else [0.0]
    fractions += list(off_mm[judged] / judged_mm[judged])
    return np.vstack(points), float(np.max(fractions))


# ---------------------------------------------------------------------------------------
# Centreline geometry
# ---------------------------------------------------------------------------------------
def resample_polyline(points: np.ndarray, step_mm: float) -> np.ndarray:
    segment = np.linalg.norm(np.diff(points, axis=0), axis=1)
    keep = np.r_[True, segment > 1e-9]
    points = points[keep]
    arc = arc_length_mm(points)
    if arc[-1] <= 0:
        return points[:1]
    count = max(int(np.floor(arc[-1] / step_mm)), 1)
    targets = np.linspace(0.0, count * step_mm, count + 1)
    targets = np.append(targets, arc[-1]) if arc[-1] - targets[-1] > 0.25 * step_mm else targets
    return np.stack([np.interp(targets, arc, points[:, axis]) for axis in range(3)], axis=1)


def _extend_linearly(points: np.ndarray, fit_count: int, pad_count: int) -> np.ndarray:
    """The polyline with ``pad_count`` points added at each end along the straight line
    fitted to its last ``fit_count`` points there."""
    def extension(end: np.ndarray) -> np.ndarray:
        index = np.arange(len(end), dtype=float)
        slope, intercept = np.polyfit(index, end, 1)
        beyond = -np.arange(pad_count, 0, -1, dtype=float)
        return beyond[:, None] * slope + intercept

    fit_count = min(fit_count, len(points))
    head = extension(points[:fit_count])
    tail = extension(points[::-1][:fit_count])[::-1]
    return np.vstack([head, points, tail])


def smooth_polyline(points: np.ndarray, sigma_mm: float, step_mm: float, keep_ends: bool = True) -> np.ndarray:
    """Gaussian smoothing along the arc, optionally keeping the end points in place.
    The curve is first continued straight beyond its ends so smoothing does not pull
    the ends inwards (a plain edge-padded filter shortens a line by about 0.4 sigma at
    each end, and repeated re-centring would compound that)."""
    if len(points) < 3:
        return points
    sigma = sigma_mm / step_mm
    pad = int(np.ceil(4 * sigma))
    extended = _extend_linearly(points, int(np.ceil(2 * sigma)) + 1, pad)
    smoothed = ndimage.gaussian_filter1d(extended, sigma, axis=0, mode="nearest")[pad:-pad]
    if not keep_ends:
        return smoothed
    # Pull the ends back so the curve still starts and stops where the nerve does.
    weight = np.clip(np.arange(len(points)) / (2 * sigma), 0, 1)
    weight = np.minimum(weight, weight[::-1])[:, None]
    return weight * smoothed + (1 - weight) * points


def frames(points: np.ndarray):
    """Unit tangent and two in-plane axes at every point (rotation-minimising)."""
    tangents = np.gradient(points, axis=0)
    tangents /= np.maximum(np.linalg.norm(tangents, axis=1, keepdims=True), 1e-9)
    reference = np.array([1.0, 0.0, 0.0]) if abs(tangents[0, 0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.empty_like(points)
    u[0] = np.cross(tangents[0], reference)
    u[0] /= np.linalg.norm(u[0])
    for n in range(1, len(points)):
        candidate = u[n - 1] - tangents[n] * (u[n - 1] @ tangents[n])
        norm = np.linalg.norm(candidate)
        u[n] = candidate / norm if norm > 1e-9 else np.cross(tangents[n], reference) / np.linalg.norm(np.cross(tangents[n], reference))
    v = np.cross(tangents, u)
    return tangents, u, v


# ---------------------------------------------------------------------------------------
# Cross-sections
# ---------------------------------------------------------------------------------------
@dataclass
class _Sections:
    centroids: np.ndarray
    radii: np.ndarray          # (N, RAY_COUNT) boundary distance from the core, mm
    cores: np.ndarray          # (N, 3) ray origin (RAS)
    area: np.ndarray
    min_width: np.ndarray      # None where not measured (see cross_sections)
    max_width: np.ndarray
    outside_levels: np.ndarray  # (N,) the tissue just outside the boundary (median, HU or signal)
    #: (N,) sections still collapsed once read again (see COLLAPSED_OUTLINE_FRACTION).
    collapsed: np.ndarray = None


def _ray_directions(u, v, count):
    angles = np.linspace(0.0, 2 * np.pi, count, endpoint=False)
    return angles, np.cos(angles)[None, :, None] * u[:, None, :] + np.sin(angles)[None, :, None] * v[:, None, :]


def cross_sections(image, geometry, points, appearance, excluded, ray_count: int = RAY_COUNT,
                   ray_step_mm: float = RAY_STEP_MM, with_widths: bool = True) -> tuple:
    """Nerve boundary in the plane orthogonal to the centreline at every point, from
    ``ray_count`` rays sampled every ``ray_step_mm``. Without ``with_widths`` the
    sections' calliper widths are not measured (None): re-centring needs none."""
    tangents, u, v = frames(points)
    angles, directions = _ray_directions(u, v, ray_count)
    sampler = _IndexSampler(image, excluded, geometry)

    def measure(stations):
        # Core: the most central nerve-like point of the section near the current point.
        cores = _most_central(*_section_depth(sampler, points[stations], u[stations], v[stations], appearance))
        return (cores,) + _ray_radii(sampler, cores, directions[stations], appearance, ray_step_mm)

    # Sections are independent and their sampling releases the GIL: long nerves are
    # measured in parts on all cores.
    parts = np.array_split(np.arange(len(points)), max(1, min(SECTION_WORKERS, len(points) // MIN_STATIONS_PER_PART)))
    if len(parts) > 1:
        with ThreadPoolExecutor(len(parts), thread_name_prefix="hosciatic-sections") as executor:
            measured = list(executor.map(measure, parts))
    else:
        measured = [measure(parts[0])]
    cores = np.concatenate([m[0] for m in measured])
    radii = np.concatenate([m[1] for m in measured])
    outside_levels = np.concatenate([m[2] for m in measured])
    _read_collapsed_again(sampler, points, directions, appearance, ray_step_mm, cores, radii, outside_levels)
    # A core far from its section's centre (in a flat band 4 mm thick, equally deep all
    # across, it may sit near one tip) sends the far tip's rays past the clip: those
    # sections are read again from their centroid.
    # Each section's rays are clipped on their own: only the sections read again need it again.
    clipped = _clip_leaks(radii, angles)
    centroid_uv = np.stack(star_polygon_area_centroid(clipped, angles)[1:], axis=1)
    off_centre = np.hypot(centroid_uv[:, 0], centroid_uv[:, 1]) > OFF_CENTRE_CORE_MM
    if off_centre.any():
        centres = cores[off_centre] + centroid_uv[off_centre, :1] * u[off_centre] + centroid_uv[off_centre, 1:] * v[off_centre]
        again, again_outside = _ray_radii(sampler, centres, directions[off_centre], appearance, ray_step_mm)
        cores[off_centre], outside_levels[off_centre] = centres, again_outside
        clipped[off_centre] = _clip_leaks(again, angles)
    # A centroid, too, may lie in a dip of noise inside the nerve: read from there, all
    # rays stopped at once (one station 0.7 mm across between stations of 6.6-8.5 mm,
    # where the noise was four times the image's median).
    rows = _read_collapsed_again(sampler, points, directions, appearance, ray_step_mm, cores, clipped, outside_levels)
    clipped[rows] = _clip_leaks(clipped[rows], angles)
    collapsed = _collapsed_sections(clipped, COLLAPSED_OUTLINE_FRACTION)
    radii = _hold_swollen_sections(clipped)
    boundary = cores[:, None, :] + radii[:, :, None] * directions
    area, centroid_uv, min_width, max_width = _polygon_figures(radii, angles, with_widths)
    centroids = cores + centroid_uv[:, :1] * u + centroid_uv[:, 1:] * v
    return _Sections(centroids, radii, cores, area, min_width, max_width, outside_levels, collapsed), boundary


def _read_collapsed_again(sampler, points, directions, appearance, ray_step_mm, cores, radii,
                          outside_levels) -> np.ndarray:
    """Sections a few tenths of a mm wide between normal ones (see
    :func:`_collapsed_sections`) started in a noisy voxel (a dip inside the nerve, or a
    speck beside it): measured again from the centreline point, their rays leaving no
    sooner than a nerve's narrowest half-width, and kept where that reads wider.
    ``cores``, ``radii`` and ``outside_levels`` are updated in place; returns the rows
    replaced."""
    collapsed = _collapsed_sections(radii)
    if not collapsed.any():
        return np.zeros(0, int)
    retry, retry_outside = _ray_radii(sampler, points[collapsed], directions[collapsed], appearance, ray_step_mm,
                                      COLLAPSE_MIN_RAY_MM)
    wider = np.median(retry, axis=1) > np.median(radii[collapsed], axis=1)
    rows = np.flatnonzero(collapsed)[wider]
    cores[rows], radii[rows], outside_levels[rows] = points[rows], retry[wider], retry_outside[wider]
    return rows


class _IndexSampler:
    """Samples image and exclusion along rays, working in array-index space so the
    (many) sample points never go through the RAS-to-index transform one by one."""

    def __init__(self, image, excluded, geometry):
        self.image, self.geometry = image, geometry
        self.excluded = None if excluded is None else np.asarray(excluded, bool)
        self.linear = geometry.ras_to_ijk[:3, :3][::-1]  # rows give k, j, i

    def rays(self, origins_ras, directions_ras, steps):
        """Values (and exclusion, True outside the volume) at origins + steps * directions;
        shapes (..., S)."""
        origins = self.geometry.ras_to_kji_points(origins_ras.reshape(-1, 3)).reshape(origins_ras.shape)
        directions = (directions_ras @ self.linear.T).astype(np.float32)
        kji = origins.astype(np.float32)[..., None, :] + steps.astype(np.float32)[:, None] * directions[..., None, :]
        flat = kji.reshape(-1, 3).T
        values = ndimage.map_coordinates(self.image, flat, order=1, mode="nearest").reshape(kji.shape[:-1])
        masks = None
        if self.excluded is not None:
            masks = self._nearest_mask(flat).reshape(kji.shape[:-1])
        return values, masks

    def at_index(self, kji):
        """Values (and exclusion) at continuous indices ``kji`` of shape (..., 3)."""
        flat = kji.reshape(-1, 3).T
        values = ndimage.map_coordinates(self.image, flat, order=1, mode="nearest").reshape(kji.shape[:-1])
        masks = None if self.excluded is None else self._nearest_mask(flat).reshape(kji.shape[:-1])
        return values, masks

    def _nearest_mask(self, flat_kji):
        """Exclusion at the nearest voxel, by direct indexing (sampling a mask needs no
        interpolation); points off the grid count as excluded."""
        index = np.rint(flat_kji).astype(np.int32)
        shape = self.excluded.shape
        try:
            # Checks the bounds in the same pass; points off the grid are rare.
            return self.excluded.ravel()[np.ravel_multi_index(index, shape)]
        except ValueError:
            found = self.excluded.ravel()[np.ravel_multi_index(index, shape, mode="clip")]
            found |= np.any((index < 0) | (index >= np.asarray(shape)[:, None]), axis=0)
            return found


def _inside(values, masks, appearance, level=None):
    inside = values > (appearance.boundary_level if level is None else level)
    if appearance.dense_level is not None:
        inside &= values < appearance.dense_level
    if masks is not None:
        inside &= ~masks
    return inside


def _section_depth(sampler, points, u, v, appearance, reach_mm=CORE_SEARCH_MM + MAX_NERVE_HALF_THICKNESS_MM,
                   enclosed_only=False):
    """Candidate cores within CORE_SEARCH_MM of each point, on a CORE_GRID_MM grid in
    the section plane, and their in-plane depth inside nerve-like tissue (mm, capped
    at MAX_NERVE_HALF_THICKNESS_MM).

    The plane is sampled once per station on a grid reaching ``reach_mm`` (beyond the
    candidates by the largest depth of interest); depth is its 2D Euclidean distance
    transform. With ``enclosed_only``, tissue that reaches the edge of that grid (the
    muscle beside a nerve, on CT) has no depth: only a tube enclosed in the plane is,
    and of several such tubes only the one nearest the point.
    Returns (candidates (N, C, 3) RAS, depth (N, C), offset of each candidate (C,) mm).
    """
    import edt

    reach = int(np.ceil(reach_mm / CORE_GRID_MM))
    offsets = np.arange(-reach, reach + 1) * CORE_GRID_MM
    du, dv = (grid.ravel() for grid in np.meshgrid(offsets, offsets, indexing="ij"))
    # The plane is laid out in index space directly: the RAS-to-index map is linear.
    to_index = sampler.linear
    # Summed in place (the same sums: the point plus the first step, then the second).
    plane_kji = du.astype(np.float32)[None, :, None] * (u @ to_index.T).astype(np.float32)[:, None, :]
    plane_kji += sampler.geometry.ras_to_kji_points(points).astype(np.float32)[:, None, :]
    plane_kji += dv.astype(np.float32)[None, :, None] * (v @ to_index.T).astype(np.float32)[:, None, :]
    values, masks = sampler.at_index(plane_kji)
    inside = _inside(values, masks, appearance)
    inside = inside.reshape(len(points), len(offsets), len(offsets))
    if enclosed_only:
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[1] = ndimage.generate_binary_structure(2, 1)
        pieces, _ = ndimage.label(inside, structure=in_plane)
        edge = np.unique(np.concatenate([pieces[:, [0, -1], :].ravel(), pieces[:, :, [0, -1]].ravel()]))
        inside &= ~np.isin(pieces, edge[edge > 0])
        # Of several enclosed pieces (the nerve, a vessel beside it) the one nearest the
        # point is meant: a deeper one farther off is not.
        distance = np.hypot(*np.meshgrid(offsets, offsets, indexing="ij"))
        for n in range(len(points)):
            if inside[n].any():
                nearest = pieces[n][np.unravel_index(np.argmin(np.where(inside[n], distance, np.inf)), distance.shape)]
                inside[n] &= pieces[n] == nearest
    # A huge spacing between stations keeps the transform within each plane.
    depth = edt.edt(np.ascontiguousarray(inside, np.uint8), anisotropy=(1e6, CORE_GRID_MM, CORE_GRID_MM),
                    black_border=True).reshape(len(points), -1)
    offset_mm = np.hypot(du, dv)
    candidate = offset_mm <= CORE_SEARCH_MM + 1e-9
    # In RAS only the candidates are needed (an eighth of the plane).
    du, dv = du[candidate], dv[candidate]
    candidates = points[:, None, :] + du[None, :, None] * u[:, None, :] + dv[None, :, None] * v[:, None, :]
    return (candidates, np.minimum(depth[:, candidate], MAX_NERVE_HALF_THICKNESS_MM + 1.0), offset_mm[candidate])


def _most_central(candidates, depth, offset_mm) -> np.ndarray:
    """Per section, the candidate deepest in nerve-like tissue, nearer ones preferred."""
    best = np.argmax(depth - CORE_OFFSET_PENALTY * offset_mm[None, :], axis=1)
    return candidates[np.arange(len(candidates)), best]


def seeds_on_the_nerve(image, geometry: VolumeGeometry, seeds: np.ndarray, appearance, excluded) -> np.ndarray:
    """Each seed moved to the nerve's core within CORE_SEARCH_MM, found as every
    cross-section's core is, in the plane across the seeds' course there (read over
    SEED_COURSE_MM either side, so that close clicks off centre do not tilt it), among
    nerve-like tissue enclosed in that plane (a nerve in its fat sheath, or in HO; not
    the muscle beside it, which is nerve-like on CT too). A click in the nerve's fat
    sheath, at its edge or in the bone around it then starts and ends the path on the
    nerve, instead of forcing a detour: between clicks 4.5 mm apart and 4 mm off centre
    the path ran through the muscle beside the nerve, 10 mm off it. A seed on
    nerve-like tissue already stays where it was clicked (the sections centre it), as
    does one with no enclosed tissue within reach (a nerve touching muscle without a fat
    plane); seeds that meet are merged."""
    arc = arc_length_mm(seeds)
    before = [seeds[arc <= a - SEED_COURSE_MM][-1] if np.any(arc <= a - SEED_COURSE_MM) else seeds[0] for a in arc]
    after = [seeds[arc >= a + SEED_COURSE_MM][0] if np.any(arc >= a + SEED_COURSE_MM) else seeds[-1] for a in arc]
    course = np.array(after) - np.array(before)
    course /= np.linalg.norm(course, axis=1, keepdims=True)
    not_along = np.where(np.abs(course[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    u = np.cross(course, not_along)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(course, u)
    sampler = _IndexSampler(image, excluded, geometry)
    candidates, depth, offset_mm = _section_depth(sampler, seeds, u, v, appearance, SEED_PLANE_REACH_MM,
                                                  enclosed_only=True)
    on_tissue = _on_nerve_like_tissue(sampler, geometry, seeds, appearance)
    reached = (depth.max(axis=1) > 0) & ~on_tissue
    moved = np.where(reached[:, None], _most_central(candidates, depth, offset_mm), seeds)
    moved = sort_seeds_along_nerve(moved)
    apart = np.r_[True, np.linalg.norm(np.diff(moved, axis=0), axis=1) >= MIN_SEED_GAP_MM]
    apart[-1] = True
    return moved[apart]


def _on_nerve_like_tissue(sampler, geometry: VolumeGeometry, points: np.ndarray, appearance) -> np.ndarray:
    """Whether each RAS point lies on nerve-like tissue (see :func:`_inside`)."""
    values, masks = sampler.at_index(geometry.ras_to_kji_points(points))
    return _inside(values, masks, appearance)


def seeds_off_bright_tissue_warnings(image, geometry: VolumeGeometry, seeds: np.ndarray, appearance,
                                     excluded) -> list[str]:
    """On MR the tracing follows tissue brighter than its surroundings. When not one seed
    lies on such tissue, the clicks marked a structure no brighter than what lies around
    it: the nerve on a T1-weighted series, or on one whose fat is not suppressed (the fat
    beside the nerve is then followed, 5 mm off it on a phantom, without another word),
    or every click beside the nerve."""
    if np.any(_on_nerve_like_tissue(_IndexSampler(image, excluded, geometry), geometry, seeds, appearance)):
        return []
    return [f"None of the {len(seeds)} seed points lies on tissue as bright as the traced nerve: the trace follows "
            f"the brightest tissue near them (up to {CORE_SEARCH_MM:.0f} mm away). If the nerve is not brighter "
            "than its surroundings in this series (T1-weighted, or fat not suppressed, when the fat beside it is "
            "followed instead), trace on a T2-weighted fat-suppressed or STIR series. If the points were placed "
            "beside the nerve, check that the trace follows it."]


def _ray_radii(sampler, cores, directions, appearance, step_mm=RAY_STEP_MM, inside_mm=0.0):
    """Boundary distance along each ray, at the half-way level between this section's
    own nerve plateau and the tissue just outside it (a local full width at half
    maximum); and per section the level of that outside tissue. The first
    ``inside_mm`` of every ray count as nerve whatever their value."""
    steps = np.arange(0.0, MAX_RAY_MM + 1e-6, step_mm)
    origins = np.ascontiguousarray(np.broadcast_to(cores[:, None, :], directions.shape))
    values, masks = sampler.rays(origins, directions, steps)
    first = _crossings(values, masks, appearance, np.full((len(cores), 1, 1), appearance.boundary_level), step_mm,
                       inside_mm)
    # Read once: read again from the outline its level drew, a nerve 1.25 times as bright
    # as muscle measured 0.16 mm small instead of 0.3, but past a step in the coils'
    # brightness along the nerve a third of the stations read 30-50 % small.
    levels, outside = _local_levels(values, masks, appearance, first, steps)
    return _crossings(values, masks, appearance, levels[:, None, None], step_mm, inside_mm), outside


def _local_levels(values, masks, appearance, radii, steps):
    """Per section: half-way between the median inside the nerve and just outside it;
    and that outside median (NaN where too little was sampled). Tissue within
    DENSE_BLUR_MM before bone (or an HO segment) on a ray is not read as outside: the
    bone's blur lifts it (in an HO tunnel with 2 mm of fat around the nerve, it read
    as dense as the nerve, the outline was drawn 1.5 mm small and the fat plane called
    missing)."""
    depth = steps[None, None, :]
    r = radii[:, :, None]
    inner = depth <= 0.6 * r
    outer = (depth >= r + 1.0) & (depth <= r + 2.5)
    dense = np.zeros(values.shape, bool) if masks is None else masks.copy()
    if appearance.dense_level is not None:
        dense |= values >= appearance.dense_level
    dense_at_mm = np.where(dense.any(axis=-1), steps[np.argmax(dense, axis=-1)], np.inf)
    outer &= depth < dense_at_mm[..., None] - DENSE_BLUR_MM
    levels = np.full(len(values), appearance.boundary_level)
    outside = np.full(len(values), np.nan)
    # A section touching muscle on most sides must not lift its boundary above the
    # nerve itself, nor drop it below the surround read 6-15 mm out. On MR that ring is
    # mostly muscle, and the suppressed fat just outside the nerve is darker: held at
    # the muscle's level, a nerve 1.25 times as bright as muscle was drawn 1 mm small,
    # silently. So on MR a section that shows its nerve (standing out from the tissue
    # just outside by half the nerve's contrast with the surround, at least) keeps its
    # own level; one that does not (a dark artefact across the nerve) keeps the bound.
    highest = max(appearance.surround_level, appearance.nerve_level)
    lowest = min(appearance.surround_level, appearance.nerve_level)
    shown = 0.5 * abs(appearance.nerve_level - appearance.surround_level)
    inside, inside_count = _masked_medians(values, inner)
    outside_median, outside_count = _masked_medians(values, outer)
    read = (inside_count >= 10) & (outside_count >= 10)
    outside[read] = outside_median[read]
    local = 0.5 * (inside.astype(float) + outside)
    own_level = appearance.on_mr & (inside - outside >= shown)
    levels[read] = np.where(own_level, np.minimum(local, highest), np.clip(local, lowest, highest))[read]
    return levels, outside


def _masked_medians(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per section (first axis), the median of its ``values`` where ``mask`` holds, as
    :func:`numpy.median` gives it for those values (the middle one, or the mean of the
    two middle ones in the values' type), and how many there are (the median is
    meaningless where none are). One sort of all sections instead of a median per
    section: a loop over the stations cost a tenth of the tracing."""
    rows = len(values)
    count = np.count_nonzero(mask.reshape(rows, -1), axis=1)
    ordered = np.sort(np.where(mask, values, np.inf).reshape(rows, -1), axis=1)
    at = np.arange(rows)
    low = ordered[at, np.maximum(count - 1, 0) // 2]
    high = ordered[at, count // 2]
    median = np.where(count % 2 == 1, low, (low + high) / 2)
    # A NaN among the values sorts last, past the infinities: its median is NaN.
    median[np.isnan(ordered[:, -1])] = np.nan
    return median, count


def _crossings(values, masks, appearance, level, step_mm=RAY_STEP_MM, inside_mm=0.0):
    steps_count = values.shape[-1]
    inside = _inside(values, masks, appearance, level)
    inside[:, :, :1 + int(round(inside_mm / step_mm))] = True
    first_out = np.where(inside.all(axis=-1), steps_count - 1, np.argmin(inside, axis=-1))
    rows = np.arange(values.shape[0])[:, None]
    cols = np.arange(values.shape[1])[None, :]
    before = values[rows, cols, first_out - 1]
    after = values[rows, cols, first_out]
    level = level[:, :, 0]
    # Sub-sample position of the half-way crossing; a stop at an HO mask lies half a step out.
    crossing = np.where(
        (after <= level) & (before > level), (before - level) / np.maximum(before - after, 1e-6), 0.5)
    radii = (first_out - 1 + np.clip(crossing, 0.0, 1.0)) * step_mm
    if appearance.dense_level is not None:
        radii = _edge_against_denser_tissue(values, masks, appearance, first_out, radii, step_mm)
    return radii


def _edge_against_denser_tissue(values, masks, appearance, first_out, radii, step_mm):
    """Rays stopped by tissue denser than any nerve (bone, or contrast in a vessel) end
    where the nerve meets it: half-way between the nerve's level and that tissue's
    plateau just ahead, as an HO segment's edge is half-way between its bone and the
    soft tissue. Against dense cortex that point lies beyond where the blur first
    passes the cut, against a vessel of 150 HU before it."""
    steps_count = values.shape[-1]
    rows = np.arange(values.shape[0])[:, None]
    cols = np.arange(values.shape[1])[None, :]
    at_stop = values[rows, cols, first_out]
    stopped = at_stop >= appearance.dense_level
    if masks is not None:
        stopped &= ~masks[rows, cols, first_out]
    if not stopped.any():
        return radii
    ahead = first_out[..., None] + np.arange(int(np.ceil(BONE_PLATEAU_MM / step_mm)) + 1)
    plateau = np.take_along_axis(values, np.minimum(ahead, steps_count - 1), axis=-1).max(axis=-1)
    edge_level = 0.5 * (appearance.nerve_level + plateau)
    steps = np.arange(steps_count)
    reached = (values >= edge_level[..., None]) & (steps >= first_out[..., None])
    if masks is not None:
        reached |= masks & (steps >= first_out[..., None])
    reached |= steps == steps_count - 1
    edge_ahead = np.argmax(reached, axis=-1)
    below = (values < edge_level[..., None]) & (steps < first_out[..., None])
    edge_behind = steps_count - np.argmax(below[..., ::-1], axis=-1)  # just after the last step below
    behind = at_stop >= edge_level
    stopped &= ~behind | below.any(axis=-1)
    edge = np.clip(np.where(behind, edge_behind, edge_ahead), 1, steps_count - 1)
    before = values[rows, cols, edge - 1]
    after = values[rows, cols, edge]
    by_value = (after >= edge_level) & (before < edge_level)
    crossing = np.where(by_value, (edge_level - before) / np.maximum(after - before, 1e-6), 0.5)
    return np.where(stopped, (edge - 1 + np.clip(crossing, 0.0, 1.0)) * step_mm, radii)


def _neighbourhood_median(per_station: np.ndarray) -> np.ndarray:
    """Each station's value's median over COLLAPSE_WINDOW_STATIONS either side."""
    return ndimage.median_filter(per_station, size=2 * COLLAPSE_WINDOW_STATIONS + 1, mode="nearest")


def _collapsed_sections(radii: np.ndarray, fraction: float = COLLAPSED_SECTION_FRACTION) -> np.ndarray:
    """Sections whose median ray is under ``fraction`` of the median of their
    neighbours' (within COLLAPSE_WINDOW_STATIONS either side): a nerve narrows over
    centimetres, not from one millimetre to the next."""
    typical = np.median(radii, axis=1)
    if len(typical) < 3:
        return np.zeros(len(typical), bool)
    around = _neighbourhood_median(typical)
    return typical < fraction * around


def _near_path(centroids: np.ndarray, path_tree) -> np.ndarray:
    """Section centroids held within CORE_SEARCH_MM of the minimal path (whose points
    ``path_tree`` holds): where no fat plane parts the nerve from muscle, sections spread
    into the muscle and their centroids, followed pass after pass, drifted the
    centreline off the nerve (11 mm on a thin nerve)."""
    distance, nearest = path_tree.query(centroids)
    anchor = path_tree.data[nearest]
    too_far = distance > CORE_SEARCH_MM
    held = centroids.copy()
    held[too_far] = anchor[too_far] + (centroids[too_far] - anchor[too_far]) * (
        CORE_SEARCH_MM / distance[too_far])[:, None]
    return held


def _hold_swollen_sections(radii: np.ndarray) -> np.ndarray:
    """Rays of sections far larger than their neighbours (see SWOLLEN_SECTION_FACTOR)
    held to the same rays of the sections around them; other sections unchanged."""
    # With rays at even angles, a section's area is proportional to its mean squared ray.
    size = np.mean(radii ** 2, axis=1)
    if len(size) < 2 * SWOLLEN_NEIGHBOURS + 1:
        return radii
    around = _neighbourhood_median(size)
    swollen = np.flatnonzero(size > SWOLLEN_SECTION_FACTOR * around)
    held = radii.copy()
    for n in swollen:
        neighbours = [m for m in range(n - SWOLLEN_NEIGHBOURS, n + SWOLLEN_NEIGHBOURS + 1)
                      if 0 <= m < len(radii) and m != n and m not in swollen]
        if neighbours:
            held[n] = np.minimum(radii[n], SWOLLEN_RAY_FACTOR * np.median(radii[neighbours], axis=0))
    return held


def section_ellipse_radii(radii: np.ndarray, angles: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """Per section (row), the ray lengths at ``angles`` of the ellipse centred on the
    rays' origin and fitted to the rays marked in ``fitted`` (least squares on 1/r^2,
    which is linear in the ellipse's three coefficients, each ray weighted by r^4 so
    that its relative error counts: unweighted, the short rays' half-step sampling
    error swamped the long axis of a flat band); NaN where no ellipse fits."""
    cos, sin = np.cos(angles), np.sin(angles)
    design = np.stack([cos * cos, 2.0 * cos * sin, sin * sin], axis=1)
    weights = np.where(fitted & (radii > 0), radii, 0.0) ** 4
    inverse_square = np.where(radii > 0, 1.0 / np.maximum(radii, 1e-6) ** 2, 0.0)
    normal = np.einsum("nr,ri,rj->nij", weights, design, design)
    right = np.einsum("nr,ri,nr->ni", weights, design, inverse_square)
    solvable = (np.count_nonzero(weights, axis=1) >= 6) & (np.abs(np.linalg.det(normal)) > 1e-12)
    coefficients = np.zeros((len(radii), 3))
    if solvable.any():
        coefficients[solvable] = np.linalg.solve(normal[solvable], right[solvable][..., None])[..., 0]
    along = coefficients @ design.T
    # Every direction of an ellipse has a positive 1/r^2; otherwise the rays fit none.
    ellipse = solvable[:, None] & np.all(along > 0, axis=1, keepdims=True)
    return np.where(ellipse, 1.0 / np.sqrt(np.where(ellipse, along, 1.0)), np.nan)


def _clip_leaks(radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    median = np.median(radii, axis=1, keepdims=True)
    ellipse = section_ellipse_radii(radii, angles, radii <= RAY_LEAK_FACTOR * median)
    clipped = np.minimum(radii, RAY_LEAK_FACTOR * np.fmax(median, ellipse))
    # A second, local look: a ray far longer than its neighbours' median ran into muscle,
    # unless the fitted ellipse reaches as far (the tips of a flat band are as narrow
    # as its rays' median over 36 degrees is short: they were clipped, by more on the
    # side farther from an off-centre core, which held the centreline off the centre).
    padded = np.concatenate([clipped[:, -4:], clipped, clipped[:, :4]], axis=1)
    local = ndimage.median_filter(padded, size=(1, 9))[:, 4:-4]
    return np.minimum(clipped, 1.4 * np.fmax(local, ellipse))


def star_polygon_area_centroid(radii, angles):
    """Area and in-plane centroid (x, y) of star-shaped outlines given as ray lengths
    (rows) at common angles, by the shoelace formula."""
    x = radii * np.cos(angles)[None, :]
    y = radii * np.sin(angles)[None, :]
    xn, yn = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    cross = x * yn - xn * y
    area = 0.5 * cross.sum(axis=1)
    safe = np.where(np.abs(area) > 1e-9, area, 1e-9)
    cx = ((x + xn) * cross).sum(axis=1) / (6 * safe)
    cy = ((y + yn) * cross).sum(axis=1) / (6 * safe)
    return np.abs(area), cx, cy


#: Sections whose calliper widths are measured at once: their projections (sections x
#: rays x 90 directions) then stay in the processor's cache, which took the widths of a
#: 300 mm nerve from 23 to 9 ms.
WIDTH_SECTIONS_PER_CHUNK = 8


def _polygon_figures(radii, angles, with_widths: bool = True):
    """Area, in-plane centroid and, ``with_widths``, the smallest and largest calliper
    widths (over 90 directions) of each section; the widths are None without."""
    area, cx, cy = star_polygon_area_centroid(radii, angles)
    if not with_widths:
        return area, np.stack([cx, cy], axis=1), None, None
    x = radii * np.cos(angles)[None, :]
    y = radii * np.sin(angles)[None, :]
    directions = np.linspace(0.0, np.pi, 90, endpoint=False)
    cos, sin = np.cos(directions), np.sin(directions)
    widths = np.empty((len(radii), len(directions)))
    for start in range(0, len(radii), WIDTH_SECTIONS_PER_CHUNK):
        chunk = slice(start, start + WIDTH_SECTIONS_PER_CHUNK)
        projections = x[chunk, :, None] * cos
        projections += y[chunk, :, None] * sin
        widths[chunk] = projections.max(axis=1) - projections.min(axis=1)
    return area, np.stack([cx, cy], axis=1), widths.min(axis=1), widths.max(axis=1)


# ---------------------------------------------------------------------------------------
# Nerve segment
# ---------------------------------------------------------------------------------------
def section_signal(image: np.ndarray, geometry: VolumeGeometry, cores: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Per station, the median of ``image`` (interpolated) over the inner half of the
    cross-section: along each ray from the section's core (``cores``, RAS) towards its
    outline (``boundary``: (stations, rays, 3) RAS), at SIGNAL_SAMPLE_FRACTIONS of the way."""
    cores = np.asarray(cores, float)
    reach = np.asarray(boundary, float) - cores[:, None, :]
    fractions = np.asarray(SIGNAL_SAMPLE_FRACTIONS)
    points = cores[:, None, None, :] + fractions[None, None, :, None] * reach[:, :, None, :]
    kji = geometry.ras_to_kji_points(points.reshape(-1, 3))
    values = ndimage.map_coordinates(image, kji.T, order=1, mode="nearest")
    return np.median(values.reshape(len(cores), -1), axis=1)


def radii_about_centreline(points: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """Boundary radii at regular angles about each centreline point (the sections were
    measured from their cores, which may sit a little off the smoothed centreline)."""
    _, u, v = frames(points)
    offset = boundary - points[:, None, :]
    bu = np.einsum("nij,nj->ni", offset, u)
    bv = np.einsum("nij,nj->ni", offset, v)
    angle = np.mod(np.arctan2(bv, bu), 2 * np.pi)
    radius = np.hypot(bu, bv)
    regular = np.linspace(0.0, 2 * np.pi, RAY_COUNT, endpoint=False)
    result = np.empty((len(points), RAY_COUNT))
    for n in range(len(points)):
        order = np.argsort(angle[n])
        a, r = angle[n][order], radius[n][order]
        result[n] = np.interp(regular, np.r_[a[-1] - 2 * np.pi, a, a[0] + 2 * np.pi], np.r_[r[-1], r, r[0]])
    return result


def nerve_block_on_grid(trace: NerveTrace, geometry: VolumeGeometry) -> tuple[np.ndarray, tuple]:
    """The traced nerve's voxels on another grid (the CT's, for a nerve traced on an MR
    of other voxels) as a block and its slices of that grid: its cross-sections
    voxelised there, rather than its mask resampled."""
    points = trace.points_ras
    radii = radii_about_centreline(points, np.asarray(trace.boundary_ras))
    block = geometry.bounding_slices_of_ras_box(points, float(np.max(radii)) + 1.0)
    if any(s.stop <= s.start for s in block):
        return np.zeros(tuple(max(s.stop - s.start, 0) for s in block), bool), block
    return voxelise_sections(geometry.cropped(block), points, radii), block


def voxelise_sections(geometry: VolumeGeometry, points, radii) -> np.ndarray:
    """Voxels inside the star-shaped cross-sections swept along the centreline.

    Each voxel belongs to the section of its nearest centreline point. Only voxels
    within reach of the centreline (a distance transform from it) are looked at, so
    a long or oblique nerve does not cost its whole bounding block.
    """
    import edt

    mask = np.zeros(geometry.shape_kji, bool)
    tangents, u, v = frames(points)
    reach = float(np.max(radii)) + 1.0
    block = geometry.bounding_slices_of_ras_box(points, reach)
    if any(s.stop <= s.start for s in block):
        return mask
    block_geometry = geometry.cropped(block)
    # Sub-stations every 0.25 mm so every voxel finds the section it belongs to.
    dense = resample_polyline(points, 0.25)
    station_of_dense = np.clip(np.round(arc_length_mm(dense) / STATION_SPACING_MM).astype(int), 0, len(points) - 1)
    shape = tuple(s.stop - s.start for s in block)
    line_kji = np.clip(np.rint(block_geometry.ras_to_kji_points(dense)).astype(int), 0, np.array(shape) - 1)
    # Rounding moves the line by up to half a voxel diagonal: widen the reach by that.
    slack = 0.5 * float(np.linalg.norm(block_geometry.spacing_kji))
    station_reach = radii.max(axis=1) + 1.0
    # Most sections are small; the few wide ones (a swelling, a leak) get their own
    # wider tube instead of widening the whole nerve's.
    typical = float(np.percentile(station_reach, 90))
    near_line = np.zeros(int(np.prod(shape)), bool)
    for stations, tube in ((np.ones(len(points), bool), typical), (station_reach > typical, reach)):
        if not stations.any():
            continue
        off_line = np.ones(shape, np.uint8)
        off_line[tuple(line_kji[stations[station_of_dense]].T)] = 0
        depth = edt.edt(off_line, anisotropy=block_geometry.spacing_kji, black_border=False, parallel=0)
        near_line |= depth.ravel() <= tube + slack
    candidates = np.flatnonzero(near_line)
    grid = block_geometry.kji_to_ras_points(np.column_stack(np.unravel_index(candidates, shape)))
    distance, nearest = cKDTree(dense).query(grid, distance_upper_bound=reach, workers=-1)
    near = np.flatnonzero(np.isfinite(distance))
    nearest = nearest[near]
    station = station_of_dense[nearest]
    offset = grid[near] - dense[nearest]
    along = np.einsum("ij,ij->i", offset, tangents[station])
    uu = np.einsum("ij,ij->i", offset, u[station])
    vv = np.einsum("ij,ij->i", offset, v[station])
    angle = np.mod(np.arctan2(vv, uu), 2 * np.pi) / (2 * np.pi) * RAY_COUNT
    lower = np.floor(angle).astype(int) % RAY_COUNT
    upper = (lower + 1) % RAY_COUNT
    fraction = angle - np.floor(angle)
    boundary = (1 - fraction) * radii[station, lower] + fraction * radii[station, upper]
    is_end = (nearest == 0) | (nearest == len(dense) - 1)
    inside = (np.hypot(uu, vv) <= boundary) & (~is_end | (np.abs(along) <= 0.5 * STATION_SPACING_MM))
    block_mask = np.zeros(int(np.prod(shape)), bool)
    block_mask[candidates[near[inside]]] = True
    mask[block] = block_mask.reshape(shape)
    return mask


def equivalent_diameter_mm(area_mm2):
    """Diameter (mm) of the circle of the same area as each cross-section."""
    return np.sqrt(4.0 * np.asarray(area_mm2, float) / np.pi)


def stretch_along(flagged: np.ndarray, s_mm: np.ndarray, length_name: str = "the traced length") -> str:
    """How much of a nerve's length (``length_name``), and where, the ``flagged``
    stations cover, and in how many pieces when more than one (else two short pieces
    far apart read as one long stretch): the opening of a warning about them."""
    flagged = np.asarray(flagged, bool)
    runs = int(np.count_nonzero(np.diff(flagged.astype(np.int8)) == 1) + flagged[0])
    first, last = s_mm[flagged].min(), s_mm[flagged].max()
    pieces = f", in {runs} stretches" if runs > 1 else ""
    return f"Over {np.mean(flagged):.0%} of {length_name} ({first:.0f}-{last:.0f} mm along it{pieces})"


def longest_voxel_edge_across_nerve(geometry: VolumeGeometry, points: np.ndarray) -> tuple:
    """At each centreline point, the longest edge of a voxel as seen in the nerve's
    cross-section (the voxel's edges projected onto the plane across the nerve): its
    length (mm) and its direction in that plane (unit RAS vectors)."""
    tangents = frames(points)[0]
    edges = geometry.ijk_to_ras[:3, :3].T  # one voxel edge (i, j, k) per row, mm
    along = tangents @ edges.T              # (N, 3): each edge's part along the nerve
    across = edges[None, :, :] - along[:, :, None] * tangents[:, None, :]
    lengths = np.linalg.norm(across, axis=-1)
    rows = np.arange(len(points))
    longest = np.argmax(lengths, axis=1)
    length = lengths[rows, longest]
    return length, across[rows, longest] / np.maximum(length, 1e-9)[:, None]


# ---------------------------------------------------------------------------------------
# Calibre on slices cut along the nerve
# ---------------------------------------------------------------------------------------
@dataclass
class _PartialVolumeReading:
    """Per station of slices cut along the nerve, what its section's partial volume is
    read from: the sum of the values over the section's reach (value x mm^2), that
    reach's area (mm^2), the surround read across the slices and beside the nerve's
    tips, and whether the reach meets an HO segment."""
    value_sum: np.ndarray
    reach_area: np.ndarray
    surround_across: np.ndarray
    surround_beside: np.ndarray
    touches_excluded: np.ndarray


def read_partial_volume(sampler: _IndexSampler, centroids, boundary, fine, thick, across_mm) -> _PartialVolumeReading:
    """For each section (centroid, outline points ``boundary``, in-plane unit vectors
    ``fine`` and ``thick``, the latter along the voxel's long edge of ``across_mm``): the
    section plane sampled over the outline widened by PARTIAL_VOLUME_FINE_MARGIN_MM
    along the fine direction and by the voxel's length plus PARTIAL_VOLUME_EXTRA_REACH_MM
    along the thick one. The reach across the slices ends on either side where the
    section's mean profile across them bottoms out: beyond lies other tissue, not the
    nerve's blur."""
    count = len(centroids)
    reading = _PartialVolumeReading(np.zeros(count), np.zeros(count), np.full(count, np.nan),
                                    np.full(count, np.nan), np.zeros(count, bool))
    step = PARTIAL_VOLUME_STEP_MM
    for n in range(count):
        offset = boundary[n] - centroids[n]
        x, y = offset @ fine[n], offset @ thick[n]
        reach = across_mm[n] + PARTIAL_VOLUME_EXTRA_REACH_MM
        xs = np.arange(x.min() - PARTIAL_VOLUME_FINE_MARGIN_MM, x.max() + PARTIAL_VOLUME_FINE_MARGIN_MM + 1e-6, step)
        ys = np.arange(y.min() - reach, y.max() + reach + 1e-6, step)
        grid = centroids[n] + xs[:, None, None] * fine[n] + ys[None, :, None] * thick[n]
        kji = sampler.geometry.ras_to_kji_points(grid.reshape(-1, 3)).reshape(grid.shape)
        values, masks = sampler.at_index(kji.astype(np.float32))
        profile = values.mean(axis=0)
        low, high = int(np.searchsorted(ys, y.min())), int(np.searchsorted(ys, y.max()))
        first = int(np.argmin(profile[:low + 1]))
        last = high + int(np.argmin(profile[high:]))
        reading.surround_across[n] = 0.5 * (profile[first] + profile[last])
        beside = (np.abs(xs - np.clip(xs, x.min(), x.max())) >= PARTIAL_VOLUME_BESIDE_MM)
        if beside.any():
            reading.surround_beside[n] = float(np.median(values[beside, int(np.argmin(np.abs(ys)))]))
        reading.value_sum[n] = float(values[:, first:last + 1].sum()) * step * step
        reading.reach_area[n] = values[:, first:last + 1].size * step * step
        reading.touches_excluded[n] = masks is not None and bool(masks[:, first:last + 1].any())
    return reading


def percentile_along_nerve(values: np.ndarray, percentile: float, min_count: int = 1) -> np.ndarray:
    """Per station, the ``percentile`` of ``values`` within PARTIAL_VOLUME_SURROUND_STATIONS
    either side (NaN values left out; NaN where fewer than ``min_count`` remain)."""
    window = PARTIAL_VOLUME_SURROUND_STATIONS
    result = np.full(len(values), np.nan)
    for n in range(len(values)):
        near = values[max(0, n - window): n + window + 1]
        near = near[np.isfinite(near)]
        if near.size >= max(min_count, 1):
            result[n] = np.percentile(near, percentile)
    return result


def surround_along_nerve(readings: np.ndarray) -> np.ndarray:
    """Per station, the lower quartile (PARTIAL_VOLUME_SURROUND_PERCENTILE) of the
    surround readings within PARTIAL_VOLUME_SURROUND_STATIONS either side (NaN readings
    left out; NaN where there are none)."""
    return percentile_along_nerve(readings, PARTIAL_VOLUME_SURROUND_PERCENTILE)


def sections_at_own_level(image, geometry: VolumeGeometry, points, appearance: _Appearance, excluded,
                          sections: _Sections, boundary: np.ndarray, s_mm: np.ndarray) -> tuple:
    """On MR, each stretch whose outline reads thinner than any adult sciatic nerve (see
    MIN_NERVE_DIAMETER_MM), where the rest of the nerve does not, read again at the
    nerve's own level there, when the nerve is dimmer there than near the seeds and
    still stands out from its surround. A step in the coils' sensitivity too sharp for
    the shading correction (twice as bright past a coil junction, one seed on either
    side) left the dim stretch below the level read at the seeds: over 40 mm its outline
    read 1.2 mm across for 9.2. A stretch the nerve is not bright in (a dark band across
    it) is left as it is, for the caveat to name. Returns (sections, boundary,
    warnings); a station keeps its first reading unless the second is wider."""
    stretches, count = ndimage.label(stations_thinner_than_nerve(sections.area))
    if not count:
        return sections, boundary, []
    sections = dataclasses.replace(sections, **{f.name: np.copy(getattr(sections, f.name))
                                                 for f in dataclasses.fields(sections)
                                                 if getattr(sections, f.name) is not None})
    boundary = boundary.copy()
    read_again = np.zeros(len(points), bool)
    dimmest = 1.0
    for label in range(1, count + 1):
        rows = np.flatnonzero(stretches == label)
        near, ring = _values_near_seeds(image, geometry, points[rows], NEAR_SEED_MM, SEED_RING_MM)
        if near.size == 0 or ring.size == 0:
            continue
        level = _mr_nerve_level(near, appearance.noise)
        surround = float(np.median(ring))
        if not (level < appearance.nerve_level and _brighter_than_surround(image, level, surround)):
            continue
        start = max(0, rows[0] - OWN_LEVEL_MARGIN_STATIONS)
        stop = min(len(points), rows[-1] + 1 + OWN_LEVEL_MARGIN_STATIONS)
        own = dataclasses.replace(appearance, nerve_level=level, surround_level=surround)
        again, again_boundary = cross_sections(image, geometry, points[start:stop], own, excluded)
        wider = again.area[rows - start] > sections.area[rows]
        taken, source = rows[wider], rows[wider] - start
        # The stretch's rays turn about its own first tangent: its radii keep their
        # figures (area, widths) but not the whole nerve's ray angles; the boundary
        # points are what later steps read.
        for part in dataclasses.fields(sections):
            target, values = getattr(sections, part.name), getattr(again, part.name)
            if target is not None and values is not None:
                target[taken] = values[source]
        boundary[taken] = again_boundary[source]
        read_again[taken] = True
        if taken.size:
            dimmest = min(dimmest, level / appearance.nerve_level)
    if not read_again.any():
        return sections, boundary, []
    return sections, boundary, [
        f"{stretch_along(read_again, s_mm)} the nerve is dimmer than near the seed points (down to {dimmest:.0%} of "
        "their level: a step in the coils' sensitivity, or a stretch of the nerve less bright on T2), so that "
        "level drew its outline thinner than any sciatic nerve; there the outline was read at the nerve's own "
        "level. Check the outline on the images there."]


def sections_from_partial_volume(image, geometry: VolumeGeometry, points, appearance: _Appearance, excluded,
                                 sections: _Sections, boundary: np.ndarray, long_edges: tuple) -> tuple:
    """On MR, the sections whose voxels are PARTIAL_VOLUME_ACROSS_MM or longer across the
    nerve sized by their partial volume (see PARTIAL_VOLUME_STEP_MM): the half-way
    outline keeps its shape and is scaled about its centroid to the area the partial
    volume gives. Sections whose reach meets an HO segment are scaled as the nearest
    sized sections either side are.
    ``long_edges``: :func:`longest_voxel_edge_across_nerve` at ``points``.
    Returns the sections, the outlines and which stations were so sized."""
    across_mm, thick = long_edges
    sized = np.zeros(len(points), bool)
    # Rounded so that slices of 2 mm are so read whatever the header's round-off.
    stations = np.flatnonzero(np.round(across_mm, 3) >= PARTIAL_VOLUME_ACROSS_MM)
    if len(stations) == 0:
        return sections, boundary, sized
    fine = np.cross(frames(points)[0][stations], thick[stations])
    fine /= np.linalg.norm(fine, axis=1, keepdims=True)
    sampler = _IndexSampler(image, excluded, geometry)
    reading = read_partial_volume(sampler, sections.centroids[stations], boundary[stations], fine, thick[stations],
                                  across_mm[stations])
    # The surround's readings beside an HO segment are the segment's.
    lowest = np.where(reading.touches_excluded, np.nan, np.fmin(reading.surround_across, reading.surround_beside))
    surround = surround_along_nerve(lowest)
    contrast = appearance.nerve_level - surround
    half_way_area = sections.area[stations]
    with np.errstate(invalid="ignore", divide="ignore"):
        area = (reading.value_sum - surround * reading.reach_area) / contrast
    offset = boundary[stations] - sections.centroids[stations][:, None, :]
    fine_width = np.ptp(np.einsum("nrj,nj->nr", offset, fine), axis=1)
    # The sum holds for a nerve in one surrounding tissue. Where the tissue beside its tips,
    # resolved in-plane, reads other than the troughs across the slices (fat left bright
    # where it is not suppressed: on a real T2 MR so, reformatted to 3.6 mm coronal slices,
    # the sums read 2.4 times the area traced on its axial series), the surround is
    # uncertain by that difference over the whole reach, and the half-way outlines are
    # kept. Read per station that uncertainty is noisy, and decided per station near its
    # bound it sized some stations and not their neighbours: its median decides for all.
    with np.errstate(invalid="ignore", divide="ignore"):
        ambiguity = np.abs(reading.surround_beside - reading.surround_across) * reading.reach_area / contrast / area
    ambiguity = ambiguity[np.isfinite(ambiguity) & (area > 0)]
    one_surround = not (ambiguity.size and float(np.median(ambiguity)) > PARTIAL_VOLUME_MAX_AMBIGUITY)
    # The half-way outline on such slices is drawn inside the nerve's partial volume (its
    # edge voxels hold nerve too), by less than a voxel's length across the nerve: a sum
    # beyond that took in other bright tissue (a vessel, fluid), and one short of the
    # half-way area is held at it.
    usable = (np.isfinite(area) & (contrast > 0) & ~reading.touches_excluded & (half_way_area > 0)
              & (area <= half_way_area + across_mm[stations] * fine_width) & one_surround)
    scale = np.full(len(points), np.nan)
    scale[stations[usable]] = np.sqrt(np.maximum(area[usable], half_way_area[usable]) / half_way_area[usable])
    # A section whose sum took in other tissue is scaled as the sections around it are:
    # the half-way outline's shortfall changes over centimetres, as the nerve's shape and
    # the slices' angle to it do, and left unscaled between scaled neighbours it would
    # read a third small, a narrowing that is not there.
    borrowing = stations[~usable & ~reading.touches_excluded & (half_way_area > 0)]
    scale[borrowing] = _scale_of_neighbours(scale, borrowing)
    # Beside an HO segment the sum cannot be read (the segment's voxels are not the
    # nerve's surround), but the half-way outline falls short there as elsewhere, the HO
    # side included (dark HO blurs the nerve's edge below the level before the segment
    # begins): left unscaled, a nerve in a sleeve of HO on oblique 4 mm slices read 9.15
    # mm for 10 and 246 deg of encasement for 293. Such a section takes the scale of the
    # nearest sized sections either side along the nerve, however long the HO. A fat gap
    # thinner than the slices is not resolved so (nor is it by the HO segment on that
    # grid, which comes within a voxel of the outline either way): 1.6 mm read 0.7-0.9.
    beside_ho = stations[reading.touches_excluded & (half_way_area > 0)]
    sized_so_far = np.flatnonzero(np.isfinite(scale))
    if len(beside_ho) and len(sized_so_far):
        scale[beside_ho] = np.interp(beside_ho, sized_so_far, scale[sized_so_far])
    stations = np.flatnonzero(np.isfinite(scale))
    # The outline keeps the shape the half-way level gives it: on a phantom that level
    # drew it a fifth small across the slices and along the fine direction alike (the
    # tips, thinner than a slice, fade below it).
    scale = scale[stations]
    centroids = sections.centroids[stations][:, None, :]
    boundary = boundary.copy()
    boundary[stations] = centroids + scale[:, None, None] * (boundary[stations] - centroids)
    sections = dataclasses.replace(sections, area=sections.area.copy(), min_width=sections.min_width.copy(),
                                   max_width=sections.max_width.copy())
    sections.area[stations] *= scale ** 2
    sections.min_width[stations] *= scale
    sections.max_width[stations] *= scale
    sized[stations] = True
    return sections, boundary, sized


def _scale_of_neighbours(scale: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each of ``rows``, the median of the stations' ``scale`` (NaN where a section
    was not sized) within PARTIAL_VOLUME_SURROUND_STATIONS either side, where at least
    half of those were sized; NaN otherwise."""
    return percentile_along_nerve(scale, 50.0, min_count=PARTIAL_VOLUME_SURROUND_STATIONS)[rows]


def thick_across_nerve_caveats(across_mm: np.ndarray, s_mm: np.ndarray,
                               sized_by_partial_volume: np.ndarray | None = None) -> list[StationCaveat]:
    """Where the voxels are too long across the nerve to draw its outline, and whether
    its calibre there was read from its partial volume instead (``sized_by_partial_volume``,
    see :func:`sections_from_partial_volume`) or is read small."""
    thick = np.asarray(across_mm) > THICK_ACROSS_NERVE_MM
    if np.mean(thick) < THICK_ACROSS_NERVE_SHARE:
        return []
    sized = np.zeros(len(thick), bool) if sized_by_partial_volume is None else np.asarray(sized_by_partial_volume)
    where = (f"{stretch_along(thick, s_mm)} the voxels are up to {float(np.max(across_mm)):.1f} mm long across the "
             "nerve (slices cut along it, as in a coronal or sagittal series): there its outline is blurred across "
             "the slices")
    remedy = f"{ACROSS_NERVE_REMEDY}."
    if not (sized & thick).any():
        return [StationCaveat("slices along the nerve", thick, (
            f"{where} and the areas and diameters, the smallest diameter most, are unreliable. {remedy}"))]
    unsized = thick & ~sized
    left = (f" Where the outline meets an HO segment, or other bright tissue lies within the slices' reach along "
            "much of the nerve "
            f"({s_mm[unsized].min():.0f}-{s_mm[unsized].max():.0f} mm along the nerve), it could not be so read and "
            "reads small, up to a third in area at 5 mm."
            if unsized.any() else "")
    # On slab-averaged MR phantoms (coronal, sagittal, oblique; 3.5-5 mm slices): median
    # area within 6 %, nine stations in ten within 25 % (the half-way outline alone read
    # the area a fifth to a third small); the widest and smallest diameters within 0.6 mm
    # in the median on coronal slices, the widest 1 mm large on sagittal ones. A 12 x 4 mm
    # nerve on 5 mm coronal slices read +19 % in area (-27 % from the outline alone).
    return [StationCaveat("slices along the nerve", thick, (
        f"{where}, so the calibre there was read from the nerve's partial volume in the voxels (how much brighter "
        "than its surroundings they are) rather than from the outline alone, which reads it small (a quarter at "
        "5 mm). Along a stretch the area is then expected within about 6 %, nine stations in ten within 25 %; "
        "the shape of the outline across the slices, and so the smallest and widest diameters, are less certain, "
        "and a nerve brighter or darker in places than where its level was read (near the seed points) reads "
        "larger or smaller. A nerve thinner than the slices (flattened or compressed) reads large, as its own "
        f"level is diluted by the slices too (by a fifth for a nerve 4 mm thick on 5 mm slices).{left} {remedy}"))]


def check_plausible_width(area_mm2: np.ndarray, modality: str, across_mm: float = 0.0,
                          contrast_to_noise: float | None = None) -> None:
    """Refuse an outline wider than any sciatic nerve over most of its length;
    ``across_mm`` is the typical voxel size across the nerve and ``contrast_to_noise``
    the nerve's contrast over the noise where that was low (each a likely cause)."""
    width = float(np.median(equivalent_diameter_mm(area_mm2)))
    if width <= MAX_NERVE_DIAMETER_MM:
        return
    cause, remedy = (("probably muscle touching it without a fat plane", "Place the seed points where fat surrounds "
                      "the nerve (in the buttock, below the piriformis), add seed points, or trace on a T2 "
                      "fat-saturated MR, where the nerve is bright") if modality == "ct" else
                     ("probably oedema or fluid as bright as the nerve around it", "Place the seed points where the "
                      "nerve stands out from its surroundings, add seed points, or trace on the CT"))
    if across_mm > THICK_ACROSS_NERVE_MM:
        cause, remedy = (f"most likely because its voxels are {across_mm:.1f} mm long across the nerve (slices cut "
                         "along it, as in a coronal or sagittal series), which blurs it into the tissue around it",
                         ACROSS_NERVE_REMEDY)
    elif contrast_to_noise is not None:
        cause, remedy = (f"most likely because of noise: the nerve's contrast with the tissue around it is only "
                         f"{contrast_to_noise:.1f} times the noise, which breaks the fat plane that parts the nerve "
                         "from the muscle beside it", "Trace on a soft-tissue reconstruction with a smoother kernel "
                         "or thicker slices (2-3 mm), add seed points along the nerve, or trace on a T2 "
                         "fat-saturated MR")
    raise InputError(f"The traced outline is {width:.0f} mm wide on average, wider than any sciatic nerve (about "
                     f"{MAX_NERVE_DIAMETER_MM:.0f} mm at most, even swollen): the nerve could not be told apart "
                     f"from the tissue around it, {cause}. {remedy}.")


def too_wide_stretch_caveats(area_mm2: np.ndarray, s_mm: np.ndarray) -> list[StationCaveat]:
    """The stretch where the outline is wider than any sciatic nerve (see
    TOO_WIDE_STRETCH_MM)."""
    width = equivalent_diameter_mm(area_mm2)
    wide = width > TOO_WIDE_STRETCH_MM
    if np.mean(wide) < TOO_WIDE_SHARE:
        return []
    return [StationCaveat(WIDER_THAN_NERVE_REASON, wide, (
        f"{stretch_along(wide, s_mm)} the outline is wider than any sciatic nerve (up to {float(width.max()):.0f} mm "
        "across): there it has run into the tissue around the nerve, where no fat plane parts them, and its areas, "
        "diameters and contact figures are not the nerve's. Add seed points on the nerve in that stretch, or "
        "measure the nerve on a T2 fat-saturated MR."))]


def seeds_in_too_wide_stretch_warnings(seeds_ras: np.ndarray, points: np.ndarray, caveats) -> list[str]:
    """A warning naming the seed points (numbered as given) that lie in a stretch wider
    than any sciatic nerve: a click in the muscle beside the nerve (as nerve-like as
    the nerve on CT) is not moved, and the path runs through that muscle."""
    wide = [caveat.stations for caveat in caveats if caveat.reason == WIDER_THAN_NERVE_REASON]
    if not wide:
        return []
    wide = np.logical_or.reduce(wide)
    nearest = cKDTree(points).query(np.asarray(seeds_ras, float).reshape(-1, 3))[1]
    named = [str(n + 1) for n, station in enumerate(nearest) if wide[station]]
    if not named:
        return []
    return [f"Seed point(s) {', '.join(named)} lie where the outline is wider than any sciatic nerve: a point clicked "
            "in the muscle beside the nerve is not moved (muscle is as nerve-like as the nerve there), and the path "
            "runs through that muscle. Check those points on the images, move any that is off the nerve onto it (or "
            "into its fat sheath), and trace again."]


def wider_than_normal_warnings(area_mm2: np.ndarray, modality: str) -> list[str]:
    """A warning when the outline is wider than a normal sciatic nerve along most of its
    length (see WIDE_NERVE_MEDIAN_MM), short of the refusal's width: a stretch compared
    with the rest cannot show it, as the rest is just as wide."""
    typical = float(np.median(equivalent_diameter_mm(area_mm2))) if len(area_mm2) else 0.0
    if typical <= WIDE_NERVE_MEDIAN_MM:
        return []
    around = ("fat left bright where fat suppression failed, or oedema or fluid around the nerve" if modality == "mr"
              else "muscle touching it without a fat plane")
    return [f"The traced outline is {typical:.1f} mm across along most of its length (median equivalent diameter), "
            f"wider than a normal sciatic nerve (about 7-11 mm): either the whole nerve is swollen, or bright tissue "
            f"around it is taken for nerve all along ({around}). Check the outline on the images before reading its "
            "calibre and thickening."]


def stations_thinner_than_nerve(area_mm2: np.ndarray) -> np.ndarray:
    """The stations whose outline is thinner than any adult sciatic nerve (see
    MIN_NERVE_DIAMETER_MM) where the nerve's median is not: none where it is too (that
    is a trace thin all along, see :func:`too_thin_warnings`)."""
    width = equivalent_diameter_mm(area_mm2)
    if not len(width) or float(np.median(width)) < MIN_NERVE_DIAMETER_MM:
        return np.zeros(len(width), bool)
    return width < MIN_NERVE_DIAMETER_MM


def too_thin_warnings(area_mm2: np.ndarray) -> list[str]:
    """A warning when the outline is thinner than any adult sciatic nerve over most of
    its length (see MIN_NERVE_DIAMETER_MM)."""
    typical = float(np.median(equivalent_diameter_mm(area_mm2))) if len(area_mm2) else 0.0
    if typical >= MIN_NERVE_DIAMETER_MM:
        return []
    return [f"The traced outline is only {typical:.1f} mm across (median equivalent diameter), thinner than any "
            f"adult sciatic nerve (over {MIN_NERVE_DIAMETER_MM:.0f} mm even when flattened by compression): the "
            "trace may follow a thin structure beside the nerve (a vessel, a band of fluid or tissue), or draw the "
            "outline inside it (a fat plane thinner than the CT resolves, an MR without fat suppression). Check "
            "that the seed points lie on the nerve and the outline on the images."]


def bulge_caveats(area_mm2: np.ndarray, s_mm: np.ndarray) -> list[StationCaveat]:
    """The stretch where the outline is far wider than along the rest of the nerve (see
    BULGE_FACTOR), short of the too-wide stretch's width."""
    width = equivalent_diameter_mm(area_mm2)
    typical = float(np.median(width)) if len(width) else 0.0
    bulging = (width > max(BULGE_FACTOR * typical, typical + BULGE_MIN_EXCESS_MM)) & (width <= TOO_WIDE_STRETCH_MM)
    if np.count_nonzero(bulging) < BULGE_MIN_STATIONS:
        return []
    tapering, _ = ndimage.label((width > BULGE_EDGE_FACTOR * typical) & (width <= TOO_WIDE_STRETCH_MM))
    bulging = np.isin(tapering, np.unique(tapering[bulging]))
    return [StationCaveat("swollen or widened", bulging, (
        f"{stretch_along(bulging, s_mm)} the outline is up to {float(width[bulging].max()):.0f} mm across, against "
        f"{typical:.0f} mm along the rest of the nerve: the nerve may be swollen there (as where it is "
        "compressed), or its outline has run into bright tissue touching it (fluid, a haematoma, a vessel, fat "
        "left bright by failed fat suppression on MR). Check the outline on the images there before reading "
        "its calibre."))]


def metal_nearby_caveats(ct_hu: np.ndarray, geometry: VolumeGeometry, points: np.ndarray,
                         s_mm: np.ndarray) -> list[StationCaveat]:
    """The stretch of nerve within STREAK_REACH_MM of metal (an implant), whose streaks
    shift CT values by a hundred HU and more."""
    block = geometry.bounding_slices_of_ras_box(points, STREAK_REACH_MM)
    metal = at_least(ct_hu[block], METAL_THRESHOLD_HU)
    if not metal.any():
        return []
    metal_ras = geometry.cropped(block).kji_to_ras_points(np.argwhere(metal))
    distance = cKDTree(metal_ras).query(points)[0]
    near = distance <= STREAK_REACH_MM
    if not near.any():
        return []
    return [StationCaveat("near metal", near, (
        f"{stretch_along(near, s_mm)} the nerve lies within {STREAK_REACH_MM:.0f} mm of metal (an implant; nearest "
        f"{float(distance.min()):.0f} mm): its streaks shift CT values by a hundred HU and more, which moves the "
        "outline, so the calibre and contact figures there are less reliable. A metal-artefact-reduction "
        "reconstruction, or an MR, measures the nerve better there."))]


#: A centreline through bone over this length (mm) has crossed a cortex (1.5-8 mm thick
#: around the hip); a nerve pressed on bone keeps its centre off the bone's surface.
BONE_CROSSING_MIN_MM = 2.0


def through_bone_caveats(ct_hu: np.ndarray, geometry: VolumeGeometry, points: np.ndarray, s_mm: np.ndarray,
                         bone_threshold_hu: float) -> list[StationCaveat]:
    """The stations where the centreline runs through bone for BONE_CROSSING_MIN_MM or
    more: no nerve does, so a seed lies inside a bone (its marrow is as dark as soft tissue
    on CT, so nothing else tells a click there from one on the nerve)."""
    step = 0.25 * min(geometry.spacing_kji)
    dense = resample_polyline(points, step)
    values = ndimage.map_coordinates(ct_hu, geometry.ras_to_kji_points(dense).T, order=1, mode="nearest")
    bone = (values >= bone_threshold_hu) & (values < METAL_THRESHOLD_HU)
    runs, _ = ndimage.label(bone)
    long_run = np.bincount(runs) * step >= BONE_CROSSING_MIN_MM
    long_run[0] = False
    crossing = long_run[runs]
    if not crossing.any():
        return []
    dense_s = arc_length_mm(dense)
    through = np.zeros(len(points), bool)
    through[np.clip(np.searchsorted(s_mm, dense_s[crossing]), 0, len(points) - 1)] = True
    length = float(np.count_nonzero(crossing) * step)
    return [StationCaveat("through bone", through, (
        f"{stretch_along(through, s_mm)} the centreline runs through bone ({length:.0f} mm of it, up to "
        f"{float(values[crossing].max()):.0f} HU): no nerve does. A seed point probably lies inside a bone, in its "
        "marrow, which is as dark as soft tissue on CT. Check the seed points on the images, move any that lies in a "
        "bone onto the nerve and trace again."))]


def image_edge_caveats(geometry: VolumeGeometry, boundary: np.ndarray, s_mm: np.ndarray) -> list[StationCaveat]:
    """The stations whose cross-section reaches within a voxel of the image's faces:
    the outline is cut there by the field of view (or read on edge voxels repeated
    beyond it), which shrinks or widens it and pulls its centre off the nerve."""
    boundary = np.asarray(boundary, float)
    inside = geometry.contains_ras(boundary.reshape(-1, 3), margin_voxels=1.0).reshape(boundary.shape[:2])
    edge = ~inside.all(axis=1)
    if not edge.any():
        return []
    return [StationCaveat("at the image edge", edge, (
        f"{stretch_along(edge, s_mm)} the nerve's cross-section reaches the edge of the image: its outline is cut "
        "there by the field of view, so its calibre, centre and contact are not measured there. Image the nerve "
        "with a margin, or place the end seed points at least a nerve's width inside the image."))]


def check_told_from_muscle(caveats, contrast_to_noise: float | None) -> None:
    """Refuse a trace on a CT smoothed for its noise that found no fat plane, or ran
    wider than a nerve, along most of its length (from ``caveats``, those of
    :func:`thin_fat_plane_caveats` and :func:`too_wide_stretch_caveats`)."""
    lost = [caveat.stations for caveat in caveats if caveat.reason in (NO_FAT_PLANE_REASON, WIDER_THAN_NERVE_REASON)]
    if contrast_to_noise is None or not lost:
        return
    share = float(np.mean(np.logical_or.reduce(lost)))
    if share >= NOISY_NO_FAT_PLANE_MAX_SHARE:
        raise InputError(
            f"The nerve could not be told apart from the muscle around it: along {share:.0%} of the traced length no "
            "fat plane shows between them, or the outline runs wider than a nerve, most likely because of noise (the "
            f"nerve's contrast with the tissue around it is only {contrast_to_noise:.1f} times the noise), so the "
            "trace may have run through muscle. Trace on a soft-tissue reconstruction with a smoother kernel or "
            "thicker slices (2-3 mm), add seed points along the nerve, or trace on a T2 fat-saturated MR.")


def collapsed_section_caveats(collapsed: np.ndarray | None, s_mm: np.ndarray) -> list[StationCaveat]:
    """The stations whose outline stayed collapsed when read again (see
    COLLAPSED_OUTLINE_FRACTION): their figures are not the nerve's, and a surgeon
    would read them as a severe compression."""
    if collapsed is None or not np.any(collapsed):
        return []
    where = ", ".join(f"{s:.0f}" for s in np.asarray(s_mm)[collapsed][:8]) + (", ..." if np.sum(collapsed) > 8 else "")
    return [StationCaveat(COLLAPSED_REASON, np.asarray(collapsed, bool), (
        f"At {int(np.sum(collapsed))} station(s) ({where} mm along the nerve) the outline collapsed to under "
        "half the width of the stations around it, even when read again: a nerve "
        "narrows over centimetres, not from one millimetre to the next, so noise or a dark spot inside the nerve "
        "cut the outline short there. Their figures are not the nerve's and do not show a compression: read the "
        "calibre from the stations around them, and check the outline on the images."))]


def thinner_than_nerve_caveats(area_mm2: np.ndarray, collapsed: np.ndarray | None,
                               s_mm: np.ndarray) -> list[StationCaveat]:
    """The stations whose outline is thinner than any adult sciatic nerve (see
    MIN_NERVE_DIAMETER_MM), where the rest of the nerve is not: a stretch too long for
    its stations to be judged against their neighbours (a dark band across the nerve
    over a centimetre or more) reads as a severe compression without a word otherwise.
    Stations already named as collapsed are left to that caveat; a trace thin along
    most of its length has its own warning (:func:`too_thin_warnings`)."""
    thin = stations_thinner_than_nerve(area_mm2)
    if collapsed is not None:
        thin &= ~np.asarray(collapsed, bool)
    if not thin.any():
        return []
    width = equivalent_diameter_mm(area_mm2)
    return [StationCaveat(THINNER_THAN_NERVE_REASON, thin, (
        f"{stretch_along(thin, s_mm)} the outline is as little as {float(width[thin].min()):.1f} mm across (equivalent "
        f"diameter), against {float(np.median(width)):.0f} mm along the rest of the nerve: thinner than any adult "
        f"sciatic nerve, which stays over {MIN_NERVE_DIAMETER_MM:.0f} mm even when flattened by compression. There "
        "the outline most likely missed the nerve (on MR a band of flow, motion or susceptibility artefact, or "
        "noise, darkening it; on CT a structure as dense as the nerve's surround), so its figures do not show a "
        "compression; or, above the greater sciatic notch, the trace follows one of the roots that join to form "
        "the nerve, each thinner. Check the outline on the images there; read the calibre from the stations "
        "around it."))]


def thin_fat_plane_caveats(outside_levels: np.ndarray, appearance: _Appearance,
                           s_mm: np.ndarray) -> list[StationCaveat]:
    """Where the tissue just outside the outline is barely darker than the nerve on a
    CT: no resolved fat plane, so the outline is drawn too small."""
    contrast = appearance.nerve_level - np.asarray(outside_levels, float)
    thin = np.nan_to_num(contrast, nan=np.inf) < THIN_FAT_PLANE_CONTRAST * (appearance.nerve_level - CT_FAT_REFERENCE_HU)
    if np.mean(thin) < THIN_FAT_PLANE_SHARE:
        return []
    return [StationCaveat(NO_FAT_PLANE_REASON, thin, (
        f"{stretch_along(thin, s_mm)} the nerve abuts muscle with a fat plane thinner than the CT resolves: there "
        "its outline is drawn too small and the diameters and areas are underestimated. Check the outline on the "
        "images, or measure the nerve on a T2 fat-saturated MR."))]


# ---------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------
def _prepared_for_tracing(image, geometry, seeds, modality, bone_threshold_hu):
    """The block as it is traced (an MR's coil shading divided out, a noisy block
    smoothed), the nerve's appearance read on it, and the contrast-to-noise ratio
    that had the block smoothed (None when it was not)."""
    appearance = estimate_appearance(image, geometry, seeds, modality, bone_threshold_hu)
    if modality == "mr":
        # Read again once the shading is gone: the levels near the seeds then hold all along.
        image = flatten_mr_shading(image, geometry)
        appearance = estimate_appearance(image, geometry, seeds, modality, bone_threshold_hu)
    image, contrast_to_noise = smooth_if_noisy(image, geometry, appearance)
    if contrast_to_noise is not None:
        appearance = estimate_appearance(image, geometry, seeds, modality, bone_threshold_hu)
    return image, appearance, contrast_to_noise


def _uneven_brightness_hint(image, geometry, seeds, modality) -> str:
    """On MR, a sentence naming a nerve far brighter near one seed than near another:
    a step in the coils' sensitivity along it (where two coils or two stations of the
    series meet) is too sharp for the shading correction, and seeds do not help."""
    if modality != "mr":
        return ""
    levels = _nerve_levels_at_seeds(image, geometry, seeds)
    if min(levels) <= 0 or max(levels) / min(levels) < UNEVEN_NERVE_BRIGHTNESS:
        return ""
    return (f" Near one seed point the nerve is {max(levels) / min(levels):.1f} times as bright as near another, "
            "a change too abrupt for the correction of the coils' uneven sensitivity (as where two coils or two "
            "stations of the series meet): trace each evenly lit stretch on its own, or use a series with even "
            "sensitivity (the scanner's intensity normalisation). Where the nerve itself is brighter over a stretch "
            "(oedema where it is compressed), place most seed points on the nerve beside that stretch.")


def _per_click_appearance(image, geometry, seeds, appearance: _Appearance) -> tuple:
    """On MR, ``appearance`` with the nerve's level read per click: the median of the
    clicks' own levels, less the same allowance for noise as the pooled level; and how
    many times brighter the nerve is near the brightest click than near the dimmest."""
    per_click = _nerve_levels_at_seeds(image, geometry, seeds) - NERVE_LEVEL_PERCENTILE_Z * appearance.noise
    ratio = float(per_click.max() / per_click.min()) if per_click.min() > 0 else float("inf")
    return dataclasses.replace(appearance, nerve_level=float(np.median(per_click))), ratio


def _traced_at_per_click_level(image, geometry, clicked, appearance: _Appearance, exclusion_mask, modality):
    """On MR, where the path at the clicks' pooled level left nerve-like tissue: the seeds
    and path found again at the median of the clicks' own levels, when that is lower, as
    (seeds, path, share outside nerve-like tissue, appearance at that level, brightness
    ratio, see :func:`_per_click_appearance`); None when it is not lower or the path
    leaves nerve-like tissue there too. A nerve compressed by HO is brighter on T2 where
    it is compressed (oedema), which is where a user clicks: twice as bright over 40 mm,
    one of three clicks on it, it lifted the pooled level above the rest of the nerve
    and the trace was refused; read per click everywhere, the level moved traces that
    were right (two stations of a real MR differed between its DICOM and NIfTI copies)."""
    if modality != "mr":
        return None
    lower, ratio = _per_click_appearance(image, geometry, clicked, appearance)
    if not lower.nerve_level < appearance.nerve_level:
        return None
    seeds = seeds_on_the_nerve(image, geometry, clicked, lower, exclusion_mask)
    path, outside_fraction = trace_path(image, geometry, seeds, lower, exclusion_mask)
    return (seeds, path, outside_fraction, lower, ratio) if outside_fraction <= MAX_PATH_OUTSIDE_SHARE else None


def _uneven_level_warning(ratio: float) -> str:
    """The nerve's level read per click (see :func:`estimate_appearance`): where the
    nerve is dimmer than that level its outline is drawn nearer its own peak."""
    return (f"The nerve is {ratio:.1f} times as bright near one seed point as near another (oedema where it is "
            "compressed, or the coils' uneven sensitivity): its level was read as the median of the seed points' "
            "levels so that the whole nerve is followed. Where the nerve is dimmer than that, its outline may read "
            "small, which is no compression: check the calibre of the dimmer stretch on the images.")


def _smoothed_warning(contrast_to_noise: float, modality: str, where: str = "before tracing",
                      unlike_a_nerve: bool = False) -> str:
    """``where``: the step the smoothed image served (the noise read inside the traced
    nerve smooths the outline's measurement only). ``unlike_a_nerve``: no seed point
    lies on tissue as bright as the traced structure (see
    :func:`seeds_off_bright_tissue_warnings`), so its low contrast more likely comes from
    the series' contrast than from noise."""
    # Dips of noise inside the nerve still end some rays early: on a phantom the calibre
    # read 0.1 mm small at a ratio of 2.3, 0.5 mm at 1.7 and 1.1 mm at 1.4.
    shortfall = ("up to about 1 mm small" if contrast_to_noise < NOISY_CALIBRE_CONTRAST_TO_NOISE
                 else "a few tenths of a mm small")
    if unlike_a_nerve:
        # On a T1-weighted phantom the trace ran in the fat beside the nerve, 0.5 times the
        # noise above its surroundings: the series, not the noise, was at fault.
        return (f"The traced structure stands out from the tissue around it by only {contrast_to_noise:.1f} times "
                f"the voxel noise: it was smoothed by {NOISE_SMOOTHING_MM} mm {where}, and its calibre may read "
                f"{shortfall}. With no seed point on tissue as bright as it (see the warning on the seed points), "
                "this series likely does not show the nerve brighter than its surroundings, whether or not it is "
                "noisy: trace on a T2-weighted fat-suppressed or STIR series.")
    return (f"The image is noisy around the nerve (its contrast with the surrounding tissue is only "
            f"{contrast_to_noise:.1f} times the voxel noise): it was smoothed by {NOISE_SMOOTHING_MM} mm "
            f"{where}, so the outline follows the nerve rather than noise; its calibre may read "
            f"{shortfall}. {NOISE_REMEDIES[modality]} gives a sharper outline.")


def recentred_on_nerve(image, geometry, path, appearance, exclusion_mask, progress=None) -> np.ndarray:
    """Stations every STATION_SPACING_MM along the minimal path, moved to the centroids
    of their cross-sections and smoothed, until they settle (RECENTRING_PASSES at most)."""
    points = smooth_polyline(resample_polyline(path, STATION_SPACING_MM), CENTRELINE_SMOOTHING_MM, STATION_SPACING_MM)
    path_tree = cKDTree(points)
    # The clicks may be off centre: the ends are re-centred like every other station.
    for iteration in range(RECENTRING_PASSES):
        report(progress, 0.4 + 0.4 * iteration / RECENTRING_PASSES, "Re-centring on the nerve")
        sections, _ = cross_sections(image, geometry, points, appearance, exclusion_mask,
                                     RECENTRING_RAY_COUNT, RECENTRING_RAY_STEP_MM, with_widths=False)
        # A section wider than any sciatic nerve has run into the tissue around it: its
        # centroid says nothing of where the nerve is, so that station stays put.
        plausible = equivalent_diameter_mm(sections.area) <= MAX_NERVE_DIAMETER_MM
        targets = np.where(plausible[:, None], sections.centroids, points)
        centred = smooth_polyline(_near_path(targets, path_tree), CENTRELINE_SMOOTHING_MM,
                                  STATION_SPACING_MM, keep_ends=False)
        shift = float(np.max(np.linalg.norm(centred - points, axis=1)))
        points = _without_loops(resample_polyline(centred, STATION_SPACING_MM), STATION_SPACING_MM)
        if shift < RECENTRING_CONVERGED_MM:
            break
    return points


def _without_loops(points: np.ndarray, step_mm: float) -> np.ndarray:
    """Stations ``step_mm`` apart with none doubled. Where the path reached a click beside
    the nerve sideways, the sections there all centre on one level of the nerve and the
    centreline loops on itself: two stations then lie a fraction of a step apart. The
    second of each such pair goes and the rest is spaced again. The last step is the
    remainder of the length, short by design, and stays."""
    gaps = np.linalg.norm(np.diff(points[:-1], axis=0), axis=1)
    close = np.flatnonzero(gaps < 0.5 * step_mm)
    if len(close) == 0:
        return points
    return resample_polyline(np.delete(points, close + 1, axis=0), step_mm)


NOT_CT_ADVICE = ("The image does not look like a CT in Hounsfield units (no fat near -100 HU with soft tissue near "
                 "50 HU, or neither air nor cortical bone), yet it was traced as a CT: if it is an MR, trace it with "
                 "modality 'mr' (--modality mr on the command line).")


@with_single_threaded_blas
def trace_nerve(image: np.ndarray, geometry: VolumeGeometry, seeds_ras, *, modality: str = "ct",
                side: str = "right", bone_threshold_hu: float = 200.0,
                exclusion_mask: np.ndarray | None = None, progress: ProgressCallback = None) -> NerveTrace:
    """Trace the sciatic nerve through the seeds; see the module docstring."""
    # An MR traced with the default modality is read by a CT's rules (a fat plane, a
    # width in HU): it may fail on them, or pass with figures read the wrong way.
    not_ct = modality == "ct" and not looks_like_ct(image)
    try:
        trace = _trace(image, geometry, seeds_ras, modality, side, bone_threshold_hu, exclusion_mask, progress)
    except InputError as error:
        if not_ct:
            raise InputError(f"{NOT_CT_ADVICE} Traced as a CT: {error}") from None
        raise
    if not_ct:
        trace.warnings.insert(0, f"{NOT_CT_ADVICE} Its calibre and outline were read as on a CT.")
    return trace


def _trace(image, geometry: VolumeGeometry, seeds_ras, modality, side, bone_threshold_hu, exclusion_mask,
           progress) -> NerveTrace:
    geometry.validate("The volume")
    if modality not in ("ct", "mr"):
        raise InputError(f"Modality must be 'ct' or 'mr'; got '{modality}'.")
    if exclusion_mask is not None and exclusion_mask.shape != image.shape:
        raise InputError("The HO mask does not match the volume's grid; resample it onto the volume.")
    if modality == "mr" and ct_given_as_mr(image, geometry, seeds_ras, bone_threshold_hu):
        raise InputError("The image looks like a CT in Hounsfield units (fat near -100 HU, soft tissue near 50 HU "
                         "with the nerve among it, and air near -1000 HU or cortical bone), but the modality is MR. "
                         "Trace it with modality 'ct' (--modality ct on the command line, or in a case list's modality "
                         "column).")
    warnings: list[str] = []
    report(progress, 0.0, "Checking seed points")
    seeds = validate_seeds(seeds_ras, image, geometry, modality)
    full_shape = image.shape
    full_image, full_geometry = image, geometry
    # Everything happens near the seeds: work on that block only, in float32.
    block = geometry.bounding_slices_of_ras_box(seeds, SEARCH_MARGIN_MM + MAX_RAY_MM)
    geometry = geometry.cropped(block)
    image = np.ascontiguousarray(image[block], dtype=np.float32)
    exclusion_mask = np.ascontiguousarray(exclusion_mask[block]) if exclusion_mask is not None else None
    image, appearance, contrast_to_noise = _prepared_for_tracing(image, geometry, seeds, modality, bone_threshold_hu)
    report(progress, 0.1, "Following the nerve between the seeds")
    off_bright = (seeds_off_bright_tissue_warnings(image, geometry, seeds, appearance, exclusion_mask)
                  if modality == "mr" else [])
    if contrast_to_noise is not None:
        warnings.append(_smoothed_warning(contrast_to_noise, modality, unlike_a_nerve=bool(off_bright)))
    warnings += off_bright
    clicked = seeds
    seeds = seeds_on_the_nerve(image, geometry, clicked, appearance, exclusion_mask)
    path, outside_fraction = trace_path(image, geometry, seeds, appearance, exclusion_mask)
    per_click_level = False
    if outside_fraction > MAX_PATH_OUTSIDE_SHARE:
        retry = _traced_at_per_click_level(image, geometry, clicked, appearance, exclusion_mask, modality)
        if retry is not None:
            seeds, path, outside_fraction, appearance, ratio = retry
            per_click_level = True
            warnings.append(_uneven_level_warning(ratio))
    if outside_fraction > MAX_PATH_OUTSIDE_SHARE:
        raise InputError(
            f"Between two seed points the nerve could not be followed ({outside_fraction:.0%} of the path runs "
            "outside nerve-like tissue). Check the modality setting and add seed points on the nerve in the "
            f"difficult stretch.{_uneven_brightness_hint(image, geometry, seeds, modality)}")
    if outside_fraction > 0.1:
        warnings.append(f"{outside_fraction:.0%} of the traced path between two seeds runs outside nerve-like "
                        "tissue; check the centreline there and add a seed point if it strays.")
    points = recentred_on_nerve(image, geometry, path, appearance, exclusion_mask, progress)
    if contrast_to_noise is None:
        image, appearance, contrast_to_noise = smoothed_where_the_nerve_is_noisy(
            image, geometry, seeds, points, appearance, modality, bone_threshold_hu)
        if contrast_to_noise is not None:
            warnings.append(_smoothed_warning(contrast_to_noise, modality, "before the nerve's outline was measured",
                                              unlike_a_nerve=bool(off_bright)))
            if per_click_level:
                # Read again on the smoothed block, the level is the clicks' median again.
                appearance = _per_click_appearance(image, geometry, seeds, appearance)[0]
    s_mm = arc_length_mm(points)
    # Seeds clicked across the nerve meet it at one level, however far the re-centred
    # stations run on from there along it.
    seeds_along_mm = float(np.ptp(s_mm[cKDTree(points).query(seeds)[1]]))
    if min(s_mm[-1], seeds_along_mm) < MIN_SEED_SPREAD_MM:
        raise InputError(f"The seed points lie within {min(s_mm[-1], seeds_along_mm):.1f} mm of each other along the "
                         "traced nerve: they lie across the nerve at one level (or on one spot of it) rather than "
                         f"along it. Place them along the nerve, at least {MIN_SEED_SPREAD_MM:.0f} mm apart along it, "
                         "one near each end of the stretch to analyse.")

    report(progress, 0.8, "Measuring cross-sections")
    sections, boundary = cross_sections(image, geometry, points, appearance, exclusion_mask)
    long_edges = longest_voxel_edge_across_nerve(geometry, points)
    across_mm = long_edges[0]
    sized_by_partial_volume = np.zeros(len(points), bool)
    if modality == "mr":
        sections, boundary, own_level_warnings = sections_at_own_level(
            image, geometry, points, appearance, exclusion_mask, sections, boundary, s_mm)
        warnings += own_level_warnings
        sections, boundary, sized_by_partial_volume = sections_from_partial_volume(
            image, geometry, points, appearance, exclusion_mask, sections, boundary, long_edges)
    check_plausible_width(sections.area, modality, float(np.median(across_mm)), contrast_to_noise)
    outline_caveats = (too_wide_stretch_caveats(sections.area, s_mm) + bulge_caveats(sections.area, s_mm)
                       + collapsed_section_caveats(sections.collapsed, s_mm)
                       + thinner_than_nerve_caveats(sections.area, sections.collapsed, s_mm))
    image_caveats = (thick_across_nerve_caveats(across_mm, s_mm, sized_by_partial_volume)
                     + image_edge_caveats(full_geometry, boundary, s_mm))
    if modality == "ct":
        fat_plane_caveats = thin_fat_plane_caveats(sections.outside_levels, appearance, s_mm)
        check_told_from_muscle(fat_plane_caveats + outline_caveats, contrast_to_noise)
        image_caveats += (fat_plane_caveats + metal_nearby_caveats(full_image, full_geometry, points, s_mm)
                          + through_bone_caveats(full_image, full_geometry, points, s_mm, bone_threshold_hu))
    caveats = outline_caveats + image_caveats
    warnings += ([caveat.warning for caveat in outline_caveats] + too_thin_warnings(sections.area)
                 + seeds_in_too_wide_stretch_warnings(seeds_ras, points, outline_caveats)
                 + wider_than_normal_warnings(sections.area, modality)
                 + [caveat.warning for caveat in image_caveats])
    # Read on the block as traced: on MR the coils' shading is divided out of it, so
    # the signal compares along the nerve.
    signal = section_signal(image, geometry, sections.cores, boundary) if modality == "mr" else None
    report(progress, 0.9, "Building the nerve segment")
    block_mask = voxelise_sections(geometry, points, radii_about_centreline(points, boundary))
    if exclusion_mask is not None:
        block_mask &= ~exclusion_mask
    report(progress, 1.0, "Nerve traced")
    return NerveTrace(
        side=side, modality=modality, points_ras=points, s_mm=s_mm, area_mm2=sections.area,
        diameter_mm=equivalent_diameter_mm(sections.area), min_diameter_mm=sections.min_width,
        max_diameter_mm=sections.max_width, boundary_ras=list(boundary), mask_block=block_mask,
        mask_slices=block, volume_shape=full_shape, warnings=warnings,
        station_caveats=["; ".join(c.reason for c in caveats if c.stations[n]) for n in range(len(points))],
        signal=signal)
