"""Contact and encasement against analytic figures of a round nerve with an HO shell.

The masks and centreline are the phantom's truth, so contact is tested on its own.
Expected values for a shell covering theta degrees of a nerve of radius r, length L,
tolerance tau:

* max encasement = theta + 4 asin(tau / 2r)                    (within 15 deg)
* contact length = L + 2 tau                                   (within 2 mm)
* contact area   = r theta_eff L + 2 tau r theta  (radians)    (within 20 %)
  -- the arc in contact inside the shell's span, plus the stations within tau of its
  two end faces, where the sector itself is in contact.
* minimum distance = the gap                                   (within 0.5 mm)
The same case on a rotated, flipped or anisotropic grid gives the same figures within
3 deg and 0.5 mm.
"""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from HOSciaticModuleLib.contact import compute_contact, ho_surface_distance_mesh, nerve_surface_distance_mesh
from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.geometry import VolumeGeometry
from HOSciaticModuleLib.phantom import IslandSpec, generate_phantom, make_shell_spec

TAU = 1.0
RADIUS = 5.0
LENGTH = 30.0
GRID = dict(spacing_ijk=(0.5, 0.5, 0.5), fov_mm=(40.0, 40.0, 100.0))
ROTATED = Rotation.from_euler("xyz", [20.0, -15.0, 30.0], degrees=True).as_matrix()
OTHER_GRIDS = {
    "rotated": dict(GRID, directions_ras=ROTATED),
    "flipped": dict(GRID, directions_ras=np.diag([-1.0, 1.0, -1.0])),
    "anisotropic": dict(spacing_ijk=(0.5, 0.7, 1.2), fov_mm=(40.0, 40.0, 100.0)),
}


def expected_encasement(theta):
    return min(theta + 4.0 * np.degrees(np.arcsin(TAU / (2.0 * RADIUS))), 360.0)


def contact_of(spec, grid=GRID, tolerance=TAU):
    phantom = generate_phantom(spec, **grid)
    return phantom, compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry,
                                    phantom.centreline_ras, tolerance_mm=tolerance)


@pytest.mark.parametrize("theta, centre", [(60, 0), (120, 90), (200, 45), (270, 180), (330, -90), (270, -135)])
def test_shell_encasement_length_and_area(theta, centre):
    _, result = contact_of(make_shell_spec(theta, length_mm=LENGTH, sector_center_deg=centre, radius_mm=RADIUS))
    assert abs(result.max_encasement_deg - expected_encasement(theta)) <= 15.0
    assert abs(result.contact_length_mm - (LENGTH + 2 * TAU)) <= 2.0
    assert abs(result.longest_contact_mm - (LENGTH + 2 * TAU)) <= 2.0
    effective = np.radians(expected_encasement(theta))
    area = RADIUS * effective * LENGTH + 2 * TAU * RADIUS * np.radians(theta)
    assert result.contact_area_mm2 == pytest.approx(area, rel=0.20)
    assert result.min_distance_mm == 0.0
    assert result.encasement_class == ("abutment" if theta <= 180 - 23 else "encasement")
    assert len(result.contact_runs_mm) == 1
    assert result.deflection_mm is not None and result.deflection_mm < 0.5
    # One island: its own figures equal the nerve's.
    (island,) = result.islands
    assert island.max_encasement_deg == pytest.approx(result.max_encasement_deg)
    assert island.contact_area_mm2 == pytest.approx(result.contact_area_mm2)
    # Stations far from the shell are free.
    far = np.abs(result.s_mm - result.s_mm[-1] / 2) > LENGTH / 2 + 5
    assert np.all(result.encasement_deg[far] == 0.0)
    assert 0.0 < result.contact_fraction < 1.0


def test_full_ring_is_circumferential():
    _, result = contact_of(make_shell_spec(360.0, length_mm=LENGTH, radius_mm=RADIUS))
    assert result.max_encasement_deg == 360.0
    assert result.encasement_class == "circumferential"


@pytest.mark.parametrize("gap", [2.0, 4.0, 6.0])
def test_gap_is_minimum_distance(gap):
    phantom, result = contact_of(make_shell_spec(200.0, gap_mm=gap, length_mm=LENGTH, radius_mm=RADIUS))
    assert abs(result.min_distance_mm - gap) <= 0.5
    assert result.encasement_class == "none"
    assert result.contact_length_mm == 0.0 and result.max_encasement_deg == 0.0
    nerve_point, ho_point = (np.asarray(p) for p in result.closest_points_ras)
    assert abs(np.linalg.norm(nerve_point - ho_point) - result.min_distance_mm) < 0.05
    # The closest HO point lies on the shell's inner face, about r + gap from the axis.
    axis_distance = np.linalg.norm((ho_point - np.asarray(phantom.spec.center_ras))[:2])
    assert abs(axis_distance - (RADIUS + gap)) <= 0.75
    assert np.nanmin(result.distance_to_ho_mm) == pytest.approx(gap, abs=0.75)


@pytest.mark.parametrize("grid", list(OTHER_GRIDS))
@pytest.mark.parametrize("theta, centre", [(270, 30), (120, -60)])
def test_same_figures_on_other_grids(grid, theta, centre):
    spec = make_shell_spec(theta, length_mm=LENGTH, sector_center_deg=centre, radius_mm=RADIUS)
    _, reference = contact_of(spec)
    _, other = contact_of(spec, OTHER_GRIDS[grid])
    assert abs(other.max_encasement_deg - reference.max_encasement_deg) <= 3.0
    assert abs(other.contact_length_mm - reference.contact_length_mm) <= 2.0
    assert other.contact_area_mm2 == pytest.approx(reference.contact_area_mm2, rel=0.05)


@pytest.mark.parametrize("grid", list(OTHER_GRIDS))
def test_same_gap_on_other_grids(grid):
    spec = make_shell_spec(200.0, gap_mm=3.0, length_mm=LENGTH, radius_mm=RADIUS)
    _, reference = contact_of(spec)
    _, other = contact_of(spec, OTHER_GRIDS[grid])
    assert abs(other.min_distance_mm - reference.min_distance_mm) <= 0.5
    assert abs(other.min_distance_mm - 3.0) <= 0.5


def test_where_ho_touches_the_nerve_the_closest_point_is_the_same_however_the_ct_is_stored():
    # With the HO on the nerve every touching point is closest: the first in the voxels'
    # order was reported, at one end of the contact on one grid and at the other end on
    # the same grid stored feet first (30 mm apart; "Jump to closest point" went there).
    spec = make_shell_spec(270.0, length_mm=LENGTH, sector_center_deg=30.0, radius_mm=RADIUS)
    points = []
    # The last: the same voxels stored with all three axes reversed (the point nearest
    # the mean of the touching shell, which lies off it, moved 6.4 mm around the nerve).
    reversed_axes = dict(GRID, directions_ras=-np.eye(3))
    for grid in (GRID, OTHER_GRIDS["flipped"], OTHER_GRIDS["rotated"], reversed_axes):
        _, result = contact_of(spec, grid)
        assert result.min_distance_mm == 0.0
        point = np.asarray(result.closest_points_ras[0])
        (start, stop), = result.contact_runs_mm
        station = result.s_mm[np.argmin(np.linalg.norm(result.points_ras - point, axis=1))]
        assert abs(station - 0.5 * (start + stop)) <= 2.0
        points.append(point)
    assert np.max(np.linalg.norm(np.asarray(points) - points[0], axis=1)) <= 1.5
    np.testing.assert_allclose(points[-1], points[0], atol=1e-3)


def test_two_contact_zones_are_two_runs():
    shells = (IslandSpec("upper", "shell", True, s_start_mm=15.0, s_stop_mm=30.0, sector_deg=150.0, thickness_mm=5.0),
              IslandSpec("lower", "shell", True, s_start_mm=60.0, s_stop_mm=80.0, sector_deg=240.0,
                         sector_center_deg=120.0, thickness_mm=5.0))
    _, result = contact_of(make_shell_spec(150.0, radius_mm=RADIUS, islands=shells))
    assert len(result.contact_runs_mm) == 2
    lengths = sorted(stop - start for start, stop in result.contact_runs_mm)
    assert abs(lengths[0] - (15.0 + 2 * TAU)) <= 2.0
    assert abs(lengths[1] - (20.0 + 2 * TAU)) <= 2.0
    assert result.longest_contact_mm == pytest.approx(lengths[1])
    assert len(result.islands) == 2
    by_sector = sorted(result.islands, key=lambda i: i.max_encasement_deg)
    assert abs(by_sector[0].max_encasement_deg - expected_encasement(150.0)) <= 15.0
    assert abs(by_sector[1].max_encasement_deg - expected_encasement(240.0)) <= 15.0


def test_thickened_nerve_in_contact_gives_ratio():
    spec = make_shell_spec(200.0, length_mm=LENGTH, radius_mm=4.0, thickening_center_s_mm=50.0,
                           thickening_half_length_mm=12.0, thickening_scale=1.4)
    _, result = contact_of(spec)
    # Area scales with the square of the radius: 1.4^2 = 1.96 at the peak.
    assert result.thickening_ratio == pytest.approx(1.96, rel=0.15)


def test_deflected_nerve():
    # A 5 mm bend confined to the 20 mm contact zone; straight on either side.
    bent = ((0.0, 0.0, -50.0), (0.0, 0.0, -20.0), (0.0, 0.0, -12.0), (5.0, 0.0, 0.0), (0.0, 0.0, 12.0),
            (0.0, 0.0, 20.0), (0.0, 0.0, 50.0))
    spec = make_shell_spec(180.0, length_mm=20.0, radius_mm=RADIUS, sector_center_deg=180.0,
                           nerve_control_points=bent)
    _, result = contact_of(spec)
    assert result.deflection_mm is not None and 3.5 <= result.deflection_mm <= 6.0


def test_no_ho_is_class_none():
    spec = make_shell_spec(200.0, radius_mm=RADIUS, islands=())
    phantom, result = contact_of(spec)
    assert result.encasement_class == "none"
    assert result.islands == [] and result.contact_area_mm2 == 0.0
    assert not np.isfinite(result.min_distance_mm)
    assert result.thickening_ratio is None and result.deflection_mm is None


def test_empty_nerve_is_refused():
    phantom = generate_phantom(make_shell_spec(200.0), **GRID)
    with pytest.raises(InputError, match="empty"):
        compute_contact(np.zeros_like(phantom.nerve_mask), phantom.ho_labels, phantom.geometry, phantom.centreline_ras)


@pytest.mark.parametrize("grid", [dict(spacing_ijk=(0.8, 0.8, 1.0)), dict(spacing_ijk=(1.0, 1.0, 2.0),
                                                                             directions_ras=ROTATED)])
def test_touching_ring_is_circumferential_at_zero_tolerance(grid):
    # Masks that touch measure a few hundredths of a millimetre apart on their smoothed
    # surfaces: at a tolerance of 0 a gap-free ring read 72-88 deg ('abutment'). A
    # tolerance finer than a tenth of a voxel counts contact there, and says so.
    phantom = generate_phantom(make_shell_spec(360.0, radius_mm=3.0), fov_mm=(40.0, 40.0, 100.0), **grid)
    result = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=0.0)
    in_ring = (result.s_mm > 40.0) & (result.s_mm < 60.0)
    assert np.all(result.encasement_deg[in_ring] == 360.0) and result.encasement_class == "circumferential"
    # The ring's 30 mm, within a station and a slice at each end.
    assert result.contact_length_mm == pytest.approx(30.0, abs=2 * (1.0 + max(phantom.geometry.spacing_kji)))
    (warning,) = [w for w in result.warnings if "finer than the surfaces are measured" in w]
    assert result.tolerance_mm == pytest.approx(0.1 * np.mean(phantom.geometry.spacing_kji))
    at_one = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras)
    assert not [w for w in at_one.warnings if "finer than the surfaces" in w] and at_one.tolerance_mm == 1.0


def test_contact_area_counts_the_stations_in_contact_only():
    # A spur one voxel long, 0.8 mm off the nerve, is within the tolerance at a single
    # station: a spike the encasement's 3-station median leaves out, so no length, no
    # class, and no area either (it read 3.1 mm² beside a length of 0 and class 'none').
    # Touching the nerve, the same spur is in contact over its length and the tolerance
    # either side (2.5 mm; as one voxel thin, it used to be smoothed away), as is a 3 mm one.
    spacing = 0.5
    geometry = VolumeGeometry.from_spacing_origin_directions((120, 60, 60), (spacing,) * 3, (-15.0, -15.0, -30.0))
    k, j, i = np.indices(geometry.shape_kji)
    x, y, z = -15.0 + i * spacing, -15.0 + j * spacing, -30.0 + k * spacing
    nerve = x ** 2 + y ** 2 <= 5.0 ** 2
    centreline = np.array([[0.0, 0.0, -28.0], [0.0, 0.0, 28.0]])
    for start, length, touching in ((6.0, 0.5, False), (5.5, 0.5, True), (5.5, 3.0, True)):
        spur = (x >= start) & (x <= 9.0) & (np.abs(y) <= 2.0) & (np.abs(z) <= length / 2)
        result = compute_contact(nerve, spur.astype(np.uint16), geometry, centreline)
        # Apart, the spur's first voxels lie 1 mm beyond the centres of the nerve's edge
        # voxels: their boxes 0.5 mm apart, their smoothed surfaces about 0.8 mm.
        assert result.min_distance_mm == (pytest.approx(0.0, abs=0.1) if touching else pytest.approx(0.75, abs=0.2))
        assert (result.contact_length_mm > 0, result.contact_area_mm2 > 0) == (touching, touching)
        assert result.encasement_class == ("abutment" if touching else "none")
        if touching:
            assert result.contact_length_mm == pytest.approx(length + 2 * TAU, abs=1.0)


@pytest.mark.parametrize("points, phrase", [
    ("one spot", "its points lie on one spot"),
    ("a point without coordinates", "without coordinates"),
    ("a tolerance beyond 10 mm", "between 0 and 10 mm"),
])
def test_centreline_without_length_or_coordinates_and_too_wide_a_tolerance_are_refused(points, phrase):
    phantom = generate_phantom(make_shell_spec(200.0), **GRID)
    centreline = np.array(phantom.centreline_ras, float)
    centreline = np.repeat(centreline[40:41], 3, axis=0) if points == "one spot" else centreline
    if points == "a point without coordinates":
        centreline[10] = np.nan
    with pytest.raises(InputError, match=phrase):
        compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, centreline,
                        tolerance_mm=12.0 if "tolerance" in points else 1.0)


def test_surface_meshes_carry_distances():
    phantom = generate_phantom(make_shell_spec(270.0, radius_mm=RADIUS), **dict(GRID, directions_ras=ROTATED))
    vertices, faces, distance = nerve_surface_distance_mesh(phantom.nerve_mask, phantom.ho_labels, phantom.geometry)
    assert len(faces) > 100 and distance.min() < 0.5 and distance.max() > 5.0
    # Faces point outward: the mesh's signed volume is positive and near the mask's volume.
    a, b, c = (vertices[faces[:, n]] for n in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0
    mask_volume = phantom.nerve_mask.sum() * phantom.geometry.voxel_volume_mm3
    assert volume == pytest.approx(mask_volume, rel=0.1)
    vertices, faces, distance, labels = ho_surface_distance_mesh(phantom.ho_labels, phantom.nerve_mask, phantom.geometry)
    assert len(faces) > 100 and distance.min() < 0.5 and set(np.unique(labels)) <= {0, 1}


def test_distance_to_a_surface_between_thick_slices_is_to_its_triangles():
    """A flat HO face along 5 mm slices: marching cubes puts its vertices on the slices
    only, 5 mm apart. A point touching the face half-way between two slices is 2.5 mm
    from the nearest vertex but on the surface: contact is measured to the triangles
    (within 0.05 mm), so thick slices do not cut the encasement between slices."""
    from HOSciaticModuleLib.contact import SmoothSurface, point_triangle_distance, smoothed_field

    geometry = VolumeGeometry(np.diag([1.0, 1.0, 5.0, 1.0]), (12, 30, 40))
    mask = np.zeros(geometry.shape_kji, bool)
    mask[:, :, :21] = True  # the face lies half-way between i = 20 and 21
    surface = SmoothSurface(smoothed_field(mask), geometry)
    k = np.arange(2, 9) + 0.5  # half-way between slices
    on_face = np.column_stack([np.full(len(k), 20.5), np.full(len(k), 15.0), 5.0 * k])
    np.testing.assert_allclose(surface.distance(on_face + [1e-3, 0, 0]), 0.0, atol=0.05)
    np.testing.assert_allclose(surface.distance(on_face + [0.8, 0.0, 0.0]), 0.8, atol=0.05)
    assert surface.distance(on_face + [20.0, 0.0, 0.0], up_to_mm=12.0).tolist() == [np.inf] * len(k)

    # The distance to one triangle, against a dense sampling of it.
    rng = np.random.default_rng(2)
    a, b, c = rng.normal(size=(3, 3))
    points = rng.normal(scale=2.0, size=(200, 3))
    weights = rng.dirichlet(np.ones(3), size=20000)
    samples = weights @ np.stack([a, b, c])
    brute = np.min(np.linalg.norm(points[:, None, :] - samples[None, :, :], axis=-1), axis=1)
    exact = point_triangle_distance(points, *(np.broadcast_to(v, points.shape) for v in (a, b, c)))
    assert np.all(exact <= brute + 1e-9) and np.all(brute - exact <= 0.05)


def test_triangles_measured_from_gathered_corners_give_the_same_distances_and_points():
    """The distance to a surface and the point reached, measured with each triangle
    corner gathered into an array of its own, are those measured on views of the
    corners, to the bit: on thick slices, for points on, near and beyond the surface,
    for points placed on vertices (where several triangles tie at zero) and with fewer
    vertices than asked for."""
    from HOSciaticModuleLib.contact import (NEAREST_SURFACE_VERTICES, SmoothSurface, closest_points_on_triangles,
                                            row_lengths, smoothed_field)

    def on_corner_views(surface, points, nearest):
        count = len(surface.vertices)
        candidates = surface.faces_of_vertex[np.minimum(nearest, count)].reshape(len(points), -1)
        candidates = -np.sort(-candidates, axis=1)
        candidates[:, 1:][candidates[:, 1:] == candidates[:, :-1]] = -1
        candidates = -np.sort(-candidates, axis=1)
        best, best_point = np.full(len(points), np.inf), np.full((len(points), 3), np.nan)
        for column in range(candidates.shape[1]):
            rows = np.flatnonzero(candidates[:, column] >= 0)
            if len(rows):
                corners = surface.vertices[surface.faces[candidates[rows, column]]]
                on_triangle = closest_points_on_triangles(points[rows], corners[:, 0], corners[:, 1], corners[:, 2])
                distance = row_lengths(points[rows] - on_triangle)
                closer = distance < best[rows]
                best[rows[closer]], best_point[rows[closer]] = distance[closer], on_triangle[closer]
        return best, best_point

    geometry = VolumeGeometry(np.diag([0.8, 0.8, 3.0, 1.0]), (14, 40, 40))
    k, j, i = np.indices(geometry.shape_kji)
    mask = ((k - 7) * 3.0) ** 2 + ((j - 20) * 0.8) ** 2 + ((i - 18) * 0.8) ** 2 <= 9.0 ** 2
    surface = SmoothSurface(smoothed_field(mask), geometry)
    rng = np.random.default_rng(7)
    centre = geometry.kji_to_ras_points(np.array([[7.0, 20.0, 18.0]]))[0]
    points = np.vstack([centre + rng.normal(scale=8.0, size=(3000, 3)), surface.vertices[::7],
                        surface.vertices[::11] + rng.normal(scale=0.01, size=(len(surface.vertices[::11]), 3))])
    nearest = surface.tree.query(points, k=NEAREST_SURFACE_VERTICES)[1]
    nearest[::13, 1:] = len(surface.vertices)  # fewer vertices than asked for
    expected = on_corner_views(surface, points, nearest)
    found = surface._nearest_on_triangles(points, nearest)
    assert np.array_equal(found[0], expected[0])
    assert np.array_equal(found[1], expected[1], equal_nan=True)
    assert np.count_nonzero(expected[0] == 0.0) > 10


def test_smoothing_around_a_mask_gives_the_surface_of_the_whole_block():
    """Distances to HO are measured on a surface smoothed and meshed around the mask
    alone, and searched only as far as they are kept: they equal those on the whole
    block searched over the whole margin, for masks in the middle, at the block's faces
    and reaching across it, on an anisotropic grid (within 1e-4 mm: the mesh's vertices
    are single-precision indices, counted from another corner)."""
    from types import SimpleNamespace

    from HOSciaticModuleLib.contact import CONTACT_MARGIN_MM, SmoothSurface, _RayDistances, smoothed_field

    geometry = VolumeGeometry(np.diag([0.7, 0.9, 2.5, 1.0]) @ np.r_[np.c_[np.eye(3), [3.0, -2.0, 1.0]], [[0, 0, 0, 1]]],
                              (24, 50, 60))
    rng = np.random.default_rng(7)
    kji = rng.uniform([0, 0, 0], geometry.shape_kji, size=(4000, 3)) - 0.5
    rays = _RayDistances(SimpleNamespace(boundary=geometry.kji_to_ras_points(kji).reshape(100, 40, 3)), geometry)
    k, j, i = np.ogrid[:24, :50, :60]
    masks = {
        "middle": (k - 12) ** 2 / 16 + (j - 25) ** 2 / 40 + (i - 30) ** 2 / 60 <= 1,
        "at the faces": ((k < 3) & (j > 40)) | ((i > 55) & (j < 6)),
        "across": (np.abs(j - 25) <= 2) & (np.abs(k - 12) <= 3) & (i >= 0),
    }
    for name, mask in masks.items():
        whole = SmoothSurface(smoothed_field(mask), geometry).distance(rays.points, CONTACT_MARGIN_MM)
        whole[~(whole < CONTACT_MARGIN_MM - 2.0)] = np.inf
        around = rays.to_mask(mask).ravel()
        assert np.array_equal(np.isinf(whole), np.isinf(around)), name
        assert np.isfinite(whole).sum() > 100, name
        np.testing.assert_allclose(around[np.isfinite(around)], whole[np.isfinite(whole)], atol=1e-4, err_msg=name)


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 0.8), (0.6, 0.9, 3.0)])
def test_refined_gap_smoothed_around_the_masks_is_that_of_the_whole_block(spacing):
    """The sub-voxel gap is refined on each mask smoothed around itself within the block
    at the closest voxels: the same gap and points as smoothing the whole block (within
    1e-4 mm, single-precision mesh indices), for a ball beside a rod that runs out of
    the block, far from it, and at the array's face."""
    from scipy import ndimage
    from scipy.spatial import cKDTree
    from skimage.measure import marching_cubes

    from HOSciaticModuleLib.contact import (
        REFINE_MARGIN_MM, SURFACE_SMOOTHING_VOXELS, VoxelBoxes, _closest_pair, refine_gap, surface_voxels)

    geometry = VolumeGeometry(np.diag([*spacing, 1.0]), (60, 90, 90))
    k, j, i = np.ogrid[:60, :90, :90]
    mm = [(k * spacing[2]), (j * spacing[1]), (i * spacing[0])]
    rod = (mm[1] - 36.0) ** 2 + (mm[2] - 36.0) ** 2 <= 16.0

    def whole_block_gap(ho, pair, box_distance):
        centre = 0.5 * (np.asarray(pair[0]) + np.asarray(pair[1]))
        block = geometry.bounding_slices_of_ras_box(centre[None], box_distance + REFINE_MARGIN_MM)
        surfaces = []
        for mask in (rod[block], ho[block]):
            field = ndimage.gaussian_filter(np.pad(mask.astype(np.float32), 2), SURFACE_SMOOTHING_VOXELS)
            surfaces.append(geometry.kji_to_ras_points(marching_cubes(field, 0.5)[0] - 2 + [s.start for s in block]))
        return max(float(cKDTree(surfaces[1]).query(surfaces[0])[0].min()), box_distance)

    for centre_mm in ((20.0, 36.0, 45.5), (25.0, 50.0, 50.0), (spacing[2] * 59 - 2.0, 36.0, 47.0)):
        ho = sum((a - c) ** 2 for a, c in zip(mm, centre_mm)) <= 9.0
        boxes = [VoxelBoxes(surface_voxels(m), geometry) for m in (rod, ho)]
        box_distance, pair = _closest_pair(*boxes)
        assert box_distance > 0.0
        refined, refined_pair = refine_gap(rod, lambda block: ho[block], geometry, pair, box_distance)
        assert refined >= box_distance
        assert abs(refined - whole_block_gap(ho, pair, box_distance)) < 1e-4, centre_mm
        assert abs(np.linalg.norm(np.subtract(*refined_pair)) - refined) < 1e-6


@pytest.mark.parametrize("grid", ["isotropic", "thick slices"])
@pytest.mark.parametrize("tolerance", [0.0, 1.0, 2.5, 10.0])
def test_island_and_other_bone_figures_need_distances_only_near_the_tolerance(tolerance, grid, monkeypatch):
    """An island beside another, and the bone in no HO segment, are measured only up to
    the tolerance and the gap to the next ray beyond it (and a mesh edge): their figures
    equal those from distances measured as far as the nerve's block allows, partial
    edges included, on fine voxels and on 3 mm slices."""
    from HOSciaticModuleLib.contact import _RayDistances

    grid = GRID if grid == "isotropic" else dict(spacing_ijk=(0.7, 0.7, 3.0), fov_mm=(40.0, 40.0, 100.0))
    phantom = generate_phantom(make_shell_spec(150.0, gap_mm=0.4, length_mm=LENGTH, radius_mm=RADIUS), **grid)
    geometry, labels, ct = phantom.geometry, phantom.ho_labels.copy(), phantom.image.copy()
    kji = np.argwhere(np.ones(geometry.shape_kji, bool)).reshape(*geometry.shape_kji, 3)
    ras = geometry.kji_to_ras_points(kji.reshape(-1, 3)).reshape(*geometry.shape_kji, 3)
    centre = np.asarray(phantom.spec.center_ras)
    # A second island, 1.2 mm off the nerve opposite the shell, and bone on a third side
    # that no segment holds.
    second = np.linalg.norm(ras - (centre + [-(RADIUS + 4.2), 0.0, 8.0]), axis=-1) <= 3.0
    other_bone = np.linalg.norm(ras - (centre + [0.0, RADIUS + 3.5, -10.0]), axis=-1) <= 2.6
    labels[second] = 2
    ct[second | other_bone] = 900.0
    ends = geometry.shape_kji[0] // 8
    ct[:ends], ct[-ends:] = -100.0, -1000.0  # fat and air at the nerve's ends: a CT

    def contact():
        return compute_contact(phantom.nerve_mask, labels, geometry, phantom.centreline_ras, tolerance_mm=tolerance,
                               ct_hu=ct)

    near = contact()
    monkeypatch.setattr(_RayDistances, "contact_reach", lambda self, tolerance: np.inf)
    whole = contact()
    assert len(near.islands) == 2
    for island, reference in zip(near.islands, whole.islands):
        assert island == reference
    np.testing.assert_array_equal(near.bone_encasement_deg, whole.bone_encasement_deg)
    assert near.warnings == whole.warnings
    if tolerance >= 2.5:
        assert all(island.contact_area_mm2 > 0 for island in near.islands)
        assert near.bone_encasement_deg.max() > 0


def test_a_speck_of_one_voxel_keeps_its_surface():
    """A single voxel smooths to below the surface's level, and no distance was measured
    to it: it keeps a surface at its voxel's faces, measured bounded or not."""
    from types import SimpleNamespace

    from HOSciaticModuleLib.contact import _RayDistances

    geometry = VolumeGeometry(np.diag([0.8, 0.8, 1.0, 1.0]), (10, 10, 10))
    boundary = geometry.kji_to_ras_points(np.argwhere(np.ones((2, 3, 4), bool)) + 3.0).reshape(2, 12, 3)
    rays = _RayDistances(SimpleNamespace(boundary=boundary), geometry)
    speck = np.zeros(geometry.shape_kji, bool)
    speck[5, 5, 5] = True
    centre = geometry.kji_to_ras_points([[5, 5, 5]])[0]
    to_centre = np.linalg.norm(boundary - centre, axis=-1)
    unbounded = rays.to_mask(speck)
    # The surface passes about half a voxel (0.4-0.5 mm) from the voxel's centre.
    assert np.all(np.abs(unbounded - (to_centre - 0.45)) <= 0.25)
    bounded = rays.to_mask(speck, rays.contact_reach(1.0))
    near = unbounded <= rays.contact_reach(1.0)
    np.testing.assert_allclose(bounded[near], unbounded[near])


def test_distance_to_voxel_boxes_up_to_a_reach():
    """Box distances searched only up to a reach equal the full search within it and
    are infinite beyond; the nerve mesh's reach holds the largest contact tolerance, so
    the contact patch is cut from exact distances at any tolerance."""
    from HOSciaticModuleLib.contact import CONTACT_MARGIN_MM, VoxelBoxes
    from HOSciaticModuleLib.defaults import MAX_CONTACT_TOLERANCE_MM

    assert CONTACT_MARGIN_MM >= MAX_CONTACT_TOLERANCE_MM
    geometry = VolumeGeometry(np.diag([0.8, 0.8, 3.0, 1.0]), (30, 60, 60))
    rng = np.random.default_rng(3)
    boxes = VoxelBoxes(rng.integers(20, 40, size=(300, 3)) * [0.3, 1, 1], geometry)
    points = geometry.kji_to_ras_points(rng.uniform(0, 60, size=(3000, 3)) * [0.3, 1, 1])
    for half_extent in (0.0, 0.5):
        full = boxes.distance(points, half_extent)[0]
        near, near_points, near_index = boxes.distance(points, half_extent, up_to_mm=6.0)
        within = full <= 6.0
        assert 100 < within.sum() < len(points) - 100
        np.testing.assert_array_equal(near[within], full[within])
        # The box point found is at that distance (boxes that tie may be either).
        np.testing.assert_allclose(np.linalg.norm(near_points[within] - points[within], axis=1)
                                   if half_extent == 0.0 else near[within], full[within], atol=1e-9)
        assert np.all(np.isinf(near[~within])) and np.all(near_index[~within] == -1)


@pytest.mark.parametrize("island_centre", [(25.0, 30.0, 30.0), (25.0, 30.0, 80.0), (10.0, 100.0, 200.0)])
def test_nearest_centres_are_searched_where_they_can_be_closest(island_centre):
    """The closest pair's search skips nerve voxels that cannot be within the slack of
    the smallest centre distance: every voxel that can is searched, with the distance a
    full search gives, for an island touching, beside and far from the nerve."""
    from HOSciaticModuleLib.contact import VoxelBoxes, _nearest_centre_distances

    geometry = VolumeGeometry(np.diag([0.8, 0.8, 3.0, 1.0]), (60, 120, 240))
    rng = np.random.default_rng(5)
    nerve_kji = np.argwhere(np.ones((50, 6, 6), bool)) + [5, 27, 27]
    island = VoxelBoxes(rng.normal(island_centre, 2.0, size=(400, 3)), geometry)
    points_mm = nerve_kji * island.spacing
    slack = float(np.linalg.norm(island.spacing))
    full = island.tree.query(points_mm)[0]
    found = _nearest_centre_distances(points_mm, island, slack)
    can_be_closest = full <= full.min() + slack
    assert can_be_closest.any()
    np.testing.assert_array_equal(found[can_be_closest], full[can_be_closest])
    searched = np.isfinite(found)
    np.testing.assert_array_equal(found[searched], full[searched])
    assert np.all(found >= full)
    if island_centre[2] > 100:
        assert searched.sum() < len(points_mm) / 2


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 1.0), (0.6, 0.9, 3.0)])
def test_bone_outside_the_segments_is_looked_for_within_reach_of_the_nerve(spacing):
    """The bone checked for wrapping the nerve is the CT's bone within the reach of the
    nerve (by the distance map of the whole block) less the HO and its rim: searched in
    the box around the nerve, the same voxels."""
    from HOSciaticModuleLib.contact import HO_RIM_MM, unsegmented_bone
    from HOSciaticModuleLib.geometry import distance_outside, within_or_next_to

    geometry = VolumeGeometry(np.diag([*spacing, 1.0]), (40, 70, 80))
    rng = np.random.default_rng(2)
    ct = rng.normal(40.0, 20.0, geometry.shape_kji).astype(np.int16)
    ct[:, :, :12] = -1000  # air and fat: a CT
    ct[:, :, 12:24] = -100
    ct[rng.random(geometry.shape_kji) > 0.93] = 900  # bone scattered through the block
    k, j, i = np.ogrid[:40, :70, :80]
    nerve = ((j - 35) * spacing[1]) ** 2 + ((i - 45) * spacing[0]) ** 2 <= 16.0
    ho = np.zeros(geometry.shape_kji, bool)
    ho[10:20, 40:46, 50:56] = True
    reach = 2.0 + 3.0 * max(geometry.spacing_kji)
    found = unsegmented_bone(ct, ho, nerve, geometry, 200.0, reach)
    bone = (ct >= 200) & (distance_outside(nerve, geometry) <= reach) & ~within_or_next_to(ho, geometry, HO_RIM_MM)
    np.testing.assert_array_equal(found, bone)
    assert 100 < np.count_nonzero(found) < np.count_nonzero(ct >= 200) / 2
    # The nerve's reach, kept across recomputes and passed in, gives the same voxels.
    kept = unsegmented_bone(ct, ho, nerve, geometry, 200.0, reach, within_or_next_to(nerve, geometry, reach))
    np.testing.assert_array_equal(kept, found)


def _contact_figures(result) -> list:
    """Every figure of a contact result, arrays as lists, for an exact comparison."""
    import dataclasses

    return [(f.name, np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
            for f, v in ((f, getattr(result, f.name)) for f in dataclasses.fields(result))]


def test_figures_after_an_edit_with_the_nerve_s_geometry_kept_are_those_measured_afresh():
    """After an HO edit the nerve's sections, boundary boxes and reach are reused: the
    figures are those of a run with nothing kept, to the last digit (the CT's bone
    outside the segments too)."""
    from HOSciaticModuleLib import contact

    shells = (IslandSpec("upper", "shell", True, s_start_mm=15.0, s_stop_mm=30.0, sector_deg=150.0, thickness_mm=5.0),
              IslandSpec("lower", "shell", True, s_start_mm=60.0, s_stop_mm=80.0, sector_deg=240.0,
                         sector_center_deg=120.0, thickness_mm=5.0))
    phantom = generate_phantom(make_shell_spec(150.0, radius_mm=RADIUS, islands=shells), **GRID)
    ct = phantom.image.astype(np.int16)

    def measured(labels, fresh):
        if fresh:
            contact._SECTIONS_CACHE.clear()
            contact._PLACED_NERVE_CACHE.clear()
        return _contact_figures(compute_contact(phantom.nerve_mask, labels, phantom.geometry, phantom.centreline_ras,
                                                tolerance_mm=TAU, ct_hu=ct, ct_checked=True))

    labels = phantom.ho_labels.copy()
    measured(labels, fresh=True)
    upper = np.flatnonzero((labels == 1).any(axis=(1, 2)))
    labels[upper[len(upper) // 2]:][labels[upper[len(upper) // 2]:] == 1] = 0  # half of the upper shell erased
    kept = measured(labels, fresh=False)
    assert contact._PLACED_NERVE_CACHE
    assert kept == measured(labels, fresh=True)


OBLIQUE_NERVE = tuple(tuple(t * np.array([0.0, 1.0, 1.0]) / np.sqrt(2.0)) for t in (-50.0, -16.7, 16.7, 50.0))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (0.7, 0.7, 3.0)])
def test_a_gap_across_obliquely_cut_thick_slices_is_measured(spacing):
    # A nerve at 45 degrees to 2-3 mm slices, 2 mm from a 270-degree shell: voxels of the
    # two masks meet at edges or corners across the gap, and the gap read 0.00 mm.
    spec = make_shell_spec(270.0, gap_mm=2.0, length_mm=LENGTH, radius_mm=RADIUS, sector_center_deg=7.0,
                           nerve_control_points=OBLIQUE_NERVE)
    phantom = generate_phantom(spec, spacing_ijk=spacing, fov_mm=(80.0, 80.0, 80.0))
    assert not np.any(phantom.nerve_mask & (phantom.ho_labels > 0))
    result = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=TAU)
    # Sampled on such voxels a 2 mm gap reads 0.8-1.9 mm: 3 mm slices cut obliquely bring
    # the shell's voxels within a millimetre of the nerve over a few stations, a gap they
    # cannot resolve at a 1 mm tolerance (on 2 mm slices it is no contact).
    assert 0.8 <= result.min_distance_mm <= 2.3
    assert result.min_distance_mm <= np.nanmin(result.distance_to_ho_mm)
    if max(spacing) <= 2.0:
        assert result.encasement_class == "none"


@pytest.mark.parametrize("gap", [1.1, 1.2])
def test_smallest_gap_agrees_with_the_stations_at_the_tolerance(gap):
    # A gap just beyond the tolerance on 0.5 mm voxels: the smallest gap (read between
    # the surfaces' vertices) said 1.13 mm, class none, beside stations at 0.995 mm
    # making a 29 mm contact run. The figures now agree.
    spec = make_shell_spec(270.0, gap_mm=gap, length_mm=LENGTH, radius_mm=RADIUS, sector_center_deg=7.0,
                           nerve_control_points=OBLIQUE_NERVE)
    phantom = generate_phantom(spec, spacing_ijk=(0.5, 0.5, 0.5), fov_mm=(50.0, 50.0, 60.0))
    result = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=TAU)
    assert result.min_distance_mm <= np.nanmin(result.distance_to_ho_mm) + 1e-9
    assert (result.encasement_class == "none") == (result.contact_length_mm == 0.0)
    # The closest pair is the one the smallest gap was measured between.
    nerve_point, ho_point = (np.asarray(p) for p in result.closest_points_ras)
    assert np.linalg.norm(nerve_point - ho_point) == pytest.approx(result.min_distance_mm, abs=0.01)
    (island,) = result.islands
    assert (island.encasement_class == "none") == (island.contact_length_mm == 0.0)
    assert island.min_distance_mm == pytest.approx(result.min_distance_mm)


@pytest.mark.parametrize("thickness_mm, spacing, direction", [
    (1.0, (1.5, 1.5, 1.5), (0.0, 0.0, 1.0)),
    (1.5, (1.5, 1.5, 1.5), (0.0, 0.0, 1.0)),
    (1.0, (1.0, 1.0, 2.0), (0.0, 1.0, 1.0)),
])
def test_thin_ho_on_the_nerve_is_in_contact(thickness_mm, spacing, direction):
    # A 270-degree sleeve of HO 1-1.5 mm thick on the nerve, sampled on voxels as thick
    # or thicker: smoothed, a sheet one voxel thin peaked near 0.5 and its surface
    # vanished or shrank to a sliver; the nerve read 0-192 degrees, class none with a
    # smallest gap of 0 for the thinnest. Now as a thick sleeve reads.
    import dataclasses

    d = np.asarray(direction) / np.linalg.norm(direction)
    spec = make_shell_spec(270.0, length_mm=LENGTH, radius_mm=RADIUS, sector_center_deg=7.0,
                           nerve_control_points=tuple(tuple(t * d) for t in (-50.0, -16.7, 16.7, 50.0)))
    spec = dataclasses.replace(spec, islands=(dataclasses.replace(spec.islands[0], thickness_mm=thickness_mm),))
    fov = (40.0, 40.0, 100.0) if direction[0] == direction[1] == 0.0 else (80.0, 80.0, 80.0)
    phantom = generate_phantom(spec, spacing_ijk=spacing, fov_mm=fov)
    result = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=TAU)
    assert result.encasement_class == "encasement"
    assert result.max_encasement_deg == pytest.approx(expected_encasement(270.0), abs=15.0)
    assert result.contact_length_mm == pytest.approx(LENGTH + 2 * TAU, abs=3.0)


def test_noise_around_the_nerve_is_no_bone_outside_the_segments():
    # A sharp kernel's noise (150 HU) lifts single voxels of soft tissue over the bone
    # threshold: kept as HO segments' thin parts are, they read as bone in no segment
    # wrapping the nerve over up to 293 degrees, with a warning.
    from HOSciaticModuleLib.phantom import PhantomSpec

    phantom = generate_phantom(PhantomSpec(noise_sigma=150.0), spacing_ijk=(1.0, 1.0, 1.5), fov_mm=(80.0, 80.0, 150.0))
    result = compute_contact(phantom.nerve_mask, phantom.ho_labels, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=TAU, ct_hu=phantom.image)
    assert np.count_nonzero(result.bone_encasement_deg > 0) <= 0.05 * len(result.bone_encasement_deg)
    assert not any("Bone that is in no HO segment" in warning for warning in result.warnings)
    assert result.encasement_class == "encasement"


def test_bone_wrapping_the_nerve_is_looked_for_in_a_ct_without_air_or_dense_cortex_nearby():
    # Judged a CT on the block around the nerve alone (which needs air or cortex of 1000
    # HU), a sleeve of HO reading 960 HU in soft tissue turned the check of bone outside
    # the HO segments off: with the sleeve's segment deleted, contact 'none', no word.
    from HOSciaticModuleLib.hounsfield import looks_like_ct

    phantom = generate_phantom(make_shell_spec(270.0, length_mm=LENGTH, radius_mm=RADIUS, sector_center_deg=7.0),
                               spacing_ijk=(1.0, 1.0, 1.0), fov_mm=(40.0, 40.0, 100.0))
    assert not looks_like_ct(phantom.image) and phantom.image.max() < 1000.0
    deleted = np.zeros_like(phantom.ho_labels)
    result = compute_contact(phantom.nerve_mask, deleted, phantom.geometry, phantom.centreline_ras,
                             tolerance_mm=TAU, ct_hu=phantom.image, ct_checked=True)
    assert np.nanmax(result.bone_encasement_deg) == pytest.approx(expected_encasement(270.0), abs=15.0)
    (warning,) = [w for w in result.warnings if "Bone that is in no HO segment" in w]
    assert f"{np.nanmax(result.bone_encasement_deg):.0f} degrees" in warning
    # Not said to be a CT, the image is judged whole.
    unjudged = compute_contact(phantom.nerve_mask, deleted, phantom.geometry, phantom.centreline_ras,
                               tolerance_mm=TAU, ct_hu=phantom.image)
    assert unjudged.bone_encasement_deg is None


@pytest.mark.parametrize("start, stop", [(-10.0, 12.0), (88.0, 110.0)])
def test_contact_at_an_end_of_the_trace_stays_on_the_curve(start, stop):
    # Each station owned 1 mm about itself: HO at the start of the trace gave a run from
    # -0.5 mm, and at its end, with the last station closer than 1 mm to the one before,
    # a run past the curve's end and a longest contact above the contact length.
    island = IslandSpec("end", "shell", True, s_start_mm=start, s_stop_mm=stop, sector_deg=270.0, thickness_mm=5.0)
    phantom, result = contact_of(make_shell_spec(270.0, radius_mm=RADIUS, islands=(island,)),
                                 dict(spacing_ijk=(1.0, 1.0, 1.0), fov_mm=(40.0, 40.0, 112.0)))
    length = result.s_mm[-1]
    assert length % 1.0 > 0.25 and (result.encasement_deg[0] > 0.0 or result.encasement_deg[-1] > 0.0)
    assert all(0.0 <= a < b <= length for a, b in result.contact_runs_mm)
    assert sum(b - a for a, b in result.contact_runs_mm) == pytest.approx(result.contact_length_mm)
    assert result.longest_contact_mm <= result.contact_length_mm
    (touching,) = result.islands
    assert touching.contact_length_mm == pytest.approx(result.contact_length_mm)
    # The shell covers the trace from its end to 12 mm in (the tolerance beyond, less
    # half a station lost to the median of three stations).
    assert result.contact_length_mm == pytest.approx(12.0 + TAU, abs=1.0)


def test_lengths_and_summed_distances_are_those_of_numpy_s_norm():
    """The rows' lengths and the points' summed distances (the middle of tied closest
    points) are bit for bit those :func:`numpy.linalg.norm` gives, which they replace."""
    from HOSciaticModuleLib.contact import _summed_distances, row_lengths

    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(5000, 3)) * rng.uniform(0.01, 100.0, size=(5000, 1))
    np.testing.assert_array_equal(row_lengths(vectors), np.linalg.norm(vectors, axis=1))
    points = rng.normal(size=(700, 3)) * 20.0
    expected = np.concatenate([np.linalg.norm(points[start:start + 256, None, :] - points[None, :, :], axis=2).sum(axis=1)
                               for start in range(0, len(points), 256)])
    np.testing.assert_array_equal(_summed_distances(points), expected)


def test_nerve_sections_read_a_few_steps_at_a_time_find_the_same_boundary():
    """Reading the rays a few steps at a time, and only those still inside, finds the
    same first step outside as reading every step of every ray, for rays that leave
    at once, on the way and never."""
    from HOSciaticModuleLib.contact import _first_steps_outside

    rng = np.random.default_rng(4)
    field = (rng.random((30, 30, 30)) < 0.9).astype(np.float32)
    field[10:20, 10:20, 10:20] = 1.0

    def inside(kji):
        from scipy import ndimage

        values = ndimage.map_coordinates(field, kji.reshape(-1, 3).T, order=1, mode="constant", cval=0.0)
        return values.reshape(kji.shape[:-1]) >= 0.5

    origins = rng.uniform(8, 22, size=(40, 3))
    directions = rng.normal(size=(40, 24, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    steps = np.arange(0.0, 16.0 + 1e-6, 1.0)
    is_in = inside(origins[:, None, None, :] + steps[:, None] * directions[:, :, None, :])
    is_in[:, :, 0] = True
    expected = np.where(is_in.all(axis=-1), len(steps) - 1, np.argmin(is_in, axis=-1))
    assert 0 < np.count_nonzero(expected == len(steps) - 1) < expected.size
    np.testing.assert_array_equal(_first_steps_outside(inside, origins, directions, steps), expected)


def _mirror_across_x0(points):
    return points * np.array([-1.0, 1.0, 1.0])


@pytest.mark.parametrize("other_shift_mm, other_stop_mm, expected", [
    (0.0, 100.0, 1.5),     # the other nerve at the mirror image, along the whole stretch
    (9.0, 100.0, 1.5),     # 9 mm anterior of it (the other leg lies otherwise): matched by level
    (20.0, 100.0, None),   # farther than CONTRALATERAL_MATCH_MM: not the other nerve at that level
    (0.0, 30.0, None),     # traced only above the contact: its nearest station is its end
])
def test_area_against_the_other_side_compares_the_nerve_at_its_mirror_image(other_shift_mm, other_stop_mm, expected):
    """A nerve of 100 mm² swollen to 150 mm² over 20 mm of contact, 40 mm right of the
    midline; the other side's nerve of 100 mm² all along, 40 mm left: the area in contact
    reads 1.5 times the other side's at the same place, and nothing where the other nerve
    was not traced at that level."""
    from HOSciaticModuleLib.contact import contralateral_ratio

    s = np.arange(0.0, 100.0 + 1e-9, 1.0)
    points = np.stack([np.full_like(s, 40.0), np.zeros_like(s), -s], axis=1)
    in_contact = (s >= 40.0) & (s <= 60.0)
    area = np.where(in_contact, 150.0, 100.0)
    other_s = np.arange(0.0, other_stop_mm + 1e-9, 2.0)  # stations of another step
    other_points = np.stack([np.full_like(other_s, -40.0), np.full_like(other_s, other_shift_mm), -other_s], axis=1)
    ratio = contralateral_ratio(area, points, in_contact, np.full(len(other_s), 100.0), other_points, _mirror_across_x0)
    assert ratio == (pytest.approx(expected, abs=1e-9) if expected is not None else None)


@pytest.mark.parametrize("other_shift_mm", [0.0, 9.0, 20.0])
def test_the_other_sides_diameter_is_read_beside_each_station_it_was_traced_at(other_shift_mm):
    """A nerve 40 mm right of the midline over s 0-100 mm; the other side's nerve 40 mm
    left over s 20-60 (stations 2 mm apart), its diameter 8 + s/100 mm: beside each
    station whose mirror image it passes within CONTRALATERAL_MATCH_MM of, its diameter
    at its nearest station (the same level); nothing at the level of its ends or beyond,
    nor when it lies 20 mm off the mirror image."""
    from HOSciaticModuleLib.contact import other_side_values

    s = np.arange(0.0, 100.0 + 1e-9, 1.0)
    points = np.stack([np.full_like(s, 40.0), np.zeros_like(s), -s], axis=1)
    other_s = np.arange(20.0, 60.0 + 1e-9, 2.0)
    other_points = np.stack([np.full_like(other_s, -40.0), np.full_like(other_s, other_shift_mm), -other_s], axis=1)
    values = other_side_values(points, 8.0 + other_s / 100.0, other_points, _mirror_across_x0)
    if other_shift_mm > 15.0:
        assert np.isnan(values).all()
        return
    # Level s is nearest the other station round(s / 2) * 2 (a tie, at odd s, goes either way).
    inner = (s > 21.0) & (s < 59.0)
    assert np.isfinite(values[inner]).all() and np.isnan(values[(s < 21.0) | (s > 59.0)]).all()
    np.testing.assert_allclose(values[inner], 8.0 + s[inner] / 100.0, atol=0.01 + 1e-9)
    assert np.isnan(other_side_values(points, 8.0 + other_s[:2] / 100.0, other_points[:2], _mirror_across_x0)).all()


def test_area_against_the_other_side_skips_what_either_nerve_lacks():
    """Stations without a section on either nerve are not compared; no contact, no ratio.
    The other nerve thinner in part (80 mm² over s 50-60): the largest ratio is there."""
    from HOSciaticModuleLib.contact import contralateral_ratio

    s = np.arange(0.0, 100.0 + 1e-9, 1.0)
    points = np.stack([np.full_like(s, 40.0), np.zeros_like(s), -s], axis=1)
    in_contact = (s >= 40.0) & (s <= 70.0)
    area = np.full(len(s), 100.0)
    other_area = np.where((s >= 50.0) & (s <= 60.0), 80.0, 100.0)
    other = _mirror_across_x0(points)
    assert contralateral_ratio(area, points, in_contact, other_area, other, _mirror_across_x0) == pytest.approx(1.25)
    other_area[(s >= 45.0) & (s <= 65.0)] = np.nan   # no section there
    assert contralateral_ratio(area, points, in_contact, other_area, other, _mirror_across_x0) == pytest.approx(1.0)
    assert contralateral_ratio(area, points, np.zeros(len(s), bool), other_area, other, _mirror_across_x0) is None
    assert contralateral_ratio(np.full(len(s), np.nan), points, in_contact, other_area, other, _mirror_across_x0) is None


def test_area_against_the_other_side_is_not_read_where_ho_presses_on_the_other_nerve_too():
    """Bilateral HO: where the other nerve is in contact at the mirror image (pressed flat
    to 80 mm² over s 30-50) it is no healthy reference, and this nerve would read 1.875
    against it; the stations facing its clear stretch (s 51-60, 100 mm²) read 1.5; with
    the whole stretch pressed on both sides there is no figure."""
    from HOSciaticModuleLib.contact import contralateral_ratio

    s = np.arange(0.0, 100.0 + 1e-9, 1.0)
    points = np.stack([np.full_like(s, 40.0), np.zeros_like(s), -s], axis=1)
    in_contact = (s >= 40.0) & (s <= 60.0)
    area = np.where(in_contact, 150.0, 100.0)
    other = _mirror_across_x0(points)
    other_pressed = (s >= 30.0) & (s <= 50.0)
    other_area = np.where(other_pressed, 80.0, 100.0)
    assert contralateral_ratio(area, points, in_contact, other_area, other, _mirror_across_x0) == pytest.approx(1.875)
    assert contralateral_ratio(area, points, in_contact, other_area, other, _mirror_across_x0,
                               other_pressed) == pytest.approx(1.5)
    assert contralateral_ratio(area, points, in_contact, area, other, _mirror_across_x0, in_contact) is None
