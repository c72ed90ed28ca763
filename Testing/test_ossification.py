"""HO segmentation against the phantom's ground truth.

Tolerances (from the product's acceptance figures): total HO volume within 10 % of
truth, Dice of the HO union >= 0.85, every true island >= 0.1 mL found, native bone
never reported as HO (< 1 % of its voxels, no island mostly inside it), no island on a
case without HO, calcifications (about 0.017 mL each) never reported.
"""

import dataclasses
import re

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.geometry import VolumeGeometry, bounding_block, distance_inside, distance_outside
from HOSciaticModuleLib.midline import BoneAcrossMidline, MirrorPlane, body_midline, ct_body_midline, side_of_midline
from HOSciaticModuleLib.ossification import (MIDLINE_SEGMENT_NAME, asymmetric_outgrowth, bridges_two_bones,
                                             segment_ossifications)
from HOSciaticModuleLib.phantom import BoneSpec, IslandSpec, PhantomSpec, generate_phantom, other_hip_bones

BASE = dict(spacing_ijk=(1.0, 1.0, 2.0))
ROTATED = Rotation.from_euler("xyz", [20.0, -15.0, 30.0], degrees=True).as_matrix()
FLIPPED = np.diag([-1.0, 1.0, -1.0])

VARIANTS = {
    "axial": BASE,
    "rotated": dict(spacing_ijk=(1.0, 1.0, 2.0), directions_ras=ROTATED, fov_mm=(140.0, 140.0, 160.0)),
    "flipped": dict(spacing_ijk=(1.0, 1.0, 2.0), directions_ras=FLIPPED),
    "anisotropic": dict(spacing_ijk=(0.7, 1.3, 2.5)),
    # 3 mm, the commonest thick reconstruction: a native bone's rounded end cut by one
    # slice used to be reported as a 0.1 mL fused island.
    "3 mm slices": dict(spacing_ijk=(0.7, 0.7, 3.0)),
}


def assert_matches_truth(phantom, result):
    truth = phantom.ho_labels > 0
    found = result.labelmap > 0
    voxel_ml = phantom.geometry.voxel_volume_ml
    truth_ml, found_ml = truth.sum() * voxel_ml, found.sum() * voxel_ml
    assert abs(found_ml - truth_ml) <= 0.10 * truth_ml, (found_ml, truth_ml)
    dice = 2.0 * np.count_nonzero(truth & found) / (truth.sum() + found.sum())
    assert dice >= 0.85, dice
    for island in phantom.islands:
        if island["volume_ml"] >= 0.1:
            overlap = np.bincount(result.labelmap[phantom.ho_labels == island["label"]])
            assert overlap[1:].sum() > 0.5 * (phantom.ho_labels == island["label"]).sum(), island["name"]
    native = phantom.native_bone_mask
    assert np.count_nonzero(found & native) < 0.01 * native.sum()
    for island in result.islands:
        inside = result.labelmap == island.label
        assert np.count_nonzero(inside & native) < 0.5 * inside.sum()
    assert not np.any(found & phantom.calcification_mask)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_islands_match_truth(variant):
    phantom = generate_phantom(**VARIANTS[variant])
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert_matches_truth(phantom, result)
    assert len(result.islands) == len(phantom.islands)
    volumes = [island.volume_ml for island in result.islands]
    assert volumes == sorted(volumes, reverse=True)
    assert [island.label for island in result.islands] == list(range(1, len(volumes) + 1))


def _matching_island(phantom, result, name):
    label = next(i["label"] for i in phantom.islands if i["name"] == name)
    overlap = np.bincount(result.labelmap[phantom.ho_labels == label], minlength=len(result.islands) + 1)
    return result.islands[int(np.argmax(overlap[1:]))]


@pytest.mark.parametrize("variant", ["axial", "anisotropic"])
def test_fused_flag_maturity_and_figures(variant):
    phantom = generate_phantom(**VARIANTS[variant])
    result = segment_ossifications(phantom.image, phantom.geometry)
    for truth in phantom.islands:
        island = _matching_island(phantom, result, truth["name"])
        assert island.fused_to_native_bone == truth["fused_to_native_bone"], truth["name"]
        assert island.maturity == ("mature" if truth["mature"] else "immature"), truth["name"]
        mask = phantom.ho_labels == truth["label"]
        true_centroid = phantom.geometry.kji_to_ras_points(np.argwhere(mask).mean(axis=0))[0]
        assert np.linalg.norm(np.asarray(island.centroid_ras) - true_centroid) < 2.0
        # Mature islands reach cortical density; amorphous mineralisation does not.
        assert island.max_hu > (800 if truth["mature"] else 300)
        # One hip imaged: no skeleton to mirror, so no midline to tell the side by.
        assert island.side == ""
    free = _matching_island(phantom, result, "free")
    analytic = next(i["analytic_volume_ml"] for i in phantom.islands if i["name"] == "free")
    assert free.volume_ml == pytest.approx(analytic, rel=0.10)


def test_maturity_does_not_depend_on_the_slices_direction():
    # On thick slices the outermost voxels of a face lying across them stand a slice
    # from the outside, beyond the 2 mm rim: counted as interior, the cortex read as
    # marrow and the mature wrap read immature on 3 mm coronal slices (mature when axial).
    coronal = np.column_stack([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    phantom = generate_phantom(dataclasses.replace(PhantomSpec(), integrate_voxels=True), spacing_ijk=(0.8, 0.8, 3.0),
                               directions_ras=coronal, fov_mm=(120.0, 150.0, 120.0))
    result = segment_ossifications(np.round(phantom.image).astype(np.int16), phantom.geometry)
    for truth in phantom.islands:
        island = _matching_island(phantom, result, truth["name"])
        assert island.maturity == ("mature" if truth["mature"] else "immature"), truth["name"]


@pytest.mark.parametrize("spacing_ijk", [(1.0, 1.0, 2.0), (0.7, 0.7, 1.0)])
def test_trabecular_marrow_of_fused_ho_is_kept(spacing_ijk, monkeypatch):
    # Mature HO often holds trabecular bone or red marrow (200-400 HU) under its cortex,
    # as dense as the threshold or more. Moving the edge to the half step cut it away
    # where no cortex of the island's own encloses it to be filled back, as where the
    # mass is fused to a bone: a mature mass on the femur read 23-36 % small (and
    # immature on 2 mm slices); on a real CT with HO painted in, fused masses read 22-61 %
    # small. Only the edge against soft tissue moves now. A straight bar from the femur to
    # the ischium, rod-shaped but fused to a bone at each end and nowhere between, is no
    # vessel (it was doubted as one).
    import HOSciaticModuleLib.phantom as phantom_module

    monkeypatch.setitem(phantom_module.CT_VALUES, "ho_marrow", 250.0)
    fused = IslandSpec("fused", "ellipsoid", True, center_offset=(42.0, -2.0, 45.0), semi_axes=(8.0, 8.0, 11.0))
    bar = IslandSpec("bar", "bar", True, path=((37.0, 15.0, 10.0), (-28.0, 5.0, 40.0)), radius_mm=5.0)
    base = PhantomSpec()
    phantom = generate_phantom(dataclasses.replace(base, islands=(base.islands[1], fused, bar)), spacing_ijk=spacing_ijk)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == 3
    for truth in phantom.islands:
        island = _matching_island(phantom, result, truth["name"])
        assert island.fused_to_native_bone == truth["fused_to_native_bone"], truth["name"]
        assert island.maturity == "mature" and island.doubts == "", (truth["name"], island.maturity, island.doubts)
        assert island.volume_ml == pytest.approx(truth["volume_ml"], rel=0.15), (truth["name"], island.volume_ml)
    assert result.contrast_level_hu is None


@pytest.mark.parametrize("stalk_radius_mm, clearance_mm, fused", [(1.5, 8.0, True), (None, 6.0, False)])
def test_outgrowth_on_a_stalk_thinner_than_the_voxels_is_fused(stalk_radius_mm, clearance_mm, fused):
    """A mature head (16 mm ball) on a stalk 3 mm thick and 8 mm long from the back of
    the femur, on 3 mm voxels: the stalk reads below the head's half step (partial
    volume), so the measured head stood two voxels off the bone and was called unfused,
    although the bone at the threshold runs on from the femur into the head. The same
    head 6 mm clear of the femur, two voxels of muscle, stays unfused."""
    back = 15.0 - 13.0                               # the femur's posterior surface (A) at z = 0
    head = IslandSpec("head", "ellipsoid", True, center_offset=(37.0, back - clearance_mm - 8.0, 0.0),
                      semi_axes=(8.0, 8.0, 8.0))
    islands = (head,)
    if stalk_radius_mm is not None:
        islands = (IslandSpec("stalk", "bar", True, path=((37.0, 10.0, 0.0), (37.0, back - clearance_mm - 2.0, 0.0)),
                              radius_mm=stalk_radius_mm), head)
    phantom = generate_phantom(PhantomSpec(islands=islands, integrate_voxels=True), spacing_ijk=(3.0, 3.0, 3.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    island = _matching_island(phantom, result, "head")
    assert island.fused_to_native_bone == fused
    assert island.maturity == "mature" and island.doubts == "", (island.maturity, island.doubts)
    # The head (2.14 mL) and the stalk outside bone (0.06 mL): the volume is still read
    # at the half step.
    stalk_ml = np.pi * stalk_radius_mm ** 2 * clearance_mm / 1000.0 if stalk_radius_mm else 0.0
    assert island.volume_ml == pytest.approx(4.0 / 3.0 * np.pi * 8.0 ** 3 / 1000.0 + stalk_ml, rel=0.15)


def test_faint_immature_ho_is_measured_at_its_half_step_whatever_the_threshold(monkeypatch):
    # Early HO without a cortex, 250 HU in muscle of 50: its half step (150 HU) lies
    # outside the threshold's edge (200 HU), in the blur around it. The edge stayed at the
    # threshold, so it read 12 % small on a 1 mm grid, and its volume followed the
    # threshold (4 % small at 150 HU).
    import HOSciaticModuleLib.phantom as phantom_module

    monkeypatch.setitem(phantom_module.CT_VALUES, "ho_immature", 250.0)
    faint = IslandSpec("faint", "ellipsoid", False, center_offset=(16.0, -26.0, -35.0), semi_axes=(10.0, 8.0, 9.0))
    phantom = generate_phantom(PhantomSpec(islands=(faint,)), spacing_ijk=(0.8, 0.8, 1.0))
    truth = phantom.islands[0]["analytic_volume_ml"]
    volumes = []
    for threshold in (150.0, 200.0):
        result = segment_ossifications(phantom.image, phantom.geometry, bone_threshold_hu=threshold)
        volumes.append(_matching_island(phantom, result, "faint").volume_ml)
    assert volumes == pytest.approx([truth, truth], rel=0.06), (volumes, truth)
    assert volumes[1] == pytest.approx(volumes[0], rel=0.03)


@pytest.mark.parametrize("cortex_mm, spacing_ijk", [(1.0, (1.0, 1.0, 2.0)), (2.0, (1.0, 1.0, 5.0)),
                                                   (2.0, (0.7, 0.7, 5.0))])
def test_thin_cortex_keeps_its_marrow(cortex_mm, spacing_ijk):
    # A cortex thinner than the slices resolve stays below the half step in places: the
    # edge refinement must not let the marrow out there (before, a 5 mm slice CT gave the
    # free island 40 % of its volume and called it immature).
    islands = tuple(dataclasses.replace(island, cortex_mm=cortex_mm) for island in PhantomSpec().islands)
    phantom = generate_phantom(PhantomSpec(islands=islands), spacing_ijk=spacing_ijk)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert_matches_truth(phantom, result)
    for truth in phantom.islands:
        island = _matching_island(phantom, result, truth["name"])
        assert island.maturity == ("mature" if truth["mature"] else "immature"), truth["name"]
    free = _matching_island(phantom, result, "free")
    analytic = next(i["analytic_volume_ml"] for i in phantom.islands if i["name"] == "free")
    assert free.volume_ml == pytest.approx(analytic, rel=0.10)


@pytest.mark.parametrize("spacing_ijk", [(1.0, 1.0, 5.0), (0.7, 0.7, 5.0)])
def test_thick_slices_that_average_their_slab(spacing_ijk):
    # Each 5 mm slice averages its slab, as a scanner's does: the islands are found with
    # their maturity and fused flag, and the rounded end of the ischium, cut by a slice,
    # is not taken for a fused outgrowth (it lies within one slice).
    phantom = generate_phantom(PhantomSpec(integrate_voxels=True), spacing_ijk=spacing_ijk)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert_matches_truth(phantom, result)
    assert len(result.islands) == len(phantom.islands)
    for truth in phantom.islands:
        island = _matching_island(phantom, result, truth["name"])
        assert island.fused_to_native_bone == truth["fused_to_native_bone"], truth["name"]
        assert island.maturity == ("mature" if truth["mature"] else "immature"), truth["name"]


def test_given_native_bone_mask():
    phantom = generate_phantom(**BASE)
    result = segment_ossifications(phantom.image, phantom.geometry, native_bone_mask=phantom.native_bone_mask)
    assert_matches_truth(phantom, result)
    assert sum(island.fused_to_native_bone for island in result.islands) == 1
    assert result.parameters["native_bone"] == "given"


def test_given_native_bone_lacking_a_whole_bone_is_named():
    # A segmentation without one of the image's bones (a 111 mL block of cortex over
    # cancellous bone, as a hip bone or sacrum a segmentation task or field of view
    # left out): the bone it lacks is named with its volume, and the cure.
    lacking = BoneSpec("ellipsoid", center_offset=(-75.0, 40.0, 0.0), semi_axes=(22.0, 20.0, 60.0))
    phantom = generate_phantom(PhantomSpec(extra_bones=(lacking,)), fov_mm=(220.0, 160.0, 150.0), **BASE)
    offset = phantom.geometry.voxel_ras_grid() - (np.asarray(phantom.spec.center_ras) + lacking.center_offset)
    in_lacking = np.sum((offset / np.asarray(lacking.semi_axes)) ** 2, axis=-1) <= 1.3 ** 2
    result = segment_ossifications(phantom.image, phantom.geometry,
                                   native_bone_mask=phantom.native_bone_mask & ~in_lacking)
    (named,) = [w for w in result.warnings if "given native-bone segmentation" in w]
    truth_ml = 4.0 / 3.0 * np.pi * np.prod(lacking.semi_axes) / 1000.0
    # Read at the bone threshold, the piece takes in the blurred edge beyond its surface
    # (about 0.4 mm here, 5 % of this volume) and the voxels cut by it.
    assert truth_ml <= float(re.search(r"a piece of (\d+) mL", named).group(1)) <= 1.15 * truth_ml
    assert "run without one" in named
    # The whole skeleton given: nothing to name.
    complete = segment_ossifications(phantom.image, phantom.geometry, native_bone_mask=phantom.native_bone_mask)
    assert not any("given native-bone segmentation" in w for w in complete.warnings)
    assert len(complete.islands) == len(phantom.islands)


def test_more_native_bones_are_not_ho():
    # A hip-bone body (35 mL, cortex over cancellous bone) and a second rod of bone
    # beside the femur: more skeleton, the same three islands.
    spec = PhantomSpec(extra_bones=(
        BoneSpec("ellipsoid", center_offset=(-10.0, 45.0, 40.0), semi_axes=(20.0, 14.0, 30.0)),
        BoneSpec("capsule", axis=((-40.0, 40.0, -90.0), (-40.0, 40.0, 90.0)), radius_mm=11.0, cortex_mm=3.0,
                 interior="fatty_marrow"),
    ))
    phantom = generate_phantom(spec, **BASE)
    assert phantom.native_bone_mask.sum() > generate_phantom(**BASE).native_bone_mask.sum()
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == 3
    assert_matches_truth(phantom, result)


@pytest.mark.parametrize("spacing_mm", [2.0, 3.0])
def test_thin_native_plate_oblique_to_the_grid_is_not_ho(spacing_mm):
    # A plate of bone a voxel thick leaving the femur at 45 degrees to the grid, as an
    # iliac wing or a quadrilateral plate lies on 3 mm voxels: its voxels touch along
    # edges only, and counted by shared faces it fell into strips, each a small piece
    # of bone beside the femur, reported as HO (5 of 0.32 mL on 3 mm voxels).
    spec = PhantomSpec(islands=())
    phantom = generate_phantom(spec, spacing_ijk=(spacing_mm,) * 3)
    femur_mid_ras = np.asarray(spec.femur_axis).mean(axis=0) + np.asarray(spec.center_ras)
    k, j, i = np.round(phantom.geometry.ras_to_kji_points(femur_mid_ras[None])[0]).astype(int)
    half_length = int(round(20.0 / spacing_mm))
    image = phantom.image.copy()
    plate = np.zeros(image.shape, bool)
    for step in range(int(round((spec.femur_radius_mm + 16.0) / spacing_mm))):
        plate[k - half_length:k + half_length, j + step, i - step] = True
    plate &= ~phantom.native_bone_mask
    image[plate] = 900.0
    assert plate.sum() * phantom.geometry.voxel_volume_ml > 1.0
    assert segment_ossifications(image, phantom.geometry).islands == []


def test_island_cut_by_the_field_of_view_is_flagged():
    # The free island's lower half lies below the last slice (the field of view ends at -75 mm).
    islands = tuple(IslandSpec(i.name, i.kind, i.mature, center_offset=(16.0, -26.0, -72.0), semi_axes=i.semi_axes)
                    if i.name == "free" else i for i in PhantomSpec().islands)
    phantom = generate_phantom(PhantomSpec(islands=islands), **BASE)
    result = segment_ossifications(phantom.image, phantom.geometry)
    flagged = [w for w in result.warnings if "edge of the image" in w]
    assert len(flagged) == 1
    cut = [i for i in result.islands if i.centroid_ras[2] < phantom.spec.center_ras[2] - 60.0]
    assert len(cut) == 1 and f"HO {cut[0].label} reaches" in flagged[0]
    # With an ROI the region analysed is the ROI's, and the warning says so.
    within = segment_ossifications(phantom.image, phantom.geometry, roi_mask=np.ones(phantom.image.shape, bool))
    assert any("edge of the analysed region" in w for w in within.warnings)
    # The islands inside the field of view are not flagged.
    inside = generate_phantom(**BASE)
    assert not any("edge of the image" in w for w in segment_ossifications(inside.image, inside.geometry).warnings)


def test_thin_box_of_bone_cut_by_the_edge_is_not_native():
    # 2 mm thick, cut by the field of view: too thin for the femur or hip bone a cut
    # native bone would be, however exactly it fills its bounding box.
    phantom = generate_phantom(**BASE)
    offset = phantom.geometry.voxel_ras_grid() - phantom.spec.center_ras
    sheet = ((np.abs(offset[..., 0] + 20.0) <= 1.0) & (offset[..., 1] >= 42.0) & (np.abs(offset[..., 2]) <= 15.0))
    phantom.image[sheet] = 300.0
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands) + 1
    assert not result.native_bone_mask[sheet].any()
    assert any("edge of the image" in w for w in result.warnings)


def test_objects_outside_the_body_are_not_ho():
    # A wider field of view reaches the air behind the patient, where a dense part of the
    # table (1 mL, as dense as bone) lies 8 mm behind the skin.
    table = BoneSpec("ellipsoid", center_offset=(0.0, -86.0, 0.0), semi_axes=(14.0, 3.0, 6.0), cortex_mm=3.0)
    phantom = generate_phantom(PhantomSpec(extra_bones=(table,)), spacing_ijk=(1.0, 1.0, 2.0),
                               fov_mm=(120.0, 200.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == 3
    assert_matches_truth(phantom, result)
    assert any("surrounded by air" in w and "left out" in w for w in result.warnings)


def _with_kernel_noise(image, sigma_hu, correlation_voxels, seed=11):
    """``image`` with voxel noise of ``sigma_hu``, spread over about ``correlation_voxels``
    as a reconstruction kernel spreads it."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0.0, 1.0, image.shape).astype(np.float32),
                                    correlation_voxels)
    return image + noise * (sigma_hu / noise.std())


def test_noisy_ct_is_smoothed_before_bone_is_looked_for():
    # A sharp (bone) kernel or a low dose: 80 HU of noise in soft tissue, 150 HU below the
    # bone threshold. Specks of noise passed the threshold in clusters as large as the
    # smallest island (0.05 mL is 23 voxels here): 66 islands on this phantom. Bone is
    # now looked for on the CT smoothed just enough, and the reader is told.
    phantom = generate_phantom(spacing_ijk=(1.2, 1.2, 1.5))
    assert not any("noisy" in w for w in segment_ossifications(phantom.image, phantom.geometry).warnings)
    result = segment_ossifications(_with_kernel_noise(phantom.image, 80.0, 0.8), phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    assert_matches_truth(phantom, result)
    (warning,) = [w for w in result.warnings if w.startswith("The CT is noisy")]
    # The noise read (about N HU) within 15 % of the noise added.
    assert 68 <= float(re.search(r"about (\d+) HU", warning).group(1)) <= 92
    assert "smoothed by" in warning and "soft-tissue kernel" in warning
    # Both hips imaged, 120 HU of noise spread over more than a voxel: the body's midline,
    # read on the whole CT's coarse grid (for the nerve's side), was lost in the specks.
    # It is found within 1 mm of where it lies on the CT without noise.
    both_hips = _both_hips()
    plane = ct_body_midline(_with_kernel_noise(both_hips.image, 120.0, 1.2), both_hips.geometry)
    assert plane is not None
    assert abs(plane.offset - ct_body_midline(both_hips.image, both_hips.geometry).offset) <= 1.0


def test_rim_along_the_skin_from_a_sharp_kernel_is_left_out():
    # A sharp kernel overshoots where tissue meets air: over the buttock the skin becomes a
    # rim 1-2 mm thick above 200 HU (here a 60 x 30 mm patch of it at 350 HU). HO forms in
    # muscle, never as a rim on air: it is left out and named, and the HO is unchanged.
    phantom = generate_phantom(fov_mm=(120.0, 200.0, 150.0), **BASE)
    image = phantom.image.copy()
    air = image < -500
    ras = phantom.geometry.voxel_ras_grid() - np.asarray(phantom.spec.center_ras)
    rim = (~air & (distance_outside(air, phantom.geometry) <= 1.5) & (np.abs(ras[..., 0]) <= 30.0)
           & (np.abs(ras[..., 2]) <= 15.0) & (ras[..., 1] < 0.0))
    image[rim] = 350.0
    rim_ml = np.count_nonzero(rim) * phantom.geometry.voxel_volume_ml
    assert rim_ml > 0.5
    result = segment_ossifications(image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    assert_matches_truth(phantom, result)
    (warning,) = [w for w in result.warnings if "rim along air" in w]
    assert warning.startswith("1 bone-dense rim along air")
    assert 0.8 * rim_ml <= float(re.search(r"\(([\d.]+) mL\)", warning).group(1)) <= 1.5 * rim_ml


def test_tissue_around_an_island_is_read_on_a_coarse_grid():
    # The tissue around an island sets its edge (half way to its bone) and tells whether it
    # lies outside the body, in fat or against gas. It was read within 2.5 mm only: on a
    # 3 mm grid (a resampled CT) no voxel lies that close, so none of it was read, and the
    # real example CT's largest island kept its threshold edge, 10.2 mL against 4.4 mL
    # on the same CT at 1.5 mm. The voxels next to an island now always count.
    from HOSciaticModuleLib.ossification import _surrounding_ring

    for spacing in ((3.0, 3.0, 3.0), (0.7, 0.7, 3.0), (1.0, 1.0, 1.0)):
        geometry = VolumeGeometry.from_spacing_origin_directions((9, 9, 9), spacing, (0.0, 0.0, 0.0))
        island = np.zeros((9, 9, 9), bool)
        island[3:6, 3:6, 3:6] = True
        ring = _surrounding_ring(island, np.zeros_like(island), geometry)
        face_neighbours = ndimage.binary_dilation(island) & ~island
        assert np.all(ring[face_neighbours]) and not np.any(ring & island)
        # Within 2.5 mm as before where voxels are that fine.
        within = distance_outside(island, geometry) <= 2.5
        assert np.all(ring[within & ~island])


@pytest.mark.parametrize("spacing_mm", [2.0, 2.5])
def test_islands_are_measured_on_a_coarse_grid(spacing_mm):
    # Bands a fixed number of mm wide held no voxel on grids this coarse in every
    # direction. The cortex (the outer 2 mm) was empty, and mature HO was called immature
    # at 2.5 mm. The fused outgrowth's skin (1.5 mm), taken off to part it from the
    # envelope, was never given back: the 2.7 mL fused island read 1.3 mL at 2 mm and
    # 0.8 mL at 2.5 mm. Each band now holds at least the next layer of voxels.
    phantom = generate_phantom(spacing_ijk=(spacing_mm,) * 3)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    for truth in phantom.islands:
        island = _matching_island(phantom, result, truth["name"])
        assert island.maturity == ("mature" if truth["mature"] else "immature"), truth["name"]
        assert island.fused_to_native_bone == truth["fused_to_native_bone"], truth["name"]
        assert island.volume_ml == pytest.approx(truth["volume_ml"], rel=0.15), truth["name"]


def test_island_split_by_its_edge_keeps_the_same_piece_in_any_storage_order():
    # Moving an island's edge to the half step can part it into pieces; the largest is
    # kept. Between two of the same size the first in the array was kept, so a CT stored
    # flipped kept the other one (a real CT's 0.2 mL island moved 7 mm). The denser is kept.
    from HOSciaticModuleLib.ossification import refine_boundary

    geometry = VolumeGeometry.from_spacing_origin_directions((9, 9, 15), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    ct = np.full((9, 9, 15), 40.0, np.float32)
    island = np.zeros(ct.shape, bool)
    island[3:6, 3:6, 2:5] = island[3:6, 3:6, 10:13] = True
    island[4, 4, 5:10] = True       # a bridge one voxel thin: all of it edge
    ct[island] = 300.0              # the bridge above the threshold, below the half step
    ct[3:6, 3:6, 2:5] = 800.0
    ct[3:6, 3:6, 10:13] = 900.0     # the denser end
    ring = ndimage.binary_dilation(island, iterations=2) & ~island
    for flipped in (False, True):
        values, mask, around = (np.flip(a, 2) if flipped else a for a in (ct, island, ring))
        kept = refine_boundary(values, mask, around, geometry, 200.0)
        kept = np.flip(kept, 2) if flipped else kept
        assert np.count_nonzero(kept) == 27 and np.all(kept[3:6, 3:6, 10:13])


@pytest.mark.parametrize("padding_hu", [-3024.0, -1024.0, 0.0])
def test_island_cut_by_the_circular_field_of_view_is_named_as_cut(padding_hu):
    # Outside its circular field of view a scanner writes a padding value (-3024 HU); a
    # reformat fills where the original image ended, often with air's -1024 or 0. An island
    # the circle cuts was taken for one touching gas (bowel content?) and not named as
    # cut; bone the circle cuts was not taken for cut either. Padding is not gas, and
    # what it meets is cut as at the image's edge.
    phantom = generate_phantom(**BASE)
    label = next(i["label"] for i in phantom.islands if i["name"] == "free")
    centre_kji = np.argwhere(phantom.ho_labels == label).mean(axis=0)
    middle = (np.asarray(phantom.image.shape[1:]) - 1) / 2.0
    rows, columns = np.mgrid[:phantom.image.shape[1], :phantom.image.shape[2]]
    radius = np.hypot(*(centre_kji[1:] - middle))  # the circle runs through the free island
    image = phantom.image.copy()
    image[:, np.hypot(rows - middle[0], columns - middle[1]) > radius] = padding_hu
    result = segment_ossifications(image, phantom.geometry)
    assert not any("gas" in island.doubts for island in result.islands)
    (cut,) = [w for w in result.warnings if "reach" in w and "edge of the image" in w]
    free = _matching_island(phantom, result, "free")
    assert f"HO {free.label}" in cut.split(" reach")[0]


def test_a_reformats_fill_is_told_from_air_and_tissue_by_its_lack_of_noise():
    from HOSciaticModuleLib.ossification import constant_fill_value

    rng = np.random.default_rng(3)
    air = rng.normal(-1000.0, 20.0, (40, 50, 50)).round()
    body = rng.normal(40.0, 20.0, air.shape).round()
    image = np.where(np.arange(50)[None, None, :] < 35, body, air)
    assert constant_fill_value(image) is None
    # Air clamped at the scanner's lowest value, half of it at the clamp: still noise.
    assert constant_fill_value(np.maximum(image, -1000.0)) is None
    filled = image.copy()
    filled[:, :12] = -1024.0
    assert constant_fill_value(filled) == -1024.0
    filled[:, :12] = 0.0  # water's value, the default of some resampling tools
    assert constant_fill_value(filled) == 0.0
    filled[:, :12] = 3071.0  # the largest value stored, where metal is clamped
    assert constant_fill_value(filled) is None
    # Beside a scanner's padding, wider still, the fill is found.
    filled[:, :12] = -1024.0
    filled[:, 12:30, :20] = -3024.0
    assert constant_fill_value(filled) == -1024.0
    # An image without noise has flat tissue: neither its air nor its muscle is a fill.
    columns = np.arange(50)[None, None, :]
    regions = np.select([columns < 8, columns < 15], [40.0, -100.0], -1000.0) * np.ones(air.shape)
    assert constant_fill_value(regions) is None
    muscle = np.full(air.shape, 40.0)
    muscle[10:30, 20:30, 20:30] = 1200.0
    assert constant_fill_value(muscle) is None


def test_only_a_fill_reaching_the_image_faces_is_where_nothing_was_imaged():
    # Every voxel of the fill's value was taken for fill: tissue at exactly 0 HU inside
    # the body (the central island then "reached the edge of the image"), and gas clamped
    # at -1024 inside it.
    from HOSciaticModuleLib.ossification import field_of_view_padding, fill_region

    rng = np.random.default_rng(5)
    image = rng.normal(40.0, 20.0, (30, 60, 60)).round()
    image[image == 0.0] = 1.0                   # beside the fill, noise may join it
    image[:, :, :10] = 0.0                      # the fill, at the image's faces
    image[10:15, 20:30, 30:40] = 0.0            # a flat pocket inside, off the faces
    scattered = np.zeros(image.shape, bool)
    scattered[::3, 20:50:4, 20:50:4] = True     # single voxels of that value in tissue
    image[scattered] = 0.0
    expected = np.zeros(image.shape, bool)
    expected[:, :, :10] = True
    np.testing.assert_array_equal(fill_region(image, 0.0), expected)
    np.testing.assert_array_equal(field_of_view_padding(image), expected)
    assert fill_region(image, 1234.0) is None


def test_counterpart_outside_the_field_of_view_is_not_compared():
    geometry = VolumeGeometry.from_spacing_origin_directions((10, 10, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    bone = np.zeros((10, 10, 40), bool)
    bone[3:7, 3:7, 2:8] = True
    unimaged = np.zeros_like(bone)
    unimaged[:, :, 30:] = True
    across = BoneAcrossMidline(bone, geometry, MirrorPlane(np.array([1.0, 0.0, 0.0]), 20.0), unimaged=unimaged)
    points = np.array([[25.0, 5.0, 5.0], [35.0, 5.0, 5.0], [45.0, 5.0, 5.0]])  # imaged, padding, off the image
    assert across.inside(points).tolist() == [True, False, False]


@pytest.mark.parametrize("thickness_mm, expected_ml", [(11, None), (15, 14.4)])
def test_bone_without_counterpart_at_a_bones_outer_face_holds_the_ball_or_not(thickness_mm, expected_ml):
    # Two blocks of bone mirrored across x = 70 mm; on the right one's outer face a plate
    # 30 x 40 mm and 11 or 15 mm thick, the bone's outermost part. Bone more than 6 mm
    # off the other side is the plate's outer 4 or 8 mm: an 8 mm ball fits only in the
    # thicker. The plate's outer face is the edge of the bone's box, and was read as
    # going on beyond it, so the thin plate made a core (10.8 mL of it reported). The
    # thick one is found as its bone more than 2 mm off the other side: 12 x 30 x 40
    # voxels of 1 mm.
    geometry = VolumeGeometry.from_spacing_origin_directions((60, 60, 160), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    bone = np.zeros((60, 60, 160), bool)
    bone[5:55, 10:50, 20:40] = True
    bone[5:55, 10:50, 100:120] = True
    bone[10:50, 15:45, 120:120 + thickness_mm] = True
    across = BoneAcrossMidline(bone, geometry, MirrorPlane(np.array([1.0, 0.0, 0.0]), 70.0))
    block = (slice(5, 55), slice(10, 50), slice(100, 120 + thickness_mm))
    part = asymmetric_outgrowth(bone[block], block, across, geometry, min_voxels=10)
    if expected_ml is None:
        assert part is None
        return
    assert np.count_nonzero(part) * geometry.voxel_volume_ml == pytest.approx(expected_ml, abs=1e-9)
    assert np.argwhere(part)[:, 2].min() + block[2].start == 123


def _mirrored_r(offset_r: float) -> float:
    """The default phantom's body midline lies 45 mm to the left of its centre."""
    return -90.0 - offset_r


def _both_hips_with_prominences(turn_deg: float):
    """Both hips imaged, a knob sticking 9 mm out of each femur at mirrored places (a
    normal prominence such as the lesser trochanter); the patient turned by ``turn_deg``
    about the body's long axis (resampled, as a scanner would see it)."""
    knob = dict(semi_axes=(6.0, 6.0, 8.0), cortex_mm=2.0)
    spec = PhantomSpec(extra_bones=other_hip_bones(PhantomSpec()) + (
        BoneSpec("ellipsoid", center_offset=(20.0, 15.0, -40.0), **knob),
        BoneSpec("ellipsoid", center_offset=(_mirrored_r(20.0), 15.0, -40.0), **knob),
    ))
    phantom = generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    turn = np.radians(turn_deg)
    midline = np.asarray(phantom.spec.center_ras) + [-45.0, 5.0, 0.0]
    # Where each voxel of the turned body comes from in the unturned one (RAS).
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0.0], [np.sin(turn), np.cos(turn), 0.0], [0.0, 0.0, 1.0]])
    source = (phantom.geometry.voxel_ras_grid().reshape(-1, 3) - midline) @ rotation + midline
    image = ndimage.map_coordinates(phantom.image, phantom.geometry.ras_to_kji_points(source).T, order=1,
                                    mode="nearest").reshape(phantom.image.shape)
    turned = ((np.array([[20.0, 15.0, -40.0], [_mirrored_r(20.0), 15.0, -40.0], [42.0, -2.0, 45.0]])
               + phantom.spec.center_ras - midline) @ rotation.T + midline - phantom.spec.center_ras)
    return phantom, image, turned


@pytest.mark.parametrize("turn_deg", [0.0, 6.0, -8.0])
def test_bony_prominence_mirrored_on_the_other_side_is_flagged(turn_deg):
    # Both knobs are fused outgrowths by shape; their mirror images are bone, the real
    # fused HO's is soft tissue. The midline is found even when the patient lies turned.
    phantom, image, (right_knob, left_knob, fused) = _both_hips_with_prominences(turn_deg)
    result = segment_ossifications(image, phantom.geometry)
    offsets = {i.label: np.asarray(i.centroid_ras) - phantom.spec.center_ras for i in result.islands}
    knobs = sorted(n for n, o in offsets.items()
                   if min(np.linalg.norm(o - right_knob), np.linalg.norm(o - left_knob)) < 6.0)
    fused_ho = [n for n, o in offsets.items() if np.linalg.norm(o - fused) < 8.0]
    assert len(knobs) == 2 and len(fused_ho) == 1, offsets
    flagged = [w for w in result.warnings if "mirror image" in w]
    assert len(flagged) == 1
    named = sorted(int(n) for n in re.findall(r"HO (\d+)", flagged[0].split(" ha")[0]))
    assert named == knobs and fused_ho[0] not in named


#: A growth centre behind the femur (an apophysis), parted from it by a 4 mm growth
#: plate: 3.5 mL, where the femur's axis passes z = -40 mm.
GROWTH_CENTRE = dict(semi_axes=(10.0, 6.0, 14.0), cortex_mm=1.5)
GROWTH_CENTRE_OFFSET = (35.7, 14.6 - 13.0 - 4.0 - 6.0, -40.0)


@pytest.mark.parametrize("paired", [True, False])
def test_growth_centre_beside_its_bone_and_paired_is_flagged(paired):
    """A young patient's growth centre is bone apart from its bone: found as an island,
    and flagged when the other side has its counterpart. Unpaired, the same bone is HO
    beside the femur (no warning)."""
    growth_centres = (BoneSpec("ellipsoid", center_offset=GROWTH_CENTRE_OFFSET, **GROWTH_CENTRE),)
    if paired:
        growth_centres += (BoneSpec("ellipsoid", center_offset=(_mirrored_r(GROWTH_CENTRE_OFFSET[0]),)
                                    + GROWTH_CENTRE_OFFSET[1:], **GROWTH_CENTRE),)
    spec = PhantomSpec(extra_bones=other_hip_bones(PhantomSpec()) + growth_centres)
    phantom = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 2.0), fov_mm=(300.0, 120.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    offsets = {i.label: np.asarray(i.centroid_ras) - phantom.spec.center_ras for i in result.islands}
    found = [n for n, o in offsets.items() if np.linalg.norm(o - GROWTH_CENTRE_OFFSET) < 5.0]
    assert len(found) == 1, offsets
    island = next(i for i in result.islands if i.label == found[0])
    assert not island.fused_to_native_bone and island.volume_ml == pytest.approx(3.5, rel=0.25)
    flagged = [w for w in result.warnings if "growth centre" in w]
    if paired:
        assert len(flagged) == 1
        # The other side's growth centre is reported too; the phantom's HO is not named.
        named = {int(n) for n in re.findall(r"HO (\d+)", flagged[0].split(" lie")[0])}
        left = [n for n, o in offsets.items()
                if np.linalg.norm(o - ((_mirrored_r(GROWTH_CENTRE_OFFSET[0]),) + GROWTH_CENTRE_OFFSET[1:])) < 5.0]
        assert named == set(found + left) and len(left) == 1
    else:
        assert flagged == []


def _bilateral_masses(directions_ras=None):
    """Both hips imaged, the same 12 mL mass (18 mm thick, thinner than the ball) fused
    behind both femora at mirrored places, and two of the default islands on the right."""
    mass = dict(semi_axes=(9.0, 9.0, 35.0), cortex_mm=2.0)
    spec = PhantomSpec(islands=PhantomSpec().islands[:2], extra_bones=other_hip_bones(PhantomSpec())[:1] + (
        BoneSpec("ellipsoid", center_offset=(38.0, -6.0, 20.0), **mass),
        BoneSpec("ellipsoid", center_offset=(_mirrored_r(38.0), -6.0, 20.0), **mass),
    ))
    return generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0),
                            directions_ras=directions_ras)


def test_large_bilateral_ho_is_not_taken_for_prominences():
    # Bilateral HO, too big for a normal prominence, so not flagged although each mass
    # mirrors the other.
    phantom = _bilateral_masses()
    result = segment_ossifications(phantom.image, phantom.geometry)
    masses = [i for i in result.islands if i.fused_to_native_bone and i.volume_ml > 10.0]
    assert len(masses) == 2, [(i.volume_ml, i.fused_to_native_bone) for i in result.islands]
    assert not any("mirror image" in w for w in result.warnings)


@pytest.mark.parametrize("directions_ras", [None, np.diag([-1.0, -1.0, 1.0])], ids=["RAS", "stored as LPS"])
def test_each_island_is_given_the_side_of_the_body_it_lies_on(directions_ras):
    # The phantom's right hip lies to +R of the body's midline, its mirror image to -R.
    # The side is the patient's, read against the midline in the world, so storing the
    # voxels from the patient's right to left (as DICOM's LPS does) changes nothing.
    phantom = _bilateral_masses(directions_ras)
    result = segment_ossifications(phantom.image, phantom.geometry)
    midline_r = phantom.spec.center_ras[0] + phantom.spec.body_center_offset[0]
    masses = sorted((i for i in result.islands if i.volume_ml > 10.0), key=lambda i: i.centroid_ras[0])
    assert [(m.side, m.centroid_ras[0] < midline_r) for m in masses] == [("left", True), ("right", False)]
    others = [i for i in result.islands if i.volume_ml <= 10.0]
    assert len(others) >= 2 and all(i.side == "right" for i in others), [(i.side, i.centroid_ras) for i in others]


def test_large_free_mass_of_ho_is_reported_with_a_warning():
    # Neurogenic HO can grow into a free mass of tens of mL: here 43 mL, compact, whole in
    # the image and apart from the skeleton. Bone of that size used to be taken as native.
    big = IslandSpec("big", "ellipsoid", True, center_offset=(-25.0, -45.0, -30.0), semi_axes=(24.0, 18.0, 24.0))
    phantom = generate_phantom(PhantomSpec(islands=PhantomSpec().islands + (big,)), spacing_ijk=(1.0, 1.0, 2.0),
                               fov_mm=(140.0, 140.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert_matches_truth(phantom, result)
    assert len(result.islands) == len(phantom.islands)
    island = _matching_island(phantom, result, "big")
    analytic = next(i["analytic_volume_ml"] for i in phantom.islands if i["name"] == "big")
    assert island.volume_ml == pytest.approx(analytic, rel=0.10)
    assert island.maturity == "mature" and not island.fused_to_native_bone
    (warning,) = [w for w in result.warnings if "large compact mass" in w]
    assert f"HO {island.label} (" in warning


@pytest.mark.parametrize("paired", [True, False])
def test_compact_bone_mass_is_native_when_paired_across_the_midline(paired):
    # Both hips imaged, a compact 40 mL mass of bone whole in the image: with its mirror
    # image on the other side it is paired anatomy and native; on one side only it is HO.
    mass = dict(semi_axes=(18.0, 16.0, 33.0), cortex_mm=2.0)
    masses = (BoneSpec("ellipsoid", center_offset=(5.0, 40.0, 20.0), **mass),)
    if paired:
        masses += (BoneSpec("ellipsoid", center_offset=(_mirrored_r(5.0), 40.0, 20.0), **mass),)
    spec = PhantomSpec(islands=PhantomSpec().islands[:2], extra_bones=other_hip_bones(PhantomSpec()) + masses)
    phantom = generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    large = [i for i in result.islands if i.volume_ml > 30.0]
    assert len(large) == (0 if paired else 1), [(i.volume_ml, i.centroid_ras) for i in result.islands]
    assert len(result.islands) == 2 + len(large)
    assert any("large compact mass" in w for w in result.warnings) == (not paired)


THICK_MASS = IslandSpec("thick", "ellipsoid", True, center_offset=(48.0, -6.0, -10.0), semi_axes=(14.0, 12.0, 18.0))


def _both_hips(islands=(), other_bones=None):
    spec = PhantomSpec(islands=PhantomSpec().islands + tuple(islands),
                       extra_bones=other_bones if other_bones is not None else other_hip_bones(PhantomSpec()))
    return generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))


def test_thick_fused_mass_without_counterpart_is_ho():
    # A 12.6 mL mass fused to the femur, 24-36 mm thick: the 20 mm ball fits inside it, so
    # it used to stay native bone. Both hips imaged, it has no counterpart on the other side.
    phantom = _both_hips([THICK_MASS])
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    island = _matching_island(phantom, result, "thick")
    truth = next(i for i in phantom.islands if i["name"] == "thick")
    found = result.labelmap == island.label
    on_truth = np.count_nonzero(found & (phantom.ho_labels == truth["label"]))
    assert on_truth >= 0.97 * np.count_nonzero(found)
    # The base, within a few mm of where the other side's bone lies, stays native.
    assert 0.7 * truth["volume_ml"] <= island.volume_ml <= 1.03 * truth["volume_ml"], (island.volume_ml, truth)
    assert island.fused_to_native_bone and island.maturity == "mature"
    (warning,) = [w for w in result.warnings if "without a counterpart" in w]
    assert warning.startswith(f"HO {island.label} is fused")
    for name in ("wrap", "free", "fused"):
        other = _matching_island(phantom, result, name)
        expected = next(i["volume_ml"] for i in phantom.islands if i["name"] == name)
        assert other.volume_ml == pytest.approx(expected, rel=0.1)


#: A broad mass along the femur's outer side, up to 24 mm thick and 80 mm long (35 mL
#: outside the bone), reaching 66 mm lateral of the case's centre: its mirror image across
#: the midline falls partly beyond a field of view 300 mm wide, whole within one 380 mm wide.
LATERAL_MASS = IslandSpec("lateral", "ellipsoid", True, center_offset=(54.0, 10.0, -10.0),
                          semi_axes=(12.0, 20.0, 40.0))


def test_thick_mass_whose_mirror_image_leaves_the_image_is_measured_as_where_it_does_not():
    # Where a mass's mirror image falls beyond the image (a patient lying off-centre, a
    # tight field of view) its bone is compared with nothing. It used to stay native
    # there, silently: 23.6 mL of the mass were found in the narrow image against 28.9 mL in
    # the wide one. Such bone now joins the mass within its skirt, and a warning says
    # the mass may reach farther.
    spec = PhantomSpec(islands=PhantomSpec().islands + (LATERAL_MASS,), extra_bones=other_hip_bones(PhantomSpec()))
    found = {}
    for width_mm in (300.0, 380.0):
        phantom = generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(width_mm, 120.0, 150.0))
        result = segment_ossifications(phantom.image, phantom.geometry)
        island = _matching_island(phantom, result, "lateral")
        truth = next(i for i in phantom.islands if i["name"] == "lateral")
        on_truth = np.count_nonzero((result.labelmap == island.label) & (phantom.ho_labels == truth["label"]))
        assert on_truth >= 0.97 * np.count_nonzero(result.labelmap == island.label)
        # The base along the femur and the tapering ends stay native (the README's
        # broad-based masses): about 83 % of the truth.
        assert island.volume_ml >= 0.78 * truth["volume_ml"], (width_mm, island.volume_ml, truth["volume_ml"])
        beyond = [w for w in result.warnings if "the other side of the body was not imaged" in w]
        if width_mm < 350.0:
            (warning,) = beyond
            named = re.match(rf"(\d+\.\d) mL of HO {island.label} lies where the other side", warning)
            assert named, warning
            # The island's voxels whose mirror image across the true midline falls beyond
            # the image's first voxel along R (the fitted mirror is within a voxel of it).
            geometry = phantom.geometry
            ras = geometry.kji_to_ras_points(np.argwhere(result.labelmap == island.label))
            first_r = geometry.kji_to_ras_points(np.array([[0, 0, 0], np.array(geometry.shape_kji) - 1]))[:, 0].min()
            midline_r = spec.center_ras[0] + spec.body_center_offset[0]
            beyond_ml = np.count_nonzero(2.0 * midline_r - ras[:, 0] < first_r - 0.5 * geometry.spacing_ijk[0]) \
                * geometry.voxel_volume_ml
            assert 1.0 < beyond_ml and float(named.group(1)) == pytest.approx(beyond_ml, rel=0.1)
        else:
            assert not beyond
        found[width_mm] = island.volume_ml
    assert found[300.0] == pytest.approx(found[380.0], rel=0.05), found


def _both_hips_lying_turned(turn_deg: float, tilt_deg: float):
    """Both hips and the thick mass, the patient turned about the body's long axis by
    ``turn_deg`` and tilted sideways (one hip higher) by ``tilt_deg``: the case sampled on
    a grid turned the other way, then stored as an ordinary axial CT. Returns the phantom
    (voxel truths unchanged) and the midline's normal in RAS."""
    turned = Rotation.from_euler("zy", [turn_deg, tilt_deg], degrees=True).as_matrix()
    spec = PhantomSpec(islands=PhantomSpec().islands + (THICK_MASS,), extra_bones=other_hip_bones(PhantomSpec()))
    # Wider front to back than _both_hips: a turned pelvis spans more of it.
    phantom = generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 240.0, 150.0),
                               directions_ras=turned)
    geometry = phantom.geometry
    axial = VolumeGeometry.from_spacing_origin_directions(geometry.shape_kji, geometry.spacing_ijk,
                                                          geometry.ijk_to_ras[:3, 3], np.eye(3))
    # The body's R axis, seen on the axial grid.
    return dataclasses.replace(phantom, geometry=axial), turned[0]


@pytest.mark.parametrize("turn_deg, tilt_deg", [(25.0, 0.0), (-30.0, 0.0), (20.0, -12.0)])
def test_patient_lying_turned_or_tilted_still_has_a_midline(turn_deg, tilt_deg):
    # Patients with HO often cannot lie straight (contractures after a brain or spinal
    # cord injury, a stiff hip). Beyond about 15 degrees the midline, searched across R,
    # was not found, and the 12.6 mL thick mass fused to the femur stayed native bone.
    # The midline is now searched turned and tilted as well, and each bone's counterpart
    # is looked for wherever it lies in the image, not only inside the bones' bounding box.
    phantom, body_r = _both_hips_lying_turned(turn_deg, tilt_deg)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert result.body_midline is not None
    assert np.degrees(np.arccos(abs(result.body_midline.normal @ body_r))) <= 3.0
    assert len(result.islands) == len(phantom.islands)
    assert_matches_truth(phantom, result)
    island = _matching_island(phantom, result, "thick")
    truth = next(i for i in phantom.islands if i["name"] == "thick")
    assert 0.8 * truth["volume_ml"] <= island.volume_ml <= 1.03 * truth["volume_ml"], (island.volume_ml, truth)
    (warning,) = [w for w in result.warnings if "without a counterpart" in w]
    assert warning.startswith(f"HO {island.label} is fused")
    assert not any(w.startswith("The body's midline was not found") for w in result.warnings)


def _stored_otherwise(image, geometry, axes_kji, flipped):
    """The same voxels at the same places, stored with the array's axes in the order
    ``axes_kji`` (new axis n = old axis axes_kji[n]), then reversed along ``flipped``."""
    stored = np.flip(np.transpose(image, axes_kji), flipped).copy()
    new_to_old = np.eye(4)
    new_to_old[:3, :3] = 0.0
    for new_axis, old_axis in enumerate(axes_kji):
        # Voxel index columns are (i, j, k): the reverse of the array's (k, j, i).
        old_column, new_column = 2 - old_axis, 2 - new_axis
        reversed_axis = new_axis in flipped
        new_to_old[old_column, new_column] = -1.0 if reversed_axis else 1.0
        new_to_old[old_column, 3] = stored.shape[new_axis] - 1 if reversed_axis else 0.0
    return stored, VolumeGeometry(geometry.ijk_to_ras @ new_to_old, stored.shape)


def test_figures_do_not_depend_on_how_the_axes_are_stored():
    # One CT saved feet first or head first, or resliced with its axes in another order,
    # holds the same voxels: the fits comparing both sides (the midline, each bone
    # against its counterpart) sample the bone by where it lies, so every island, figure,
    # doubt and warning is the same. They sampled it in storage order, and a real CT's
    # fused masses changed by up to 12 % of their volume between storage orders.
    phantom = _both_hips([THICK_MASS])
    # Cut to sizes of a multiple of 6 voxels, so that a sampling taking every 2nd or 3rd
    # voxel from the array's first one would take other voxels once the axis is reversed.
    whole = tuple(slice(0, n - n % 6) for n in phantom.image.shape)
    image = np.round(phantom.image[whole]).astype(np.int16)
    geometry = phantom.geometry.cropped(whole)

    def findings(image, geometry):
        result = segment_ossifications(image, geometry)
        islands = sorted((round(i.volume_ml, 4), tuple(np.round(i.centroid_ras, 2)), i.fused_to_native_bone,
                          i.maturity, i.doubts) for i in result.islands)
        return islands, sorted(result.warnings), result.body_midline

    islands, warnings, plane = findings(image, geometry)
    assert len(islands) == len(phantom.islands) and plane is not None
    for axes_kji, flipped in (((0, 1, 2), (0,)), ((0, 2, 1), (1, 2)), ((2, 1, 0), (0, 2))):
        other_islands, other_warnings, other_plane = findings(*_stored_otherwise(image, geometry, axes_kji, flipped))
        assert other_islands == islands and other_warnings == warnings
        assert np.allclose(other_plane.normal, plane.normal, atol=1e-9)
        assert other_plane.offset == pytest.approx(plane.offset, abs=1e-6)
    # The same CT with its origin elsewhere (another scanner's table position, another
    # converter): the same findings, moved with it.
    shift = np.array([37.31, -112.77, 251.13])
    moved = geometry.ijk_to_ras.copy()
    moved[:3, 3] += shift
    moved_islands, moved_warnings, moved_plane = findings(image, VolumeGeometry(moved, geometry.shape_kji))
    assert [(v, tuple(np.round(np.asarray(c) - shift, 2)), *rest) for v, c, *rest in moved_islands] == islands
    assert moved_warnings == warnings and np.allclose(moved_plane.normal, plane.normal, atol=1e-9)
    assert moved_plane.offset - plane.offset == pytest.approx(float(shift @ plane.normal), abs=1e-6)


def _femur_turned(femur: BoneSpec, abduct_deg: float, flex_deg: float) -> BoneSpec:
    """The femur turned about its upper end (the hip), as a leg held otherwise lies."""
    low, top = (np.asarray(point, float) for point in femur.axis)
    turn = Rotation.from_euler("yx", [abduct_deg, flex_deg], degrees=True).as_matrix()
    return dataclasses.replace(femur, axis=(tuple(top + turn @ (low - top)), tuple(top)))


@pytest.mark.parametrize("case", ["legs held differently", "paired masses"])
def test_bone_matching_the_other_side_stays_native(case):
    others = other_hip_bones(PhantomSpec())
    if case == "legs held differently":
        others = (_femur_turned(others[0], 12.0, 8.0),) + others[1:]
    else:  # the same thick mass of native bone on both femora (a large trochanter, say)
        mass = dict(semi_axes=THICK_MASS.semi_axes, cortex_mm=2.0)
        others += (BoneSpec("ellipsoid", center_offset=THICK_MASS.center_offset, **mass),
                   BoneSpec("ellipsoid", center_offset=(_mirrored_r(THICK_MASS.center_offset[0]),)
                            + THICK_MASS.center_offset[1:], **mass))
    phantom = _both_hips(other_bones=others)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands), [(i.volume_ml, i.centroid_ras) for i in result.islands]
    assert_matches_truth(phantom, result)
    assert not any("without a counterpart" in w for w in result.warnings)


def test_midline_needs_both_sides():
    phantom = generate_phantom(**BASE)
    assert body_midline(phantom.image >= 200, phantom.geometry) is None
    assert not any("mirror image" in w for w in segment_ossifications(phantom.image, phantom.geometry).warnings)
    # One hip and, 110 mm medial to the femur, a bone as big as the sacrum (111 mL): the
    # femur and ischium mirrored across a plane turned by 11 degrees land inside it, 70 %
    # of the bone's volume "matched". Its surface does not match, so there is no midline
    # (that false one set the free HO island apart as lying on it).
    sacrum_like = BoneSpec("ellipsoid", center_offset=(-75.0, 40.0, 0.0), semi_axes=(22.0, 20.0, 60.0))
    with_sacrum = generate_phantom(PhantomSpec(extra_bones=(sacrum_like,)), fov_mm=(220.0, 160.0, 150.0), **BASE)
    assert body_midline(with_sacrum.image >= 200, with_sacrum.geometry) is None
    assert ct_body_midline(with_sacrum.image, with_sacrum.geometry) is None


def _no_midline_warnings(result):
    return [w for w in result.warnings if w.startswith("The body's midline was not found")]


def test_checks_skipped_without_a_midline_are_named():
    # One hip imaged: the checks comparing both sides cannot run, and the reader is told
    # which, and what lets them run. With the native bone given, only the set-apart and
    # prominence checks are missing; with both hips imaged, nothing is.
    one_hip = generate_phantom(**BASE)
    (warning,) = _no_midline_warnings(segment_ossifications(one_hip.image, one_hip.geometry))
    assert "thicker than the 20 mm outgrowth ball stays native" in warning and "--bones" in warning
    given = segment_ossifications(one_hip.image, one_hip.geometry, native_bone_mask=one_hip.native_bone_mask)
    (warning,) = _no_midline_warnings(given)
    assert "not set apart" in warning and "outgrowth ball" not in warning and "--bones" not in warning
    both_hips = _both_hips()
    assert _no_midline_warnings(segment_ossifications(both_hips.image, both_hips.geometry)) == []


def both_hips_off_centre():
    spec = PhantomSpec(center_ras=(-60.0, -20.0, -120.0))
    return dataclasses.replace(spec, extra_bones=other_hip_bones(spec))


def test_side_is_read_from_the_body_midline():
    # Both hips imaged, the whole body to the scanner's left of R = 0 (the patient lay
    # off-centre): the right sciatic nerve has R < 0 yet lies on the patient's right.
    phantom = generate_phantom(both_hips_off_centre(), spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    plane = ct_body_midline(phantom.image, phantom.geometry)
    assert plane is not None
    # The default phantom's midline lies 45 mm to the left of its centre: at R = -105.
    assert abs(plane.normal @ [-105.0, 0.0, -120.0] - plane.offset) <= 3.0
    assert np.all(phantom.centreline_ras[:, 0] < 0)
    side, distance = side_of_midline(phantom.centreline_ras, plane)
    assert side == "right" and abs(distance - 45.0) <= 8.0
    assert side_of_midline(plane.mirror(phantom.centreline_ras), plane)[0] == "left"
    # Near the midline no side is claimed.
    assert side_of_midline(np.array([[-100.0, 0.0, -120.0]]), plane)[0] is None
    one_hip = generate_phantom(spacing_ijk=(1.5, 1.5, 2.0))
    assert ct_body_midline(one_hip.image, one_hip.geometry) is None


def test_island_on_the_midline_is_set_apart():
    # Both hips imaged and a coccyx-like bone (6 mL, free) on the body's midline behind
    # the pelvis: normal anatomy, not hip HO, it is set apart with its volume; the hip's
    # HO islands are reported as before.
    spec = PhantomSpec()
    coccyx = BoneSpec("ellipsoid", center_offset=(-45.0, -40.0, 40.0), semi_axes=(12.0, 8.0, 15.0), cortex_mm=1.5)
    phantom = generate_phantom(dataclasses.replace(spec, extra_bones=other_hip_bones(spec) + (coccyx,)),
                               spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    centre = np.asarray(phantom.spec.center_ras) + [-45.0, -40.0, 40.0]
    assert len(result.islands) == len(phantom.islands)
    assert all(np.linalg.norm(np.asarray(i.centroid_ras) - centre) > 20.0 for i in result.islands)
    set_apart = result.set_apart[MIDLINE_SEGMENT_NAME]
    offset = [s.start for s in result.native_bone_slices]
    apart_centre = phantom.geometry.kji_to_ras_points(np.argwhere(set_apart).mean(axis=0)[None] + offset)[0]
    assert np.linalg.norm(apart_centre - centre) < 3.0
    coccyx_ml = 4.0 / 3.0 * np.pi * 12.0 * 8.0 * 15.0 / 1000.0
    (warning,) = [w for w in result.warnings if "midline" in w]
    measured_ml = float(re.search(r"\(([\d.]+) mL\)", warning).group(1))
    assert warning.startswith("1 bone-dense object") and measured_ml == pytest.approx(coccyx_ml, rel=0.12)


@pytest.mark.parametrize("from_midline_mm, set_apart", [(32.0, True), (58.0, False)])
def test_calcification_near_the_midline_is_set_apart_and_bone_where_hip_ho_forms_is_not(from_midline_mm, set_apart):
    # A dense nodule (a calcified iliac artery or prostate, 0.9 mL) 32 mm from the body's
    # midline is set apart; the same nodule 58 mm out, where the sciatic nerve leaves the
    # pelvis and hip HO can form, is an HO island.
    spec = PhantomSpec()
    offset = (-45.0 + from_midline_mm, -40.0, 40.0)  # the phantom's midline lies 45 mm left of its centre
    nodule = BoneSpec("ellipsoid", center_offset=offset, semi_axes=(6.0, 5.0, 7.0), cortex_mm=1.5)
    phantom = generate_phantom(dataclasses.replace(spec, extra_bones=other_hip_bones(spec) + (nodule,)),
                               spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    centre = np.asarray(phantom.spec.center_ras) + offset
    nodule_ml = 4.0 / 3.0 * np.pi * 6.0 * 5.0 * 7.0 / 1000.0
    at_nodule = [i for i in result.islands if np.linalg.norm(np.asarray(i.centroid_ras) - centre) < 3.0]
    assert len(result.islands) == len(phantom.islands) + (0 if set_apart else 1)
    if set_apart:
        (warning,) = [w for w in result.warnings if "midline" in w]
        measured_ml = float(re.search(r"\(([\d.]+) mL\)", warning).group(1))
        assert not at_nodule and measured_ml == pytest.approx(nodule_ml, rel=0.2)
    else:
        assert MIDLINE_SEGMENT_NAME not in result.set_apart
        (island,) = at_nodule
        assert island.volume_ml == pytest.approx(nodule_ml, rel=0.2)


def test_contrast_filled_vessel_is_flagged_and_a_band_of_ho_is_not():
    # Contrast raises the artery to 320 HU: a 6 mm tube along the whole field of view.
    # A band of HO along a muscle plane (6 x 24 x 80 mm) is long too, but flat.
    band = IslandSpec("band", "ellipsoid", True, center_offset=(-40.0, -40.0, 0.0), semi_axes=(3.0, 12.0, 40.0))
    spec = PhantomSpec(contrast_artery_hu=320.0, islands=PhantomSpec().islands + (band,))
    phantom = generate_phantom(spec, **BASE)
    result = segment_ossifications(phantom.image, phantom.geometry)
    offsets = {i.label: np.asarray(i.centroid_ras) - phantom.spec.center_ras for i in result.islands}
    vessel = [n for n, o in offsets.items() if np.hypot(o[0] + 12.0, o[1] - 23.0) < 4.0]
    flat = [n for n, o in offsets.items() if np.hypot(o[0] + 40.0, o[1] + 40.0) < 4.0]
    assert len(vessel) == 1 and len(flat) == 1, offsets
    flagged = [w for w in result.warnings if "long thin tube" in w]
    assert len(flagged) == 1
    assert sorted(int(n) for n in re.findall(r"HO (\d+) \(", flagged[0])) == vessel
    # The advice names the vessels' level, above which to set the threshold.
    assert float(re.search(r"reach (\d+) HU", flagged[0]).group(1)) >= 300.0
    # Without contrast the artery is soft tissue and nothing is vessel-shaped.
    plain = generate_phantom(PhantomSpec(islands=spec.islands), **BASE)
    assert not any("long thin tube" in w for w in segment_ossifications(plain.image, plain.geometry).warnings)


def test_calcified_arterial_wall_says_nothing_of_contrast():
    # A continuous calcified wall (600 HU, 1.2 mm thick, lumen 7 mm) round an artery 6 mm
    # from the femur on a CT without contrast: its tube was rightly doubted, but the blur
    # left its 95th percentile near 440 HU, below a CT angiogram's, so the CT was called
    # contrast-enhanced and the immature island (no cortex, under that level) doubted as a
    # vessel. The wall encloses its lumen at blood's density; contrast fills a vessel.
    phantom = generate_phantom(spacing_ijk=(0.8, 0.8, 1.0))
    offset = phantom.geometry.voxel_ras_grid() - np.asarray(phantom.spec.center_ras)
    from_axis = np.hypot(offset[..., 0] - 37.0, offset[..., 1] - 38.7)
    along = (offset[..., 2] >= -50.0) & (offset[..., 2] <= 20.0)
    added = np.zeros(phantom.image.shape, np.float32)
    added[(from_axis <= 3.5) & along] = -10.0                                   # blood in muscle
    added[(from_axis > 3.5) & (from_axis <= 4.7) & along] = 600.0 - 50.0        # the calcified wall
    image = phantom.image + ndimage.gaussian_filter(added, phantom.spec.psf_sigma_mm
                                                    / np.asarray(phantom.geometry.spacing_kji))
    result = segment_ossifications(image, phantom.geometry)
    tubes = [i for i in result.islands if "shaped like a vessel" in i.doubts]
    assert len(tubes) == 1 and len(result.islands) == len(phantom.islands) + 1
    assert not any("contrast-filled vessels' level" in i.doubts for i in result.islands)
    assert not any("no denser than the contrast-filled vessels" in w for w in result.warnings)


def test_calcified_plaques_in_a_row_along_an_artery_are_named():
    # Plaques on an artery's wall 6 mm from the femur (arcs of 140 degrees, 9 mm long, every
    # 14 mm over 70 mm, 1000 HU): each was reported as a 0.1 mL island of HO, unnamed.
    phantom = generate_phantom(spacing_ijk=(0.8, 0.8, 1.0))
    offset = phantom.geometry.voxel_ras_grid() - np.asarray(phantom.spec.center_ras)
    from_axis = np.hypot(offset[..., 0] - 37.0, offset[..., 1] - 38.7)
    angle = np.degrees(np.arctan2(offset[..., 1] - 38.7, offset[..., 0] - 37.0))
    along = (offset[..., 2] >= -50.0) & (offset[..., 2] <= 20.0)
    plaques = ((from_axis > 3.5) & (from_axis <= 4.7) & along & (np.mod(offset[..., 2] + 50.0, 14.0) < 9.0)
               & (np.abs(angle - 90.0) < 70.0))
    blur = phantom.spec.psf_sigma_mm / np.asarray(phantom.geometry.spacing_kji)
    image = phantom.image + ndimage.gaussian_filter(np.where(plaques, 1000.0 - 50.0, 0.0).astype(np.float32), blur)
    result = segment_ossifications(image, phantom.geometry)
    on_plaques = {i.label for i in result.islands if np.any((result.labelmap == i.label) & plaques)}
    named = {i.label for i in result.islands if "in a row like an artery's calcified plaques" in i.doubts}
    assert len(on_plaques) == 5 and named == on_plaques
    assert len(result.islands) == len(phantom.islands) + 5
    (warning,) = [w for w in result.warnings if "the pattern of calcified plaques" in w]
    assert sorted(int(n) for n in re.findall(r"HO (\d+)", warning)) == sorted(on_plaques)

    # Spurs fused to a bone, in a row along it, are no plaques: a plaque is never on a bone.
    spurs = tuple(IslandSpec(f"spur {n}", "ellipsoid", True, center_offset=(52.0, 15.0, z), semi_axes=(3.5, 3.0, 3.5))
                  for n, z in enumerate((-45.0, -30.0, -15.0, 0.0)))
    phantom = generate_phantom(PhantomSpec(islands=spurs, calcification_z=()), spacing_ijk=(0.8, 0.8, 1.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == 4 and all(i.fused_to_native_bone and not i.doubts for i in result.islands)


def test_short_vessel_at_the_contrast_level_is_named_with_the_tubes():
    """On a contrast-enhanced CT a short branch (a gluteal artery beside the nerve,
    6 mm wide, 20 mm long: too short to be tube-shaped) is bone-dense without a cortex.
    Once the long tubes show the contrast level it is named as possibly a vessel; the
    HO islands, with their cortex, are not. Without contrast elsewhere nothing is said."""
    spec = PhantomSpec(contrast_artery_hu=320.0)
    phantom = generate_phantom(spec, **BASE)
    branch_start = np.asarray(spec.center_ras) + [-10.0, -22.0, 0.0]
    branch_end = branch_start + [8.0, -6.0, 17.0]
    points = phantom.geometry.voxel_ras_grid()
    along = np.clip(((points - branch_start) @ (branch_end - branch_start))
                    / np.sum((branch_end - branch_start) ** 2), 0.0, 1.0)
    inside = np.linalg.norm(points - (branch_start + along[..., None] * (branch_end - branch_start)), axis=-1) <= 3.0
    image = phantom.image.copy()
    image[inside] = 320.0 + np.random.default_rng(5).normal(0.0, spec.noise_sigma, int(inside.sum()))
    result = segment_ossifications(image, phantom.geometry)
    centre = 0.5 * (branch_start + branch_end)
    branch = [i.label for i in result.islands if np.linalg.norm(np.asarray(i.centroid_ras) - centre) < 5.0]
    assert len(branch) == 1, [(i.label, i.centroid_ras) for i in result.islands]
    assert any("long thin tube" in w for w in result.warnings)
    (warning,) = [w for w in result.warnings if "no denser than the contrast-filled vessels" in w]
    assert [int(n) for n in re.findall(r"HO (\d+)", warning.split(" has")[0])] == branch

    # The same branch on a CT whose arteries are not enhanced: no vessel level, no warning.
    plain = generate_phantom(PhantomSpec(), **BASE)
    plain_image = plain.image.copy()
    plain_image[inside] = image[inside]
    assert not any("contrast-filled vessels" in w for w in segment_ossifications(plain_image, plain.geometry).warnings)


@pytest.mark.parametrize("offset_r, in_fat", [(34.0, True), (16.0, False)])
def test_dense_nodule_in_subcutaneous_fat_is_named(offset_r, in_fat):
    """A small dense nodule in the buttock's subcutaneous fat (a calcified injection
    granuloma) is named, wrapped in fat with only fat between it and the skin; the same
    nodule in muscle is HO like any other, and the phantom's HO is never named."""
    nodule = IslandSpec("nodule", "ellipsoid", False, center_offset=(offset_r, -40.0, 20.0), semi_axes=(3.0, 3.0, 4.0))
    spec = PhantomSpec(islands=PhantomSpec().islands + (nodule,))
    phantom = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 2.0), fov_mm=(140.0, 120.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    label = _matching_island(phantom, result, "nodule").label
    flagged = [w for w in result.warnings if "subcutaneous fat" in w]
    if in_fat:
        assert len(flagged) == 1 and re.findall(r"HO (\d+)", flagged[0].split(" lie")[0]) == [str(label)]
    else:
        assert flagged == []


def test_rib_is_measured_whole_and_flagged_as_a_tube():
    # A lower rib at the top of an abdominal CT: 12 mm wide, 1.2 mm cortex around fatty
    # marrow, 88 mm long, clear of the pelvis. It is bone outside the hip's skeleton, so
    # it is reported, with its marrow (mature), and named as tube-shaped, a rib among the
    # causes.
    ends = ((-60.0, 40.0, 40.0), (20.0, 60.0, 70.0))
    rib = BoneSpec("capsule", axis=ends, radius_mm=6.0, cortex_mm=1.2, interior="fatty_marrow")
    phantom = generate_phantom(PhantomSpec(extra_bones=(rib,), islands=()), spacing_ijk=(0.8, 0.8, 2.0),
                               fov_mm=(200.0, 150.0, 160.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    (island,) = result.islands
    length = float(np.linalg.norm(np.subtract(*ends)))
    analytic_ml = np.pi * 6.0 ** 2 * (length + 4.0 / 3.0 * 6.0) / 1000.0
    assert island.maturity == "mature"
    assert island.volume_ml == pytest.approx(analytic_ml, rel=0.10)
    (warning,) = [w for w in result.warnings if "long thin tube" in w]
    assert "HO 1 (" in warning and "rib" in warning


def test_no_island_without_ho():
    phantom = generate_phantom(PhantomSpec(islands=()), **BASE)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert result.islands == [] and not result.labelmap.any()
    assert any("No heterotopic" in warning for warning in result.warnings)


def test_minimum_island_size_is_honoured():
    phantom = generate_phantom(**BASE)
    volumes = sorted((i["volume_ml"] for i in phantom.islands), reverse=True)
    between = 0.5 * (volumes[0] + volumes[1])
    result = segment_ossifications(phantom.image, phantom.geometry, min_island_ml=between)
    assert len(result.islands) == 1
    assert result.islands[0].volume_ml >= between


def test_island_size_is_the_extent_of_its_voxels_along_the_patients_axes():
    # A box of 10 x 6 x 4 voxels (i, j, k) on 0.8 x 0.8 x 2 mm voxels measures its sides
    # as a ruler on its outer faces reads them; on a grid whose i axis runs along A and
    # j along R, the R and A sizes swap.
    from HOSciaticModuleLib.ossification import extent_ras_mm

    voxels = np.argwhere(np.ones((4, 6, 10), bool))  # (k, j, i)
    axial = VolumeGeometry.from_spacing_origin_directions((4, 6, 10), (0.8, 0.8, 2.0), (5.0, -3.0, 7.0))
    assert extent_ras_mm(voxels, axial) == pytest.approx((8.0, 4.8, 8.0))
    turned = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # columns: i, j, k in RAS
    swapped = VolumeGeometry.from_spacing_origin_directions((4, 6, 10), (0.8, 0.8, 2.0), (0.0, 0.0, 0.0), turned)
    assert extent_ras_mm(voxels, swapped) == pytest.approx((4.8, 8.0, 8.0))


@pytest.mark.parametrize("variant", ["axial", "rotated", "fine", "coarse"])
def test_free_island_size_reads_its_diameters_within_a_voxel(variant):
    # The free island is an ellipsoid 20 x 14 x 18 mm along R, A and S. Its sizes read
    # within one voxel's extent along each axis (the voxel's edges projected onto it: on
    # the rotated grid up to 2.4 mm), the island's edge set at its half step.
    kwargs = {**VARIANTS, "fine": dict(spacing_ijk=(0.8, 0.8, 1.0)), "coarse": dict(spacing_ijk=(2.0, 2.0, 3.0))}
    phantom = generate_phantom(**kwargs[variant])
    result = segment_ossifications(phantom.image, phantom.geometry)
    island = _matching_island(phantom, result, "free")
    diameters = 2.0 * np.asarray(next(spec.semi_axes for spec in phantom.spec.islands if spec.name == "free"))
    assert diameters.tolist() == [20.0, 14.0, 18.0]
    voxel_extent = np.abs(phantom.geometry.ijk_to_ras[:3, :3]).sum(axis=1)
    for size, diameter, tolerance in zip(island.size_ras_mm, diameters, voxel_extent):
        assert abs(size - diameter) <= tolerance + 0.25, (island.size_ras_mm, voxel_extent)


def test_metal_is_excluded_and_reported():
    phantom = generate_phantom(**BASE)
    centre = phantom.geometry.ras_to_kji_points(np.asarray(phantom.spec.center_ras) + [-20.0, 30.0, 0.0])[0]
    k, j, i = np.indices(phantom.image.shape)
    spacing = phantom.geometry.spacing_kji
    screw = (((k - centre[0]) * spacing[0]) ** 2 / 400 + ((j - centre[1]) * spacing[1]) ** 2 / 9
             + ((i - centre[2]) * spacing[2]) ** 2 / 9) <= 1.0
    phantom.image[screw] = 7000.0
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    assert not np.any((result.labelmap > 0) & screw)
    assert any("Metal" in warning for warning in result.warnings)
    assert not any("streak" in warning for warning in result.warnings)

    # A bright streak (300 HU, no cortex) running 15-35 mm from the screw is named as a
    # possible artefact; the islands far from the metal are not.
    offset = phantom.geometry.voxel_ras_grid() - phantom.spec.center_ras
    streak = ((np.abs(offset[..., 1] - 30.0) <= 1.0) & (offset[..., 0] >= -2.0) & (offset[..., 0] <= 18.0)
              & (np.abs(offset[..., 2]) <= 15.0))
    phantom.image[streak] = 300.0
    result = segment_ossifications(phantom.image, phantom.geometry)
    flagged = [w for w in result.warnings if "streak" in w]
    streak_islands = [n.label for n in result.islands if np.any((result.labelmap == n.label) & streak)]
    assert len(streak_islands) == 1 and len(flagged) == 1
    assert re.findall(r"HO (\d+)", flagged[0]) == [str(streak_islands[0])]


def test_a_screw_through_an_island_stays_out_of_it_with_its_margin():
    # A screw through the middle of the free island (a fixation through HO): the hole it
    # and its 3 mm margin leave in the bone was filled as the island's marrow, so the
    # island held the metal, read it as a cortex and was called mature whatever its bone.
    phantom = generate_phantom(**BASE)
    offset = phantom.geometry.voxel_ras_grid() - phantom.spec.center_ras
    axis = np.asarray([16.0, -26.0, -35.0])  # the free island's centre
    screw = (((offset[..., 0] - axis[0]) ** 2 + (offset[..., 1] - axis[1]) ** 2 <= 2.0 ** 2)
             & (np.abs(offset[..., 2] - axis[2]) <= 4.0))
    phantom.image[screw] = 7000.0
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    island = _matching_island(phantom, result, "free")
    metal_distance = ndimage.distance_transform_edt(~screw, sampling=phantom.geometry.spacing_kji)
    inside = result.labelmap == island.label
    assert metal_distance[inside].min() > 3.0 and island.max_hu < 2500.0
    truth = next(i["volume_ml"] for i in phantom.islands if i["name"] == "free")
    margin_ml = np.count_nonzero((metal_distance <= 3.0) & (phantom.ho_labels > 0)) * phantom.geometry.voxel_volume_ml
    assert island.volume_ml == pytest.approx(truth - margin_ml, rel=0.1)


def test_metal_is_read_on_the_ct_as_given_when_bone_is_read_on_a_smoothed_copy():
    # Smoothing a noisy CT lowers an implant's edge under 2500 HU; the CT as given holds
    # it. A voxel of noise at 2500 HU in dense cortex, apart from any metal, is no metal
    # (read on the CT as given, it set a metal warning and near-metal doubts on a CT
    # without metal).
    geometry = VolumeGeometry.from_spacing_origin_directions((20, 20, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    given = np.zeros((20, 20, 30), np.float32)
    given[6:14, 6:14, 4:14] = 3000.0
    given[10, 10, 25] = 2600.0  # noise in cortex, 11 voxels from the implant
    smoothed = ndimage.gaussian_filter(given, 1.5)
    from HOSciaticModuleLib.ossification import bone_and_metal_masks

    metal_smoothed = bone_and_metal_masks(smoothed, geometry, 200.0)[1]
    metal = bone_and_metal_masks(smoothed, geometry, 200.0, given)[1]
    implant = given >= 2500.0
    implant[10, 10, 25] = False
    assert 0 < np.count_nonzero(metal_smoothed) < np.count_nonzero(implant)
    assert np.array_equal(metal, metal_smoothed | implant)
    without_metal = given.copy()
    without_metal[given == 3000.0] = 0.0
    assert bone_and_metal_masks(ndimage.gaussian_filter(without_metal, 1.5), geometry, 200.0,
                                without_metal)[2] is None


def test_bone_cement_beside_an_implant_is_named():
    # A blob of bone cement (1800 HU throughout, 1.6 mL) pressed out 4 mm from a screw:
    # dense but without a cortex over a marrow, it is named with the metal's possible
    # artefacts, with its volume; the phantom's HO islands, far from the metal, are not.
    phantom = generate_phantom(**BASE)
    offset = phantom.geometry.voxel_ras_grid() - phantom.spec.center_ras
    screw = ((offset[..., 0] + 20.0) ** 2 + (offset[..., 1] - 30.0) ** 2 <= 9.0) & (np.abs(offset[..., 2]) <= 20.0)
    cement = ((offset[..., 0] + 9.0) ** 2 / 16.0 + (offset[..., 1] - 30.0) ** 2 / 16.0 + offset[..., 2] ** 2 / 576.0) <= 1.0
    phantom.image[screw] = 7000.0
    phantom.image[cement] = 1800.0
    result = segment_ossifications(phantom.image, phantom.geometry)
    (at_cement,) = [n for n in result.islands if np.any((result.labelmap == n.label) & cement)]
    assert at_cement.volume_ml == pytest.approx(4.0 / 3.0 * np.pi * 4.0 * 4.0 * 24.0 / 1000.0, rel=0.15)
    (named,) = [w for w in result.warnings if "bone cement" in w]
    assert re.findall(r"HO (\d+)", named) == [str(at_cement.label)]
    # The island's own doubts say the same (the blob, 48 mm long and 8 mm wide, is
    # also shaped like a vessel), and no other island has any.
    assert "without a cortex near metal (a streak or bone cement?)" in at_cement.doubts.split("; ")
    assert [i.doubts for i in result.islands if i is not at_cement] == [""] * (len(result.islands) - 1)


def test_mr_image_is_refused_as_ct():
    phantom = generate_phantom(modality="mr", **BASE)
    with pytest.raises(InputError, match="MR"):
        segment_ossifications(phantom.image, phantom.geometry)


def test_ct_without_its_rescale_intercept_is_refused_with_the_fix():
    # Stored values (air near 0, soft tissue near 1024) instead of Hounsfield units.
    phantom = generate_phantom(**BASE)
    raw = np.clip(phantom.image + 1024.0, 0.0, None).astype(np.uint16)
    with pytest.raises(InputError, match="subtract the intercept, usually 1024"):
        segment_ossifications(raw, phantom.geometry)


def test_roi_mask_limits_the_search():
    phantom = generate_phantom(**BASE)
    free = phantom.ho_labels == next(i["label"] for i in phantom.islands if i["name"] == "free")
    from scipy import ndimage

    roi = ndimage.binary_dilation(free, iterations=4)
    result = segment_ossifications(phantom.image, phantom.geometry, roi_mask=roi)
    assert len(result.islands) == 1
    assert np.count_nonzero((result.labelmap > 0) & free) > 0.9 * free.sum()


def test_mismatched_mask_is_refused():
    phantom = generate_phantom(**BASE)
    with pytest.raises(InputError, match="resample"):
        segment_ossifications(phantom.image, phantom.geometry, native_bone_mask=np.zeros((3, 3, 3), bool))


def test_bones_of_a_hand_in_the_field_are_flagged():
    # Twelve small corticated bones 15 mm apart beside the pelvis, as a hand lying in the
    # field of view: named together in one warning; the three HO islands are not.
    hand = tuple(BoneSpec("ellipsoid", center_offset=(r, 42.0, s), semi_axes=(5.0, 4.0, 6.0), cortex_mm=1.0)
                 for r in (-50.0, -35.0, -20.0) for s in (-70.0, -55.0, -40.0, -25.0))
    phantom = generate_phantom(PhantomSpec(extra_bones=hand), **BASE)
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands) + len(hand)
    (warning,) = [w for w in result.warnings if "hand" in w]
    named = {int(n) for n in re.findall(r"HO (\d+)", warning.split(" are ")[0])}
    hand_labels = {i.label for i in result.islands if i.volume_ml < 1.0}
    assert named == hand_labels and len(named) == len(hand)


@pytest.mark.parametrize("spacing_ijk", [(1.0, 1.0, 2.0), (0.7, 0.7, 1.0)])
def test_bar_of_ho_from_femur_to_ischium_is_found_with_one_hip_imaged(spacing_ijk):
    # Brooker IV: a mature bar 10 mm thick, 110 mm long, runs from the femur behind the
    # nerve to the ischium, joining them. Thinner than the ball and eleven times longer
    # than thick, it was taken for a native bone's edge and missed; it is all that joins
    # two bones, from one to the other, so it is fused HO.
    bar = IslandSpec("bar", "bar", True, path=((37.0, 15.0, 10.0), (28.0, -19.0, 15.0), (-8.0, -19.0, 30.0),
                                               (-28.0, 5.0, 40.0)), radius_mm=5.0)
    base = PhantomSpec()
    phantom = generate_phantom(dataclasses.replace(base, islands=(base.islands[1], bar)), spacing_ijk=spacing_ijk)
    result = segment_ossifications(phantom.image, phantom.geometry)
    truth = phantom.islands[1]
    overlap = np.bincount(result.labelmap[phantom.ho_labels == truth["label"]], minlength=len(result.islands) + 1)
    found = result.islands[int(np.argmax(overlap[1:]))]
    assert overlap[1:].max() >= 0.8 * np.count_nonzero(phantom.ho_labels == truth["label"])
    assert found.fused_to_native_bone and found.maturity == "mature"
    assert found.volume_ml == pytest.approx(truth["volume_ml"], rel=0.15), (found.volume_ml, truth["volume_ml"])
    assert len(result.islands) == 2


def _point_on_axis(axis, s_mm):
    """The point of a phantom bone's axis (two points, relative to the centre) at height ``s_mm``."""
    start, stop = np.asarray(axis, float)
    return start + (s_mm - start[2]) / (stop[2] - start[2]) * (stop - start)


@pytest.mark.parametrize("from_femur", [True, False])
def test_bar_stopping_short_of_both_bones_is_no_vessel(from_femur):
    """A mature bar 8 mm thick from the femur to the ischium, stopping 3 mm short of
    each across soft tissue (a gap at each end, Brooker III), on 1 mm voxels: unfused
    and rod-shaped, it was doubted as shaped like a vessel, although it runs from one
    bone to the other. A rod as thick leaving the ischium, 3 mm off it, and ending 35 mm
    further in the muscle is still doubted."""
    spec = PhantomSpec()
    ischium = _point_on_axis(spec.ischium_axis, 0.0)
    radius, gap = 4.0, 3.0
    if from_femur:
        femur = _point_on_axis(spec.femur_axis, 0.0)
        towards = (ischium - femur) / np.linalg.norm(ischium - femur)
        start = femur + towards * (spec.femur_radius_mm + gap + radius)
    else:
        towards = np.array([1.0, 0.0, 0.0])
        start = ischium - towards * (spec.ischium_radius_mm + gap + radius + 35.0)
    stop = ischium - towards * (spec.ischium_radius_mm + gap + radius)
    bar = IslandSpec("bar", "bar", True, path=(tuple(start), tuple(stop)), radius_mm=radius)
    phantom = generate_phantom(dataclasses.replace(spec, islands=(bar,)), spacing_ijk=(1.0, 1.0, 1.0),
                               fov_mm=(190.0, 80.0, 60.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    (island,) = result.islands
    length = float(np.linalg.norm(stop - start))
    assert island.volume_ml == pytest.approx(np.pi * radius ** 2 * (length + 4.0 / 3.0 * radius) / 1000.0, rel=0.10)
    assert not island.fused_to_native_bone and island.maturity == "mature"
    assert ("shaped like a vessel" in island.doubts) != from_femur, island.doubts
    assert result.contrast_level_hu is None


def test_only_a_bar_from_one_bone_to_another_bridges_them():
    # Two 40 mm blocks of bone (64 mL each) 30 mm apart on a 1 mm grid.
    geometry = VolumeGeometry.from_spacing_origin_directions((60, 60, 120), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    bones = np.zeros((60, 60, 120), bool)
    bones[10:50, 10:50, 5:45] = bones[10:50, 10:50, 75:115] = True
    bar = np.zeros_like(bones)
    bar[27:33, 27:33, 45:75] = True                  # from one block's face to the other's
    assert bridges_two_bones(bones | bar, bar, geometry)
    # A joint fused along its line (blocks 2 mm apart, joined over their whole 40 mm
    # face): it meets both along its length, its two contacts side by side.
    fused = np.zeros_like(bones)
    fused[10:50, 10:50, 5:45] = fused[10:50, 10:50, 47:87] = True
    plate = np.zeros_like(bones)
    plate[10:50, 28:32, 45:47] = True
    assert not bridges_two_bones(fused | plate, plate, geometry)
    # A process standing out of a bone leaves one bone when taken away.
    one_bone = np.zeros_like(bones)
    one_bone[10:50, 10:50, 5:45] = True
    process = np.zeros_like(bones)
    process[27:33, 27:33, 45:75] = True
    assert not bridges_two_bones(one_bone | process, process, geometry)


def test_flecks_of_early_ho_in_one_muscle_are_not_taken_for_a_hand():
    # Ten flecks of immature HO (0.18 mL of amorphous mineral at 380 HU, no cortex), 15-20 mm
    # apart in the gluteal muscles, as early HO often shows: each is found and measured,
    # and none is doubted (a hand's bones have a cortex).
    centres = [(21.0, -16.0, 56.0), (15.0, -19.0, -15.0), (20.0, -17.0, 27.0), (12.0, -36.0, 48.0),
               (23.0, -16.0, 7.0), (8.0, -20.0, 50.0), (10.0, -32.0, 2.0), (24.0, -26.0, 39.0),
               (7.0, -31.0, 21.0), (20.0, -29.0, 63.0)]
    flecks = tuple(IslandSpec(f"fleck {n}", "ellipsoid", False, center_offset=centre, semi_axes=(3.5, 3.0, 4.0))
                   for n, centre in enumerate(centres))
    phantom = generate_phantom(PhantomSpec(islands=PhantomSpec().islands[:1] + flecks), **BASE)
    result = segment_ossifications(phantom.image, phantom.geometry)
    found = [i for i in result.islands if i.maturity == "immature"]
    assert len(found) == len(flecks) and len(result.islands) == len(flecks) + 1
    truth = phantom.islands[1]["analytic_volume_ml"]
    assert all(abs(i.volume_ml - truth) <= 0.15 * truth for i in found), [i.volume_ml for i in found]
    assert not any(i.doubts for i in result.islands), [i.doubts for i in result.islands]
    assert not any("hand" in w for w in result.warnings)


@pytest.mark.parametrize("with_gas", [True, False])
def test_dense_pool_against_gas_is_named(with_gas):
    """Oral contrast pooled in a bowel loop under a gas bubble (an air-fluid level,
    gas uppermost in a supine patient) is bone-dense and unfused; the gas against it
    names it as likely bowel content. The same pool without gas, like the phantom's HO,
    is not named."""
    phantom = generate_phantom(PhantomSpec(), spacing_ijk=(1.0, 1.0, 2.0), fov_mm=(140.0, 120.0, 150.0))
    centre = np.asarray(PhantomSpec().center_ras) + (16.0, -40.0, 20.0)
    offset = phantom.geometry.voxel_ras_grid() - centre
    lumen = np.linalg.norm(offset / (8.0, 7.0, 10.0), axis=-1) <= 1.0
    image = phantom.image.copy()
    image[lumen] = 350.0
    if with_gas:
        image[lumen & (offset[..., 1] >= 3.0)] = -900.0
    result = segment_ossifications(image, phantom.geometry)
    pool = [i.label for i in result.islands if np.linalg.norm(np.asarray(i.centroid_ras) - centre) < 8.0]
    assert len(pool) == 1 and len(result.islands) == len(phantom.islands) + 1
    flagged = [w for w in result.warnings if "touch" in w and "gas" in w]
    if with_gas:
        assert len(flagged) == 1 and [int(n) for n in re.findall(r"HO (\d+)", flagged[0].split(" touch")[0])] == pool
    else:
        assert flagged == []


def test_bone_wholly_above_the_hip_bones_is_set_apart():
    """An abdominal CT reaches the lower ribs: a rib 55 mm above the top of the hip bones
    (iliac wings 120 mm from the midline) is set apart with its volume; the hip's HO
    islands are reported as before."""
    spec = PhantomSpec(body_semi_axes=(170.0, 90.0))
    midline = spec.body_center_offset[0]
    wings = tuple(BoneSpec("ellipsoid", center_offset=(midline + side * 120.0, 0.0, 60.0), semi_axes=(8.0, 35.0, 35.0),
                           cortex_mm=2.0) for side in (1, -1))
    ends = ((midline + 40.0, -30.0, 160.0), (midline + 85.0, 10.0, 150.0))
    rib = BoneSpec("capsule", axis=ends, radius_mm=5.0, cortex_mm=1.2, interior="fatty_marrow")
    phantom = generate_phantom(dataclasses.replace(spec, extra_bones=other_hip_bones(spec) + wings + (rib,)),
                               spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(380.0, 200.0, 360.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    assert len(result.islands) == len(phantom.islands)
    assert_matches_truth(phantom, result)
    (set_apart,) = result.set_apart.values()
    def capsule_ml(radius):
        return np.pi * radius ** 2 * (np.linalg.norm(np.subtract(*ends)) + 4.0 / 3.0 * radius) / 1000.0

    # Its 1.2 mm cortex's caps vanish on these voxels, so its marrow (3.8 mm in radius) is
    # the inside of a tube open at its ends, as a collar's is, and is not filled: at least
    # its cortex is set apart.
    set_apart_ml = np.count_nonzero(set_apart) * phantom.geometry.voxel_volume_ml
    assert 0.88 * (capsule_ml(5.0) - capsule_ml(3.8)) <= set_apart_ml <= 1.12 * capsule_ml(5.0)
    (warning,) = [w for w in result.warnings if "above the top of the hip bones" in w]
    assert f"({np.count_nonzero(set_apart) * phantom.geometry.voxel_volume_ml:.1f} mL)" in warning


@pytest.mark.parametrize("spacing, reach_mm", [((0.8, 0.8, 1.0), 2.5), ((0.5, 0.9, 5.0), 3.0), ((1.0, 1.0, 1.0), 0.5)])
def test_within_or_next_to_works_around_the_mask_alone(spacing, reach_mm):
    """The voxels near a mask are found in the box around it: the same voxels as from
    the distance map of the whole array, for masks inside, at the array's faces and
    spread across it, on grids finer and coarser than the reach."""
    import edt

    from HOSciaticModuleLib.geometry import within_or_next_to

    geometry = VolumeGeometry(np.diag([*spacing, 1.0]), (20, 30, 40))
    rng = np.random.default_rng(11)
    for mask in (rng.random(geometry.shape_kji) > 0.999, np.pad(np.ones((3, 4, 5), bool), ((0, 17), (26, 0), (10, 25))),
                 ndimage.binary_dilation(rng.random(geometry.shape_kji) > 0.9995, iterations=2)):
        whole = (edt.edt((~mask).astype(np.uint8), anisotropy=geometry.spacing_kji, black_border=False) <= reach_mm) \
            | ndimage.binary_dilation(mask)
        np.testing.assert_array_equal(within_or_next_to(mask, geometry, reach_mm), whole)
    assert not within_or_next_to(np.zeros(geometry.shape_kji, bool), geometry, reach_mm).any()


def test_a_block_within_another_and_back_addresses_the_same_voxels():
    from HOSciaticModuleLib.geometry import block_relative_to, block_within

    array = np.arange(20 * 30 * 40).reshape(20, 30, 40)
    outer = (slice(3, 17), slice(5, 29), slice(0, 40))
    block = (slice(4, 9), slice(10, 12), slice(33, 40))
    inner = block_relative_to(block, outer)
    assert inner == (slice(1, 6), slice(5, 7), slice(33, 40))
    assert np.array_equal(array[outer][inner], array[block])
    assert block_within(outer, inner) == block


def test_label_boxes_are_scipys():
    """Boxes found slab by slab on several threads, and boxes searched within the block
    holding the labels, equal SciPy's over the whole array: with absent labels as None,
    labels at the array's faces, labels spanning the slabs' seams, and none at all."""
    from HOSciaticModuleLib.geometry import label_boxes, sparse_label_boxes

    rng = np.random.default_rng(5)
    labels = np.zeros((30, 40, 50), np.uint16)
    labels[5:9, 10:12, 20:31] = 1
    labels[0, 39, 49] = 3  # corner voxel; label 2 absent
    labels[2:30, 0:4, 7] = 4  # across every slab
    labels[14:16, 30, 30:40] = 5  # across the middle seam
    labels[rng.random(labels.shape) > 0.9995] = 6
    expected = ndimage.find_objects(labels)
    for count in (None, 6, labels.size):  # unknown, few and very many labels
        for slab_voxels in (labels.size, 20_000, 1):
            assert label_boxes(labels, count, slab_voxels) == expected, (count, slab_voxels)
    assert sparse_label_boxes(labels) == expected
    inner = np.zeros_like(labels)
    inner[10:12, 5, 3:9] = 2
    assert sparse_label_boxes(inner) == ndimage.find_objects(inner) == [None, (slice(10, 12), slice(5, 6), slice(3, 9))]
    assert sparse_label_boxes(np.zeros_like(labels)) == [] == label_boxes(np.zeros_like(labels), 0, 1)


def test_grown_across_faces_is_scipys_dilation():
    """The mask grown by the voxels sharing a face with it equals SciPy's binary dilation
    with its default structure: scattered voxels, voxels on every face of the array, a
    flat and a one-voxel array, none at all; and within a reach at least the voxels next
    to the mask, on a grid whose slices are coarser than the reach."""
    from HOSciaticModuleLib.geometry import VolumeGeometry, grown_across_faces, within_or_next_to

    rng = np.random.default_rng(11)
    mask = rng.random((17, 23, 29)) > 0.97
    mask[0, :, 3] = mask[-1, 5, :] = mask[:, 0, -1] = True
    for case in (mask, mask[:1], np.ones((1, 1, 1), bool), np.zeros((4, 5, 6), bool), mask[3]):
        np.testing.assert_array_equal(grown_across_faces(case), ndimage.binary_dilation(case))
    coarse = VolumeGeometry.from_spacing_origin_directions(mask.shape[::-1], (0.8, 0.8, 3.0), (0.0, 0.0, 0.0))
    for reach_mm in (1.0, 2.9, 3.0, 4.0):
        near = within_or_next_to(mask, coarse, reach_mm)
        assert np.all(near[ndimage.binary_dilation(mask)]), reach_mm
        distance = ndimage.distance_transform_edt(~mask, sampling=coarse.spacing_kji)
        np.testing.assert_array_equal(near & ~ndimage.binary_dilation(mask),
                                      (distance <= reach_mm) & ~ndimage.binary_dilation(mask))


def test_bounding_slices_are_scipys_box():
    """The block holding a mask's voxels, found from the slabs holding any and their
    planes joined, is SciPy's box of the mask: for blobs, scattered voxels, voxels at the
    array's corners, a strided view, a single voxel, an image and none at all."""
    from HOSciaticModuleLib.geometry import bounding_slices

    rng = np.random.default_rng(11)
    blob = np.zeros((30, 40, 50), bool)
    blob[5:9, 10:12, 20:31] = True
    corners = np.zeros((30, 40, 50), bool)
    corners[0, 39, 0] = corners[29, 0, 49] = True
    single = np.zeros((30, 40, 50), bool)
    single[12, 3, 44] = True
    scattered = rng.random((30, 40, 50)) > 0.999
    for mask in (blob, corners, single, scattered, scattered[::2, 3:, ::-3], rng.random((20, 30)) > 0.99):
        assert bounding_slices(mask) == ndimage.find_objects(mask.astype(np.uint8))[0]
    assert bounding_slices(np.zeros((30, 40, 50), bool)) is None


@pytest.mark.parametrize("percentile", [0.0, 1.0, 25.0, 50.0, 95.0, 100.0])
def test_percentile_of_many_is_numpys_linear_percentile(percentile):
    """The percentile from one partition is NumPy's default (linear) percentile, on
    CT-like values with long runs of ties and on one or two values."""
    from HOSciaticModuleLib.hounsfield import percentile_of_many

    rng = np.random.default_rng(int(percentile))
    for values in (rng.integers(-30, 1500, 200_001).astype(np.int16), rng.normal(40.0, 15.0, 1000).round(),
                   np.array([7], np.int16), np.array([3.0, -5.0])):
        assert percentile_of_many(values, percentile) == pytest.approx(float(np.percentile(values, percentile)),
                                                                      abs=1e-9)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.9, 2.5)])
def test_ball_opening_in_the_box_is_that_of_the_whole_array(spacing):
    """The opening computed over the mask's box and a layer round it equals the one over
    the whole array (erosion and dilation by exact distance maps), for a mask in the
    middle, one against the array's faces, one with nothing left after the erosion, and
    none."""
    import edt

    from HOSciaticModuleLib.ossification import ball_opening

    geometry = VolumeGeometry(np.diag([*spacing, 1.0]), (30, 60, 70))
    k, j, i = np.ogrid[:30, :60, :70]
    z, y, x = k * spacing[2], j * spacing[1], i * spacing[0]
    blob = ((z - 30) ** 2 + (y - 27) ** 2 + (x - 30) ** 2 <= 12.0 ** 2) | (
        (np.abs(z - 30) <= 3) & (np.abs(y - 27) <= 3) & (x > 30) & (x < 55))  # a ball with a rod
    at_faces = ((z - 0) ** 2 + (y - 60 * spacing[1]) ** 2 + (x - 10) ** 2 <= 14.0 ** 2)
    thin = (np.abs(y - 20) <= 2) & (np.abs(z - 15) <= 20) & (x >= 0)  # a plate 5 mm thick
    radius = 6.0

    def whole(mask):
        depth = edt.edt(mask.astype(np.uint8), anisotropy=geometry.spacing_kji, black_border=False)
        core = depth >= radius
        if not core.any():
            return np.zeros_like(mask)
        return (edt.edt((~core).astype(np.uint8), anisotropy=geometry.spacing_kji, black_border=False) <= radius) & mask

    for name, mask in (("middle", blob), ("at the faces", at_faces), ("thin", thin),
                       ("none", np.zeros(geometry.shape_kji, bool))):
        np.testing.assert_array_equal(ball_opening(mask, geometry, radius), whole(mask), err_msg=name)
    assert ball_opening(blob, geometry, radius).sum() < blob.sum()  # the rod is opened away
    assert ball_opening(blob, geometry, radius).any() and not ball_opening(thin, geometry, radius).any()


def test_islands_of_one_size_are_numbered_by_where_they_lie_not_by_storage_order():
    # Two equal islands on a CT stored with its slices in the other order kept their
    # numbers swapped (and so the warnings naming them differed between the two files).
    twin = dict(kind="ellipsoid", mature=True, semi_axes=(6.0, 5.0, 6.0))
    spec = PhantomSpec(noise_sigma=0.0, calcification_z=(), islands=(
        IslandSpec("lower", center_offset=(16.0, -26.0, -35.0), **twin),
        IslandSpec("upper", center_offset=(16.0, -26.0, 25.0), **twin)))
    phantom = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 1.0))
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = phantom.image.shape[0] - 1
    flipped = VolumeGeometry(phantom.geometry.ijk_to_ras @ flip, phantom.geometry.shape_kji)
    as_stored = segment_ossifications(phantom.image, phantom.geometry).islands
    reversed_slices = segment_ossifications(np.ascontiguousarray(phantom.image[::-1]), flipped).islands
    assert len(as_stored) == 2 and as_stored[0].volume_ml == as_stored[1].volume_ml
    for one, other in zip(as_stored, reversed_slices):
        assert one.label == other.label and one.volume_ml == other.volume_ml
        np.testing.assert_allclose(one.centroid_ras, other.centroid_ras, atol=1e-6)


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 1.0), (1.0, 1.0, 2.0)])
def test_immature_ho_joined_to_mature_ho_keeps_its_volume(spacing):
    # An edge's half step is set by the bone next to it: with the pair's own peak (a
    # mature cortex near 1000 HU) the immature part (380 HU) lay below it all and lost
    # its outer 2.5 mm, the pair reading 26-28 % small and the immature part a third found.
    base = PhantomSpec()
    wrap, _, fused = base.islands
    mature = IslandSpec("mature", "ellipsoid", True, center_offset=(16.0, -26.0, -35.0), semi_axes=(10.0, 7.0, 9.0))
    immature = IslandSpec("immature", "ellipsoid", False, center_offset=(16.0, -26.0, -17.0), semi_axes=(8.0, 6.0, 9.0))
    phantom = generate_phantom(dataclasses.replace(base, islands=(wrap, mature, immature, fused)), spacing_ijk=spacing)
    result = segment_ossifications(phantom.image, phantom.geometry)
    truth = {island["name"]: island for island in phantom.islands}
    pair = np.isin(phantom.ho_labels, [truth["mature"]["label"], truth["immature"]["label"]])
    labels = set(np.unique(result.labelmap[pair]).tolist()) - {0}
    found = sum(island.volume_ml for island in result.islands if island.label in labels)
    assert found == pytest.approx(truth["mature"]["volume_ml"] + truth["immature"]["volume_ml"], rel=0.10)
    immature_voxels = phantom.ho_labels == truth["immature"]["label"]
    assert np.count_nonzero(immature_voxels & (result.labelmap > 0)) >= 0.8 * np.count_nonzero(immature_voxels)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_collar_of_ho_keeps_the_nerve_and_its_fat_out(spacing):
    # A 360-degree collar 30 mm long with 3 mm of fat around a 10 mm nerve: its end
    # planes' pockets, one slice thick, were taken for thin marrow and filled, which closed
    # the tube; its inside, nerve and fat, was then filled as a cavity (18.5 mL for 12.2,
    # the whole nerve inside the HO segment, contact "circumferential" for none).
    from HOSciaticModuleLib.phantom import make_shell_spec

    phantom = generate_phantom(make_shell_spec(360.0, gap_mm=3.0, integrate_voxels=True), fov_mm=(100.0, 100.0, 100.0),
                               spacing_ijk=spacing)
    result = segment_ossifications(phantom.image, phantom.geometry)
    (island,) = result.islands
    assert island.volume_ml == pytest.approx(phantom.islands[0]["volume_ml"], rel=0.06)
    assert not np.any((result.labelmap > 0) & phantom.nerve_mask)


def test_fused_outgrowth_on_a_bone_lying_along_thick_slices_is_found():
    # A bone running across the patient (a femoral neck, an acetabular roof on axial
    # slices): on 5 mm slices the ball's envelope leaves a staircase of bone along its
    # whole top surface, which joined a fused outgrowth into one part as long as a native
    # edge; the 2.5 mL island was dropped with it and no HO was reported.
    femur = ((5.0, 30.0, -40.0), (75.0, 30.0, -40.0))
    outgrowth = IslandSpec("fused", "ellipsoid", False, center_offset=(40.0, 30.0, -22.5), semi_axes=(11.0, 8.0, 8.0))
    spec = PhantomSpec(femur_axis=femur, islands=(outgrowth,), calcification_z=(), integrate_voxels=True)
    phantom = generate_phantom(spec, spacing_ijk=(0.7, 0.7, 5.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    (island,) = result.islands
    assert island.fused_to_native_bone
    # The part within a slice of the bone's envelope stays native: a slice's worth is lost.
    assert island.volume_ml == pytest.approx(phantom.islands[0]["volume_ml"], rel=0.25)
    truth_centroid = phantom.geometry.kji_to_ras_points(np.argwhere(phantom.ho_labels > 0).mean(axis=0)[None])[0]
    assert np.linalg.norm(np.subtract(island.centroid_ras, truth_centroid)) < 5.0


def test_mature_island_with_a_window_in_its_cortex_keeps_its_marrow():
    # A 4 mm window through the cortex of a 14 x 11 x 12 mm mature island: judged over its
    # whole 3D extent, the window's tunnel joined the wide marrow and sealed nothing, and
    # the island read 3.5 mL, immature, for 7.8. Judged plane by plane, the tunnel's thin
    # planes seal the marrow; only a tube open at both ends keeps its inside out.
    centre = (16.0, -26.0, -35.0)
    spec = PhantomSpec(islands=(IslandSpec("free", "ellipsoid", True, center_offset=centre,
                                           semi_axes=(14.0, 11.0, 12.0), cortex_mm=2.0),),
                       calcification_z=(), psf_sigma_mm=1e-6, noise_sigma=0.0)
    phantom = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 2.0))
    offset = phantom.geometry.voxel_ras_grid() - (np.asarray(spec.center_ras) + centre)
    image = phantom.image.copy()
    window = (phantom.ho_labels == 1) & (image > 500) & (offset[..., 0] > 0) & (np.hypot(offset[..., 1],
                                                                                         offset[..., 2]) < 2.0)
    image[window] = 50.0
    image = ndimage.gaussian_filter(image, PhantomSpec().psf_sigma_mm / np.asarray(phantom.geometry.spacing_kji))
    (island,) = segment_ossifications(image, phantom.geometry).islands
    assert island.maturity == "mature"
    assert island.volume_ml == pytest.approx(phantom.islands[0]["volume_ml"], rel=0.05)


def test_a_calcified_granuloma_in_buttock_fat_is_named_on_coarser_voxels():
    # A 10 mm injection granuloma (dense throughout) in 30 mm of buttock fat: its ring's
    # share of fat was read on a ring whose inner layer is the nodule's blur, above fat's
    # values, and fell under the rule's share on 1.25 x 1.25 x 2 mm voxels (reported as HO
    # without a doubt; named on 1 x 1 x 2 mm).
    base = PhantomSpec(subcutaneous_fat_mm=30.0)
    offset = (20.0, -48.0, -20.0)
    nodule = BoneSpec("ellipsoid", center_offset=offset, semi_axes=(5.0, 5.0, 5.0), cortex_mm=5.0)
    spec = dataclasses.replace(base, extra_bones=other_hip_bones(base) + (nodule,))
    phantom = generate_phantom(spec, spacing_ijk=(1.25, 1.25, 2.0), fov_mm=(300.0, 170.0, 100.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    centre = np.asarray(spec.center_ras) + offset
    (granuloma,) = [i for i in result.islands if np.linalg.norm(np.asarray(i.centroid_ras) - centre) < 3.0]
    assert granuloma.volume_ml == pytest.approx(4.0 / 3.0 * np.pi * 125.0 / 1000.0, rel=0.15)
    assert "in the subcutaneous fat" in granuloma.doubts


def test_a_mass_as_large_as_a_bone_without_counterpart_is_named():
    # A free 130 mL mass beside the hip (a spinal-cord injury's HO) was taken for a native
    # bone cut by the field of view and, too large for the comparison with the other side
    # to be trusted, kept native without a word: no island, no warning.
    base = PhantomSpec()
    mass = BoneSpec("ellipsoid", center_offset=(45.0, 62.0, 0.0), semi_axes=(28.0, 22.0, 50.0), cortex_mm=3.0)
    spec = dataclasses.replace(base, extra_bones=other_hip_bones(base) + (mass,), body_semi_axes=(150.0, 110.0))
    phantom = generate_phantom(spec, spacing_ijk=(2.0, 2.0, 3.0), fov_mm=(400.0, 240.0, 150.0))
    result = segment_ossifications(phantom.image, phantom.geometry)
    (warning,) = [w for w in result.warnings if "could not be compared with the other side" in w]
    truth_ml = 4.0 / 3.0 * np.pi * 28.0 * 22.0 * 50.0 / 1000.0
    numbers = [float(n) for n in re.findall(r"(\d+) mL", warning)]
    assert numbers[0] == pytest.approx(truth_ml, rel=0.1) and numbers[1] == pytest.approx(truth_ml, rel=0.1)


def test_a_face_cut_by_the_field_of_view_is_no_cortex():
    # The outermost voxels along every axis count as rim; the array's edge counted as
    # outside too, so a mature island cut by the field of view three slices in read its
    # cut marrow as cortex and was called immature.
    from HOSciaticModuleLib.ossification import measure_island

    n = 21
    jj, ii = np.mgrid[:n, :n] - n // 2
    radius = np.hypot(jj, ii)
    disk, cortex = radius <= 8, (radius <= 8) & (radius > 6)
    island = np.zeros((4, n, n), bool)
    island[:3] = disk  # slices 0-2; slice 0 lies on the image's edge, slice 3 outside the island
    ct = np.where(island, np.where(cortex, 1400.0, 150.0), -50.0)
    ct[2][disk] = 1400.0  # the cap across the slices is cortex too
    geometry = VolumeGeometry.from_spacing_origin_directions(island.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    figures, _ = measure_island(1, ct, island, geometry, None)
    assert figures.maturity == "mature"


def _bone_with_outgrowths(rng, spacing_kji):
    """A bone (a shaft and a plate) with a few rounded outgrowths on it, on ``spacing_kji``."""
    spacing = np.asarray(spacing_kji, float)
    shape = tuple(int(e / s) for e, s in zip(rng.uniform(60.0, 110.0, 3), spacing))
    position = np.indices(shape).astype(float) * spacing[:, None, None, None]
    extent = np.asarray(shape) * spacing
    centre, radius = extent * rng.uniform(0.35, 0.65, 3), rng.uniform(12.0, 20.0)
    bone = (position[1] - centre[1]) ** 2 + (position[2] - centre[2]) ** 2 <= radius ** 2
    bone |= (np.abs(position[2] - extent[2] * rng.uniform(0.1, 0.9)) <= rng.uniform(3.0, 8.0)) & (
        position[1] < extent[1] * rng.uniform(0.3, 0.8))
    for _ in range(rng.integers(1, 5)):
        angle = rng.uniform(0.0, 2.0 * np.pi)
        at = np.array([rng.uniform(0.0, extent[0]), centre[1] + radius * np.cos(angle),
                       centre[2] + radius * np.sin(angle)])
        bone |= sum((position[a] - at[a]) ** 2 for a in range(3)) <= rng.uniform(3.0, 9.0) ** 2
    geometry = VolumeGeometry(np.diag([spacing[2], spacing[1], spacing[0], 1.0]), shape)
    return bone, geometry


def test_distance_maps_over_smaller_blocks_give_the_same_masks():
    """The ball's dilation over the core's reach and the protrusion over each part's
    block and layer give what the maps over the whole block gave."""
    from HOSciaticModuleLib import ossification as oss

    def opening_over_whole_box(mask, geometry, radius_mm):
        opened = np.zeros(mask.shape, bool)
        box = bounding_block(mask, 1)
        core = distance_inside(mask[box], geometry) >= radius_mm
        if core.any():
            opened[box] = (distance_inside(~core, geometry) <= radius_mm) & mask[box]
        return opened

    rng = np.random.default_rng(3)
    for spacing in [(1.0, 0.8, 0.8), (2.0, 0.6, 0.8), (3.0, 0.7, 0.7), (5.0, 1.0, 0.8), (1.25, 0.6, 1.0)]:
        bone, geometry = _bone_with_outgrowths(rng, spacing)
        for radius_mm in (4.0, 10.0):
            assert np.array_equal(oss.ball_opening(bone, geometry, radius_mm),
                                  opening_over_whole_box(bone, geometry, radius_mm))
        envelope = oss.ball_opening(bone, geometry, oss.NATIVE_BALL_RADIUS_MM)
        parts, count, sizes = oss._components(bone & ~envelope)
        blocks = oss.label_boxes(parts, count)
        whole = distance_inside(~envelope, geometry)
        exact_mm = max(oss.FUSED_MIN_PROTRUSION_MM, max(geometry.spacing_kji))
        for label in range(1, count + 1):
            # One part at a time: its block and layer, not the whole array.
            protrusion = oss._protrusion_of_parts(envelope, {label: blocks[label - 1]}, geometry)
            part = parts[blocks[label - 1]] == label
            near, far = protrusion(label)[part], whole[blocks[label - 1]][part]
            assert np.array_equal(near[far <= exact_mm], far[far <= exact_mm])
            assert np.all(near[far > exact_mm] > exact_mm)


def test_sizes_counted_in_boxes_and_column_reductions_match_numpy():
    from HOSciaticModuleLib import ossification as oss
    from HOSciaticModuleLib.geometry import all_columns, column_max, column_min

    rng = np.random.default_rng(5)
    mask = ndimage.gaussian_filter(rng.random((40, 50, 60)), 2.0) > 0.52
    labels, count, sizes = oss._components(mask)
    assert count > 1
    with_boxes = oss._components_and_boxes(mask)
    assert np.array_equal(with_boxes[0], labels) and with_boxes[1] == count
    assert np.array_equal(with_boxes[2], sizes) and with_boxes[3] == oss.label_boxes(labels, count)
    points = rng.normal(size=(1000, 3)) * 50.0
    assert np.array_equal(column_min(points), points.min(axis=0))
    assert np.array_equal(column_max(np.argwhere(mask)), np.argwhere(mask).max(axis=0))
    assert np.array_equal(all_columns(points > -60.0), np.all(points > -60.0, axis=1))

