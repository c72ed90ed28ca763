"""The body's midline and the comparison of both sides of the skeleton.

Bone of the hip region comes in mirror pairs across the body's mid-sagittal plane;
HO seldom does. This module finds that plane on a CT's bone (:func:`body_midline`,
searched across R, then turned and tilted, as a patient who cannot lie straight
lies), tells which side of it points lie on (:func:`side_of_midline`), whether an
island's mirror image lies in bone (:func:`mirrored_in_bone`), and fits each bone's
mirror image onto the bone of the other side (:class:`BoneAcrossMidline`), which the
HO step uses to find masses without a counterpart.

Every fit here reads the bone on samples laid out by where it lies in the world, not
by where it sits in the array, so a CT stored flipped, with its axes in another
order or moved gives the same plane and the same pairs.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .defaults import DEFAULT_BONE_THRESHOLD_HU
from .geometry import VolumeGeometry, all_columns, column_max, column_min, distance_outside
from .hounsfield import METAL_THRESHOLD_HU, at_least, smoothed_for_bone

#: Normal bony prominences (ischial spine, trochanters, iliac spines) come in pairs, HO
#: seldom mirrors itself: a fused island whose mirror image across the body's midline
#: lies in bone is flagged as possibly normal anatomy. A midline counts when at least
#: half of the bone (sampled every 2 mm) has bone within 4 mm of its mirror image, and a
#: fifth of the bone lies more than 50 mm out on each side (a single bone is symmetric
#: about its own axis, a pelvis about its midline).
MIRROR_GRID_MM = 4.0
MIRROR_MIN_SYMMETRY = 0.5
#: Bone is sampled through its volume, so a small bone mirrored into a large one counts as
#: matched (on an image of one hip and the sacrum, the femur and ischium mirrored into the
#: sacrum made 70 % of the bone "symmetric"): the plane must also send at least 55 % of
#: the bone's surface within 4 mm of surface (a pelvis: 70-93 % on 0.8-3 mm voxels; that
#: false plane: 40 %).
MIRROR_MIN_SURFACE_SYMMETRY = 0.55
MIRROR_MIN_LATERAL_MM = 50.0
MIRROR_MIN_LATERAL_SHARE = 0.2
#: Left-right differences of normal anatomy and of the patient's position: an island is
#: mirrored when 80 % of it lands within 4 mm of bone.
MIRROR_TOLERANCE_MM = 4.0
MIRROR_MATCH_FRACTION = 0.8

#: A nerve within this distance of the midline is not clearly on one side (the sciatic
#: nerves run 70-120 mm either side of it at the hip).
MIDLINE_SIDE_MARGIN_MM = 20.0

#: The midline is first searched across R on an 8 mm grid (the best 3 planes), then
#: turned and tilted to the skeleton (a patient lies up to several degrees turned or
#: tilted): 10 000 bone points paired with bone near their mirror images, first within
#: 15 mm, then within 0.7 times that at each fit down to the 4 mm of the symmetry test,
#: 20 fits at most, a turn of at most 15 degrees from where the search started.
MIRROR_SEARCH_CELL_MM = 8.0
MIRROR_CANDIDATES = 3
MIRROR_FIT_POINTS = 10_000
MIRROR_FIT_REACH_MM = 15.0
MIRROR_FIT_ITERATIONS = 20
MIRROR_FIT_REACH_SHRINK = 0.7
MIRROR_MAX_TILT_DEG = 15.0
#: A patient who cannot lie straight (contractures after a brain or spinal cord injury, a
#: stiff or painful hip) may lie turned on the table, or with one side higher, by more
#: than that fit turns. When no midline is found across R, planes turned about S by up to
#: 40 degrees and tilted about A by up to 20 degrees, 10 degrees apart (within the fit's
#: reach of each other), are searched as well, and the best 3 of them fitted.
MIRROR_TURNS_DEG = (-40.0, -30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0, 40.0)
MIRROR_TILTS_DEG = (-20.0, -10.0, 0.0, 10.0, 20.0)

#: Where coarse samplings of the bone are laid out from, from the centre of the sampled
#: grid (RAS, mm; see :func:`_lattice_phase`): off the centre by a fraction of a voxel, so
#: that rounding it to a voxel never falls on a tie.
LATTICE_ANCHOR_OFFSET_RAS = (0.3183, 0.5772, 0.7071)
#: Legs lie in different positions, so a bone's mirror image is fitted rigidly onto the
#: bone across the midline before the two are compared: 1500 points, at most 30 fits on
#: the 80 % closest pairs, then 30 on the pairs within 2 mm (so HO on the bone no longer
#: pulls the fit). A fit that turns more than 20 degrees, moves more than 30 mm or
#: leaves the closest pairs more than 3 mm apart on average is not trusted.
COUNTERPART_FIT_POINTS = 1500
COUNTERPART_FIT_ITERATIONS = 30
COUNTERPART_FIT_KEEP = 0.8
COUNTERPART_FIT_CLOSE_MM = 2.0
COUNTERPART_MAX_TURN_DEG = 20.0
COUNTERPART_MAX_SHIFT_MM = 30.0
COUNTERPART_MAX_RESIDUAL_MM = 3.0


@dataclass(frozen=True)
class MirrorPlane:
    """The body's mid-sagittal plane: the RAS points p with ``normal`` . p = ``offset``."""

    normal: np.ndarray
    offset: float

    def signed_distance(self, ras) -> np.ndarray:
        """Distance (mm) of RAS points from the plane, positive towards the patient's right."""
        return np.asarray(ras, float) @ self.normal - self.offset

    def mirror(self, ras: np.ndarray) -> np.ndarray:
        return ras - 2.0 * self.signed_distance(ras)[:, None] * self.normal[None, :]


def _midline_sampling_steps(geometry: VolumeGeometry) -> np.ndarray:
    """Voxel steps (k, j, i) that sample a grid about half a midline-search cell apart."""
    return np.maximum(1, np.floor(0.5 * MIRROR_GRID_MM / np.asarray(geometry.spacing_kji))).astype(int)


def _lattice_phase(geometry: VolumeGeometry, steps) -> np.ndarray:
    """First index (k, j, i) of a lattice ``steps`` voxels apart laid out from the grid's
    centre in the world (moved by LATTICE_ANCHOR_OFFSET_RAS), rather than from the array's
    first voxel: a CT stored flipped or with its axes in another order, or moved, is then
    sampled at the same voxels of its anatomy."""
    centre = geometry.kji_to_ras_points((np.asarray(geometry.shape_kji, float) - 1.0) / 2.0)[0]
    anchor = geometry.ras_to_kji_points(centre + np.asarray(LATTICE_ANCHOR_OFFSET_RAS))[0]
    return np.mod(np.floor(anchor + 0.5).astype(int), steps)


def _lattice(mask: np.ndarray, geometry: VolumeGeometry, steps) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` on the world-anchored lattice ``steps`` voxels apart (a view), and the
    lattice's first index (k, j, i) (see :func:`_lattice_phase`)."""
    phase = _lattice_phase(geometry, steps)
    return mask[phase[0]::steps[0], phase[1]::steps[1], phase[2]::steps[2]], phase


def lattice_voxels(mask: np.ndarray, geometry: VolumeGeometry, steps) -> np.ndarray:
    """Indices (k, j, i) of the voxels of ``mask`` on the world-anchored lattice
    ``steps`` voxels apart (see :func:`_lattice_phase`)."""
    steps = np.asarray(steps, int)
    lattice, phase = _lattice(mask, geometry, steps)
    return np.argwhere(lattice) * steps + phase


def bone_lattice(bone: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``bone`` on the midline search's lattice (a view), the indices of its bone cells
    on that lattice, and their RAS points (:func:`sampled_bone_points`): the midline search and
    the comparison of both sides (:class:`BoneAcrossMidline`) read the same points."""
    steps = _midline_sampling_steps(geometry)
    lattice, phase = _lattice(bone, geometry, steps)
    cells = np.argwhere(lattice)
    return lattice, cells, geometry.kji_to_ras_points(cells * steps + phase)


def sampled_bone_points(bone: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """RAS points of ``bone`` about half a midline-search cell apart."""
    return geometry.kji_to_ras_points(lattice_voxels(bone, geometry, _midline_sampling_steps(geometry)))


def _sample_by_position(ras: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` of the points, picked by a hash of where they lie (to 0.01 mm,
    from the corner of their bounding box), in an order set by that hash too: the same
    points in any storage order of the volume's axes, or all moved together, give the
    same sample, so a fit on it does not change when a CT is stored flipped or with its
    axes swapped, or has its origin elsewhere."""
    keys = np.rint((ras - column_min(ras)) * 100.0).astype(np.int64)
    if len(ras) <= count:
        return ras[np.lexsort(keys.T)]
    hashed = (keys[:, 0] * 73856093) ^ (keys[:, 1] * 19349663) ^ (keys[:, 2] * 83492791)
    hashed = (hashed * 2654435761) & 0xFFFFFFFF
    chosen = np.argpartition(hashed, count - 1)[:count]
    return ras[chosen[np.lexsort((*keys[chosen].T, hashed[chosen]))]]


def _turned_frame(turn_deg: float, tilt_deg: float) -> np.ndarray:
    """The RAS axes turned about S by ``turn_deg`` (the body turned on the table), then
    tilted about A by ``tilt_deg`` (one side higher): columns are the turned R, A and S."""
    turn, tilt = np.radians(turn_deg), np.radians(tilt_deg)
    about_s = np.array([[np.cos(turn), -np.sin(turn), 0.0], [np.sin(turn), np.cos(turn), 0.0], [0.0, 0.0, 1.0]])
    about_a = np.array([[np.cos(tilt), 0.0, -np.sin(tilt)], [0.0, 1.0, 0.0], [np.sin(tilt), 0.0, np.cos(tilt)]])
    return about_s @ about_a


def _candidate_midlines(ras: np.ndarray, frame: np.ndarray = np.eye(3)) -> list[tuple[float, MirrorPlane]]:
    """The planes across ``frame``'s first axis (its R) across which the points are most
    symmetric, best first, with bone far out on both sides; each with the share of the
    occupied cells its mirror image covers. Searched on a coarse grid, so a patient lying
    a few degrees turned from the frame still shows a clear best plane."""
    local = ras @ frame
    origin = column_min(local)
    cells = np.floor((local - origin) / MIRROR_SEARCH_CELL_MM).astype(int)
    grid = np.zeros(column_max(cells) + 1, np.float32)
    grid[tuple(cells.T)] = 1.0
    # Mirroring across R = origin + (m + 1) * cell / 2 sends cell k to cell m - k along R,
    # so the overlap for every plane at once is the auto-convolution along R.
    size = 2 * grid.shape[0] - 1
    spectrum = np.fft.rfft(grid, n=size, axis=0)
    overlap = np.fft.irfft(spectrum * spectrum, n=size, axis=0).sum(axis=(1, 2))
    occupied = float(grid.sum())
    normal = frame[:, 0].copy()
    candidates = []
    for m in np.argsort(overlap)[::-1][:MIRROR_CANDIDATES]:
        plane = MirrorPlane(normal, float(origin[0] + (m + 1) * MIRROR_SEARCH_CELL_MM / 2.0))
        if _lateral_share(ras, plane) >= MIRROR_MIN_LATERAL_SHARE:
            candidates.append((float(overlap[m]) / occupied, plane))
    return candidates


def _lateral_share(ras: np.ndarray, plane: MirrorPlane) -> float:
    """The smaller share of the points lying more than MIRROR_MIN_LATERAL_MM out on one side."""
    signed = plane.signed_distance(ras)
    return float(min(np.mean(signed > MIRROR_MIN_LATERAL_MM), np.mean(signed < -MIRROR_MIN_LATERAL_MM)))


def _symmetry(sample: np.ndarray, tree: cKDTree, plane: MirrorPlane) -> float:
    """Share of the points whose mirror image lies within MIRROR_GRID_MM of a point."""
    distance, _ = tree.query(plane.mirror(sample), distance_upper_bound=MIRROR_GRID_MM)
    return float(np.mean(np.isfinite(distance)))


def _fit_plane(sample: np.ndarray, tree: cKDTree, plane: MirrorPlane) -> MirrorPlane:
    """Turn and tilt the plane to the skeleton's own symmetry (a patient lies a few
    degrees turned or tilted): each bone point is paired with the bone nearest its
    mirror image, the plane is fitted to the pairs, and so on a few times."""
    fitted = plane
    for iteration in range(MIRROR_FIT_ITERATIONS):
        # Pairs are sought far out while the plane may be a few degrees off, then ever
        # closer: bone without a counterpart (cut by the field of view on one side only,
        # HO, a leg held otherwise) stops pulling the plane off the skeleton's symmetry.
        reach = max(MIRROR_GRID_MM, MIRROR_FIT_REACH_MM * MIRROR_FIT_REACH_SHRINK ** iteration)
        distance, nearest = tree.query(fitted.mirror(sample), distance_upper_bound=reach)
        paired = np.isfinite(distance)
        if np.count_nonzero(paired) < 100:
            return plane
        first, second = sample[paired], sample[nearest[paired]]
        # Each pair lies across the plane: the normal is their common direction.
        across = first - second
        normal = np.linalg.eigh(across.T @ across)[1][:, -1]
        normal *= np.sign(normal @ fitted.normal) or 1.0
        moved = MirrorPlane(normal, float(np.mean(0.5 * (first + second) @ normal)))
        change = abs(moved.offset - fitted.offset) + np.degrees(np.arccos(min(1.0, float(normal @ fitted.normal))))
        fitted = moved
        if change < 0.05 and reach == MIRROR_GRID_MM:
            break
    tilt = np.degrees(np.arccos(min(1.0, abs(float(fitted.normal @ plane.normal)))))
    return fitted if tilt <= MIRROR_MAX_TILT_DEG else plane


def body_midline(bone: np.ndarray, geometry: VolumeGeometry, lattice_points=None) -> MirrorPlane | None:
    """The mid-sagittal plane across which ``bone`` is most symmetric, or None when the
    image does not hold both sides of a pelvis. ``lattice_points``: its
    :func:`bone_lattice`, when already made."""
    lattice, cells, ras = lattice_points if lattice_points is not None else bone_lattice(bone, geometry)
    if len(cells) < 1000:
        return None
    # Worked on from the bone's own corner, rounded far below a voxel: the fits then do
    # the same sums wherever the image lies in the world, and find the same plane.
    corner = column_min(ras)
    ras = np.round(ras - corner, 6)
    sample = _sample_by_position(ras, MIRROR_FIT_POINTS)
    tree = cKDTree(sample)
    surface = functools.cache(lambda: _surface_sample(lattice, cells, ras))
    plane = _first_symmetric_plane([plane for _, plane in _candidate_midlines(ras)], sample, tree, surface)
    if plane is None:
        # Not across R: perhaps the patient lies turned or tilted beyond what the fit turns
        # (searched on the sample: 44 directions cost what one does on all the points).
        turned = [candidate for turn_deg, tilt_deg in itertools.product(MIRROR_TURNS_DEG, MIRROR_TILTS_DEG)
                  if turn_deg or tilt_deg
                  for candidate in _candidate_midlines(sample, _turned_frame(turn_deg, tilt_deg))]
        turned.sort(key=lambda candidate: -candidate[0])
        plane = _first_symmetric_plane([plane for _, plane in turned[:MIRROR_CANDIDATES]], sample, tree, surface)
    return None if plane is None else MirrorPlane(plane.normal, plane.offset + float(plane.normal @ corner))


def _first_symmetric_plane(planes, sample: np.ndarray, tree: cKDTree, surface) -> MirrorPlane | None:
    """The first of the starting ``planes`` that, fitted to the skeleton, it is symmetric
    across, in its bone and on its surface (``surface()``: a sample of it and its tree)."""
    for start in planes:
        plane = _fit_plane(sample, tree, start)
        if (_symmetry(sample, tree, plane) >= MIRROR_MIN_SYMMETRY
                and _lateral_share(sample, plane) >= MIRROR_MIN_LATERAL_SHARE
                and _symmetry(*surface(), plane) >= MIRROR_MIN_SURFACE_SYMMETRY):
            return plane
    return None


def _surface_sample(lattice: np.ndarray, cells: np.ndarray, ras: np.ndarray) -> tuple[np.ndarray, cKDTree]:
    """The points of the bone's surface on the midline-search ``lattice``: of its bone
    ``cells`` (at points ``ras``), those with a lattice neighbour outside the bone (where
    the image cuts the bone is no surface); at most MIRROR_FIT_POINTS, and their tree."""
    inside = np.pad(lattice, 1, constant_values=True)
    # The cells with all six neighbours in the bone, by comparing the lattice with itself
    # shifted (a few ms) rather than looking each cell's neighbours up (six gathers).
    interior = np.array(lattice, bool)
    for axis in range(3):
        for step in (-1, 1):
            shifted = [slice(1, -1)] * 3
            shifted[axis] = slice(1 + step, inside.shape[axis] - 1 + step)
            interior &= inside[tuple(shifted)]
    on_surface = ~interior[tuple(cells.T)]
    points = _sample_by_position(ras[on_surface], MIRROR_FIT_POINTS)
    return points, cKDTree(points)


def ct_body_midline(ct_hu: np.ndarray, geometry: VolumeGeometry,
                    bone_threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU) -> MirrorPlane | None:
    """The body's midline from the skeleton of a whole CT (None unless both sides of a
    pelvis are imaged), read on a grid as coarse as the midline search allows."""
    steps = _midline_sampling_steps(geometry)
    start = tuple(slice(int(first), None) for first in _lattice_phase(geometry, steps))
    sampled = ct_hu[start][::steps[0], ::steps[1], ::steps[2]]
    sampled_geometry = geometry.cropped(start).strided(steps)
    # Specks of noise would pass the threshold all over a noisy CT, as in the HO step.
    sampled, _ = smoothed_for_bone(sampled, sampled_geometry, bone_threshold_hu)
    bone = at_least(sampled, bone_threshold_hu) & ~at_least(sampled, METAL_THRESHOLD_HU)
    return body_midline(bone, sampled_geometry)


def side_of_midline(points_ras: np.ndarray, plane: MirrorPlane) -> tuple[str | None, float]:
    """The patient's side ('right' or 'left') the points lie on, judged by their median,
    and their distance (mm) from the midline; the side is None within
    MIDLINE_SIDE_MARGIN_MM of it. The plane's normal points to the patient's right (+R)."""
    signed = float(np.median(plane.signed_distance(np.atleast_2d(points_ras))))
    if abs(signed) < MIDLINE_SIDE_MARGIN_MM:
        return None, abs(signed)
    return ("right" if signed > 0 else "left"), abs(signed)


def side_of_body(point_ras, plane: MirrorPlane | None) -> str:
    """The patient's side ('right' or 'left') a point lies on, or '' when it cannot be
    told: the midline is unknown (an image of one hip: no skeleton to mirror) or the
    point lies within MIDLINE_SIDE_MARGIN_MM of it. The image's own coordinates are not
    used instead: a one-hip reconstruction, a reformat or a converted file may place
    the origin anywhere, and a side given wrong is worse than none."""
    if plane is None:
        return ""
    side, _ = side_of_midline(np.asarray(point_ras, float), plane)
    return side or ""


def distance_to_bone_at(ras: np.ndarray, bone: np.ndarray, geometry: VolumeGeometry, reach_mm: float) -> np.ndarray:
    """Distance (mm) from each RAS point's voxel to ``bone``, read in the block around
    the points; inf for points off the grid. Exact up to ``reach_mm`` (bone farther
    out of the block is not seen)."""
    distance = np.full(len(ras), np.inf)
    # The points' indices serve both for the block and for reading it (a large island
    # has some 100 000 points).
    kji = geometry.ras_to_kji_points(np.atleast_2d(np.asarray(ras, dtype=float)))
    box = geometry.bounding_slices_of_kji_box(kji, reach_mm + max(geometry.spacing_kji))
    if any(s.stop <= s.start for s in box):
        return distance
    to_bone = distance_outside(bone[box], geometry.cropped(box))
    index = np.rint(kji).astype(int) - [s.start for s in box]
    inside = all_columns((index >= 0) & (index < to_bone.shape))
    distance[inside] = to_bone[tuple(index[inside].T)]
    return distance


def mirrored_in_bone(island: np.ndarray, island_slices, bone: np.ndarray, geometry: VolumeGeometry,
                     plane: MirrorPlane) -> bool:
    """Whether most of an island (a mask over ``island_slices`` of ``bone``'s grid) lands
    within MIRROR_TOLERANCE_MM of bone when mirrored across ``plane``."""
    ras = plane.mirror(geometry.kji_to_ras_points(np.argwhere(island) + [s.start for s in island_slices]))
    matched = np.count_nonzero(distance_to_bone_at(ras, bone, geometry, MIRROR_TOLERANCE_MM) <= MIRROR_TOLERANCE_MM)
    return matched >= MIRROR_MATCH_FRACTION * len(ras)


class BoneAcrossMidline:
    """The bone of a block seen from the other side of the body: where each native
    bone's counterpart should be, and how far a point is from bone there.

    ``block`` is where ``bone`` lies in the image of ``image_shape``: all the image's
    bone is in the block, the rest of the image is imaged soft tissue and air. With the
    patient turned on the table, a bone's counterpart may lie outside the bone's own
    bounding box yet well inside the image. ``unimaged`` (over the image) is the padding
    outside the field of view, where nothing was imaged.
    """

    def __init__(self, bone: np.ndarray, geometry: VolumeGeometry, plane: MirrorPlane, block=None,
                 image_shape=None, unimaged=None, points: np.ndarray | None = None):
        self.bone, self.geometry, self.plane = bone, geometry, plane
        # ``points``: the bone's :func:`sampled_bone_points`, when the midline search made them.
        self.points = points if points is not None else sampled_bone_points(bone, geometry)
        self.tree = cKDTree(self.points)
        start = np.array([s.start for s in block]) if block is not None else np.zeros(3, int)
        shape = np.asarray(image_shape if image_shape is not None else bone.shape)
        # The image's first and last voxel, in the block's indices.
        self.image_first, self.image_last = -start, shape - start - 1
        self.unimaged = unimaged

    def fit(self, ras: np.ndarray):
        """The rigid motion (rotation, shift) taking the mirror image of ``ras`` onto bone
        across the midline, or None when no trustworthy fit exists."""
        source = self.plane.mirror(_sample_by_position(ras, COUNTERPART_FIT_POINTS))
        rotation, shift = np.eye(3), np.zeros(3)
        residual = np.inf
        # First the closest pairs, then the bone that matches alone, so that HO on the
        # bone no longer pulls the fit.
        for closest_only in (False, True):
            for _ in range(COUNTERPART_FIT_ITERATIONS):
                distance, nearest = self.tree.query(source @ rotation.T + shift)
                paired = distance <= np.quantile(distance, COUNTERPART_FIT_KEEP)
                if closest_only and np.count_nonzero(distance <= COUNTERPART_FIT_CLOSE_MM) >= 0.5 * len(distance):
                    paired = distance <= COUNTERPART_FIT_CLOSE_MM
                if not closest_only:  # how well the bone as a whole matches
                    residual = float(distance[paired].mean())
                moved, target = source[paired], self.points[nearest[paired]]
                moved_centre, target_centre = moved.mean(axis=0), target.mean(axis=0)
                u, _, vt = np.linalg.svd((moved - moved_centre).T @ (target - target_centre))
                reflection = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T)) or 1.0])
                new_rotation = vt.T @ reflection @ u.T
                new_shift = target_centre - moved_centre @ new_rotation.T
                change = np.abs(new_rotation - rotation).max() * 100.0 + np.abs(new_shift - shift).max()
                rotation, shift = new_rotation, new_shift
                if change < 0.02:
                    break
        turn = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)))
        if turn > COUNTERPART_MAX_TURN_DEG or np.linalg.norm(shift) > COUNTERPART_MAX_SHIFT_MM \
                or residual > COUNTERPART_MAX_RESIDUAL_MM:
            return None
        return rotation, shift

    def counterpart(self, ras: np.ndarray, motion) -> np.ndarray:
        rotation, shift = motion
        return self.plane.mirror(ras) @ rotation.T + shift

    def inside(self, ras: np.ndarray) -> np.ndarray:
        """Whether points lie in the image, within its field of view (where the other side
        was imaged)."""
        index = self.geometry.ras_to_kji_points(ras)
        inside = all_columns((index >= self.image_first - 0.5) & (index <= self.image_last + 0.5))
        if self.unimaged is not None and inside.any():
            voxel = np.clip(np.rint(index[inside] - self.image_first).astype(int), 0, self.image_last - self.image_first)
            inside[inside] = ~self.unimaged[tuple(voxel.T)]
        return inside

    def coarse_distance(self, ras: np.ndarray) -> np.ndarray:
        """Distance (mm) to the nearest bone point (2 mm apart) across the midline."""
        return self.tree.query(ras)[0]

    def fine_distance(self, ras: np.ndarray, reach_mm: float) -> np.ndarray:
        """Distance (mm) to bone on the voxel grid, exact up to ``reach_mm``; off the
        block, where the image holds no bone, to the nearest bone point."""
        distance = distance_to_bone_at(ras, self.bone, self.geometry, reach_mm)
        off_block = np.isinf(distance)
        if off_block.any():
            distance[off_block] = self.coarse_distance(ras[off_block])
        return distance
