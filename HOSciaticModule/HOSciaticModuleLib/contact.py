"""Contact and encasement between HO and the sciatic nerve.

Definitions (the figures a surgeon plans the excision from):

* **Contact tolerance** τ (default 1.0 mm).
* **Stations** every 1 mm of arc length along the nerve centreline; the cross-section
  at a station is the plane orthogonal to the centreline.
* **Minimum distance** — the smallest Euclidean distance between the nerve surface and
  any HO surface (0 where they touch or overlap), with the closest pair of points;
  per island and per nerve. Surfaces are those of the voxel masks (each voxel a box
  of its spacing), so distances are exact for the masks, at any spacing and
  orientation.
* **In contact** — a point of the nerve surface whose distance to HO is ≤ τ (τ no finer
  than the surfaces are measured to, see ``CONTACT_RESOLUTION_VOXELS``).
* **Contact area** (mm²) — area of the nerve surface in contact, summed over the
  stations (contact arc length × 1 mm); per island and per nerve; also as a
  fraction of the nerve surface in the analysed span.
* **Encasement angle** at a station (0–360°) — the angle, around the nerve's centroid
  in that cross-section, covered by the parts of the nerve boundary that are in
  contact (union of arcs; 360° = surrounded). A gap-free HO shell covering θ of a
  nerve of radius r measures about θ + 4·asin(τ/2r): each edge gains the arc within
  τ of the shell's end.
* **Contact length** — arc length of all stations with encasement > 0; the longest
  contiguous run; the runs themselves.
* **Class** — ``none`` (min distance > τ, or no station in contact), ``abutment`` (0 < max ≤ 180°),
  ``encasement`` (180° < max < 360°), ``circumferential`` (360° at ≥ 1 station).
* **Deflection** (mm) — the largest distance, inside a contact run, between the
  centreline and the smooth course fitted through the centreline on both sides of
  the run (a cubic in arc length through the stations 3–25 mm beyond each end).
* **Thickening ratio** — largest cross-sectional area in a contact run ÷ median area
  of the stations more than 10 mm from any contact.
* **Area against the other side** — with both sciatic nerves traced, the largest ratio,
  over a contact run, of a station's area to the other nerve's at the mirror image of
  that station across the body's midline.
* **Other side's diameter** — per station, with both nerves traced: the other nerve's
  equivalent diameter at its station nearest the mirror image of this one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .defaults import DEFAULT_BONE_THRESHOLD_HU, DEFAULT_CONTACT_TOLERANCE_MM, MAX_CONTACT_TOLERANCE_MM
from .errors import InputError
from .geometry import (VolumeGeometry, arc_length_mm, block_within, bounding_slices, grown_across_faces, pad_block,
                       sparse_label_boxes, within_or_next_to)
from .hounsfield import METAL_THRESHOLD_HU, at_least, looks_like_ct
from .memorypages import with_single_threaded_blas
from .nerve import frames, resample_polyline, star_polygon_area_centroid, stretch_along
from .progress import ProgressCallback, report

ENCASEMENT_CLASSES = ("none", "abutment", "encasement", "circumferential")
STATION_SPACING_MM = 1.0
#: Rays per cross-section, 4 deg apart: 0.35 mm between neighbours on a nerve 10 mm
#: wide, finer than the voxels it was traced on (180 rays gave the same figures).
SECTION_RAYS = 90
FAR_RAY_STRIDE = 3
#: Longest section ray: beyond the half-width of the largest swollen sciatic nerve (about 25 mm wide).
SECTION_MAX_RADIUS_MM = 16.0
SECTION_STEP_MM = 1.0
#: Halvings of the step around each boundary crossing (1 mm / 2^6 = 0.016 mm).
SECTION_BISECTIONS = 6
#: Encasement at or above this counts as surrounded (the boundary is sampled every 4 deg).
CIRCUMFERENTIAL_DEG = 359.0
#: At the greater sciatic notch and behind the acetabulum and ischium the sciatic nerve
#: lies against bone on one side only (muscle, tendon and ligament on the others): bone
#: around more than half of it is not native anatomy.
NATIVE_BONE_MAX_ENCASEMENT_DEG = 180.0
#: ... judged on the bone touching the nerve, within this distance (about two CT voxels)
#: whatever contact tolerance the reader chose for HO: the sciatic notch is concave, and
#: a few millimetres out it covers more of the nerve.
NATIVE_BONE_WRAP_TOLERANCE_MM = 2.0
#: An HO segment's edge sits at half its cortex's level: the blurred voxels just outside
#: it (a CT's blur, one or two voxels) are still above the bone threshold, and are that
#: HO's, not other bone: those within this reach, and at least the voxels next to it.
HO_RIM_MM = 2.0
#: Stations on each side of a contact run used to fit the undeflected course.
DEFLECTION_FIT_MM = (3.0, 25.0)
#: Stations farther than this from any contact give the reference area.
THICKENING_REFERENCE_DISTANCE_MM = 10.0
#: A nerve swells over centimetres; the areas are taken as running medians over this
#: many stations (5 mm), and the stations at each end of a contact run are left out:
#: there the HO's rim blurs into the nerve and a section can be drawn too large, which
#: is not a swelling.
THICKENING_WINDOW_STATIONS = 5
#: The other side's nerve is compared where it passes within this distance of a
#: station's mirror image across the body's midline. The two nerves are not mirror
#: images of each other (legs lie turned differently, the pelvis tilts, HO deflects a
#: nerve by up to about 10 mm): the match is mostly a matter of level, as the nerve runs
#: down the buttock; farther than this, the other nerve at that level was not traced.
CONTRALATERAL_MATCH_MM = 15.0
#: Nearest voxels examined per query; the closest voxel box is among them.
NEAREST_VOXELS = 8
#: Vertices of the HO surface whose triangles are measured against a point.
NEAREST_SURFACE_VERTICES = 3
#: Only HO this close to the nerve can touch it; smooth surfaces are built there.
CONTACT_MARGIN_MM = 12.0
#: Smoothing of the masks before sub-voxel surfaces are taken (in voxels).
SURFACE_SMOOTHING_VOXELS = 0.7
#: The smoothing kernel's half-width in standard deviations (scipy's own default).
SURFACE_SMOOTHING_TRUNCATE = 4.0
#: Voxels from a mask beyond which its smoothed field is zero: the kernel's half-width
#: (as scipy rounds it), and one more for the linear interpolation that reads the field.
SURFACE_SMOOTHING_REACH_VOXELS = int(SURFACE_SMOOTHING_TRUNCATE * SURFACE_SMOOTHING_VOXELS + 0.5) + 1
#: Region around the closest voxels where the gap is refined.
REFINE_MARGIN_MM = 6.0
#: The smoothed surfaces are measured to a fraction of a voxel: masks that touch read a
#: few hundredths of a millimetre apart (up to 0.1 mm on 1 x 1 x 2 mm voxels, a tenth of
#: their mean edge, on the phantoms), so a tolerance is never finer than this many voxels.
CONTACT_RESOLUTION_VOXELS = 0.1


@dataclass
class IslandContact:
    label: int
    min_distance_mm: float
    closest_points_ras: tuple
    contact_area_mm2: float
    contact_length_mm: float
    max_encasement_deg: float
    encasement_class: str


@dataclass
class NerveContact:
    s_mm: np.ndarray
    points_ras: np.ndarray
    encasement_deg: np.ndarray
    distance_to_ho_mm: np.ndarray
    area_mm2: np.ndarray
    min_distance_mm: float
    closest_points_ras: tuple
    contact_area_mm2: float
    contact_fraction: float
    contact_length_mm: float
    longest_contact_mm: float
    contact_runs_mm: list
    max_encasement_deg: float
    encasement_class: str
    deflection_mm: float | None
    thickening_ratio: float | None
    islands: list = field(default_factory=list)
    #: On a nerve traced on MR: its signal in contact over its signal away from contact
    #: (see :func:`signal_ratio`); None on CT or without contact.
    signal_ratio: float | None = None
    #: With the other side's nerve traced: the area in contact over the other nerve's at
    #: the mirror image (see :func:`contralateral_ratio`); None when there is nothing to
    #: compare.
    contralateral_area_ratio: float | None = None
    tolerance_mm: float = DEFAULT_CONTACT_TOLERANCE_MM
    #: Per station: encasement by bone that is in no HO segment (None when not measured).
    bone_encasement_deg: np.ndarray | None = None
    #: Per station, with the other side's nerve traced: its equivalent diameter at the
    #: mirror image (NaN where not compared, see :func:`other_side_values`); None when
    #: there is no other nerve to compare with.
    other_side_diameter_mm: np.ndarray | None = None
    warnings: list = field(default_factory=list)
    #: That bone next to the stations where it wraps the nerve, for the reader to review:
    #: a mask over ``wrapping_bone_slices`` of the grid (None when no bone wraps it).
    wrapping_bone_block: np.ndarray | None = None
    wrapping_bone_slices: tuple | None = None


# ---------------------------------------------------------------------------------------
# Distances to voxel boxes
# ---------------------------------------------------------------------------------------
def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """(N, 3) indices (k, j, i) of mask voxels with a face-neighbour outside the mask."""
    interior = ndimage.binary_erosion(mask, border_value=0)
    return np.argwhere(mask & ~interior)


class VoxelBoxes:
    """The boundary voxels of a mask as boxes; exact distances from points to them."""

    def __init__(self, kji: np.ndarray, geometry: VolumeGeometry, labels: np.ndarray | None = None):
        self.geometry = geometry
        self.spacing = np.asarray(geometry.spacing_kji, float)
        self.kji = np.asarray(kji, float)
        self.labels = labels
        self.tree = cKDTree(self.kji * self.spacing) if len(self.kji) else None

    def __len__(self):
        return len(self.kji)

    def distance(self, points_ras: np.ndarray, half_extent: float = 0.5, up_to_mm: float = np.inf):
        """Distance from points to the nearest box, the closest box point (RAS) and the box index.

        ``half_extent`` is the query's own half-size in voxels (0 for points, 0.5 when the
        queries are voxel boxes too). Points farther than ``up_to_mm`` from every box
        get infinity, no box point and index -1: far points cost the search most.
        """
        points_ras = np.atleast_2d(points_ras)
        none = np.full(len(points_ras), np.inf), np.full((len(points_ras), 3), np.nan), np.full(len(points_ras), -1)
        if self.tree is None or len(points_ras) == 0:
            return none
        query = self.geometry.ras_to_kji_points(points_ras)
        k = min(NEAREST_VOXELS, len(self.kji))
        # A box within reach has its centre within reach plus half its diagonal (and the
        # query's own half-size).
        reach = up_to_mm + (0.5 + half_extent) * float(np.linalg.norm(self.spacing))
        centre_distance, index = self.tree.query(query * self.spacing, k=k, workers=-1, distance_upper_bound=reach)
        centre_distance, index = centre_distance.reshape(len(query), k), index.reshape(len(query), k)
        distance, nearest_ras, chosen = none
        found = np.isfinite(centre_distance[:, 0])
        distance[found], nearest_ras[found], chosen[found] = self._box_distance(
            query[found], index[found], np.isfinite(centre_distance[found]), half_extent)
        beyond = distance > up_to_mm
        distance[beyond], nearest_ras[beyond], chosen[beyond] = np.inf, np.nan, -1
        return distance, nearest_ras, chosen

    def _box_distance(self, query, index, valid, half_extent):
        """The nearest of each query's candidate boxes (``index``, where ``valid``)."""
        index = np.where(valid, index, 0)
        # np.take gathers rows of three values at twice the speed of indexing.
        offset = query[:, None, :] - np.take(self.kji, index, axis=0)
        gap = np.maximum(np.abs(offset) - 0.5 - half_extent, 0.0)
        distance = np.where(valid, np.sqrt(np.sum((gap * self.spacing) ** 2, axis=-1)), np.inf)
        best = np.argmin(distance, axis=1)
        rows = np.arange(len(query))
        chosen = index[rows, best]
        nearest_kji = np.take(self.kji, chosen, axis=0) + np.clip(offset[rows, best], -0.5, 0.5)
        return distance[rows, best], self.geometry.kji_to_ras_points(nearest_kji), chosen


# ---------------------------------------------------------------------------------------
# Cross-sections of the nerve mask
# ---------------------------------------------------------------------------------------
@dataclass
class _Sections:
    boundary: np.ndarray        # (N, R, 3) RAS
    centroid: np.ndarray        # (N, 3)
    area: np.ndarray            # (N,)
    perimeter: np.ndarray       # (N,)
    edge_length: np.ndarray     # (N, R) boundary length between ray r and r+1
    edge_span: np.ndarray       # (N, R) angle (rad) that edge subtends at the centroid
    on_nerve: np.ndarray        # (N,) whether the station's centre lies in or next to the nerve


def smoothed_field(mask: np.ndarray) -> np.ndarray:
    """The mask smoothed so that its 0.5 level follows the surface it sampled to a
    fraction of a voxel, whatever the grid's orientation."""
    return ndimage.gaussian_filter(mask.astype(np.float32), SURFACE_SMOOTHING_VOXELS, mode="constant",
                                   truncate=SURFACE_SMOOTHING_TRUNCATE)


def smoothed_field_keeping_thin_parts(mask: np.ndarray) -> np.ndarray:
    """:func:`smoothed_field`, with parts one voxel thin kept. Smoothed, a sheet one voxel
    thick peaks near 0.5 and its surface shrinks to a sliver or vanishes (thin HO on the
    nerve read no contact, 1 mm of it on 1.5 mm voxels). A mask voxel with no mask on
    either side along some axis is raised to 1 less its lowest face neighbour, which
    puts the 0.5 level half-way to that neighbour, at the voxel's face, as on a thick
    mask's flat boundary; thicker parts, and a thick mask's voxels standing out of its
    staircase, keep their field."""
    field = smoothed_field(mask)
    padded = np.pad(np.asarray(mask, bool), 1)
    inner = tuple(slice(1, -1) for _ in range(3))
    thin = np.zeros(mask.shape, bool)
    for axis in range(3):
        before, after = list(inner), list(inner)
        before[axis], after[axis] = slice(0, -2), slice(2, None)
        thin |= ~padded[tuple(before)] & ~padded[tuple(after)]
    # A thick mask's voxels lie within a voxel of one at least as high as on a flat
    # boundary: its staircases and edges keep their field, and its surface its place.
    flat_boundary = 0.5 * (1.0 + math.erf(0.5 / (SURFACE_SMOOTHING_VOXELS * math.sqrt(2.0))))
    thin &= mask & (ndimage.maximum_filter(field, size=3, mode="constant") < flat_boundary - 1e-3)
    if not thin.any():
        return field
    lowest_neighbour = ndimage.minimum_filter(field, footprint=ndimage.generate_binary_structure(3, 1),
                                              mode="constant")
    return np.where(thin, np.maximum(field, 1.0 - lowest_neighbour), field)


class SmoothSurface:
    """The 0.5 iso-surface of a smoothed mask; distances from points to it."""

    def __init__(self, field: np.ndarray, geometry: VolumeGeometry):
        from skimage.measure import marching_cubes

        self.field = field
        self.geometry = geometry
        self.tree = None
        self.longest_edge_mm = 0.0
        if field.size and field.max() >= 0.5:
            vertices, faces = marching_cubes(np.pad(field, 1), 0.5)[:2]
            self.vertices = geometry.kji_to_ras_points(vertices - 1)
            self.faces = faces
            self.tree = cKDTree(self.vertices)
            self.faces_of_vertex = _faces_of_vertex(faces, len(vertices))
            # On thick slices the triangles are long: a vertex may be half a slice
            # from a point that touches the surface.
            self.longest_edge_mm = float(np.max(row_lengths(
                (self.vertices[faces] - self.vertices[np.roll(faces, 1, axis=1)]).reshape(-1, 3)))) if len(faces) else 0.0

    def distance(self, points_ras: np.ndarray, up_to_mm: float = np.inf) -> np.ndarray:
        """Distance to the surface (0 inside); beyond ``up_to_mm`` only 'infinity'.

        The nearest vertex gives a first answer; where it lies within a triangle's
        length, the distance to the triangles around the nearest vertices replaces it.
        """
        if self.tree is None:
            return np.full(len(points_ras), np.inf)
        points_ras = np.asarray(points_ras, float)
        reach = up_to_mm + self.longest_edge_mm
        vertex_distance, nearest = self.tree.query(points_ras, k=NEAREST_SURFACE_VERTICES, distance_upper_bound=reach,
                                                   workers=-1)
        distance = vertex_distance[:, 0].copy()
        near = np.flatnonzero(np.isfinite(distance))
        if len(near):
            distance[near] = np.minimum(distance[near], self._triangle_distance(points_ras[near], nearest[near]))
        distance[distance > up_to_mm] = np.inf
        kji = self.geometry.ras_to_kji_points(points_ras)
        inside = ndimage.map_coordinates(self.field, kji.T, order=1, mode="constant", cval=0.0) >= 0.5
        return np.where(inside, 0.0, distance)

    def closest_points(self, points_ras: np.ndarray) -> np.ndarray:
        """The surface's point nearest to each point (outside the surface), on the
        triangles around its nearest vertices."""
        points_ras = np.atleast_2d(np.asarray(points_ras, float))
        nearest = self.tree.query(points_ras, k=NEAREST_SURFACE_VERTICES, workers=-1)[1]
        return self._nearest_on_triangles(points_ras, nearest)[1]

    def _triangle_distance(self, points: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        """Smallest distance from each point to the triangles around its nearest vertices
        (``nearest``: vertex indices per point, the vertex count where there are fewer)."""
        return self._nearest_on_triangles(points, nearest)[0]

    def _nearest_on_triangles(self, points: np.ndarray, nearest: np.ndarray) -> tuple:
        """That smallest distance, and the point of the triangles where it is reached."""
        count = len(self.vertices)
        candidates = self.faces_of_vertex[np.minimum(nearest, count)].reshape(len(points), -1)  # -1: none
        # Neighbouring vertices share triangles: each is measured once per point, the
        # rows' triangles packed into as few columns as they need (sorted, repeats
        # dropped, the -1 of none last).
        candidates = -np.sort(-candidates, axis=1)
        candidates[:, 1:][candidates[:, 1:] == candidates[:, :-1]] = -1
        candidates = -np.sort(-candidates, axis=1)
        candidates = candidates[:, :int(np.count_nonzero(candidates >= 0, axis=1).max(initial=0))]
        best = np.full(len(points), np.inf)
        best_point = np.full((len(points), 3), np.nan)
        for column in range(candidates.shape[1]):
            rows = np.flatnonzero(candidates[:, column] >= 0)
            if len(rows):
                # Each corner gathered into an array of its own: NumPy runs through the
                # rows of a contiguous (N, 3) array as one run, but through those of a
                # strided view three values at a time (a fifth of the time here). Rows
                # are gathered by take, which copies a row at a time (twice as fast as
                # indexing here).
                triangles = np.take(self.faces, candidates[rows, column], axis=0)
                row_points = np.take(points, rows, axis=0)
                corners = (np.take(self.vertices, triangles[:, corner], axis=0) for corner in range(3))
                on_triangle = closest_points_on_triangles(row_points, *corners)
                distance = row_lengths(row_points - on_triangle)
                closer = distance < best[rows]
                best[rows[closer]] = distance[closer]
                best_point[rows[closer]] = on_triangle[closer]
        return best, best_point


def _faces_of_vertex(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """For each vertex the faces that use it, as rows padded with -1; one extra row of
    -1 stands for 'no vertex'."""
    owners = faces.ravel()
    face_index = np.repeat(np.arange(len(faces)), 3)
    order = np.argsort(owners, kind="stable")
    owners, face_index = owners[order], face_index[order]
    starts = np.searchsorted(owners, np.arange(vertex_count + 1))
    degree = np.diff(starts)
    table = np.full((vertex_count + 1, int(degree.max(initial=0))), -1, np.int64)
    position = np.arange(len(owners)) - starts[owners]
    table[owners, position] = face_index
    return table


def row_lengths(vectors: np.ndarray) -> np.ndarray:
    """The length of each row of an (N, 3) array, as ``np.linalg.norm(vectors, axis=1)``
    gives it (the same squares added in the same order), in a third of its time: NumPy
    reduces an axis of three slowly, and the triangles' distances take many."""
    return np.sqrt(vectors[:, 0] * vectors[:, 0] + vectors[:, 1] * vectors[:, 1] + vectors[:, 2] * vectors[:, 2])


def point_triangle_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Distance from each point to the triangle (a, b, c) of the same row."""
    return row_lengths(points - closest_points_on_triangles(points, a, b, c))


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The point of the triangle (a, b, c) of the same row nearest to each point: its
    projection onto the triangle's plane when that falls inside, else the nearest point
    of its edges."""
    ab, ac, ap = b - a, c - a, points - a
    d00 = np.einsum("ij,ij->i", ab, ab)
    d01 = np.einsum("ij,ij->i", ab, ac)
    d11 = np.einsum("ij,ij->i", ac, ac)
    d20 = np.einsum("ij,ij->i", ap, ab)
    d21 = np.einsum("ij,ij->i", ap, ac)
    denominator = d00 * d11 - d01 * d01
    safe = np.where(np.abs(denominator) > 1e-12, denominator, 1.0)
    v = (d11 * d20 - d01 * d21) / safe
    w = (d00 * d21 - d01 * d20) / safe
    inside = (np.abs(denominator) > 1e-12) & (v >= 0) & (w >= 0) & (v + w <= 1)
    projection = a + v[:, None] * ab + w[:, None] * ac
    best = np.where(inside[:, None], projection, np.nan)
    distance = np.where(inside, row_lengths(points - projection), np.inf)
    for start, end in ((a, b), (b, c), (c, a)):
        edge = end - start
        t = np.clip(np.einsum("ij,ij->i", points - start, edge) / np.maximum(np.einsum("ij,ij->i", edge, edge), 1e-12),
                    0.0, 1.0)
        on_edge = start + t[:, None] * edge
        edge_distance = row_lengths(points - on_edge)
        closer = edge_distance < distance
        distance = np.where(closer, edge_distance, distance)
        best = np.where(closer[:, None], on_edge, best)
    return best


def nerve_sections(nerve_field: np.ndarray, geometry: VolumeGeometry, points: np.ndarray) -> _Sections:
    """Boundary of the (smoothed) nerve mask along rays in each station's orthogonal plane."""
    tangents, u, v = frames(points)
    angles = np.linspace(0.0, 2 * np.pi, SECTION_RAYS, endpoint=False)
    directions = np.cos(angles)[None, :, None] * u[:, None, :] + np.sin(angles)[None, :, None] * v[:, None, :]
    steps = np.arange(0.0, SECTION_MAX_RADIUS_MM + 1e-6, SECTION_STEP_MM)
    # Rays are sampled in index space: origins and directions are mapped once.
    origins_kji = geometry.ras_to_kji_points(points)
    directions_kji = directions @ geometry.ras_to_ijk[:3, :3][::-1].T

    def inside(kji):
        values = ndimage.map_coordinates(nerve_field, kji.reshape(-1, 3).T, order=1, mode="constant", cval=0.0)
        return values.reshape(kji.shape[:-1]) >= 0.5

    # A station whose centre lies outside the nerve (and not next to it, see
    # _nerve_geometry) has no section of it: the segment was erased there, or the curve
    # runs beyond it.
    on_nerve = inside(origins_kji)
    first_out = _first_steps_outside(inside, origins_kji, directions_kji, steps)
    low = (first_out - 1) * SECTION_STEP_MM
    high = first_out * SECTION_STEP_MM
    for _ in range(SECTION_BISECTIONS):
        middle = 0.5 * (low + high)
        inside_middle = inside(origins_kji[:, None, :] + middle[..., None] * directions_kji)
        low = np.where(inside_middle, middle, low)
        high = np.where(inside_middle, high, middle)
    radius = 0.5 * (low + high)
    boundary = points[:, None, :] + radius[..., None] * directions
    area, cx, cy = star_polygon_area_centroid(radius, angles)
    centroid = points + cx[:, None] * u + cy[:, None] * v
    edge_length = boundary_edge_lengths(radius)
    return _Sections(boundary, centroid, area, edge_length.sum(axis=1), edge_length,
                     edge_spans(boundary - centroid[:, None, :], u, v), on_nerve)


#: Steps along the rays sampled at a time by :func:`_first_steps_outside`.
SECTION_STEPS_AT_ONCE = 4


def _first_steps_outside(inside, origins_kji, directions_kji, steps) -> np.ndarray:
    """Per station and ray (``directions_kji``: (N, R, 3)), the first of ``steps`` past
    the origin whose point is not ``inside``, or the last step when all are. The steps
    are read a few at a time and only along rays not yet out: most rays leave the nerve
    within a third of their length, and sampling every step of every ray took two
    thirds of the sections' time."""
    first_out = np.full(directions_kji.shape[:2], len(steps) - 1)
    still_in = np.ones(directions_kji.shape[:2], bool)
    for start in range(1, len(steps), SECTION_STEPS_AT_ONCE):
        stations, rays = np.nonzero(still_in)
        if len(stations) == 0:
            break
        some = steps[start:start + SECTION_STEPS_AT_ONCE]
        is_in = inside(origins_kji[stations, None, :] + some[:, None] * directions_kji[stations, rays, None, :])
        left = ~is_in.all(axis=-1)
        first_out[stations[left], rays[left]] = start + np.argmin(is_in[left], axis=-1)
        still_in[stations[left], rays[left]] = False
    return first_out


def edge_spans(offset: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Angle (rad) between consecutive boundary points (``offset`` from the centroid,
    (N, R, 3)) as seen from the centroid, in the plane of ``u`` and ``v``."""
    angle = np.arctan2(np.einsum("nrj,nj->nr", offset, v), np.einsum("nrj,nj->nr", offset, u))
    return np.abs(np.angle(np.exp(1j * (np.roll(angle, -1, axis=1) - angle))))


def boundary_edge_lengths(radius: np.ndarray) -> np.ndarray:
    """Length of the boundary between consecutive rays.

    A voxel mask's boundary is a staircase; measured edge by edge its length would
    grow with the voxel noise, not with the nerve. The arc is measured at the mean
    radius of the edge, with the radial change taken from radii smoothed over a few
    degrees (the true outline's slope).
    """
    step = 2 * np.pi / radius.shape[1]
    smooth = ndimage.gaussian_filter1d(radius, sigma=3.0, axis=1, mode="wrap")
    mean_radius = 0.5 * (radius + np.roll(radius, -1, axis=1))
    return np.hypot(mean_radius * step, np.roll(smooth, -1, axis=1) - smooth)


def _edge_contact_fraction(distance: np.ndarray, tolerance: float) -> np.ndarray:
    """Fraction of each boundary edge (i, i+1) within the tolerance (linear along the edge)."""
    a, b = distance, np.roll(distance, -1, axis=-1)
    both = (a <= tolerance) & (b <= tolerance)
    neither = (a > tolerance) & (b > tolerance)
    with np.errstate(invalid="ignore"):  # infinite distances (no HO) are 'neither'
        partial = np.where(a <= tolerance, (tolerance - a) / np.maximum(b - a, 1e-9),
                           (tolerance - b) / np.maximum(a - b, 1e-9))
    return np.where(both, 1.0, np.where(neither, 0.0, np.clip(partial, 0.0, 1.0)))


def contact_resolution_mm(geometry: VolumeGeometry) -> float:
    """How far apart touching surfaces may measure on this grid (mm)."""
    return CONTACT_RESOLUTION_VOXELS * float(np.mean(geometry.spacing_kji))


def tolerance_floor_warnings(tolerance_mm: float, resolution_mm: float) -> list[str]:
    """A warning when the tolerance asked for is finer than the surfaces are measured to."""
    if tolerance_mm >= resolution_mm:
        return []
    return [f"The contact tolerance of {tolerance_mm:g} mm is finer than the surfaces are measured to on this grid "
            f"(a tenth of a voxel, {resolution_mm:.2f} mm: surfaces that touch measure up to that far apart), so "
            f"contact was counted within {resolution_mm:.2f} mm."]


def station_contact(sections: _Sections, distance: np.ndarray, tolerance: float):
    """Encasement angle (deg) about the centroid and contact arc length (mm) per station;
    none at a station off the nerve (it has no section to be in contact)."""
    fraction = np.where(sections.on_nerve[:, None], _edge_contact_fraction(distance, tolerance), 0.0)
    encasement = np.degrees((sections.edge_span * fraction).sum(axis=1))
    encasement = np.where(encasement >= CIRCUMFERENTIAL_DEG, 360.0, np.minimum(encasement, 360.0))
    return encasement, (sections.edge_length * fraction).sum(axis=1)


def station_bounds(s_mm: np.ndarray) -> np.ndarray:
    """Where the stretch of nerve each station stands for begins and ends: half-way to
    its neighbours, and at the curve's ends for the first and last station (the last
    station stands closer than 1 mm to the one before when the length is not whole)."""
    s_mm = np.asarray(s_mm, float)
    return np.r_[s_mm[:1], 0.5 * (s_mm[1:] + s_mm[:-1]), s_mm[-1:]]


def station_lengths(s_mm: np.ndarray) -> np.ndarray:
    """Length of nerve (mm) each station stands for (see :func:`station_bounds`)."""
    return np.diff(station_bounds(s_mm))


def contact_runs(in_contact: np.ndarray, s_mm: np.ndarray) -> list:
    """Contiguous stations in contact as (s_start, s_stop) along the curve, each station
    owning its stretch (:func:`station_bounds`): the runs add up to the contact length,
    and none reaches beyond the curve's ends."""
    bounds = station_bounds(s_mm)
    runs = []
    start = None
    for n, flag in enumerate(in_contact):
        if flag and start is None:
            start = n
        if start is not None and (not flag or n == len(in_contact) - 1):
            stop = n if flag else n - 1
            runs.append((float(bounds[start]), float(bounds[stop + 1])))
            start = None
    return runs


def classify(min_distance: float, max_encasement: float, tolerance: float) -> str:
    if not np.isfinite(min_distance) or min_distance > tolerance or max_encasement <= 0.0:
        return "none"
    if max_encasement >= 360.0:
        return "circumferential"
    return "encasement" if max_encasement > 180.0 else "abutment"


def deflection(points: np.ndarray, s_mm: np.ndarray, runs: list) -> float | None:
    """Largest departure of the centreline in a contact run from the course either side."""
    worst = None
    near, far = DEFLECTION_FIT_MM
    for start, stop in runs:
        before = (s_mm >= start - far) & (s_mm <= start - near)
        after = (s_mm >= stop + near) & (s_mm <= stop + far)
        if before.sum() < 3 or after.sum() < 3:
            continue
        fit = before | after
        degree = 3 if fit.sum() >= 8 else 1
        inside = (s_mm >= start) & (s_mm <= stop)
        course = np.stack([np.polyval(np.polyfit(s_mm[fit], points[fit, a], degree), s_mm[inside]) for a in range(3)],
                          axis=1)
        value = float(np.max(np.linalg.norm(points[inside] - course, axis=1)))
        worst = value if worst is None else max(worst, value)
    return worst


def thickening_ratio(area: np.ndarray, s_mm: np.ndarray, in_contact: np.ndarray) -> float | None:
    """Largest running-median area in contact over the median away from contact; only
    stations with a section (a finite ``area``) count, on either side."""
    return _ratio_in_contact(area, s_mm, in_contact)


def signal_ratio(signal: np.ndarray, s_mm: np.ndarray, in_contact: np.ndarray) -> float | None:
    """A nerve's MR signal in contact with HO over its signal away from contact, as the
    thickening ratio compares areas: a compressed nerve swells and turns bright on T2
    fat-saturated images (oedema). Only stations with a signal (finite) count."""
    return _ratio_in_contact(signal, s_mm, in_contact)


def _ratio_in_contact(values: np.ndarray, s_mm: np.ndarray, in_contact: np.ndarray) -> float | None:
    """Largest running median of ``values`` (per station) in contact, away from the
    ends of each contact run, over their median more than THICKENING_REFERENCE_DISTANCE_MM
    from contact; None without contact or with fewer than three stations away from it."""
    values = np.asarray(values, float)
    known = np.isfinite(values)
    if not (in_contact & known).any():
        return None
    contact_s = s_mm[in_contact]
    gap = np.min(np.abs(s_mm[:, None] - contact_s[None, :]), axis=1)
    steady = running_median(values)
    reference = steady[known & (gap > THICKENING_REFERENCE_DISTANCE_MM)]
    if reference.size < 3:
        return None
    return float(steady[_measured_in_contact(in_contact, known)].max() / np.median(reference))


def running_median(values: np.ndarray) -> np.ndarray:
    """Per station, the median over THICKENING_WINDOW_STATIONS stations of the values
    known (finite), as if next to each other; NaN where a value is unknown."""
    values = np.asarray(values, float)
    known = np.isfinite(values)
    steady = np.full(len(values), np.nan)
    if known.any():
        steady[known] = ndimage.median_filter(values[known], size=THICKENING_WINDOW_STATIONS, mode="nearest")
    return steady


def _measured_in_contact(in_contact: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The stations in contact a ratio reads: not those at the ends of a contact run,
    unless a run has no other."""
    inner = ndimage.binary_erosion(in_contact, border_value=1) & known
    return inner if inner.any() else in_contact & known


def contralateral_ratio(values: np.ndarray, points_ras: np.ndarray, in_contact: np.ndarray,
                        other_values: np.ndarray, other_points_ras: np.ndarray, mirror,
                        other_in_contact: np.ndarray | None = None) -> float | None:
    """Largest ratio, over the stations in contact, of a nerve's running-median value
    (its area) to that of the other side's nerve at the station nearest the
    mirror image of the station (``mirror``: RAS points to their mirror images across
    the body's midline). A nerve pressed by HO is compared with its healthy counterpart
    at the same place, where the thickening ratio compares it with itself elsewhere.
    A station is not compared when the other nerve passes farther than
    CONTRALATERAL_MATCH_MM from its mirror image, when its nearest station there is one
    of the other trace's ends (the other nerve was not traced at that level), or when
    HO touches the other nerve there (``other_in_contact``, where its contact is known:
    neurogenic HO is often bilateral, and a pressed counterpart is no healthy one).
    None without contact or without a station compared."""
    values, other_values = np.asarray(values, float), np.asarray(other_values, float)
    points_ras = np.asarray(points_ras, float)
    known = np.isfinite(values)
    if not (in_contact & known).any() or len(other_points_ras) < 3:
        return None
    measured = np.flatnonzero(_measured_in_contact(in_contact, known))
    nearest, matched = mirror_matches(points_ras[measured], other_points_ras, mirror)
    other_steady = running_median(other_values)[nearest]
    matched &= np.isfinite(other_steady) & (other_steady > 0)
    if other_in_contact is not None:
        matched &= ~np.asarray(other_in_contact, bool)[nearest]
    if not matched.any():
        return None
    return float(np.max(running_median(values)[measured[matched]] / other_steady[matched]))


def mirror_matches(points_ras: np.ndarray, other_points_ras: np.ndarray, mirror) -> tuple:
    """For each point of a nerve, the other side's station nearest its mirror image
    (``mirror``: RAS points to their mirror images across the body's midline), and
    whether that station stands for the other nerve at this level: within
    CONTRALATERAL_MATCH_MM of the mirror image, and not one of the other trace's ends
    (beyond them the other nerve was not traced)."""
    other_points_ras = np.asarray(other_points_ras, float)
    distance, nearest = cKDTree(other_points_ras).query(mirror(np.asarray(points_ras, float)))
    matched = (distance <= CONTRALATERAL_MATCH_MM) & (nearest > 0) & (nearest < len(other_points_ras) - 1)
    return nearest, matched


def other_side_values(points_ras: np.ndarray, other_values: np.ndarray, other_points_ras: np.ndarray,
                      mirror) -> np.ndarray:
    """Per station of a nerve, the other side's value (its diameter, say) at the station
    matched to the mirror image of this one (see :func:`mirror_matches`); NaN where none
    is matched. The other nerve is shown as measured, pressed by HO or not: a reference
    drawn beside the nerve's own figures, not a ratio's healthy counterpart."""
    points_ras = np.asarray(points_ras, float)
    values = np.full(len(points_ras), np.nan)
    other_values = np.asarray(other_values, float)
    if not len(points_ras) or len(other_points_ras) < 3 or len(other_values) != len(other_points_ras):
        return values
    nearest, matched = mirror_matches(points_ras, other_points_ras, mirror)
    values[matched] = other_values[nearest[matched]]
    return values


def off_nerve_warnings(on_nerve: np.ndarray, s_mm: np.ndarray, in_image: np.ndarray | None = None) -> list[str]:
    """A warning naming where the centreline runs outside the nerve segment, and one
    where it runs beyond the grid the segments lie on (``in_image``, per station): a
    nerve traced on an image reaching farther than the CT, not a segment erased."""
    in_image = np.ones(len(s_mm), bool) if in_image is None else np.asarray(in_image, bool)
    off = ~np.asarray(on_nerve, bool) & in_image
    beyond = [] if in_image.all() else [
        f"{stretch_along(~in_image, s_mm, 'the centreline')} the curve runs beyond the image the segments lie on "
        "(the CT's field of view; the nerve was traced on an image reaching farther): no contact, area or distance "
        "is measured there, and HO the CT does not show there is not seen. Check that stretch on the images."]
    if not off.any():
        return beyond
    return beyond + [f"{stretch_along(off, s_mm, 'the centreline')} the curve runs outside the nerve segment: there is "
            "no cross-section there, so no contact, area or distance is measured at those stations. The nerve "
            "segment was erased there or the curve runs beyond it; painting HO with the Segment Editor's default "
            "masking overwrites the nerve where the two meet. Repaint the nerve there or trace it again, then "
            "compute again."]


# ---------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------
def _closest_pair(nerve_boxes: VoxelBoxes, ho_boxes: VoxelBoxes):
    """Minimum distance between two voxel-box sets and the closest points."""
    if len(nerve_boxes) == 0 or len(ho_boxes) == 0:
        return np.inf, None
    # The nearest box centre bounds the box-to-box gap to within a voxel diagonal;
    # exact gaps are computed only for the nerve voxels that can still be closest.
    slack = float(np.linalg.norm(nerve_boxes.spacing))
    centre_distance = _nearest_centre_distances(nerve_boxes.kji * nerve_boxes.spacing, ho_boxes, slack)
    candidates = np.flatnonzero(centre_distance <= centre_distance.min() + slack)
    points = nerve_boxes.geometry.kji_to_ras_points(nerve_boxes.kji[candidates])
    distance, on_ho, _ = ho_boxes.distance(points, half_extent=0.5)
    best = _middle_of_ties(distance, on_ho)
    if distance[best] <= 0.0:
        point = tuple(float(c) for c in on_ho[best])
        return 0.0, (point, point)
    # The nerve point: the nerve box point closest to the HO point.
    own, on_nerve, _ = nerve_boxes.distance(on_ho[best:best + 1], half_extent=0.0)
    return float(distance[best]), (tuple(float(c) for c in on_nerve[0]), tuple(float(c) for c in on_ho[best]))


#: Tied points the middle is looked for among (a thinned set, in physical order, beyond).
MIDDLE_OF_TIES_MAX_POINTS = 1500


def _middle_of_ties(distance: np.ndarray, points: np.ndarray) -> int:
    """Index of the smallest distance; where several are as small (HO touching the nerve
    over a stretch, or a gap as wide along it), the middle of those points: the one
    whose distances to the others add up least, ties taken in physical order.

    The first in array order moved with the order the CT's voxels are stored in (26 mm
    along the nerve for the same case stored feet first); the one nearest the points'
    mean did so still, by 6.4 mm around a nerve wrapped by HO, as the mean of a curved
    shell of contact lies off it, where many of its points are almost as near.
    """
    tied = np.flatnonzero(distance <= distance.min() + 1e-6)
    if len(tied) == 1:
        return int(tied[0])
    # Physical order (RAS to the micrometre), not storage order.
    tied = tied[np.lexsort(np.round(points[tied], 3).T[::-1])]
    tied = tied[::int(np.ceil(len(tied) / MIDDLE_OF_TIES_MAX_POINTS))]
    total = _summed_distances(points[tied])
    return int(tied[np.argmin(np.round(total, 6))])


def _summed_distances(points: np.ndarray, rows_at_once: int = 256) -> np.ndarray:
    """Each point's distances to all the points, added up: the lengths as
    ``np.linalg.norm`` gives them (squares added in axis order) on one coordinate at a
    time, which is five times as fast as reducing the three coordinates of a block of
    differences."""
    total = np.empty(len(points))
    for start in range(0, len(points), rows_at_once):
        block = points[start:start + rows_at_once]
        squared = np.zeros((len(block), len(points)))
        for axis in range(3):
            difference = block[:, axis, None] - points[None, :, axis]
            squared += difference * difference
        total[start:start + rows_at_once] = np.sqrt(squared).sum(axis=1)
    return total


def _nearest_centre_distances(points_mm: np.ndarray, boxes: VoxelBoxes, slack: float) -> np.ndarray:
    """Distance from each point (voxel-index space scaled to mm) to the nearest box
    centre of ``boxes``, where it can be within ``slack`` of the smallest; infinity
    elsewhere.

    A point's distance to the box of all centres bounds its distance to any centre from
    below, and one point's nearest centre bounds the smallest from above: points whose
    lower bound is beyond that plus the slack are not searched (most of a long nerve,
    for an island off one part of it).
    """
    centres = boxes.tree.data
    lower = np.linalg.norm(np.maximum(np.maximum(centres.min(axis=0) - points_mm, points_mm - centres.max(axis=0)),
                                      0.0), axis=1)
    upper = boxes.tree.query(points_mm[int(np.argmin(lower))])[0]
    searched = np.flatnonzero(lower <= upper + slack)
    distance = np.full(len(points_mm), np.inf)
    distance[searched] = boxes.tree.query(points_mm[searched], workers=-1)[0]
    return distance


def refine_gap(nerve_mask, ho_mask_of, geometry: VolumeGeometry, pair, box_distance: float):
    """Sub-voxel gap between nerve and HO near their closest voxels.

    Voxel boxes stand up to half a voxel beyond the surface they sample, so the
    smallest box-to-box gap is biased low by up to one voxel. Near the closest pair,
    both masks are smoothed (Gaussian, SURFACE_SMOOTHING_VOXELS) and their 0.5
    iso-surfaces -- which follow the sampled surfaces to a fraction of a voxel -- are
    compared instead. Masks that overlap or share a voxel face keep 0; boxes meeting
    only along an edge or at a corner are no contact (on thick slices cut obliquely,
    voxels meeting so lie up to several millimetres apart) and are measured too.
    """
    if pair is None or not np.isfinite(box_distance):
        return box_distance, pair
    from skimage.measure import marching_cubes

    centre = 0.5 * (np.asarray(pair[0]) + np.asarray(pair[1]))
    block = geometry.bounding_slices_of_ras_box(centre[None], box_distance + REFINE_MARGIN_MM)
    if box_distance <= 0.0 and _share_a_face(nerve_mask[block], ho_mask_of(block)):
        return box_distance, pair
    surfaces = []
    for mask in (nerve_mask[block], ho_mask_of(block)):
        padded = np.pad(mask, 2)
        # The smoothed field is zero beyond the kernel's reach from the mask, and within
        # that reach it is the same whether the rest of the block is filtered or not.
        around = bounding_slices(padded)
        if around is None:
            return box_distance, pair
        around = pad_block(around, padded.shape, SURFACE_SMOOTHING_REACH_VOXELS - 1)
        field = ndimage.gaussian_filter(padded[around].astype(np.float32), SURFACE_SMOOTHING_VOXELS,
                                        truncate=SURFACE_SMOOTHING_TRUNCATE)
        if field.max() < 0.5:
            return box_distance, pair
        vertices = marching_cubes(field, 0.5)[0] - 2 + [s.start + a.start for s, a in zip(block, around)]
        surfaces.append(geometry.kji_to_ras_points(vertices))
    distance, index = cKDTree(surfaces[1]).query(surfaces[0], workers=-1)
    best = int(np.argmin(distance))
    refined = float(distance[best])
    if refined < box_distance:
        return box_distance, pair
    return refined, (tuple(float(c) for c in surfaces[0][best]), tuple(float(c) for c in surfaces[1][index[best]]))


def _share_a_face(mask: np.ndarray, other: np.ndarray) -> bool:
    """Whether two masks overlap or have voxels next to each other across a face."""
    return bool(np.any(grown_across_faces(mask) & other))


def _no_larger_than_stations(gap: float, pair, distance: np.ndarray, sections: _Sections, rays: "_RayDistances",
                             mask_in_block: np.ndarray):
    """The smallest gap and its pair of points, never larger than a station's: the gap
    search compares the surfaces' vertices, the stations their triangles, and a figure
    of each side of the tolerance read "none" beside a contact run. ``distance``: per
    station and ray, to the surface of ``mask_in_block`` (over the rays' block), from
    :meth:`_RayDistances.to_mask`."""
    per_station = np.where(sections.on_nerve[:, None], distance, np.inf)
    station, ray = np.unravel_index(int(np.argmin(per_station)), per_station.shape) if per_station.size else (0, 0)
    if not per_station.size or not per_station[station, ray] < gap:
        return gap, pair
    nerve_point = sections.boundary[station, ray]
    ho_point = nerve_point if per_station[station, ray] <= 0.0 else rays.surface_point_nearest(mask_in_block,
                                                                                                nerve_point)
    return float(per_station[station, ray]), (tuple(float(c) for c in nerve_point), tuple(float(c) for c in ho_point))


def _summary(distance, sections, s_mm, tolerance):
    """Per-station encasement and contact arc, which stations are in contact, and the runs."""
    encasement, contact_arc = station_contact(sections, distance, tolerance)
    # One station's spike from the voxel staircase is not a finding: each station
    # reports the median of itself and its two neighbours (a 3 mm window).
    if len(encasement) >= 3:
        encasement = ndimage.median_filter(encasement, size=3, mode="nearest")
    in_contact = encasement > 0.0
    runs = contact_runs(in_contact, s_mm)
    # ... nor in the contact area, which would otherwise report contact where the
    # encasement, length and class say there is none.
    return encasement, np.where(in_contact, contact_arc, 0.0), in_contact, runs


#: Cross-sections of the last few nerves measured: after an edit of an HO segment only
#: the HO side of the measurement is redone.
_SECTIONS_CACHE: dict = {}
_SECTIONS_CACHE_SIZE = 4

#: What else depends on the nerve and where the working block lies alone, kept likewise
#: (keyed by the sections' key and that placement): the nerve's boundary voxel boxes and
#: the block around it where bone outside the HO segments is looked for. Rebuilt on each
#: recompute they took a tenth of its main thread.
_PLACED_NERVE_CACHE: dict = {}


def _keep(cache: dict, key, value, size: int = _SECTIONS_CACHE_SIZE):
    """``cache[key] = value`` (returned), the oldest entries dropped first so that at
    most ``size`` stay."""
    while len(cache) >= size:
        cache.pop(next(iter(cache)))
    cache[key] = value
    return value


def _kept(cache: dict, key, make, size: int = _SECTIONS_CACHE_SIZE):
    """``cache[key]``, made by ``make()`` and kept (see :func:`_keep`) when missing."""
    return cache[key] if key in cache else _keep(cache, key, make(), size)


def _nerve_geometry(nerve_mask: np.ndarray, geometry: VolumeGeometry, points: np.ndarray):
    """Surface voxel boxes of the nerve, the block around it where contact is looked
    for, its cross-sections at ``points``, and the key of the nerve and that block's
    placement (for :data:`_PLACED_NERVE_CACHE`).

    The sections are in RAS and depend on the nerve alone, so they are kept (keyed by
    the nerve's voxels where they lie, and the stations) while the caller's working
    block changes with the HO.
    """
    nerve_block = bounding_slices(nerve_mask)
    # Contact happens next to the nerve: smooth fields only in a block around it.
    corners = geometry.kji_to_ras_points([[s.start for s in nerve_block], [s.stop - 1 for s in nerve_block]])
    crop = geometry.bounding_slices_of_ras_box(np.vstack([corners, points]), CONTACT_MARGIN_MM)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.packbits(nerve_mask[nerve_block]).tobytes())
    for part in (np.asarray([s.stop - s.start for s in nerve_block]), geometry.cropped(nerve_block).ijk_to_ras,
                 np.asarray([s.stop - s.start for s in crop])):
        digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    key = digest.hexdigest()
    # The boxes are in the working block's voxels: they hold while it lies where it did.
    digest.update(np.asarray([[s.start for s in nerve_block], [s.start for s in crop]], np.float64).tobytes())
    digest.update(np.ascontiguousarray(geometry.ijk_to_ras, dtype=np.float64).tobytes())
    placed_key = digest.hexdigest()
    boxes = _kept(_PLACED_NERVE_CACHE, ("boxes", placed_key),
                  lambda: _boundary_boxes(nerve_mask[nerve_block], nerve_block, geometry))
    cached = _SECTIONS_CACHE.get(key)
    # Stations read back from a curve node differ in the last float digits.
    if cached is None or cached[0].shape != points.shape or np.abs(cached[0] - points).max() > 1e-3:
        sections = nerve_sections(smoothed_field(nerve_mask[crop]), geometry.cropped(crop), points)
        # The segment ends at the first and last stations, whose centres may fall just
        # outside its end voxels: a station within a voxel of the nerve is on it.
        off = np.flatnonzero(~sections.on_nerve)
        reach = float(max(geometry.spacing_kji))
        sections.on_nerve[off[boxes.distance(points[off], half_extent=0.0, up_to_mm=reach)[0] <= reach]] = True
        cached = _keep(_SECTIONS_CACHE, key, (points.copy(), sections))
    return boxes, crop, cached[1], placed_key


class _RayDistances:
    """Distances from the points of the nerve's section outlines (stations x rays) to
    a surface, measured on the smoothed mask within the block around the nerve."""

    def __init__(self, sections: _Sections, block_geometry: VolumeGeometry):
        self.shape = sections.boundary.shape[:2]
        self.points = sections.boundary.reshape(-1, 3)
        self.block_geometry = block_geometry
        # A distance changes from one ray's point to the next by no more than the gap
        # between them.
        self.largest_gap_mm = float(np.max(row_lengths(
            (np.roll(sections.boundary, -1, axis=1) - sections.boundary).reshape(-1, 3)), initial=0.0))

    def contact_reach(self, tolerance: float) -> float:
        """The distances contact figures at ``tolerance`` depend on: those within it, and
        those of the rays beside them (where contact ends between two rays, it is
        interpolated along the edge), which lie at most a gap farther."""
        return tolerance + self.largest_gap_mm

    def _surface(self, mask_in_block: np.ndarray, keep_thin: bool):
        """The smooth surface of a mask over the block (None for an empty mask)."""
        around = bounding_slices(mask_in_block)
        if around is None:
            return None
        # The smoothed field is zero beyond the filter's reach from the mask: smoothing
        # and meshing around the mask alone give the same surface as over the whole block.
        around = pad_block(around, mask_in_block.shape, SURFACE_SMOOTHING_REACH_VOXELS)
        smoothed = smoothed_field_keeping_thin_parts if keep_thin else smoothed_field
        return SmoothSurface(smoothed(mask_in_block[around]), self.block_geometry.cropped(around))

    def surface_point_nearest(self, mask_in_block: np.ndarray, point_ras: np.ndarray) -> np.ndarray:
        """The point of a segment's smooth surface (as :meth:`to_mask` measures to it)
        nearest to ``point_ras``, which lies outside it."""
        return self._surface(mask_in_block, keep_thin=True).closest_points(point_ras)[0]

    def to_mask(self, mask_in_block: np.ndarray, up_to_mm: float = np.inf, keep_thin: bool = True) -> np.ndarray:
        """To the smooth surface of a mask over the block; infinity where it lies beyond
        the block's reach (the surface there may be cut by the block). Distances up to
        ``up_to_mm`` (at least) are as without it; beyond, some may be infinity. With
        ``keep_thin`` (a segment), parts one voxel thin keep their surface (see
        :func:`smoothed_field_keeping_thin_parts`); without (a threshold of the CT, whose
        single voxels are noise), they fade as smoothing leaves them."""
        surface = self._surface(mask_in_block, keep_thin)
        if surface is None:
            return np.full(self.shape, np.inf)
        # Within the last 2 mm of the block's margin the surface may be cut by the block:
        # no distance from there on is kept, so none is measured.
        # The distance measured on the mesh exceeds the exact one by less than a triangle's
        # edge (its nearest vertex is that close), so a distance that is exactly within
        # ``up_to_mm`` is measured within that and an edge (and a hundredth, for rounding).
        kept_below = min(CONTACT_MARGIN_MM - 2.0, up_to_mm + surface.longest_edge_mm + 0.01)
        near = surface.distance(self.points, kept_below)
        near[~(near < kept_below)] = np.inf
        return near.reshape(self.shape)

    def completed_beyond_block(self, near: np.ndarray, boxes: VoxelBoxes) -> np.ndarray:
        """``near`` (from :meth:`to_mask`) with the distance to ``boxes`` where it is
        infinite. Far from HO only the station's smallest distance is reported: every
        FAR_RAY_STRIDE-th ray is enough (12 deg apart, < 0.1 mm off at that range)."""
        distance = near.copy()
        sparse = ~np.isfinite(distance)
        sparse[:, np.arange(self.shape[1]) % FAR_RAY_STRIDE != 0] = False
        if sparse.any():
            distance[sparse] = boxes.distance(self.points[sparse.ravel()], half_extent=0.0)[0]
        return distance


@with_single_threaded_blas
def compute_contact(nerve_mask: np.ndarray, ho_labelmap: np.ndarray, geometry: VolumeGeometry,
                    centreline_ras: np.ndarray, *, tolerance_mm: float = DEFAULT_CONTACT_TOLERANCE_MM,
                    ct_hu: np.ndarray | None = None, bone_threshold_hu: float = DEFAULT_BONE_THRESHOLD_HU,
                    image_geometry: VolumeGeometry | None = None, ct_checked: bool = False,
                    signal_along_centreline: np.ndarray | None = None,
                    progress: ProgressCallback = None) -> NerveContact:
    """Contact and encasement figures of one nerve against every HO island.

    With the CT (``ct_hu``, on the same grid) the nerve's encasement by bone that is in
    no HO segment is measured per station too, and such bone wrapped around the nerve
    is named in a warning: it is HO the segments miss. ``image_geometry``: the whole
    grid the segments lie on, when ``geometry`` is a block of it; stations beyond it are
    named as beyond the image, not as off the nerve segment. ``ct_checked``: the caller
    judged the whole image a CT already; otherwise ``ct_hu`` as given is judged (never
    the block around the nerve alone, which may hold neither air nor dense cortex).
    ``signal_along_centreline``: a nerve traced on MR, its signal at each centreline
    point (see :func:`nerve.section_signal`), for the signal ratio.
    """
    nerve_mask, centreline, tolerance = _checked_contact_inputs(nerve_mask, ho_labelmap, geometry, centreline_ras,
                                                                tolerance_mm, ct_hu)
    resolution = contact_resolution_mm(geometry)
    floor_warnings = tolerance_floor_warnings(tolerance, resolution)
    tolerance = max(tolerance, resolution)
    report(progress, 0.05, "Sampling nerve cross-sections")
    points = resample_polyline(centreline, STATION_SPACING_MM)
    s_mm = arc_length_mm(points)
    nerve_boxes, crop, sections, nerve_key = _nerve_geometry(nerve_mask, geometry, points)
    if not sections.on_nerve.any():
        raise InputError("The nerve centreline does not run inside the nerve segment anywhere: the curve and the "
                         "segment lie in different places (one was moved or belongs to another nerve or case). "
                         "Trace the nerve again, which makes both, or move the curve onto the segment.")
    rays = _RayDistances(sections, geometry.cropped(crop))

    report(progress, 0.3, "Measuring distances to HO")
    island_blocks = sparse_label_boxes(ho_labelmap)
    islands_found = _island_surfaces(ho_labelmap, island_blocks, geometry)
    all_ho = VoxelBoxes(np.vstack([boxes.kji for _, boxes in islands_found]) if islands_found else np.zeros((0, 3)),
                        geometry)
    ho_crop = ho_labelmap[crop]
    all_near = rays.to_mask(ho_crop > 0)
    distance = rays.completed_beyond_block(all_near, all_ho)
    min_distance, closest = _closest_pair(nerve_boxes, all_ho)
    min_distance, closest = refine_gap(nerve_mask, lambda block: ho_labelmap[block] > 0, geometry, closest, min_distance)
    # Against the surface near the nerve only: beyond the block, stations read the voxel
    # boxes, which the refined gap already bounds.
    min_distance, closest = _no_larger_than_stations(min_distance, closest, all_near, sections, rays, ho_crop > 0)
    station_distance = np.where(sections.on_nerve, distance.min(axis=1), np.inf)
    encasement, contact_arc, in_contact, runs = _summary(distance, sections, s_mm, tolerance)
    max_encasement = float(encasement.max()) if len(encasement) else 0.0
    lengths = station_lengths(s_mm)
    contact_area = float((contact_arc * lengths).sum())
    surface_area = float((sections.perimeter * lengths)[sections.on_nerve].sum())
    other = (_bone_outside_segments(ct_hu[crop], ho_crop > 0, nerve_mask[crop], crop, geometry, rays, sections, points,
                                    s_mm, tolerance, bone_threshold_hu, nerve_key)
             if ct_hu is not None and (ct_checked or looks_like_ct(ct_hu)) else _OtherBone())

    report(progress, 0.7, "Per-island figures")
    # An island alone in the nerve's block has the same surface there as all HO.
    in_crop = [label for label, block in enumerate(island_blocks, start=1)
               if block is not None and all(b.start < c.stop and c.start < b.stop for b, c in zip(block, crop))]
    island_results = [
        _island_contact(label, boxes, nerve_boxes, nerve_mask, ho_labelmap, geometry, tolerance, rays,
                        all_near if in_crop == [label] else None, ho_crop, sections, s_mm)
        for label, boxes in islands_found]

    report(progress, 1.0, "Contact measured")
    area = np.where(sections.on_nerve, sections.area, np.nan)
    return NerveContact(
        s_mm=s_mm, points_ras=points, encasement_deg=encasement,
        distance_to_ho_mm=np.where(np.isfinite(station_distance), station_distance, np.nan),
        area_mm2=area, min_distance_mm=float(min_distance), closest_points_ras=closest,
        contact_area_mm2=contact_area, contact_fraction=contact_area / surface_area if surface_area > 0 else 0.0,
        contact_length_mm=float(lengths[in_contact].sum()),
        longest_contact_mm=float(max((b - a for a, b in runs), default=0.0)), contact_runs_mm=runs,
        max_encasement_deg=max_encasement, encasement_class=classify(min_distance, max_encasement, tolerance),
        deflection_mm=deflection(points, s_mm, runs), thickening_ratio=thickening_ratio(area, s_mm, in_contact),
        signal_ratio=(signal_ratio(np.where(sections.on_nerve, _along_stations(signal_along_centreline, centreline,
                                                                               s_mm), np.nan), s_mm, in_contact)
                      if signal_along_centreline is not None else None),
        islands=island_results, tolerance_mm=tolerance, bone_encasement_deg=other.encasement,
        warnings=(floor_warnings + off_nerve_warnings(sections.on_nerve, s_mm,
                                                      (image_geometry or geometry).contains_ras(points))
                  + unsegmented_bone_warnings(s_mm, other.wrap_encasement)),
        wrapping_bone_block=other.wrapping_block,
        wrapping_bone_slices=other.wrapping_slices)


def _along_stations(values: np.ndarray, centreline: np.ndarray, s_mm: np.ndarray) -> np.ndarray:
    """Values given per centreline point, at the stations' arc lengths (interpolated);
    NaN everywhere when there is not one per point."""
    values = np.asarray(values, float)
    if len(values) != len(centreline):
        return np.full(len(s_mm), np.nan)
    along = arc_length_mm(centreline)
    return np.interp(s_mm, along, values)


def _checked_contact_inputs(nerve_mask, ho_labelmap, geometry: VolumeGeometry, centreline_ras, tolerance_mm, ct_hu):
    """The nerve mask as booleans, the centreline as (N, 3) and the tolerance, after
    refusing inputs contact cannot be measured on."""
    nerve_mask = np.asarray(nerve_mask, bool)
    if nerve_mask.shape != geometry.shape_kji or ho_labelmap.shape != geometry.shape_kji or (
            ct_hu is not None and ct_hu.shape != geometry.shape_kji):
        raise InputError("The nerve and HO masks do not match the volume grid; resample them onto the CT.")
    if not nerve_mask.any():
        raise InputError("The nerve segment is empty. Trace the nerve again or paint it in the Segment Editor.")
    centreline = np.asarray(centreline_ras, float).reshape(-1, 3)
    if len(centreline) < 2:
        raise InputError("The nerve centreline has fewer than two points. Trace the nerve again.")
    if not np.isfinite(centreline).all():
        raise InputError("The nerve centreline has points without coordinates (NaN or infinite). Trace the nerve "
                         "again, or delete those points of the curve.")
    length = float(np.linalg.norm(np.diff(centreline, axis=0), axis=1).sum())
    if length < STATION_SPACING_MM:
        raise InputError(f"The nerve centreline is {length:.2f} mm long (its points lie on one spot): contact is "
                         f"measured at stations {STATION_SPACING_MM:g} mm apart along it. Trace the nerve again, or "
                         "place the curve's points along the nerve.")
    if not np.isfinite(tolerance_mm) or not 0 <= tolerance_mm <= MAX_CONTACT_TOLERANCE_MM:
        raise InputError(f"The contact tolerance must be between 0 and {MAX_CONTACT_TOLERANCE_MM:g} mm (distances "
                         f"are measured that far from the nerve); got {tolerance_mm}.")
    return nerve_mask, centreline, float(tolerance_mm)


def _island_surfaces(ho_labelmap: np.ndarray, blocks: list, geometry: VolumeGeometry) -> list:
    """(label, surface voxel boxes) of each island of the label map (``blocks``: their
    bounding slices, island n at index n - 1)."""
    found = []
    for label, block in enumerate(blocks, start=1):
        if block is None:
            continue
        boxes = _boundary_boxes(ho_labelmap[block] == label, block, geometry)
        if len(boxes):
            found.append((label, boxes))
    return found


def _island_contact(label, boxes, nerve_boxes, nerve_mask, ho_labelmap, geometry, tolerance, rays: _RayDistances,
                    near, ho_crop, sections, s_mm) -> IslandContact:
    """One island's contact figures; ``near``: its ray distances when already measured."""
    island_min, island_closest = _closest_pair(nerve_boxes, boxes)
    island_min, island_closest = refine_gap(nerve_mask, lambda block: ho_labelmap[block] == label,
                                            geometry, island_closest, island_min)
    # An island farther than the tolerance (plus a voxel's worth) cannot touch the nerve.
    if island_min > tolerance + max(geometry.spacing_kji):
        island_distance = np.full(rays.shape, np.inf)
    else:
        # Only the figures at the tolerance are reported per island.
        island_distance = near if near is not None else rays.to_mask(ho_crop == label, rays.contact_reach(tolerance))
        island_min, island_closest = _no_larger_than_stations(island_min, island_closest, island_distance, sections,
                                                              rays, ho_crop == label)
    island_enc, island_arc, island_in, _ = _summary(island_distance, sections, s_mm, tolerance)
    island_max = float(island_enc.max()) if len(island_enc) else 0.0
    lengths = station_lengths(s_mm)
    return IslandContact(
        label=label, min_distance_mm=float(island_min), closest_points_ras=island_closest,
        contact_area_mm2=float((island_arc * lengths).sum()),
        contact_length_mm=float(lengths[island_in].sum()), max_encasement_deg=island_max,
        encasement_class=classify(island_min, island_max, tolerance))


@dataclass
class _OtherBone:
    """The nerve's encasement by bone in no HO segment: per station, at the tolerance
    and at the wrap tolerance, and that bone where it wraps the nerve (all None when
    not measured or none)."""
    encasement: np.ndarray | None = None
    wrap_encasement: np.ndarray | None = None
    wrapping_block: np.ndarray | None = None
    wrapping_slices: tuple | None = None


def _bone_outside_segments(ct_crop, ho_in_crop, nerve_in_crop, crop, geometry: VolumeGeometry, rays: _RayDistances,
                           sections, points, s_mm, tolerance, bone_threshold_hu, nerve_key=None) -> _OtherBone:
    """The nerve's encasement by the CT's bone in no HO segment (``crop``: the block
    around the nerve, over which the other masks lie; ``nerve_key``: the nerve's and the
    block's key from :func:`_nerve_geometry`, to keep what depends on them alone)."""
    crop_geometry = geometry.cropped(crop)
    # Beyond the tolerance plus a few voxels, bone cannot count as contact.
    reach = tolerance + 3.0 * max(geometry.spacing_kji)
    near_nerve = (None if nerve_key is None else
                  _kept(_PLACED_NERVE_CACHE, ("near", nerve_key, reach),
                        lambda: within_or_next_to(nerve_in_crop, crop_geometry, reach)))
    other_bone = unsegmented_bone(ct_crop, ho_in_crop, nerve_in_crop, crop_geometry, bone_threshold_hu, reach,
                                  near_nerve)
    # Only its contact at the tolerance (and the narrower wrap tolerance) is reported.
    bone_distance = rays.to_mask(other_bone, rays.contact_reach(tolerance), keep_thin=False)
    wrap_tolerance = min(tolerance, NATIVE_BONE_WRAP_TOLERANCE_MM)
    found = _OtherBone(_summary(bone_distance, sections, s_mm, tolerance)[0],
                       _summary(bone_distance, sections, s_mm, wrap_tolerance)[0])
    wrapped = found.wrap_encasement > NATIVE_BONE_MAX_ENCASEMENT_DEG
    if wrapped.any():
        found.wrapping_block, wrapping_slices = bone_at_stations(other_bone, crop_geometry, points, wrapped)
        found.wrapping_slices = block_within(crop, wrapping_slices)
    return found


def bone_at_stations(bone: np.ndarray, geometry: VolumeGeometry, points: np.ndarray, stations: np.ndarray):
    """The voxels of ``bone`` whose nearest station is one of ``stations`` (a boolean per
    point), as a mask over its bounding slices of the grid."""
    kji = np.argwhere(bone)
    nearest = cKDTree(points).query(geometry.kji_to_ras_points(kji))[1]
    kji = kji[stations[nearest]]
    low, high = kji.min(axis=0), kji.max(axis=0) + 1
    block = np.zeros(tuple(high - low), bool)
    block[tuple((kji - low).T)] = True
    return block, tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def unsegmented_bone(ct_hu: np.ndarray, ho_mask: np.ndarray, nerve_mask: np.ndarray, geometry: VolumeGeometry,
                     bone_threshold_hu: float, reach_mm: float, near_nerve: np.ndarray | None = None) -> np.ndarray:
    """The CT's bone (bone threshold up to metal) within ``reach_mm`` of the nerve (and
    at least next to it) that is in no HO segment nor its blurred edge. Farther bone
    cannot be in contact, and its surface would cost time. ``ct_hu`` is judged a CT by
    the caller, on the whole image: a block around the nerve may hold neither air nor
    dense cortex (an HO sleeve reading 950 HU in soft tissue), and judged alone it
    turned this check off. ``near_nerve``: ``within_or_next_to(nerve_mask, geometry,
    reach_mm)`` when already known (it depends on the nerve alone, not on the HO)."""
    bone = at_least(ct_hu, bone_threshold_hu) & ~at_least(ct_hu, METAL_THRESHOLD_HU)
    # Searched in the box around the nerve and its reach, not over the whole block.
    bone &= within_or_next_to(nerve_mask, geometry, reach_mm) if near_nerve is None else near_nerve
    if ho_mask.any() and bone.any():
        bone &= ~within_or_next_to(ho_mask, geometry, HO_RIM_MM)
    return bone


def unsegmented_bone_warnings(s_mm: np.ndarray, bone_encasement: np.ndarray | None) -> list[str]:
    """A warning where bone outside the HO segments wraps around more than half of the
    nerve (``bone_encasement`` per station, within NATIVE_BONE_WRAP_TOLERANCE_MM at
    most), which native bone never does."""
    if bone_encasement is None or not np.any(bone_encasement > NATIVE_BONE_MAX_ENCASEMENT_DEG):
        return []
    wrapped = s_mm[bone_encasement > NATIVE_BONE_MAX_ENCASEMENT_DEG]
    return [f"Bone that is in no HO segment surrounds the nerve over up to {float(np.max(bone_encasement)):.0f} "
            f"degrees, {wrapped.min():.0f}-{wrapped.max():.0f} mm along it. Native bone never wraps around the "
            "sciatic nerve: this is probably HO fused to native bone and too thick to be told apart by shape (or an "
            "HO segment that was deleted). Check the images; paint it into an HO segment in the Segment Editor, or "
            "give a native-bone segmentation, and compute contact again."]


# ---------------------------------------------------------------------------------------
# Surface models
# ---------------------------------------------------------------------------------------
def surface_mesh(mask: np.ndarray, geometry: VolumeGeometry):
    """Triangle surface of a mask in RAS (marching cubes at the 0.5 level), outward faces."""
    from skimage.measure import marching_cubes

    found = bounding_slices(mask)
    if found is None:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    block = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(found, mask.shape))
    padded = np.pad(mask[block].astype(np.float32), 1)
    vertices, faces, _, _ = marching_cubes(padded, 0.5)
    kji = vertices - 1 + [s.start for s in block]
    ras = geometry.kji_to_ras_points(kji)
    faces = faces.astype(np.int64)
    # (k, j, i) index space is left-handed relative to (i, j, k); a flipped direction
    # matrix flips it again. Orient so normals point away from the mask.
    normals = np.cross(ras[faces[:, 1]] - ras[faces[:, 0]], ras[faces[:, 2]] - ras[faces[:, 0]])
    centres = ras[faces].mean(axis=1)
    probe = geometry.ras_to_kji_points(centres + 0.3 * min(geometry.spacing_kji) * normals /
                                       np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12))
    outside = ndimage.map_coordinates(mask.astype(np.uint8), probe.T, order=0, mode="constant", cval=0) == 0
    if np.mean(outside) < 0.5:
        faces = faces[:, ::-1]
    return ras, faces


def nerve_surface_distance_mesh(nerve_mask: np.ndarray, ho_labelmap: np.ndarray, geometry: VolumeGeometry):
    """Nerve surface with each vertex's distance (mm) to the nearest HO, up to
    CONTACT_MARGIN_MM (1000 beyond): the contact patch is cut from it at the tolerance,
    never more than MAX_CONTACT_TOLERANCE_MM."""
    vertices, faces = surface_mesh(nerve_mask, geometry)
    ho = _surface_boxes(ho_labelmap > 0, geometry)
    distance = ho.distance(vertices, half_extent=0.0, up_to_mm=CONTACT_MARGIN_MM)[0] if len(vertices) else np.zeros(0)
    return vertices, faces, np.where(np.isfinite(distance), distance, 1e3)


def ho_surface_distance_mesh(ho_labelmap: np.ndarray, nerve_mask: np.ndarray, geometry: VolumeGeometry):
    """HO surface with each vertex's distance (mm) to the nerve and its island label."""
    vertices, faces = surface_mesh(ho_labelmap > 0, geometry)
    nerve = _surface_boxes(nerve_mask, geometry)
    distance = nerve.distance(vertices, half_extent=0.0)[0] if len(vertices) else np.zeros(0)
    kji = np.clip(np.round(geometry.ras_to_kji_points(vertices)).astype(int), 0, np.array(ho_labelmap.shape) - 1) \
        if len(vertices) else np.zeros((0, 3), int)
    labels = ho_labelmap[tuple(kji.T)] if len(vertices) else np.zeros(0, int)
    return vertices, faces, np.where(np.isfinite(distance), distance, 1e3), labels


def _surface_boxes(mask, geometry) -> VoxelBoxes:
    """The boundary voxels of a mask as boxes (none for an empty mask)."""
    found = bounding_slices(mask)
    if found is None:
        return VoxelBoxes(np.zeros((0, 3)), geometry)
    return _boundary_boxes(mask[found], found, geometry)


def _boundary_boxes(mask_in_block: np.ndarray, block, geometry: VolumeGeometry) -> VoxelBoxes:
    """The boundary voxels of a mask given over ``block`` of ``geometry``'s grid, as boxes."""
    return VoxelBoxes(surface_voxels(mask_in_block) + [s.start for s in block], geometry)
