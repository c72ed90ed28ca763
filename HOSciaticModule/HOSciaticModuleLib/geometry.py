"""Voxel grid geometry: the link between numpy arrays and patient (RAS) space.

Every algorithm in this package works on numpy arrays in Slicer's (k, j, i)
order together with a :class:`VolumeGeometry` that carries the full
IJK-to-RAS matrix (spacing, origin and direction). Nothing assumes an
axis-aligned volume: distances are computed with the per-axis spacing, which is
exact because the direction matrix is required to be orthonormal.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import edt
import numpy as np

from .errors import InputError

#: Tolerance on the orthonormality of the direction matrix (dot products and norms).
DIRECTION_ORTHOGONALITY_TOLERANCE = 1e-3
#: Voxel sizes of CT and MR of the hip: 0.3-1 mm in plane, slices up to 5 mm (old MR
#: protocols up to 10). A spacing a thousand times off is a header in metres or
#: micrometres; voxels larger than the sciatic nerve is wide resolve neither it nor HO.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 10.0
#: A block edge this close (in voxels) to a whole index is taken as lying on it. Seeds
#: clicked in a slice view lie on a slice's centre, and margins are whole numbers of
#: slices, so edges fall on whole indices; a header stored in single precision (NIfTI)
#: moves them by 1e-5 voxel, which must not move the block by a voxel.
INDEX_ROUNDOFF_VOXELS = 1e-3


@dataclass(frozen=True)
class VolumeGeometry:
    """Shape and IJK-to-RAS matrix of a voxel grid.

    ``shape_kji`` is the numpy shape (slices, rows, columns); ``ijk_to_ras`` maps
    homogeneous (i, j, k, 1) voxel indices to RAS millimetres.
    """

    ijk_to_ras: np.ndarray
    shape_kji: tuple[int, int, int]

    def __post_init__(self):
        matrix = np.asarray(self.ijk_to_ras, dtype=float).reshape(4, 4)
        object.__setattr__(self, "ijk_to_ras", matrix)
        object.__setattr__(self, "shape_kji", tuple(int(n) for n in self.shape_kji))

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_spacing_origin_directions(cls, shape_kji, spacing_ijk, origin_ras, directions_ras=None):
        """Build a geometry from spacing (i, j, k), origin and a 3x3 matrix whose
        columns are the RAS unit vectors of the i, j and k axes."""
        directions = np.eye(3) if directions_ras is None else np.asarray(directions_ras, dtype=float)
        matrix = np.eye(4)
        matrix[:3, :3] = directions * np.asarray(spacing_ijk, dtype=float)[np.newaxis, :]
        matrix[:3, 3] = origin_ras
        return cls(matrix, tuple(shape_kji))

    # -- derived properties -----------------------------------------------------------
    @property
    def spacing_ijk(self) -> np.ndarray:
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Spacing in array-axis order, for ndimage / edt ``sampling`` arguments."""
        return tuple(float(s) for s in self.spacing_ijk[::-1])

    @property
    def directions(self) -> np.ndarray:
        """3x3 matrix whose columns are the RAS unit vectors of the i, j, k axes."""
        return self.ijk_to_ras[:3, :3] / self.spacing_ijk[np.newaxis, :]

    @property
    def origin_ras(self) -> np.ndarray:
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_ijk))

    @property
    def voxel_volume_ml(self) -> float:
        return self.voxel_volume_mm3 / 1000.0

    @property
    def voxel_count(self) -> int:
        return int(np.prod(self.shape_kji))

    # -- point mapping ----------------------------------------------------------------
    def ijk_to_ras_points(self, ijk) -> np.ndarray:
        """Map (N, 3) continuous (i, j, k) indices to (N, 3) RAS points."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras) -> np.ndarray:
        """Map (N, 3) RAS points to continuous (N, 3) (i, j, k) indices."""
        ras = np.atleast_2d(np.asarray(ras, dtype=float))
        inverse = self.ras_to_ijk
        return ras @ inverse[:3, :3].T + inverse[:3, 3]

    def kji_to_ras_points(self, kji) -> np.ndarray:
        """Map (N, 3) array indices (k, j, i) to RAS points."""
        return self.ijk_to_ras_points(np.atleast_2d(np.asarray(kji, dtype=float))[:, ::-1])

    def ras_to_kji_points(self, ras) -> np.ndarray:
        """Map RAS points to continuous array indices (k, j, i)."""
        return self.ras_to_ijk_points(ras)[:, ::-1]

    def contains_ras(self, ras, margin_voxels: float = 0.0) -> np.ndarray:
        """True for each RAS point that lies inside the grid (voxel centres +- 0.5)."""
        ijk = self.ras_to_ijk_points(ras)
        upper = np.asarray(self.shape_kji[::-1], dtype=float) - 0.5 - margin_voxels
        return np.all((ijk >= -0.5 + margin_voxels) & (ijk <= upper), axis=1)

    def block_corners_ras(self, kji_slices) -> np.ndarray:
        """The RAS centres of the eight corner voxels of the block ``array[kji_slices]``."""
        return self.kji_to_ras_points([[k, j, i] for k in (kji_slices[0].start, kji_slices[0].stop - 1)
                                       for j in (kji_slices[1].start, kji_slices[1].stop - 1)
                                       for i in (kji_slices[2].start, kji_slices[2].stop - 1)])

    def voxel_ras_grid(self, kji_slices=None) -> np.ndarray:
        """RAS coordinates of every voxel centre as an array of shape (..., 3).

        ``kji_slices`` restricts the grid to a block, as a tuple of three slices.
        """
        if kji_slices is None:
            kji_slices = tuple(slice(0, n) for n in self.shape_kji)
        k, j, i = (np.arange(s.start or 0, s.stop, dtype=np.float32) for s in kji_slices)
        matrix = self.ijk_to_ras.astype(np.float32)
        grid = (
            i[np.newaxis, np.newaxis, :, np.newaxis] * matrix[:3, 0]
            + j[np.newaxis, :, np.newaxis, np.newaxis] * matrix[:3, 1]
            + k[:, np.newaxis, np.newaxis, np.newaxis] * matrix[:3, 2]
            + matrix[:3, 3]
        )
        return grid

    # -- sub-grids --------------------------------------------------------------------
    def cropped(self, kji_slices) -> "VolumeGeometry":
        """Geometry of the block ``array[kji_slices]`` (slices with step 1)."""
        offsets_ijk = np.array([kji_slices[2].start or 0, kji_slices[1].start or 0, kji_slices[0].start or 0], float)
        matrix = self.ijk_to_ras.copy()
        matrix[:3, 3] = self.ijk_to_ras_points(offsets_ijk)[0]
        shape = tuple(
            len(range(*s.indices(n))) for s, n in zip(kji_slices, self.shape_kji)
        )
        return VolumeGeometry(matrix, shape)

    def strided(self, steps_kji) -> "VolumeGeometry":
        """Geometry of ``array[::a, ::b, ::c]`` for ``steps_kji`` = (a, b, c)."""
        matrix = self.ijk_to_ras.copy()
        matrix[:3, :3] = matrix[:3, :3] * np.asarray(steps_kji[::-1], float)[np.newaxis, :]
        shape = tuple(-(-n // int(step)) for n, step in zip(self.shape_kji, steps_kji))
        return VolumeGeometry(matrix, shape)

    def bounding_slices_of_ras_box(self, ras_points, margin_mm: float) -> tuple[slice, slice, slice]:
        """Array slices (k, j, i) of the smallest block that holds the given RAS points
        plus a margin, clipped to the grid."""
        ras_points = np.atleast_2d(np.asarray(ras_points, dtype=float))
        return self.bounding_slices_of_kji_box(self.ras_to_kji_points(ras_points), margin_mm)

    def bounding_slices_of_kji_box(self, kji, margin_mm: float) -> tuple[slice, slice, slice]:
        """:meth:`bounding_slices_of_ras_box` of points given by their continuous array
        indices (k, j, i), for a caller that needs those indices too."""
        margin_voxels = margin_mm / np.asarray(self.spacing_kji)
        low = np.floor(column_min(kji) - margin_voxels + INDEX_ROUNDOFF_VOXELS).astype(int)
        high = np.ceil(column_max(kji) + margin_voxels - INDEX_ROUNDOFF_VOXELS).astype(int) + 1
        low = np.clip(low, 0, self.shape_kji)
        high = np.clip(high, 0, self.shape_kji)
        return tuple(slice(int(a), int(b)) for a, b in zip(low, high))

    # -- validation -------------------------------------------------------------------
    def validate(self, what: str = "the volume") -> None:
        """Raise :class:`InputError` for geometry the algorithms cannot honour."""
        if len(self.shape_kji) != 3 or min(self.shape_kji) < 1:
            raise InputError(f"{what} has shape {self.shape_kji}; a 3D volume is required.")
        if not np.all(np.isfinite(self.ijk_to_ras)):
            raise InputError(f"{what} has a non-finite IJK-to-RAS matrix; fix the image header (spacing, origin, direction).")
        spacing = self.spacing_ijk
        if np.any(spacing <= 1e-6):
            raise InputError(
                f"{what} has zero or negative voxel spacing {_millimetres(spacing)} mm; "
                "fix the spacing in the image header."
            )
        if np.any(spacing < MIN_SPACING_MM):
            raise InputError(
                f"{what} has voxels of {_millimetres(spacing)} mm, far finer than any CT or MR of the hip "
                "(0.3 mm and more): the header's spacing is probably in another unit (metres, micrometres). "
                "Fix the spacing in the image header (in mm)."
            )
        if np.any(spacing > MAX_SPACING_MM):
            raise InputError(
                f"{what} has voxels of {_millimetres(spacing)} mm: larger than {MAX_SPACING_MM:.0f} mm, they cannot "
                "resolve the sciatic nerve (about 10 mm wide) nor measure HO. Use a reconstruction with slices of "
                "5 mm or thinner (or check the spacing in the image header)."
            )
        if not orthonormal(self.directions):
            raise InputError(
                f"{what} has a non-orthogonal (sheared) direction matrix; distances and angles would be wrong. "
                "Resample it onto an orthogonal grid first (for example with Slicer's Resample Scalar Volume "
                "or by harden-transforming a sheared acquisition)."
            )


def corner_shift_mm(first_ijk_to_ras, second_ijk_to_ras, size_ijk) -> float:
    """How far apart (mm) two IJK-to-RAS matrices put an image of ``size_ijk`` voxels:
    the largest distance between where they place one of its corner voxels."""
    last = np.asarray(size_ijk, float) - 1.0
    corners = np.array([[i, j, k, 1.0] for i in (0.0, last[0]) for j in (0.0, last[1]) for k in (0.0, last[2])])
    shift = corners @ (np.asarray(first_ijk_to_ras, float) - np.asarray(second_ijk_to_ras, float)).T
    return float(np.linalg.norm(shift[:, :3], axis=1).max())


def orthonormal(directions: np.ndarray) -> bool:
    """Whether unit axis columns are at right angles (within DIRECTION_ORTHOGONALITY_TOLERANCE)."""
    return float(np.max(np.abs(directions.T @ directions - np.eye(3)))) <= DIRECTION_ORTHOGONALITY_TOLERANCE


def _millimetres(values) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values)


def distance_inside(mask: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it (0
    outside): the radius of the largest ball centred there that stays in the mask."""
    return edt.edt(np.ascontiguousarray(mask, dtype=np.uint8), anisotropy=geometry.spacing_kji,
                   black_border=False, parallel=0).astype(np.float32, copy=False)


def distance_outside(mask: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Distance (mm) from each voxel outside ``mask`` to the nearest voxel of it (0 inside)."""
    return distance_inside(~np.asarray(mask, bool), geometry)


def arc_length_mm(points: np.ndarray) -> np.ndarray:
    """Length along a polyline (N, 3) from its first point to each of its points."""
    return np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]


def block_within(outer, inner) -> tuple:
    """The slices, in the whole array, of the block ``inner`` given within the block ``outer``."""
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))


def block_relative_to(block, outer) -> tuple:
    """The slices, within the block ``outer``, of ``block`` given in the whole array (which
    lies inside ``outer``): the inverse of :func:`block_within`."""
    return tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(block, outer))


def column_min(points: np.ndarray) -> np.ndarray:
    """``points.min(axis=0)`` of an (N, d) array, taken column by column: along the first
    axis of a C-ordered array NumPy's reduction runs its inner loop over one row's d
    values (about 8 ms instead of 1 ms for 230 000 points)."""
    return np.array([points[:, axis].min() for axis in range(points.shape[1])], dtype=points.dtype)


def column_max(points: np.ndarray) -> np.ndarray:
    """``points.max(axis=0)`` of an (N, d) array, column by column (see :func:`column_min`)."""
    return np.array([points[:, axis].max() for axis in range(points.shape[1])], dtype=points.dtype)


def all_columns(mask: np.ndarray) -> np.ndarray:
    """``np.all(mask, axis=1)`` of an (N, d) boolean array, column by column (see
    :func:`column_min`)."""
    every = mask[:, 0].copy()
    for axis in range(1, mask.shape[1]):
        every &= mask[:, axis]
    return every


def bounding_slices(mask: np.ndarray):
    """Slices of the smallest block holding every True voxel, or None when empty.

    For a volume, the slabs holding any voxel are found first and their planes joined
    into one: two passes over the voxels along their storage order, where reducing over
    each pair of axes in turn takes three, two of them across it (5-6 times as long)."""
    if mask.ndim == 3:
        slabs = np.flatnonzero(mask.any(axis=(1, 2)))
        if slabs.size == 0:
            return None
        first, last = int(slabs[0]), int(slabs[-1]) + 1
        plane = np.logical_or.reduce(mask[first:last], axis=0)
        rows, columns = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        return (slice(first, last), slice(int(rows[0]), int(rows[-1]) + 1),
                slice(int(columns[0]), int(columns[-1]) + 1))
    bounds = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        if present.size == 0:
            return None
        bounds.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(bounds)


#: Slabs pay when an array holds at least this many voxels per label: scanning in slabs
#: saves about 1.3 ns per voxel on two cores, joining the slabs' boxes costs about 2.5 us
#: per label (43 000 specks in 22 M voxels took longer in slabs, 11 000 less long).
VOXELS_PER_LABEL_FOR_SLABS = 2000


def label_boxes(labels: np.ndarray, count: int | None = None, slab_voxels: int = 4_000_000) -> list:
    """The bounding slices of each label 1..max of ``labels`` (None for a label absent),
    as :func:`scipy.ndimage.find_objects` gives them. A large array with few labels
    (``count``, when known) is scanned in slabs along its first axis side by side (the
    scan runs outside Python's lock), each label's boxes in the slabs then joined."""
    from scipy import ndimage

    few_labels = count is not None and count * VOXELS_PER_LABEL_FOR_SLABS <= labels.size
    parts = min(os.cpu_count() or 1, 4, labels.shape[0], max(1, labels.size // slab_voxels)) if few_labels else 1
    if parts <= 1:
        return ndimage.find_objects(labels)
    edges = np.linspace(0, labels.shape[0], parts + 1).astype(int).tolist()
    with ThreadPoolExecutor(parts, thread_name_prefix="hosciatic-boxes") as executor:
        found = list(executor.map(lambda n: ndimage.find_objects(labels[edges[n]:edges[n + 1]]), range(parts)))
    # The first slab starts at the array's first plane: its boxes stand as they are.
    boxes = found[0] + [None] * (max(len(part) for part in found) - len(found[0]))
    for start, part in zip(edges[1:], found[1:]):
        for index, box in enumerate(part):
            if box is None:
                continue
            box = (slice(box[0].start + start, box[0].stop + start), *box[1:])
            known = boxes[index]
            boxes[index] = box if known is None else tuple(
                slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(known, box))
    return boxes


def sparse_label_boxes(labels: np.ndarray) -> list:
    """:func:`label_boxes` of labels that fill a small part of the array, searched within
    the block that holds them all: the box scan costs several times a pass that only
    asks whether a voxel is set."""
    around = bounding_slices(labels)
    if around is None:
        return []
    return [None if box is None else block_within(around, box) for box in label_boxes(labels[around])]


def pad_block(block, shape, margin):
    """``block`` (slices) grown by ``margin`` voxels on every side (one number, or one per
    axis), clipped to ``shape``."""
    margins = np.broadcast_to(np.asarray(margin, int), (len(block),))
    return tuple(slice(max(s.start - int(m), 0), min(s.stop + int(m), n)) for s, m, n in zip(block, margins, shape))


def bounding_block(mask: np.ndarray, margin_voxels: int, margin_mm: float = 0.0,
                   geometry: VolumeGeometry | None = None):
    """Bounding slices of ``mask`` (which must not be empty), padded by ``margin_voxels``
    plus ``margin_mm`` converted per axis."""
    extra = (np.ceil(margin_mm / np.asarray(geometry.spacing_kji)).astype(int) if geometry is not None
             else np.zeros(3, int))
    return pad_block(bounding_slices(mask), mask.shape, margin_voxels + extra)


def grown_across_faces(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every voxel sharing a face with it: ``ndimage.binary_dilation`` with
    its default structure, as six shifted copies joined, the same voxels in a tenth of its
    time or less (0.05 s against 0.7 s on a pelvis-wide block of scattered bone)."""
    mask = np.asarray(mask, bool)
    grown = mask.copy()
    for axis in range(mask.ndim):
        lower, upper = [slice(None)] * mask.ndim, [slice(None)] * mask.ndim
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        grown[tuple(lower)] |= mask[tuple(upper)]
        grown[tuple(upper)] |= mask[tuple(lower)]
    return grown


def within_or_next_to(mask: np.ndarray, geometry: VolumeGeometry, reach_mm: float) -> np.ndarray:
    """Voxels within ``reach_mm`` of ``mask`` (its own included), and at least those next
    to it: on a grid coarser than the reach, none other lies within it."""
    mask = np.asarray(mask, bool)
    near = np.zeros(mask.shape, bool)
    if not mask.any():
        return near
    # Only the box holding the mask and its reach (and the voxels next to it) can be
    # near it; there the distances are those of the whole array (every voxel of the
    # mask is inside the box).
    around = bounding_block(mask, 1, reach_mm, geometry)
    inside = mask[around]
    near[around] = distance_inside(~inside, geometry) <= reach_mm
    if reach_mm < 1.01 * max(geometry.spacing_kji):
        # A voxel next to the mask along a coarser axis lies beyond the reach (or at it,
        # where the distance's rounding may put it a hair beyond).
        near[around] |= grown_across_faces(inside)
    return near
