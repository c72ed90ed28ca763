"""A given native-bone segmentation is read by what its segments are called: in a
whole-body segmentation only the bones are native bone, so HO inside a muscle is found."""

import gzip
import re

import numpy as np
import pytest
from scipy import ndimage

from HOSciaticModuleLib import bonelabels, ossification
from HOSciaticModuleLib import scene as scene_io
from HOSciaticModuleLib.bonelabels import BONE, NOT_BONE, UNKNOWN, choose_native_bone, label_kind, nifti_label_names
from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.geometry import VolumeGeometry
from HOSciaticModuleLib.imageio import write_volume
from HOSciaticModuleLib.ossification import segment_ossifications
from HOSciaticModuleLib.phantom import generate_phantom, write_named_label_map
from HOSciaticModuleLib.pipeline import HOSciaticAnalysis

SMALL = dict(spacing_ijk=(1.2, 1.2, 2.0), fov_mm=(110.0, 110.0, 120.0))
FEMUR_TERMINOLOGY = ("Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
                     "~SCT^71341001^Femur~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^|")
GLUTEUS_TERMINOLOGY = FEMUR_TERMINOLOGY.replace("71341001^Femur", "181674001^Gluteus maximus muscle")


@pytest.mark.parametrize("description, kind", [
    (("femur_left",), BONE), (("hip_right",), BONE), (("sacrum",), BONE), (("vertebrae_L5",), BONE),
    (("rib_left_1",), BONE), (("Native bone",), BONE), (("left hip bone",), BONE),
    # a translated display name: the ID and the terminology still say what it is
    (("Fémur droit", "Segment_3", FEMUR_TERMINOLOGY), BONE),
    (("gluteus_maximus_left",), NOT_BONE), (("iliopsoas_right",), NOT_BONE), (("autochthon_left",), NOT_BONE), (("Muscle fessier", "gluteus_maximus_right", GLUTEUS_TERMINOLOGY), NOT_BONE),
    (("iliac_artery_left",), NOT_BONE), (("hip_implant",), NOT_BONE), (("costal_cartilages",), NOT_BONE),
    (("femoral vein",), NOT_BONE), (("skeletal_muscle",), NOT_BONE), (("HO 1",), NOT_BONE),
    (("heterotopic ossification",), NOT_BONE), (("liver",), UNKNOWN), (("urinary_bladder",), UNKNOWN),
    (("Segment_1",), UNKNOWN), (("fibrous tissue", "distribution"), UNKNOWN),  # "rib" only as a whole word
    # IDs Slicer makes up for a segment added without one: letters and digits at random
    (("femur_right", "S_hO6lQ3XeePcwi2Xb"), BONE), (("Segment_1", "S_4y1mFFWpHwBZe0HO"), UNKNOWN),
    (("gluteus_maximus_right", "S_aRIB2hIPx0fAT9zz"), NOT_BONE), (("Segment_2", "S_aRIB2hIPx0fAT9zz"), UNKNOWN),
    (("Segment_3", "HO_1"), NOT_BONE),
])
def test_label_kind_from_names_ids_and_terminology(description, kind):
    assert label_kind(*description) == kind


def test_choice_keeps_bones_alone_when_any_is_named():
    kinds = {"femur_right": BONE, "hip_right": BONE, "liver": UNKNOWN, "gluteus": NOT_BONE}
    choice = choose_native_bone(kinds)
    assert choice.used == ["femur_right", "hip_right"] and choice.named_as_bone
    assert sorted(choice.left_out) == ["gluteus", "liver"]
    # nothing named as bone: the user's own segments are used, named non-bone left out
    choice = choose_native_bone({"Segment_1": UNKNOWN, "Segment_2": UNKNOWN, "iliopsoas muscle": NOT_BONE})
    assert choice.used == ["Segment_1", "Segment_2"] and not choice.named_as_bone
    assert choice.left_out == ["iliopsoas muscle"]
    warnings = bonelabels.choice_warnings(choice, {k: k for k in kinds} | {k: k for k in choice.used + choice.left_out},
                                          "bones")
    assert len(warnings) == 2 and "1 of the 3 segments" in warnings[0] and "No segment of 'bones'" in warnings[1]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_label_names_read_from_a_nifti_header_extension(tmp_path, suffix):
    geometry = VolumeGeometry.from_spacing_origin_directions((4, 5, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    labels = np.arange(120, dtype=np.uint8).reshape(4, 5, 6) % 4
    names = {1: "femur_right", 2: "gluteus_maximus_right", 3: "name with <angle> & ampersand"}
    path = tmp_path / f"labels{suffix}"
    write_named_label_map(path, labels, geometry, names)
    assert nifti_label_names(path) == names
    from HOSciaticModuleLib.imageio import read_volume

    np.testing.assert_array_equal(read_volume(path).array, labels)  # the voxels are where the header says
    write_volume(tmp_path / f"plain{suffix}", labels, geometry)
    assert nifti_label_names(tmp_path / f"plain{suffix}") == {}
    (tmp_path / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    assert nifti_label_names(tmp_path / "broken.nii.gz") == {}
    assert nifti_label_names(tmp_path / "labels.nrrd") == {}


# ---------------------------------------------------------------------------------------
# A whole-body segmentation with the HO inside a muscle segment
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(**SMALL)


def muscle_around_islands(phantom, margin_voxels: int = 5) -> np.ndarray:
    """A "muscle" holding every island (and the nerve near it), never the native bone,
    as a whole-body segmentation's muscle segments are drawn."""
    muscle = ndimage.binary_dilation(phantom.ho_labels > 0, iterations=margin_voxels)
    return muscle & ~phantom.native_bone_mask


def whole_body_segmentation(scene, phantom, shared_layer: bool):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    bladder = np.zeros_like(phantom.native_bone_mask)
    bladder[:4, :6, :6] = True
    scene_io.replace_segments(node, {"femur_right": phantom.native_bone_mask,
                                     "gluteus_maximus_right": muscle_around_islands(phantom),
                                     "urinary_bladder": bladder}, phantom.geometry, scene_io.BONE_COLOR)
    segmentation = node.GetSegmentation()
    if shared_layer:  # as read from one multi-label file
        segmentation.CollapseBinaryLabelmaps(False)
    else:
        for segment_id in scene_io.segment_ids(node):
            segmentation.SeparateSegmentLabelmap(segment_id)
    assert segmentation.GetNumberOfLayers() == (1 if shared_layer else 3)
    return node


@pytest.mark.parametrize("shared_layer", [False, True])
def test_ho_inside_a_muscle_segment_is_found(slicer_scene, phantom, shared_layer, monkeypatch):
    expected = segment_ossifications(phantom.image, phantom.geometry, native_bone_mask=phantom.native_bone_mask)
    assert len(expected.islands) == len(phantom.islands)
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    given = {}

    def segment_and_keep_inputs(ct_hu, geometry, **options):
        given.update(options, ct_hu=np.array(ct_hu), geometry=geometry)
        return segment_ossifications(ct_hu, geometry, **options)

    monkeypatch.setattr(ossification, "segment_ossifications", segment_and_keep_inputs)
    oss = analysis.segment_ossifications(volume, native_bone_segmentation_node=whole_body_segmentation(
        slicer_scene, phantom, shared_layer))
    # The HO step was given the CT and the bones alone (not the muscle), voxel for voxel.
    np.testing.assert_array_equal(given["ct_hu"], phantom.image)
    np.testing.assert_allclose(given["geometry"].ijk_to_ras, phantom.geometry.ijk_to_ras, atol=1e-9)
    np.testing.assert_array_equal(given["native_bone_mask"], phantom.native_bone_mask)
    # The same islands, to the voxel, as with the bones alone.
    assert [i.volume_ml for i in oss.result.islands] == pytest.approx([i.volume_ml for i in expected.islands], abs=1e-9)
    for island, truth in zip(sorted(oss.result.islands, key=lambda i: i.volume_ml),
                             sorted(phantom.islands, key=lambda t: t["volume_ml"])):
        assert island.volume_ml == pytest.approx(truth["volume_ml"], rel=0.15)
    left_out = [w for w in oss.result.warnings if "not taken as native bone" in w]
    assert len(left_out) == 1 and "2 of the 3 segments" in left_out[0] and "gluteus_maximus_right" in left_out[0]


def test_bones_whose_made_up_ids_spell_a_word_are_still_bones(slicer_scene, phantom):
    """Slicer's random segment IDs spelt "ho" in a femur's ID about once in 1 400
    segments: the femur was left out as "not bone" and a native bone reported as HO."""
    import slicer

    # Painted in Slicer: each segment added without an ID, as the Segment Editor adds them.
    slicer.vtkSegmentation.GetSegmentIDRandomSequenceInstance().SetSeed(493)
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Painted")
    for name, mask in (("femur_right", phantom.native_bone_mask),
                       ("gluteus_maximus_right", muscle_around_islands(phantom))):
        segment_id = node.GetSegmentation().AddEmptySegment("", name)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            scene_io.oriented_image_from_mask(mask, phantom.geometry), node, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    femur = scene_io.segment_ids(node)[0]
    assert "ho" in re.findall("[a-z]+", femur.lower()), f"the seed no longer gives an ID spelling 'ho' ({femur})"
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    oss = HOSciaticAnalysis(slicer_scene).segment_ossifications(volume, native_bone_segmentation_node=node)
    assert len(oss.result.islands) == len(phantom.islands)
    left_out = [w for w in oss.result.warnings if "not taken as native bone" in w]
    assert len(left_out) == 1 and "1 of the 2 segments" in left_out[0] and "femur_right" not in left_out[0]


def test_segments_made_by_the_steps_get_ids_from_their_names(slicer_scene, phantom):
    """Not Slicer's random ones: the same run writes the same segmentation file."""
    import slicer

    ids = []
    for seed in (493, 6955):
        slicer.vtkSegmentation.GetSegmentIDRandomSequenceInstance().SetSeed(seed)
        node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        ids.append(scene_io.replace_segments(node, {"HO 1": phantom.ho_labels == 1, "femur_right": phantom.native_bone_mask,
                                                    "HO-1": phantom.ho_labels == 2}, phantom.geometry, (1, 0, 0)))
    assert ids[0] == ids[1] == ["HO_1", "femur_right", "HO_1_1"]


def test_every_segment_as_bone_would_hide_the_ho(phantom):
    """The case the choice guards against: the muscle taken as bone hides the HO in it."""
    hidden = segment_ossifications(phantom.image, phantom.geometry,
                                   native_bone_mask=phantom.native_bone_mask | muscle_around_islands(phantom))
    assert len(hidden.islands) == 0


def test_segmentation_without_any_bone_is_refused(slicer_scene, phantom):
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "muscles")
    scene_io.replace_segments(node, {"gluteus maximus muscle": muscle_around_islands(phantom)}, phantom.geometry,
                              scene_io.BONE_COLOR)
    count = slicer_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="bone by its name"):
        analysis.segment_ossifications(volume, native_bone_segmentation_node=node)
    assert slicer_scene.GetNumberOfNodes() == count


def test_segments_under_a_transform_are_read_where_they_lie(slicer_scene, phantom):
    """The segmentation's parent transform is honoured, read per segment or as a union of
    segments sharing a layer: moved by one voxel along the grid, the mask moves too."""
    import vtk

    node = whole_body_segmentation(slicer_scene, phantom, shared_layer=True)
    step = phantom.geometry.ijk_to_ras[:3, 0]  # one voxel along i
    transform = slicer_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, float(step[axis]))
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    femur = scene_io.segment_id_by_name(node, "femur_right")
    expected = np.zeros_like(phantom.native_bone_mask)
    expected[:, :, 1:] = phantom.native_bone_mask[:, :, :-1]
    np.testing.assert_array_equal(scene_io.segments_union_on_grid(node, [femur], phantom.geometry), expected)
    np.testing.assert_array_equal(scene_io.segment_mask_on_grid(node, femur, phantom.geometry), expected)


def test_bones_segmented_on_a_coarser_grid_keep_their_labels(slicer_scene, phantom):
    """A bones' segmentation made on its own grid (TotalSegmentator works at 1.5 mm) is
    read onto the CT's grid voxel by voxel from the nearest of its own voxels, each bone
    keeping its number; one layer holding both, as read from a multi-label file."""
    coarse = phantom.geometry.strided((3, 3, 3))
    femur = phantom.native_bone_mask[::3, ::3, ::3] & (np.arange(coarse.shape_kji[2]) * 3 * 1.2 > 60.0)
    hip = phantom.native_bone_mask[::3, ::3, ::3] & ~femur
    assert femur.any() and hip.any()
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "coarse bones")
    ids = scene_io.replace_segments(node, {"hip_right": hip, "femur_right": femur}, coarse, scene_io.BONE_COLOR)
    node.GetSegmentation().CollapseBinaryLabelmaps(False)
    labels = scene_io.segments_labels_on_grid(node, ids[::-1], phantom.geometry)  # femur first: label 1
    # Each fine voxel's centre lies a third or two thirds of a coarse voxel from the
    # nearest coarse centre: no ties to round.
    nearest = np.rint(np.argwhere(np.ones(phantom.geometry.shape_kji, bool)) / 3.0).astype(int)
    inside = np.all(nearest < coarse.shape_kji, axis=1)
    expected = np.zeros(phantom.geometry.shape_kji, np.uint8).ravel()
    coarse_labels = np.where(femur, 1, np.where(hip, 2, 0)).astype(np.uint8)
    expected[inside] = coarse_labels[tuple(nearest[inside].T)]
    np.testing.assert_array_equal(labels, expected.reshape(phantom.geometry.shape_kji))
    np.testing.assert_array_equal(scene_io.segments_union_on_grid(node, ids, phantom.geometry), labels > 0)


# ---------------------------------------------------------------------------------------
# Each island named after the given bone it lies on
# ---------------------------------------------------------------------------------------
def _distance_to_axis(points, axis):
    """Distance (mm) from RAS points to a capsule's axis (two RAS points)."""
    start, stop = np.asarray(axis, float)
    along = np.clip((points - start) @ (stop - start) / np.sum((stop - start) ** 2), 0.0, 1.0)
    return np.linalg.norm(points - (start + along[..., None] * (stop - start)), axis=-1)


def test_each_island_is_named_after_the_given_bone_it_lies_on(slicer_scene):
    # The phantom's femur and ischium given as two segments. By construction (gaps from
    # the phantom's analytic shapes): the fused island lies on the femur; a bar runs from
    # the femur behind the nerve to the ischium (Brooker IV), fused to both; an island
    # 5 mm medial to the ischium lies 80 mm from the femur; the free island lies about
    # 24 mm from the femur and 37 mm from the ischium; an island behind the nerve lies 47 mm
    # from the ischium and 61 mm from the femur, beyond the 40 mm a bone names an island.
    import dataclasses

    from HOSciaticModuleLib.phantom import IslandSpec, PhantomSpec
    from HOSciaticModuleLib.pipeline import NATIVE_BONE_TAG

    base = PhantomSpec()
    bar = IslandSpec("bar", "bar", True, path=((37.0, 15.0, 10.0), (28.0, -19.0, 15.0), (-8.0, -19.0, 30.0),
                                               (-28.0, 5.0, 40.0)), radius_mm=5.0)
    medial = IslandSpec("medial", "ellipsoid", True, center_offset=(-51.0, 5.0, 20.0), semi_axes=(5.0, 5.0, 5.0))
    far = IslandSpec("far", "ellipsoid", True, center_offset=(0.0, -52.0, 60.0), semi_axes=(4.0, 4.0, 4.0))
    spec = dataclasses.replace(base, islands=(base.islands[1], base.islands[2], bar, medial, far))
    phantom = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 2.0))
    centre = np.asarray(spec.center_ras)
    points = phantom.geometry.voxel_ras_grid() - centre
    femur = phantom.native_bone_mask & (_distance_to_axis(points, spec.femur_axis)
                                        < _distance_to_axis(points, spec.ischium_axis))
    bones = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    scene_io.replace_segments(bones, {"femur_right": femur, "hip_right": phantom.native_bone_mask & ~femur},
                              phantom.geometry, scene_io.BONE_COLOR)
    bones.GetSegmentation().CollapseBinaryLabelmaps(False)  # one layer, as read from a multi-label file
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    analysis = HOSciaticAnalysis(slicer_scene)
    oss = analysis.segment_ossifications(volume, native_bone_segmentation_node=bones)
    named = {}
    for truth in phantom.islands:
        overlap = np.bincount(oss.result.labelmap[phantom.ho_labels == truth["label"]],
                              minlength=len(oss.result.islands) + 1)
        assert overlap[1:].max() >= 0.5 * np.count_nonzero(phantom.ho_labels == truth["label"]), truth["name"]
        named[truth["name"]] = oss.result.islands[int(np.argmax(overlap[1:]))].native_bone
    assert named == {"free": "femur_right", "fused": "femur_right", "bar": "femur_right, hip_right",
                     "medial": "hip_right", "far": ""}
    table = oss.islands_table_node.GetTable()
    column = table.GetColumnByName("Native bone")
    assert sorted(column.GetValue(row) for row in range(table.GetNumberOfRows())) == sorted(named.values())
    # Kept with each segment: measured again once the bones' segmentation is gone.
    slicer_scene.RemoveNode(bones)
    reread, _, _ = HOSciaticAnalysis(slicer_scene).analysis_from_scene(oss.segmentation_node)
    assert sorted(i.native_bone for i in reread.result.islands) == sorted(named.values())
    segment = oss.segmentation_node.GetSegmentation().GetNthSegment(0)
    assert scene_io.segment_tag(segment, NATIVE_BONE_TAG) is not None
