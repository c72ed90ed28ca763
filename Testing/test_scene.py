"""The analysis on a real MRML scene: outputs, re-runs, failures and the .mrb round trip."""

import re

import numpy as np
import pytest
from scipy import ndimage

from HOSciaticModuleLib import scene as scene_io
from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.mrml_app import create_headless_slicer
from HOSciaticModuleLib.phantom import IslandSpec, PhantomSpec, generate_phantom
from HOSciaticModuleLib.pipeline import FUSED_TAG, HOSciaticAnalysis, contact_patch_name, ho_distance_model_name

OUTPUT_CLASSES = ("vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLMarkupsCurveNode", "vtkMRMLPlotChartNode",
                  "vtkMRMLPlotSeriesNode", "vtkMRMLModelNode")


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(spacing_ijk=(1.0, 1.0, 2.0))


def _node_counts(scene):
    return {name: scene.GetNumberOfNodesByClass(name) for name in OUTPUT_CLASSES}


def _run_chain(scene, phantom):
    analysis = HOSciaticAnalysis(scene)
    volume = scene_io.volume_node_from_array(scene, phantom.image, phantom.geometry, "CT")
    seeds = scene_io.points_node_from_array(scene, phantom.seeds_ras([5.0, 70.0, phantom.centreline_s_mm[-1] - 5]),
                                            "seeds")
    oss = analysis.segment_ossifications(volume)
    traced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    return analysis, volume, seeds, oss, traced, contact


def _analysis_saved_and_reloaded(scene, folder):
    """The scene written to a bundle and read into another scene: the analysis found
    there (HO outputs, nerves, contacts), as an export of the reloaded scene sees it.
    That scene already holds a segmentation and a volume of the user's, whose IDs the
    bundle's nodes had (an analysis whose outputs named their segmentation by its ID was
    refused there as another case's)."""
    from HOSciaticModuleLib import export

    bundle = folder / "scene.mrb"
    export.write_scene_bundle(scene, bundle)
    fresh = create_headless_slicer(expose_as_slicer_globals=False).scene
    fresh.AddNewNodeByClass("vtkMRMLSegmentationNode", "bones")
    fresh.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "other series")
    assert fresh.ReadFromMRB(str(bundle))
    return HOSciaticAnalysis(fresh).analysis_from_scene(fresh.GetFirstNodeByName("HOSciatic segmentation"))


def test_outputs_are_native_nodes(slicer_scene, phantom):
    _, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    segmentation = oss.segmentation_node
    names = [segmentation.GetSegmentation().GetSegment(sid).GetName() for sid in scene_io.segment_ids(segmentation)]
    assert names.count("Sciatic nerve right") == 1
    assert sorted(n for n in names if n.startswith("HO ")) == [f"HO {k}" for k in range(1, len(phantom.islands) + 1)]
    assert traced.centreline_node.GetName() == "Sciatic nerve right centreline"
    for array in ("area_mm2", "diameter_mm", "min_diameter_mm", "max_diameter_mm", "encasement_deg", "distance_to_ho_mm"):
        values = scene_io.curve_measurement(traced.centreline_node, array)
        assert values is not None and len(values) == traced.centreline_node.GetNumberOfControlPoints()
    encasement = scene_io.curve_measurement(traced.centreline_node, "encasement_deg")
    assert 250 <= np.nanmax(encasement) <= 330
    assert contact.contact_table_node.GetName() == "HO–nerve contact"
    assert contact.contact_table_node.GetNumberOfRows() == 1 + len(phantom.islands)
    # The nerve's own figures are on its row of all HO (the panel shows them there), not
    # on an island's.
    columns = scene_io.table_columns(contact.contact_table_node)
    assert columns["Island"][0] == "all HO"
    assert columns["Thickening ratio"][0] == round(contact.contact.thickening_ratio, 3)
    assert columns["Deflection"][0] == round(contact.contact.deflection_mm, 2)
    assert all(np.isnan(columns["Thickening ratio"][1:])) and all(np.isnan(columns["Area vs other side"]))
    assert contact.chart_node.GetNumberOfPlotSeriesNodes() == 3  # HO, diameter, bone outside the HO segments
    for n in range(3):
        series = contact.chart_node.GetNthPlotSeriesNode(n)
        assert contact.stations_table_node.GetTable().GetColumnByName(series.GetYColumnName()) is not None
    assert contact.contact_patch_model_node.GetPolyData().GetNumberOfPoints() > 0
    assert contact.ho_distance_model_node.GetPolyData().GetPointData().GetArray("distance_to_nerve_mm") is not None


def test_rerun_replaces_outputs_and_failure_changes_nothing(slicer_scene, phantom):
    analysis, volume, seeds, oss, traced, _ = _run_chain(slicer_scene, phantom)
    before = _node_counts(slicer_scene)
    analysis.segment_ossifications(volume, segmentation_node=oss.segmentation_node, islands_table_node=oss.islands_table_node)
    again = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)
    analysis.compute_contact(oss.segmentation_node, again.centreline_node, side="right")
    assert _node_counts(slicer_scene) == before
    segments_before = scene_io.segment_ids(oss.segmentation_node)
    one_seed = scene_io.points_node_from_array(slicer_scene, phantom.seeds_ras([40.0]), "one seed")
    nodes_before = slicer_scene.GetNumberOfNodes()
    with pytest.raises(InputError):
        analysis.trace_nerve(volume, one_seed, side="right", segmentation_node=oss.segmentation_node)
    assert scene_io.segment_ids(oss.segmentation_node) == segments_before
    assert slicer_scene.GetNumberOfNodes() == nodes_before


def _linear_transform(scene, matrix: np.ndarray):
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(matrix[r, c]))
    node.SetMatrixTransformToParent(vtk_matrix)
    return node


def test_chain_under_a_registration_transform(slicer_scene, phantom):
    """The CT and the outputs under one linear transform (a registered study): every
    figure is that of the untransformed run, and segments, curve and models lie in the
    world where the transformed CT shows them."""
    from scipy.spatial.transform import Rotation

    _, _, _, plain_oss, plain_traced, plain_contact = _run_chain(create_headless_slicer(
        expose_as_slicer_globals=False).scene, phantom)
    to_world = np.eye(4)
    to_world[:3, :3] = Rotation.from_euler("zx", [25.0, -10.0], degrees=True).as_matrix()
    to_world[:3, 3] = (12.3, -40.0, 7.5)
    transform = _linear_transform(slicer_scene, to_world)
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    segmentation = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "HOSciatic segmentation")
    for node in (volume, segmentation):
        node.SetAndObserveTransformNodeID(transform.GetID())
    seeds_local = phantom.seeds_ras([5.0, 70.0, phantom.centreline_s_mm[-1] - 5])
    seeds = scene_io.points_node_from_array(slicer_scene, seeds_local @ to_world[:3, :3].T + to_world[:3, 3], "seeds")
    oss = analysis.segment_ossifications(volume, segmentation_node=segmentation)
    traced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=segmentation)
    # The models exist already, under the same transform, as after a first run.
    for name in (contact_patch_name("right"), ho_distance_model_name("right")):
        slicer_scene.AddNewNodeByClass("vtkMRMLModelNode", name).SetAndObserveTransformNodeID(transform.GetID())
    contact = analysis.compute_contact(segmentation, traced.centreline_node, side="right")

    assert oss.segmentation_node is segmentation
    assert [i.volume_ml for i in oss.result.islands] == pytest.approx([i.volume_ml for i in plain_oss.result.islands],
                                                                      rel=1e-9)
    world_geometry = scene_io.volume_geometry(volume)
    masks = {}
    for name in ("HO 1", "Sciatic nerve right"):
        expected = scene_io.segment_mask_on_grid(plain_oss.segmentation_node, scene_io.segment_id_by_name(
            plain_oss.segmentation_node, name), phantom.geometry)
        found = scene_io.segment_mask_on_grid(segmentation, scene_io.segment_id_by_name(segmentation, name),
                                              world_geometry)
        masks[name] = expected, found
    # The HO step works on the voxels alone: the same voxels, to the last one.
    assert masks["HO 1"][0].any() and np.array_equal(*masks["HO 1"])
    # The nerve's cross-sections are sampled by rays whose first direction follows the
    # world's axes, so turned by 25 degrees they meet the boundary at other points:
    # the same nerve within a voxel's partial volume (Dice >= 0.97).
    expected, found = masks["Sciatic nerve right"]
    assert 2 * np.count_nonzero(expected & found) / (expected.sum() + found.sum()) >= 0.97
    assert traced.trace.length_mm == pytest.approx(plain_traced.trace.length_mm, abs=1.0)
    # A boundary moved by part of a voxel turns the arc in contact by a few degrees.
    assert contact.contact.max_encasement_deg == pytest.approx(plain_contact.contact.max_encasement_deg, abs=8.0)
    assert contact.contact.contact_length_mm == pytest.approx(plain_contact.contact.contact_length_mm, abs=2.0)
    # The curve is where the nerve is in the world: its points are the untransformed
    # run's, moved by the transform.
    np.testing.assert_allclose(scene_io.control_points_world(traced.centreline_node),
                               scene_io.control_points_world(plain_traced.centreline_node) @ to_world[:3, :3].T
                               + to_world[:3, 3], atol=0.5)
    # The models are where their meshes are in the world: the HO surface is the same
    # mesh moved by the transform; the contact patch lies on the same stretch of nerve.
    world = {name: _model_points_in_world(node) for name, node in (
        ("ho", contact.ho_distance_model_node), ("patch", contact.contact_patch_model_node))}
    plain = {name: scene_io._numpy_support().vtk_to_numpy(node.GetPolyData().GetPoints().GetData()) @ to_world[:3, :3].T
             + to_world[:3, 3] for name, node in (("ho", plain_contact.ho_distance_model_node),
                                                  ("patch", plain_contact.contact_patch_model_node))}
    assert contact.ho_distance_model_node.GetParentTransformNode() is transform
    np.testing.assert_allclose(world["ho"], plain["ho"], atol=1e-3)
    assert len(world["patch"]) and len(plain["patch"])
    assert np.linalg.norm(world["patch"].mean(axis=0) - plain["patch"].mean(axis=0)) < 2.0  # a station or two of a 30 mm patch


def test_outputs_follow_the_cts_registration_when_it_is_refined(slicer_scene, phantom):
    # The outputs the steps make lie under the CT's transform: refining the registration
    # moves them with the CT. Made outside it, they stayed where the CT had been, and a
    # recompute read the islands' HU from the moved CT (mean HU 649 -> 200).
    import vtk

    to_world = np.eye(4)
    to_world[:3, 3] = (10.0, 0.0, 0.0)
    transform = _linear_transform(slicer_scene, to_world)
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    seeds_local = phantom.seeds_ras([5.0, 70.0, phantom.centreline_s_mm[-1] - 5])
    seeds = scene_io.points_node_from_array(slicer_scene, seeds_local + to_world[:3, 3], "seeds")
    oss = analysis.segment_ossifications(volume)
    traced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)
    before = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    for node in (oss.segmentation_node, traced.centreline_node, before.contact_patch_model_node,
                 before.ho_distance_model_node):
        assert node.GetParentTransformNode() is transform, node.GetName()
    refined = vtk.vtkMatrix4x4()
    refined.SetElement(0, 3, 14.0)
    refined.SetElement(1, 3, -3.0)
    transform.SetMatrixTransformToParent(refined)
    after = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    assert [i.mean_hu for i in after.islands] == pytest.approx([i.mean_hu for i in before.islands], rel=1e-6)
    # The same figures, to round-off (the curve's points pass through another matrix).
    assert after.contact.max_encasement_deg == pytest.approx(before.contact.max_encasement_deg, abs=1e-4)


def _model_points_in_world(model_node) -> np.ndarray:
    import vtk

    to_world = vtk.vtkGeneralTransform()
    model_node.GetParentTransformNode().GetTransformToWorld(to_world)
    hardened = vtk.vtkTransformPolyDataFilter()
    hardened.SetTransform(to_world)
    hardened.SetInputData(model_node.GetPolyData())
    hardened.Update()
    return scene_io._numpy_support().vtk_to_numpy(hardened.GetOutput().GetPoints().GetData())


def test_outputs_under_a_non_linear_transform_are_refused_before_any_change(slicer_scene, phantom):
    analysis, volume, seeds, oss, traced, contact = _run_chain(slicer_scene, phantom)
    bent = slicer_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "bent")
    contact.contact_patch_model_node.SetAndObserveTransformNodeID(bent.GetID())
    points_before = contact.contact_patch_model_node.GetPolyData().GetNumberOfPoints()
    # As text: an empty cell is NaN, which equals nothing, itself included.
    table_before = repr(scene_io.table_columns(contact.contact_table_node))
    with pytest.raises(InputError, match="non-linear transform"):
        # A wider tolerance would change the table and the patch.
        analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right", tolerance_mm=3.0)
    assert contact.contact_patch_model_node.GetPolyData().GetNumberOfPoints() == points_before
    assert repr(scene_io.table_columns(contact.contact_table_node)) == table_before
    # The segmentation the HO and nerve steps write into, likewise, before any work.
    contact.contact_patch_model_node.SetAndObserveTransformNodeID(None)
    oss.segmentation_node.SetAndObserveTransformNodeID(bent.GetID())
    segments_before = scene_io.segment_ids(oss.segmentation_node)
    reference_before = oss.segmentation_node.GetNodeReferenceID(
        oss.segmentation_node.GetReferenceImageGeometryReferenceRole())
    for step in (lambda: analysis.segment_ossifications(volume, segmentation_node=oss.segmentation_node),
                 lambda: analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)):
        with pytest.raises(InputError, match="non-linear transform"):
            step()
        assert scene_io.segment_ids(oss.segmentation_node) == segments_before
    assert oss.segmentation_node.GetNodeReferenceID(
        oss.segmentation_node.GetReferenceImageGeometryReferenceRole()) == reference_before


def test_scene_bundle_round_trip(slicer_scene, phantom, tmp_path):
    _, _, _, oss, traced, _ = _run_chain(slicer_scene, phantom)
    assert not any("contrast-enhanced" in w for w in traced.trace.warnings)  # a plain CT
    from HOSciaticModuleLib.export import write_scene_bundle

    bundle = tmp_path / "scene.mrb"
    write_scene_bundle(slicer_scene, bundle)
    # The results were never saved to files of their own: Slicer's Save dialog still
    # offers them after the bundle is written (and their file names are as before).
    for node in (oss.segmentation_node, traced.centreline_node):
        assert node.GetModifiedSinceRead()
        assert not node.GetStorageNode().GetFileName()
    fresh = create_headless_slicer(expose_as_slicer_globals=False).scene
    assert fresh.ReadFromMRB(str(bundle))
    segmentation = fresh.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    loaded_names = sorted(segmentation.GetSegmentation().GetSegment(s).GetName() for s in scene_io.segment_ids(segmentation))
    original = oss.segmentation_node
    assert loaded_names == sorted(original.GetSegmentation().GetSegment(s).GetName() for s in scene_io.segment_ids(original))
    # Segments stored in their own extent come back on the same voxels.
    for name in ("HO 1", "Sciatic nerve right"):
        before = scene_io.segment_mask_on_grid(original, scene_io.segment_id_by_name(original, name), phantom.geometry)
        after = scene_io.segment_mask_on_grid(segmentation, scene_io.segment_id_by_name(segmentation, name),
                                              phantom.geometry)
        assert before.any() and np.array_equal(before, after)
    # Each HO segment keeps whether it was found fused, for re-measuring after edits.
    fused = {i.label: i.fused_to_native_bone for i in oss.result.islands}
    for label, expected in fused.items():
        segment = segmentation.GetSegmentation().GetSegment(scene_io.segment_id_by_name(segmentation, f"HO {label}"))
        assert scene_io.segment_tag(segment, FUSED_TAG) == ("yes" if expected else "no")
    table = fresh.GetFirstNodeByName("HO islands")
    assert table is not None and table.GetNumberOfRows() == len(phantom.islands)
    curve = fresh.GetFirstNodeByName("Sciatic nerve right centreline")
    assert curve is not None and scene_io.curve_measurement(curve, "encasement_deg") is not None
    # The panel's jump to the point nearest HO works on the reloaded scene too: on the
    # station touching the HO wrap.
    from scipy.spatial import cKDTree

    nearest = scene_io.station_nearest_to_ho(curve)
    ho_voxels = phantom.geometry.kji_to_ras_points(np.argwhere(phantom.ho_labels > 0))
    assert cKDTree(ho_voxels).query(nearest)[0] <= max(phantom.spec.nerve_semi_axes) + 1.0


def test_segmentation_with_surfaces_as_its_source_is_written_and_saved(slicer_scene, phantom, tmp_path):
    # A segmentation whose source representation is a closed surface (a model imported
    # into it) given to the steps: the label maps they wrote were derived data, shown as
    # no surface, measured as nothing (contact 'none') and lost in the bundle.
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    seeds = scene_io.points_node_from_array(slicer_scene, phantom.seeds_ras([5.0, phantom.centreline_s_mm[-1] - 5]),
                                            "seeds")
    given = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "HOSciatic segmentation")
    given.GetSegmentation().SetSourceRepresentationName("Closed surface")
    oss = analysis.segment_ossifications(volume, segmentation_node=given)
    traced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=given)
    contact = analysis.compute_contact(given, traced.centreline_node, side="right")
    assert given.GetSegmentation().GetSourceRepresentationName() == "Binary labelmap"
    assert contact.contact.encasement_class == "encasement"
    _, nerves, contacts = _analysis_saved_and_reloaded(slicer_scene, tmp_path)
    assert [side for side, _ in nerves] == ["right"]
    assert contacts and contacts[0][1].contact.encasement_class == "encasement"
    assert len(oss.result.islands) == len(phantom.islands)


@pytest.mark.parametrize("mr_first", [False, True])
def test_nerve_traced_on_an_mr_of_other_voxels_leaves_the_ho_segments_as_they_are(slicer_scene, phantom, mr_first,
                                                                                   tmp_path):
    # A coronal MR of 0.8 x 0.8 x 4 mm voxels: its nerve, written into the layer the CT's
    # HO segments shared, resampled them onto the MR's grid (a 6.0 mL island read 5.4 mL),
    # or, traced first, was resampled onto the CT's; saving the scene resampled one grid
    # onto the other again. Every segment now lies on the CT's grid, in either order.
    coronal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mr = generate_phantom(modality="mr", spacing_ijk=(0.8, 0.8, 4.0), directions_ras=coronal,
                          fov_mm=(120.0, 150.0, 120.0))
    analysis = HOSciaticAnalysis(slicer_scene)
    ct = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    mr_node = scene_io.volume_node_from_array(slicer_scene, mr.image.astype(np.float32), mr.geometry, "MR")
    seeds = scene_io.points_node_from_array(slicer_scene, phantom.seeds_ras([5.0, 70.0, phantom.centreline_s_mm[-1] - 5]),
                                            "seeds")
    if mr_first:
        traced = analysis.trace_nerve(mr_node, seeds, side="right", modality="mr")
        oss = analysis.segment_ossifications(ct, segmentation_node=traced.segmentation_node)
    else:
        oss = analysis.segment_ossifications(ct)
        traced = analysis.trace_nerve(mr_node, seeds, side="right", modality="mr", segmentation_node=oss.segmentation_node)
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    for island, found in zip(contact.islands, oss.result.islands):
        assert island.volume_ml == pytest.approx(found.volume_ml, rel=1e-9)
    assert contact.contact.encasement_class == "encasement"
    segmentation = oss.segmentation_node
    nerve = scene_io.segment_mask_on_grid(segmentation, scene_io.segment_id_by_name(
        segmentation, "Sciatic nerve right"), phantom.geometry)
    dice = 2 * np.count_nonzero(nerve & phantom.nerve_mask) / (nerve.sum() + phantom.nerve_mask.sum())
    assert dice >= 0.75, dice     # 0.79-0.80: traced across 4 mm slices
    # Traced first, the nerve kept voxels inside the HO the HO step found after it (27 on
    # a phantom): they are taken out, as a tracing after the HO step leaves them out, and
    # the HO step says the nerve was measured without that barrier.
    ho = np.zeros(phantom.geometry.shape_kji, bool)
    for segment_id in analysis.ho_segment_ids(segmentation):
        ho |= scene_io.segment_mask_on_grid(segmentation, segment_id, phantom.geometry)
    assert not (nerve & ho).any()
    assert any("traced before this HO segmentation" in w for w in oss.result.warnings) == mr_first
    # Saved and read again, nothing is resampled.
    _, _, contacts = _analysis_saved_and_reloaded(slicer_scene, tmp_path)
    reloaded = contacts[0][1]
    assert [i.volume_ml for i in reloaded.islands] == [i.volume_ml for i in contact.islands]
    assert reloaded.contact.max_encasement_deg == pytest.approx(contact.contact.max_encasement_deg)


def test_the_other_sides_nodes_are_refused_before_anything_changes(slicer_scene, phantom):
    # From the console: the right centreline given with side='left' was measured as the
    # left nerve, its arrays overwritten, or renamed as the left one by a trace.
    analysis, volume, seeds, oss, traced, _ = _run_chain(slicer_scene, phantom)
    right = traced.centreline_node
    points = right.GetNumberOfControlPoints()
    with pytest.raises(InputError, match="belongs to the right nerve"):
        analysis.compute_contact(oss.segmentation_node, right, side="left")
    with pytest.raises(InputError, match="belongs to the right nerve"):
        analysis.trace_nerve(volume, seeds, side="left", segmentation_node=oss.segmentation_node, centreline_node=right)
    assert right.GetName() == "Sciatic nerve right centreline" and right.GetNumberOfControlPoints() == points


def test_segments_written_on_another_grid_leave_the_others_as_they_are(slicer_scene):
    # Segments of one label-map layer share its grid: a segment written on other voxels
    # into that layer resampled every segment in it.
    from HOSciaticModuleLib.geometry import VolumeGeometry

    fine = VolumeGeometry.from_spacing_origin_directions((40, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    coarse = VolumeGeometry.from_spacing_origin_directions((10, 40, 40), (0.8, 0.8, 4.0), (0.3, 0.1, 0.0))
    ball = np.linalg.norm(fine.voxel_ras_grid() - 20.0, axis=-1) <= 7.3
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "layers")
    scene_io.replace_segments(node, {"ball": ball}, fine, scene_io.BONE_COLOR)
    slab = np.zeros(coarse.shape_kji, bool)
    slab[2:4, 5:30, 5:30] = True
    scene_io.replace_segments(node, {"slab": slab}, coarse, scene_io.NERVE_COLOR)
    kept = scene_io.segment_mask_on_grid(node, scene_io.segment_id_by_name(node, "ball"), fine)
    assert np.array_equal(kept, ball)
    assert np.array_equal(scene_io.segment_mask_on_grid(node, scene_io.segment_id_by_name(node, "slab"), coarse), slab)
    # A third segment on the first grid joins the first one's layer, not a layer of its own.
    scene_io.replace_segments(node, {"small ball": np.linalg.norm(fine.voxel_ras_grid() - 8.0, axis=-1) <= 3.0},
                              fine, scene_io.BONE_COLOR)
    assert node.GetSegmentation().GetNumberOfLayers() == 2
    assert np.array_equal(scene_io.segment_mask_on_grid(node, scene_io.segment_id_by_name(node, "ball"), fine), ball)


def test_volume_with_nan_voxels_or_without_voxel_values_is_refused(slicer_scene, phantom):
    # NaN left by a resampling in a float CT: the trace ran into them and read sections
    # under 1 mm across; an image without scalars ended in an AttributeError.
    import vtk

    analysis = HOSciaticAnalysis(slicer_scene)
    image = phantom.image.astype(np.float32)
    image[:5] = np.nan
    volume = scene_io.volume_node_from_array(slicer_scene, image, phantom.geometry, "CT")
    seeds = scene_io.points_node_from_array(slicer_scene, phantom.seeds_ras([5.0, 70.0]), "seeds")
    for step in (lambda: analysis.segment_ossifications(volume), lambda: analysis.trace_nerve(volume, seeds)):
        with pytest.raises(InputError, match="NaN or infinite voxel values"):
            step()
    empty = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no voxels")
    data = vtk.vtkImageData()
    data.SetDimensions(10, 10, 10)
    empty.SetAndObserveImageData(data)
    with pytest.raises(InputError, match="without voxel values"):
        analysis.segment_ossifications(empty)


def test_warnings_are_kept_on_the_nodes_and_survive_the_bundle(slicer_scene, tmp_path):
    thick = generate_phantom(spacing_ijk=(1.0, 1.0, 3.5))
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, thick.image, thick.geometry, "thick CT")
    oss = analysis.segment_ossifications(volume)
    recorded = analysis.recorded_warnings(oss.segmentation_node)
    assert recorded == oss.result.warnings and any("3.5 mm thick" in w for w in recorded)
    assert analysis.recorded_warnings(None, None) == []
    from HOSciaticModuleLib.export import write_scene_bundle

    bundle = tmp_path / "scene.mrb"
    write_scene_bundle(slicer_scene, bundle)
    fresh = create_headless_slicer(expose_as_slicer_globals=False).scene
    assert fresh.ReadFromMRB(str(bundle))
    reloaded = fresh.GetNodesByClassByName("vtkMRMLSegmentationNode", oss.segmentation_node.GetName())
    assert HOSciaticAnalysis(fresh).recorded_warnings(reloaded.GetItemAsObject(0)) == recorded


def test_bone_around_the_nerve_outside_the_ho_segments_is_flagged(slicer_scene, phantom):
    analysis, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    # Segmented, the HO shell is HO: the bone outside the segments (native femur and
    # ischium) does not wrap the nerve and nothing is flagged.
    bone = scene_io.curve_measurement(traced.centreline_node, "bone_encasement_deg")
    assert bone is not None and np.nanmax(bone) <= 90.0
    assert contact.contact.warnings == []
    # The shell left out of the segments (HO the segmentation missed, or a deleted
    # segment): the bone around the nerve is flagged where the shell is (s = 70-95 mm).
    segmentation = oss.segmentation_node.GetSegmentation()
    shell = max((sid for sid in scene_io.segment_ids(oss.segmentation_node)
                 if segmentation.GetSegment(sid).GetName().startswith("HO ")),
                key=lambda sid: contact.contact.islands[int(segmentation.GetSegment(sid).GetName()[3:]) - 1]
                .max_encasement_deg)
    shell_mask = scene_io.segment_mask_on_grid(oss.segmentation_node, shell, phantom.geometry)
    segmentation.RemoveSegment(shell)
    missed = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    bone = scene_io.curve_measurement(traced.centreline_node, "bone_encasement_deg")
    assert 250.0 <= np.nanmax(bone) <= 330.0
    (warning,) = missed.contact.warnings
    assert "no HO segment surrounds the nerve" in warning
    assert warning in analysis.recorded_warnings(oss.segmentation_node, traced.centreline_node)
    # The wrapping bone is shown as a segment to review, on the shell's inner side.
    review = scene_io.segment_id_by_name(oss.segmentation_node, "Bone around sciatic nerve right (review)")
    review_mask = scene_io.segment_mask_on_grid(oss.segmentation_node, review, phantom.geometry)
    near_shell = ndimage.binary_dilation(shell_mask, iterations=2)
    assert review_mask.sum() > 100 and np.count_nonzero(review_mask & near_shell) >= 0.95 * review_mask.sum()
    # Renamed as an HO segment, it is HO: the wrap is measured as HO encasement, the
    # warning and the review segment are gone.
    segmentation.GetSegment(review).SetName("HO 9")
    fixed = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    assert fixed.contact.max_encasement_deg >= 250.0 and fixed.contact.warnings == []
    assert scene_io.segment_id_by_name(oss.segmentation_node, "Bone around sciatic nerve right (review)") is None


def test_a_deleted_sleeve_is_flagged_with_no_native_bone_near_the_nerve(slicer_scene):
    # The check was turned off when the block around the nerve held neither air nor bone
    # of 1000 HU (a sleeve of HO reading 960 HU below the ischium): the sleeve's segment
    # deleted, the contact read 'none' with no warning, although the CT is a CT.
    from HOSciaticModuleLib.phantom import make_shell_spec

    phantom = generate_phantom(make_shell_spec(270.0, length_mm=30.0), spacing_ijk=(1.0, 1.0, 1.0),
                               fov_mm=(180.0, 180.0, 110.0))
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    ends = [8.0, 50.0, phantom.centreline_s_mm[-1] - 8.0]
    seeds = scene_io.points_node_from_array(slicer_scene, phantom.seeds_ras(ends), "seeds")
    oss = analysis.segment_ossifications(volume)
    traced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)
    (shell,) = analysis.ho_segment_ids(oss.segmentation_node)
    oss.segmentation_node.GetSegmentation().RemoveSegment(shell)
    missed = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    assert missed.contact.encasement_class == "none"
    assert 250.0 <= np.nanmax(missed.contact.bone_encasement_deg) <= 330.0
    assert any("no HO segment surrounds the nerve" in w for w in missed.contact.warnings)


def test_reloaded_scene_reports_each_warning_once(slicer_scene, phantom, tmp_path):
    from HOSciaticModuleLib import export

    analysis, _, _, oss, traced, _ = _run_chain(slicer_scene, phantom)
    # Leave the HO shell out of the segments: the contact step then warns.
    oss.segmentation_node.GetSegmentation().RemoveSegment(scene_io.segment_id_by_name(oss.segmentation_node, "HO 1"))
    analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    saved_oss, nerves, contacts = _analysis_saved_and_reloaded(slicer_scene, tmp_path)
    document = export.metrics_document({}, {}, saved_oss, nerves, contacts, saved_oss.result.warnings)
    assert sum("no HO segment surrounds the nerve" in w for w in document["warnings"]) == 1


def test_thick_fused_ho_around_the_nerve_is_never_silently_missed(slicer_scene):
    # A 24 mm thick sleeve of HO (about 90 mL) fused to the femur, around 300 deg of the
    # nerve: thicker than the 20 mm ball, so the HO step may keep it as native bone. The
    # wrap is then either HO in the segments or flagged as bone outside them.
    spec = PhantomSpec(islands=(IslandSpec("wrap", "shell", True, s_start_mm=60.0, s_stop_mm=100.0, sector_deg=300.0,
                                           gap_mm=0.0, thickness_mm=24.0),))
    phantom = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 2.0))
    assert phantom.islands[0]["volume_ml"] > 60.0
    _, _, _, _, traced, contact = _run_chain(slicer_scene, phantom)
    result = contact.contact
    bone = scene_io.curve_measurement(traced.centreline_node, "bone_encasement_deg")
    flagged = np.nanmax(bone) >= 250.0 and any("no HO segment surrounds the nerve" in w for w in result.warnings)
    assert result.max_encasement_deg >= 250.0 or flagged


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 2.0), (2.5, 2.5, 2.5)])
def test_blurred_edge_of_an_ho_segment_is_not_other_bone(slicer_scene, spacing):
    # A softer CT (point-spread sigma 1.2 mm): voxels just outside the HO segment's
    # half-maximum edge are still above the bone threshold. They belong to that HO and
    # must not be counted as bone outside the segments wrapping the nerve; on a grid of
    # 2.5 mm in every direction, too, where the voxels next to a segment lie beyond the
    # rim's 2 mm (they count as its edge all the same).
    phantom = generate_phantom(PhantomSpec(psf_sigma_mm=1.2), spacing_ijk=spacing)
    _, _, _, _, traced, contact = _run_chain(slicer_scene, phantom)
    bone = scene_io.curve_measurement(traced.centreline_node, "bone_encasement_deg")
    assert np.nanmax(bone) <= 90.0
    assert contact.contact.warnings == []


def test_island_figures_follow_edits_of_the_ho_segments(slicer_scene, phantom):
    from HOSciaticModuleLib import export

    analysis, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    found = {f"HO {i.label}": i for i in oss.result.islands}
    assert len(found) == 3 and {i.label for i in contact.islands} == {1, 2, 3}
    # Unedited segments measure as the HO step found them.
    for island in contact.islands:
        original = found[f"HO {island.label}"]
        assert island.volume_ml == pytest.approx(original.volume_ml, rel=1e-9)
        assert island.max_hu == pytest.approx(original.max_hu)
        assert (island.maturity, island.fused_to_native_bone) == (original.maturity, original.fused_to_native_bone)
        np.testing.assert_allclose(island.centroid_ras, original.centroid_ras, atol=1e-6)
    # The reader deletes HO 2 and paints a 10 x 10 x 5 voxel block as HO 7 (1.0 mL).
    segmentation = oss.segmentation_node.GetSegmentation()
    segmentation.RemoveSegment(scene_io.segment_id_by_name(oss.segmentation_node, "HO 2"))
    scene_io.replace_segments(oss.segmentation_node, {"HO 7": (np.ones((5, 10, 10), bool), (10, 10, 10))},
                              phantom.geometry, scene_io.BONE_COLOR)
    edited = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    table = edited.islands_table_node
    assert table is oss.islands_table_node
    assert [table.GetCellText(row, 1) for row in range(table.GetNumberOfRows())] == ["HO 1", "HO 3", "HO 7"]
    painted = next(i for i in edited.islands if i.label == 7)
    assert painted.volume_ml == pytest.approx(10 * 10 * 5 * phantom.geometry.voxel_volume_ml)
    assert painted.fused_to_native_bone is None  # a hand-made segment: not judged
    document = export.metrics_document({}, {}, oss, [("right", traced)], [("right", edited)], [])
    assert [i["segment"] for i in document["ossifications"]["islands"]] == ["HO 1", "HO 3", "HO 7"]
    assert document["ossifications"]["total_volume_ml"] == pytest.approx(
        found["HO 1"].volume_ml + found["HO 3"].volume_ml + painted.volume_ml, abs=1e-3)
    # Copies of HO 1 painted in layers of their own, under its name, are renamed HO 2 and
    # HO 4 (the lowest free numbers). The total counted their voxels again, and the
    # warning named the copies by the name they had, one copy's share lost under it.
    import slicer

    hand_copy = scene_io.segment_mask_on_grid(oss.segmentation_node,
                                              scene_io.segment_id_by_name(oss.segmentation_node, "HO 1"),
                                              phantom.geometry)
    for _ in range(2):
        segment_id = segmentation.AddEmptySegment("", "HO 1", [1.0, 0.0, 0.0])
        segmentation.SeparateSegmentLabelmap(segment_id)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            scene_io.oriented_image_from_mask(hand_copy, phantom.geometry), oss.segmentation_node, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    overlapped = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    (warning,) = [w for w in overlapped.contact.warnings if "overlap" in w]
    assert f"HO 2, HO 4 share {2 * found['HO 1'].volume_ml:.2f} mL" in warning
    document = export.metrics_document({}, {}, oss, [("right", traced)], [("right", overlapped)], [])
    assert document["ossifications"]["total_volume_ml"] == pytest.approx(
        found["HO 1"].volume_ml + found["HO 3"].volume_ml + painted.volume_ml, abs=1e-3)


def test_hand_named_ho_segments_get_numbers_of_their_own(slicer_scene, phantom):
    # Painted segments named 'HO 0' (read as background), a second 'HO 3' (merged with
    # the first), 'HO 09' (shown as 'HO 9' in one table and 'HO 09' in the other) and
    # 'HO 70000' (beyond a 16-bit label map: a traceback).
    import slicer

    analysis, _, _, oss, traced, _ = _run_chain(slicer_scene, phantom)
    segmentation = oss.segmentation_node.GetSegmentation()
    for number, name in enumerate(("HO 0", "HO 3", "HO 09", "HO 70000")):
        segment_id = segmentation.AddEmptySegment("", name, [1.0, 1.0, 0.0])
        block = np.zeros(phantom.image.shape, bool)
        block[2:4, 5 + 6 * number:9 + 6 * number, 5:9] = True
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            scene_io.oriented_image_from_mask(block, phantom.geometry), oss.segmentation_node, segment_id,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    edited = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    names = sorted(segmentation.GetSegment(sid).GetName() for sid in analysis.ho_segment_ids(oss.segmentation_node))
    assert names == ["HO 1", "HO 2", "HO 3", "HO 4", "HO 5", "HO 6", "HO 9"]
    table = edited.islands_table_node
    assert sorted(table.GetCellText(row, 1) for row in range(table.GetNumberOfRows())) == names
    assert sorted(edited.island_segment_names.values()) == names and len(edited.islands) == 7
    (renamed,) = [w for w in edited.contact.warnings if "renamed" in w]
    for old, new in (("HO 0", "HO 4"), ("HO 3", "HO 5"), ("HO 09", "HO 9"), ("HO 70000", "HO 6")):
        assert f"'{old}' is now '{new}'" in renamed


def test_export_of_a_reloaded_scene_matches_the_session(slicer_scene, phantom, tmp_path):
    from HOSciaticModuleLib import export

    _, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    session = export.metrics_document({}, {}, oss, [("right", traced)], [("right", contact)], oss.result.warnings)
    saved_oss, nerves, contacts = _analysis_saved_and_reloaded(slicer_scene, tmp_path)
    assert [side for side, _ in nerves] == ["right"] and [side for side, _ in contacts] == ["right"]
    document = export.metrics_document({}, {}, saved_oss, nerves, contacts, saved_oss.result.warnings)
    before, after = session["ossifications"], document["ossifications"]
    assert after["count"] == before["count"] and after["total_volume_ml"] == pytest.approx(before["total_volume_ml"])
    for mine, theirs in zip(after["islands"], before["islands"]):
        kept = ("segment", "maturity", "fused_to_native_bone", "doubts", "encasement_class")
        assert {k: mine[k] for k in kept} == {k: theirs[k] for k in kept}
    (nerve_now,), (nerve_then,) = document["nerves"], session["nerves"]
    assert nerve_now["length_mm"] == pytest.approx(nerve_then["length_mm"], abs=1.0)
    assert nerve_now["mean_diameter_mm"] == pytest.approx(nerve_then["mean_diameter_mm"], abs=0.2)
    assert nerve_now["max_encasement_deg"] == pytest.approx(nerve_then["max_encasement_deg"], abs=5.0)
    assert nerve_now["encasement_class"] == nerve_then["encasement_class"]
    assert sorted(document["warnings"]) == sorted(session["warnings"])
    export.publish(tmp_path / "export", lambda folder: export.write_results(
        folder, saved_oss.segmentation_node.GetScene(), saved_oss.segmentation_node, nerves, document,
        with_scene=False))
    assert {"metrics.json", "segmentation.seg.nrrd", "islands.csv", "nerve_right.mrk.json", "stations_right.csv"} <= {
        p.name for p in (tmp_path / "export").iterdir()}


def test_bone_a_few_millimetres_out_is_not_taken_for_wrapping(slicer_scene):
    # Bone outside the HO segments around the nerve at a 3.5 mm gap (as the concave
    # sciatic notch may be): with a 5 mm contact tolerance it is measured as bone
    # encasement, but only bone touching the nerve (within 2 mm) counts as wrapping it.
    spec = PhantomSpec(islands=(IslandSpec("wrap", "shell", True, s_start_mm=60.0, s_stop_mm=100.0,
                                           sector_deg=270.0, gap_mm=3.5),))
    phantom = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 2.0))
    analysis, _, _, oss, traced, _ = _run_chain(slicer_scene, phantom)
    oss.segmentation_node.GetSegmentation().RemoveSegment(scene_io.segment_id_by_name(oss.segmentation_node, "HO 1"))
    wide = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right", tolerance_mm=5.0)
    assert np.nanmax(wide.contact.bone_encasement_deg) >= 250.0
    assert wide.contact.warnings == [] and wide.contact.wrapping_bone_block is None


def test_bone_on_the_midline_is_shown_as_its_own_segment_and_not_as_ho(slicer_scene):
    """A coccyx-like bone on the body's midline is set apart from the HO segments into a
    segment to review; a later run without it removes that segment."""
    import dataclasses

    from HOSciaticModuleLib.ossification import MIDLINE_SEGMENT_NAME
    from HOSciaticModuleLib.phantom import BoneSpec, other_hip_bones

    spec = PhantomSpec()
    coccyx = BoneSpec("ellipsoid", center_offset=(-45.0, -40.0, 40.0), semi_axes=(12.0, 8.0, 15.0), cortex_mm=1.5)
    grid = dict(spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    with_coccyx = generate_phantom(dataclasses.replace(spec, extra_bones=other_hip_bones(spec) + (coccyx,)), **grid)
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, with_coccyx.image, with_coccyx.geometry, "CT")
    oss = analysis.segment_ossifications(volume)
    segmentation = oss.segmentation_node
    names = [segmentation.GetSegmentation().GetSegment(i).GetName() for i in scene_io.segment_ids(segmentation)]
    assert MIDLINE_SEGMENT_NAME in names and sum(n.startswith("HO ") for n in names) == len(with_coccyx.islands)
    segment_mask = scene_io.segment_mask_on_grid(
        segmentation, scene_io.segment_id_by_name(segmentation, MIDLINE_SEGMENT_NAME), with_coccyx.geometry)
    centre = np.asarray(spec.center_ras) + [-45.0, -40.0, 40.0]
    found = with_coccyx.geometry.kji_to_ras_points(np.argwhere(segment_mask).mean(axis=0)[None])[0]
    assert np.linalg.norm(found - centre) < 3.0

    without = generate_phantom(dataclasses.replace(spec, extra_bones=other_hip_bones(spec)), **grid)
    second = scene_io.volume_node_from_array(slicer_scene, without.image, without.geometry, "CT plain")
    slicer_scene.RemoveNode(volume)  # one CT per analysis: the first one goes
    analysis.segment_ossifications(second, segmentation_node=segmentation)
    names = [segmentation.GetSegmentation().GetSegment(i).GetName() for i in scene_io.segment_ids(segmentation)]
    assert MIDLINE_SEGMENT_NAME not in names


def test_contact_names_a_touching_segment_the_ho_step_doubted(slicer_scene, tmp_path):
    """On a contrast-enhanced CT an enhanced branch running along the nerve is found as an
    island without a cortex at the vessels' level: the HO step names it, tags its
    segment, and the contact step names it again, as it touches the nerve and counts in
    the contact figures. The HO sleeve touching the nerve is not named. The islands
    table's doubts column says the same after the recompute, and after the scene is
    saved and loaded again."""
    from scipy import ndimage

    from HOSciaticModuleLib import export
    from HOSciaticModuleLib.pipeline import DOUBT_TAG

    contrast = generate_phantom(PhantomSpec(contrast_artery_hu=320.0), spacing_ijk=(0.8, 0.8, 1.5))
    s_mm, points = contrast.centreline_s_mm, contrast.geometry.voxel_ras_grid()
    start, end = (contrast.centreline_ras[np.searchsorted(s_mm, s)] + [-7.0, 0.0, 0.0] for s in (25.0, 45.0))
    along = np.clip(((points - start) @ (end - start)) / np.sum((end - start) ** 2), 0.0, 1.0)
    branch = np.linalg.norm(points - (start + along[..., None] * (end - start)), axis=-1) <= 3.0
    branch &= ~contrast.nerve_mask & (contrast.ho_labels == 0)
    assert (ndimage.binary_dilation(branch) & contrast.nerve_mask).any()  # it touches the nerve
    image = contrast.image.copy()
    image[branch] = 320.0
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, image, contrast.geometry, "CT")
    seeds = scene_io.points_node_from_array(slicer_scene, contrast.seeds_ras([5.0, 70.0, s_mm[-1] - 5]), "seeds")
    oss = analysis.segment_ossifications(volume)
    centre = 0.5 * (start + end) + [-3.0, 0.0, 0.0]
    (label,) = [i.label for i in oss.result.islands if np.linalg.norm(np.asarray(i.centroid_ras) - centre) < 6.0]
    segment = oss.segmentation_node.GetSegmentation().GetSegment(
        scene_io.segment_id_by_name(oss.segmentation_node, f"HO {label}"))
    assert "contrast-filled vessels' level" in scene_io.segment_tag(segment, DOUBT_TAG)
    traced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)
    # The tracing says what enhanced vessels beside the nerve do to its calibre.
    assert any(w.startswith("The CT is contrast-enhanced (vessels up to") for w in traced.trace.warnings)
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    named = [w for w in contact.contact.warnings if "possibly not HO" in w]
    assert len(named) == 1 and named[0].startswith(f"HO {label} touches the nerve")
    touching = {i.label for i in contact.contact.islands if i.contact_length_mm > 0}
    assert label in touching and len(touching) == 2

    def doubts_by_segment(table_node):
        columns = scene_io.table_columns(table_node)
        return dict(zip(columns["Segment"], columns["Doubts"]))

    expected = {f"HO {i.label}": i.doubts for i in oss.result.islands}
    assert expected[f"HO {label}"] == "without a cortex at the contrast-filled vessels' level"
    sleeve = f"HO {(touching - {label}).pop()}"
    assert expected[sleeve] == ""
    assert doubts_by_segment(oss.islands_table_node) == expected
    # Drawn grey, apart from the credible islands.
    colours = {name: oss.segmentation_node.GetSegmentation().GetSegment(
        scene_io.segment_id_by_name(oss.segmentation_node, name)).GetColor() for name in expected}
    assert {name: colour == pytest.approx(scene_io.DOUBTED_COLOR) for name, colour in colours.items()} == {
        name: bool(doubts) for name, doubts in expected.items()}
    # Recomputed from the segments as they are now.
    assert doubts_by_segment(contact.islands_table_node) == expected
    saved_oss, _, contacts = _analysis_saved_and_reloaded(slicer_scene, tmp_path)
    document = export.metrics_document({}, {}, saved_oss, [], contacts, [])
    assert {i["segment"]: i["doubts"] for i in document["ossifications"]["islands"]} == expected
    saved = saved_oss.segmentation_node
    assert saved.GetSegmentation().GetSegment(scene_io.segment_id_by_name(saved, f"HO {label}")).GetColor() == \
        pytest.approx(scene_io.DOUBTED_COLOR)


def test_a_refused_or_cancelled_contact_run_leaves_the_scene_as_it_was(slicer_scene, phantom):
    # A hand-named 'HO 09' is renamed 'HO 9' by a run that stands, not by one refused
    # or cancelled before its outputs are written; a cancellation once they are written
    # comes too late, and the run ends as done.
    from HOSciaticModuleLib.errors import AnalysisCancelled

    analysis, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    scene_io.replace_segments(oss.segmentation_node, {"HO 09": (np.ones((2, 4, 4), bool), (2, 5, 5))},
                              phantom.geometry, scene_io.BONE_COLOR)
    segmentation = oss.segmentation_node.GetSegmentation()

    def state():
        names = sorted(segmentation.GetSegment(s).GetName() for s in scene_io.segment_ids(oss.segmentation_node))
        return names, slicer_scene.GetNumberOfNodes(), contact.contact_table_node.GetNumberOfRows()

    def cancelled_at(message_start):
        def progress(fraction, message):
            if message.startswith(message_start):
                raise AnalysisCancelled("Cancelled by the user.")
        return progress

    before = state()
    assert "HO 09" in before[0]
    curve = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "a curve on one spot")
    curve.SetControlPointPositionsWorld(_vtk_points(np.repeat(phantom.seeds_ras([70.0]), 2, axis=0)))
    added = slicer_scene.GetNumberOfNodes() - before[1]
    with pytest.raises(InputError, match="long .its points lie on one spot"):
        analysis.compute_contact(oss.segmentation_node, curve, side="right")
    assert state() == (before[0], before[1] + added, before[2])
    with pytest.raises(AnalysisCancelled):
        analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right",
                                 progress=cancelled_at("Writing contact outputs"))
    assert state() == (before[0], before[1] + added, before[2])
    late = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right",
                                    progress=cancelled_at("Contact:"))
    assert late.contact.max_encasement_deg == pytest.approx(contact.contact.max_encasement_deg)
    assert "HO 9" in state()[0] and "HO 09" not in state()[0]


def _vtk_points(points_ras):
    from vtkmodules.vtkCommonCore import vtkPoints

    points = vtkPoints()
    for point in points_ras:
        points.InsertNextPoint(*point)
    return points


def test_stations_off_an_edited_nerve_segment_are_left_out_and_named(slicer_scene, phantom):
    # The reader erases the lower half of the nerve segment and computes again: the
    # stations there have no section. They hold no contact, area or distance, a warning
    # names them, and the thickening ratio compares sections only (with them it read
    # 340 000: their areas of 0.0002 mm² made the reference); a curve nowhere on the
    # segment is refused.
    analysis, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    nerve_id = scene_io.segment_id_by_name(oss.segmentation_node, "Sciatic nerve right")
    nerve = scene_io.segment_mask_on_grid(oss.segmentation_node, nerve_id, phantom.geometry)
    slices = np.flatnonzero(nerve.any(axis=(1, 2)))
    half = (slices.min() + slices.max()) // 2
    nerve[:half] = False
    scene_io.replace_segments(oss.segmentation_node, {"Sciatic nerve right": nerve}, phantom.geometry,
                              scene_io.NERVE_COLOR)
    edited = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right").contact
    (warning,) = [w for w in edited.warnings if "outside the nerve segment" in w]
    off = ~np.isfinite(edited.area_mm2)
    # The stations in the erased slices, but for those within a slice of the cut.
    slice_of_station = phantom.geometry.ras_to_kji_points(edited.points_ras)[:, 0]
    erased = slice_of_station < half - 0.5
    near_cut = np.abs(slice_of_station - (half - 0.5)) <= 1.0
    assert np.array_equal(off[~near_cut], erased[~near_cut]) and 0.3 < off.mean() < 0.7
    assert f"{edited.s_mm[off].min():.0f}-{edited.s_mm[off].max():.0f} mm" in warning
    assert np.all(edited.encasement_deg[off] == 0.0) and np.all(np.isnan(edited.distance_to_ho_mm[off]))
    # The phantom's nerve is thickened where the HO touches it; the edit cuts the run short.
    assert contact.contact.thickening_ratio == pytest.approx(1.2, abs=0.1)
    assert 0.9 < edited.thickening_ratio < 1.4
    moved = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "a curve beside the nerve")
    moved.SetControlPointPositionsWorld(_vtk_points(scene_io.control_points_world(traced.centreline_node)
                                                    + [40.0, 0.0, 0.0]))
    with pytest.raises(InputError, match="does not run inside the nerve segment"):
        analysis.compute_contact(oss.segmentation_node, moved, side="right")


def test_export_reports_progress_per_node_and_a_cancelled_one_leaves_the_folder_as_it_was(slicer_scene, phantom,
                                                                                            tmp_path):
    from HOSciaticModuleLib import export
    from HOSciaticModuleLib.errors import AnalysisCancelled

    _, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    document = export.metrics_document({}, {}, oss, [("right", traced)], [("right", contact)], [])
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "notes.txt").write_text("the reader's own file")
    names_before = [slicer_scene.GetNthNode(n).GetStorageNode().GetFileName()
                    for n in range(slicer_scene.GetNumberOfNodes())
                    if slicer_scene.GetNthNode(n).IsA("vtkMRMLStorableNode") and slicer_scene.GetNthNode(n).GetStorageNode()]
    reports = []

    def cancelled_in_the_bundle(fraction, message):
        reports.append(fraction)
        if "scene bundle" in message and len(reports) > 3:
            raise AnalysisCancelled("Cancelled by the user.")

    with pytest.raises(AnalysisCancelled):
        export.publish(folder, lambda staging: export.write_results(
            staging, slicer_scene, oss.segmentation_node, [("right", traced)], document,
            progress=cancelled_in_the_bundle))
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert [slicer_scene.GetNthNode(n).GetStorageNode().GetFileName() for n in range(slicer_scene.GetNumberOfNodes())
            if slicer_scene.GetNthNode(n).IsA("vtkMRMLStorableNode")
            and slicer_scene.GetNthNode(n).GetStorageNode()][:len(names_before)] == names_before

    reports.clear()
    export.publish(folder, lambda staging: export.write_results(
        staging, slicer_scene, oss.segmentation_node, [("right", traced)], document,
        progress=lambda fraction, message: reports.append(fraction)))
    assert (folder / "scene.mrb").is_file() and (folder / "notes.txt").is_file()
    assert len(reports) >= 5 and reports == sorted(reports) and reports[-1] >= 0.9


def test_tracing_again_drops_the_contact_of_the_nerve_before(slicer_scene, phantom):
    # With HO 1 deleted, bone in no HO segment wraps the nerve: the contact warns and shows
    # it as a review segment. Traced again, the nerve's curve kept that warning (in the
    # status line and the saved scene) and the segment stayed, though no contact was measured.
    from HOSciaticModuleLib.pipeline import wrapping_bone_name

    analysis, volume, seeds, oss, traced, _ = _run_chain(slicer_scene, phantom)
    oss.segmentation_node.GetSegmentation().RemoveSegment(scene_io.segment_id_by_name(oss.segmentation_node, "HO 1"))
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    assert any("surrounds the nerve" in w for w in contact.contact.warnings)
    assert scene_io.segment_id_by_name(oss.segmentation_node, wrapping_bone_name("right")) is not None
    retraced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)
    warnings = analysis.recorded_warnings(oss.segmentation_node, retraced.centreline_node)
    assert not [w for w in warnings if "surrounds the nerve" in w]
    assert scene_io.segment_id_by_name(oss.segmentation_node, wrapping_bone_name("right")) is None


def test_a_deleted_chart_is_made_again_with_the_same_series(slicer_scene, phantom):
    analysis, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    series = slicer_scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode")
    slicer_scene.RemoveNode(contact.chart_node)
    again = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    assert slicer_scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == series  # none left over, none doubled
    assert again.chart_node.GetNumberOfPlotSeriesNodes() == series
    assert again.centreline_node is traced.centreline_node


def test_session_results_follow_the_steps_and_the_nodes(slicer_scene, phantom):
    # The panel's export once wrote the islands and contact of an earlier HO step, or the
    # contact of a nerve traced before, beside the new results; and a deleted curve's nerve.
    from HOSciaticModuleLib.session import SessionResults

    analysis, volume, seeds, oss, traced, contact = _run_chain(slicer_scene, phantom)
    session = SessionResults()
    session.segmented(oss)
    session.traced("right", traced)
    session.measured("right", contact)
    assert session.current(slicer_scene) == (oss, [("right", traced)], [("right", contact)], [])
    again = analysis.segment_ossifications(volume, min_island_ml=3.0)
    session.segmented(again)
    current, nerves, contacts, warnings = session.current(slicer_scene)
    assert current is again and nerves == [("right", traced)] and contacts == []
    (warning,) = warnings
    assert "right nerve's contact" in warning and "Press Compute" in warning
    session.measured("right", analysis.compute_contact(again.segmentation_node, traced.centreline_node, side="right"))
    assert len(session.current(slicer_scene)[2]) == 1
    retraced = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=again.segmentation_node)
    session.traced("right", retraced)
    assert session.current(slicer_scene)[2] == []
    slicer_scene.RemoveNode(retraced.centreline_node)
    assert session.current(slicer_scene)[1:] == ([], [], [])
    session.forget()
    assert session.current(slicer_scene) == (None, [], [], [])


def test_a_second_ct_in_the_scene_does_not_take_up_the_first_ones_analysis(slicer_scene, phantom):
    # Outputs are found by name: the HO step of a second CT went into the first one's
    # segmentation (its nerve and curve kept), and with a segmentation of its own the
    # second CT's tracing and contact took up the first one's curve, tables and models,
    # so the first case's figures were measured on the second one's nerve.
    analysis, volume, seeds, oss, traced, contact = _run_chain(slicer_scene, phantom)
    other = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT B")
    nodes = slicer_scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="holds the analysis of the CT 'CT'"):
        analysis.segment_ossifications(other)
    # Traced on the second CT, the nerve went into the first one's segmentation and curve.
    with pytest.raises(InputError, match="holds the analysis of the CT 'CT'.*the nerve traced on 'CT B'"):
        analysis.trace_nerve(other, seeds, side="right")
    own = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CT B segmentation")
    own.SetReferenceImageGeometryParameterFromVolumeNode(other)
    with pytest.raises(InputError, match="belongs to the analysis in the segmentation 'HOSciatic segmentation'"):
        analysis.segment_ossifications(other, segmentation_node=own)
    with pytest.raises(InputError, match="belongs to the analysis in the segmentation 'HOSciatic segmentation'"):
        analysis.trace_nerve(other, seeds, side="right", segmentation_node=own)
    assert slicer_scene.GetNumberOfNodes() == nodes + 1 and own.GetSegmentation().GetNumberOfSegments() == 0
    # The same CT analysed again once the first copy is gone: its outputs are taken up.
    slicer_scene.RemoveNode(own)
    slicer_scene.RemoveNode(volume)
    again = analysis.segment_ossifications(other)
    assert again.segmentation_node is oss.segmentation_node and again.islands_table_node is oss.islands_table_node
    retraced = analysis.trace_nerve(other, seeds, side="right", segmentation_node=again.segmentation_node)
    assert retraced.centreline_node is traced.centreline_node


def test_the_midline_follows_a_ct_moved_under_a_registration(slicer_scene):
    # The body's midline found by the HO step was kept by the volume alone: after the CT
    # was registered (put under a transform moving it 100 mm), the right nerve traced on
    # it was said to run 52 mm to the patient's left of the midline.
    import dataclasses

    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    from HOSciaticModuleLib.phantom import other_hip_bones

    spec = dataclasses.replace(PhantomSpec(), extra_bones=other_hip_bones(PhantomSpec()))
    phantom = generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    analysis.segment_ossifications(volume)
    shift = np.array([-100.0, 0.0, 0.0])
    matrix = vtkMatrix4x4()
    for axis in range(3):
        matrix.SetElement(axis, 3, shift[axis])
    registration = slicer_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    registration.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(registration.GetID())
    seeds = scene_io.points_node_from_array(
        slicer_scene, phantom.seeds_ras([5.0, 70.0, phantom.centreline_s_mm[-1] - 5.0]) + shift, "seeds")
    traced = analysis.trace_nerve(volume, seeds, side="right")
    assert not [w for w in traced.trace.warnings if "midline" in w]


def test_a_segment_painted_by_hand_is_given_the_side_it_lies_on(slicer_scene):
    # Both hips imaged; the HO step's islands all lie on the right hip and carry their
    # side as a tag. A block painted by hand as HO 9 at the mirror image of HO 1, on the
    # left, has no tag: in a later session (no midline kept) its side is read against the
    # midline, and the scene is left as it was.
    import dataclasses

    from HOSciaticModuleLib.phantom import other_hip_bones
    from HOSciaticModuleLib.pipeline import SIDE_TAG

    spec = dataclasses.replace(PhantomSpec(), extra_bones=other_hip_bones(PhantomSpec()))
    phantom = generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    oss = HOSciaticAnalysis(slicer_scene).segment_ossifications(volume)
    assert oss.result.islands and all(i.side == "right" for i in oss.result.islands)
    table = oss.islands_table_node.GetTable()
    assert [table.GetColumnByName("Side").GetValue(row) for row in range(table.GetNumberOfRows())] == [
        "right"] * len(oss.result.islands)
    midline_r = phantom.spec.center_ras[0] + phantom.spec.body_center_offset[0]
    mirrored = np.array(oss.result.islands[0].centroid_ras) * [-1.0, 1.0, 1.0] + [2.0 * midline_r, 0.0, 0.0]
    corner = np.rint(phantom.geometry.ras_to_kji_points(mirrored[None])[0]).astype(int) - [2, 5, 5]
    scene_io.replace_segments(oss.segmentation_node, {"HO 9": (np.ones((5, 10, 10), bool), tuple(corner))},
                              phantom.geometry, scene_io.BONE_COLOR)
    painted = oss.segmentation_node.GetSegmentation().GetSegment(
        scene_io.segment_id_by_name(oss.segmentation_node, "HO 9"))
    reread, _, _ = HOSciaticAnalysis(slicer_scene).analysis_from_scene(oss.segmentation_node)
    sides = {i.label: i.side for i in reread.result.islands}
    assert sides.pop(9) == "left" and set(sides.values()) == {"right"}
    assert scene_io.segment_tag(painted, SIDE_TAG) is None
    # metrics.json adds each side's islands up.
    from HOSciaticModuleLib import export

    document = export.metrics_document({}, {}, reread, [], [], [])["ossifications"]
    volumes = {i.label: i.volume_ml for i in reread.result.islands}
    assert document["left_volume_ml"] == pytest.approx(volumes.pop(9), abs=1e-3)
    assert document["right_volume_ml"] == pytest.approx(sum(volumes.values()), abs=2e-3)


def test_settings_given_as_text_or_none_from_the_console(slicer_scene):
    # A setting given as None, or as text, from the Python console ended in a traceback
    # ("ufunc 'isfinite' not supported"): text that is a number is read as one, the rest
    # is refused with the setting's name.
    from HOSciaticModuleLib.geometry import VolumeGeometry
    from HOSciaticModuleLib.ossification import segment_ossifications

    analysis = HOSciaticAnalysis(slicer_scene)
    with pytest.raises(InputError, match=r"contact tolerance \(mm\) must be a number; got None"):
        analysis.compute_contact(None, None, tolerance_mm=None)
    with pytest.raises(InputError, match=r"bone threshold \(HU\) must be a number; got 'high'"):
        analysis.compute_contact(None, None, bone_threshold_hu="high")
    # Nor are True, infinity or a threshold out of range taken (True read as 1 HU made
    # every tissue bone around the nerve: 360 degrees of bone encasement).
    for value, refusal in ((True, "must be a number; got True"), ("inf", "must be a number; got 'inf'"),
                           (-5000, "must be between 100 and 2000; got -5000")):
        with pytest.raises(InputError, match=refusal):
            analysis.compute_contact(None, None, bone_threshold_hu=value)
        with pytest.raises(InputError, match=refusal):
            analysis.trace_nerve(None, None, bone_threshold_hu=value)
    image = np.full((4, 5, 6), 40.0, np.float32)
    geometry = VolumeGeometry.from_spacing_origin_directions(image.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(InputError, match=r"minimum island size \(mL\) must be a number; got \[\]"):
        segment_ossifications(image, geometry, min_island_ml=[])
    # Read as numbers, "2" and "200" reach the next check (no CT here: no fat, no air).
    with pytest.raises(InputError, match="Hounsfield"):
        segment_ossifications(image, geometry, bone_threshold_hu="200", min_island_ml="0.5")


def test_contact_outputs_go_when_the_nerve_or_the_ho_is_made_again(slicer_scene, phantom):
    # Traced again (on a stretch away from the HO), the nerve kept the contact table of
    # the nerve before it (max encasement 292 deg), its contact patch and a chart whose
    # series named columns the new stations table lacks; after the HO step ran again
    # (fewer islands), the contact table listed an island no longer there and the curve
    # kept an encasement for the jump to the maximum.
    from HOSciaticModuleLib import measurements
    from HOSciaticModuleLib.pipeline import CONTACT_TABLE_NAME

    def contact_nodes(contact):
        """The contact step's nodes of the right nerve still in the scene."""
        chart = contact.chart_node
        series = [chart.GetNthPlotSeriesNode(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
        return [node for node in [chart, contact.contact_patch_model_node, contact.ho_distance_model_node] + series
                if node is not None and node.GetScene() is not None]

    traced_columns = {m.column()[1] for m in measurements.station_measures(False)}
    def nerves_in_contact_table():
        table = slicer_scene.GetFirstNodeByName(CONTACT_TABLE_NAME)
        return set(scene_io.table_columns(table)["Nerve"]) if table is not None else set()

    analysis, volume, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    # The left nerve's rows (as its own contact step would write them) stay; outputs
    # renamed by the user (or chosen in the panel) are found all the same.
    analysis._fill_contact_table(contact.contact_table_node, "left", contact.contact, contact.island_segment_names)
    contact.contact_table_node.SetName("my contact table")
    contact.chart_node.SetName("my chart")
    assert len(contact_nodes(contact)) >= 5 and contact.contact.max_encasement_deg > 250.0
    away = scene_io.points_node_from_array(slicer_scene, phantom.seeds_ras([105.0, 145.0]), "seeds away")
    again = analysis.trace_nerve(volume, away, side="right", segmentation_node=oss.segmentation_node)
    assert contact_nodes(contact) == []
    assert set(scene_io.table_columns(contact.contact_table_node)["Nerve"]) == {"Sciatic nerve left"}
    assert set(scene_io.table_columns(again.stations_table_node)) == traced_columns
    assert analysis.compute_contact(oss.segmentation_node, None).contact.encasement_class == "none"
    analysis.trace_nerve(volume, slicer_scene.GetFirstNodeByName("seeds"), side="right",
                         segmentation_node=oss.segmentation_node)
    measured = analysis.compute_contact(oss.segmentation_node, None)
    assert len(contact_nodes(measured)) >= 5
    curve = measured.centreline_node
    curve.SetName("my nerve")  # renamed, as the other outputs above
    fewer = analysis.segment_ossifications(volume, min_island_ml=2.5)
    assert len(fewer.result.islands) < len(oss.result.islands)
    # The nerve was traced with the HO as a barrier: no call to trace it again.
    assert not [w for w in fewer.result.warnings if "traced before" in w]
    assert contact_nodes(measured) == [] and nerves_in_contact_table() == set()
    assert scene_io.curve_measurement(curve, "encasement_deg") is None
    assert scene_io.curve_measurement(curve, "diameter_mm") is not None
    assert set(scene_io.table_columns(again.stations_table_node)) == traced_columns
    remeasured = analysis.compute_contact(fewer.segmentation_node, curve)
    assert {island.label for island in remeasured.contact.islands} == {i.label for i in fewer.result.islands}
    # Renamed, the curve and stations table were left beside new ones by the next trace,
    # and the contact step, given none, refused: "Run 'Segment' and 'Trace' first".
    remeasured.stations_table_node.SetName("my stations")
    assert analysis.compute_contact(fewer.segmentation_node, None).centreline_node is curve
    retraced = analysis.trace_nerve(volume, slicer_scene.GetFirstNodeByName("seeds"), side="right",
                                    segmentation_node=fewer.segmentation_node)
    assert retraced.centreline_node is curve and curve.GetName() == "my nerve"
    assert retraced.stations_table_node is remeasured.stations_table_node
    assert slicer_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsCurveNode") == 1


def test_nerve_traced_before_the_ho_step_beside_the_ho_is_to_be_traced_again(slicer_scene):
    # Traced on an MR before the HO step, without the HO as a barrier, a nerve 1.6 mm from
    # a sleeve of HO had its outline reach into that gap, with no warning (the warning
    # came only where the nerve overlapped the HO). Traced again, the HO step's call to
    # trace again goes.
    from HOSciaticModuleLib.pipeline import OSSIFICATION_WARNINGS

    coronal = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, analysis, ct_node, mr_node, seeds = _sleeve_on_ct_and_mr(slicer_scene, 1.6, coronal)
    traced = analysis.trace_nerve(mr_node, seeds, side="right", modality="mr")
    oss = analysis.segment_ossifications(ct_node, segmentation_node=traced.segmentation_node)
    (retrace,) = [w for w in oss.result.warnings if "traced before this HO segmentation" in w]
    assert "Trace the nerve again" in retrace and "comes within" in retrace
    analysis.trace_nerve(mr_node, seeds, side="right", modality="mr", segmentation_node=oss.segmentation_node)
    assert not [w for w in analysis._warnings_of(oss.segmentation_node, OSSIFICATION_WARNINGS)
                if "traced before" in w]


def test_another_output_table_given_as_a_steps_table_is_refused(slicer_scene, phantom):
    # The HO islands table chosen as the contact table (or as a trace's stations table)
    # was overwritten with contact rows (stations) under its own name.
    analysis, volume, seeds, oss, traced, contact = _run_chain(slicer_scene, phantom)
    islands = oss.islands_table_node
    before = scene_io.table_columns(islands)
    with pytest.raises(InputError, match="'HO islands' given as the contact table is the HO islands table"):
        analysis.compute_contact(oss.segmentation_node, None, contact_table_node=islands)
    with pytest.raises(InputError, match="given as the stations table is the contact table"):
        analysis.trace_nerve(volume, seeds, segmentation_node=oss.segmentation_node,
                             stations_table_node=contact.contact_table_node)
    with pytest.raises(InputError, match="given as the HO islands table is the right nerve's stations table"):
        analysis.segment_ossifications(volume, islands_table_node=traced.stations_table_node)
    assert scene_io.table_columns(islands) == before


def test_an_image_moved_apart_from_the_segmentation_is_named_at_contact(slicer_scene, phantom):
    # One segmentation follows one registration: an image moved on its own afterwards (an
    # MR's registration refined) took the HO, or left the nerve, 6 mm off the image they
    # were found on, and contact was measured on without a word. Moved with its image
    # (the segmentation under the same transform), nothing is said.
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    registration = slicer_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")

    def shift_by(millimetres):
        matrix = vtkMatrix4x4()
        matrix.SetElement(0, 3, millimetres)
        registration.SetMatrixTransformToParent(matrix)

    analysis, volume, _, oss, traced, _ = _run_chain(slicer_scene, phantom)
    volume.SetAndObserveTransformNodeID(registration.GetID())
    shift_by(6.0)
    warnings = [w for w in analysis.compute_contact(oss.segmentation_node, None).contact.warnings if "moved" in w]
    assert len(warnings) == 2
    assert "The CT 'CT' has moved by up to 6.0 mm" in warnings[0] and "Run the HO step again" in warnings[0]
    assert "since the right nerve was traced on it" in warnings[1] and "Trace the nerve again" in warnings[1]
    # Made again under the CT's transform, they are current again, and moved with the CT
    # they stay so.
    oss.segmentation_node.SetAndObserveTransformNodeID(registration.GetID())
    analysis.segment_ossifications(volume, segmentation_node=oss.segmentation_node)
    analysis.trace_nerve(volume, slicer_scene.GetFirstNodeByName("seeds"), segmentation_node=oss.segmentation_node)
    assert not [w for w in analysis.compute_contact(oss.segmentation_node, None).contact.warnings if "moved" in w]
    shift_by(9.0)
    assert not [w for w in analysis.compute_contact(oss.segmentation_node, None).contact.warnings if "moved" in w]
    # The volume the nerve was traced on, put under a warping transform afterwards (a
    # deformable registration), cannot be placed: contact, which does not read it, was
    # refused for it.
    from vtkmodules.vtkCommonCore import VTK_DOUBLE
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkFiltersHybrid import vtkGridTransform

    from HOSciaticModuleLib.geometry import VolumeGeometry
    from HOSciaticModuleLib.pipeline import TRACED_VOLUME_ROLE, centreline_name

    displacements = vtkImageData()
    displacements.SetDimensions(4, 4, 4)
    displacements.SetOrigin(-200.0, -200.0, -200.0)
    displacements.SetSpacing(200.0, 200.0, 200.0)
    displacements.AllocateScalars(VTK_DOUBLE, 3)
    warping = vtkGridTransform()
    warping.SetDisplacementGridData(displacements)
    deformable = slicer_scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "deformable")
    deformable.SetAndObserveTransformFromParent(warping)
    small = VolumeGeometry.from_spacing_origin_directions((4, 4, 4), (1.0,) * 3, (0.0,) * 3)
    mr = scene_io.volume_node_from_array(slicer_scene, np.zeros((4, 4, 4), np.float32), small, "MR")
    mr.SetAndObserveTransformNodeID(deformable.GetID())
    slicer_scene.GetFirstNodeByName(centreline_name("right")).SetNodeReferenceID(TRACED_VOLUME_ROLE, mr.GetID())
    assert analysis.compute_contact(oss.segmentation_node, None).contact.encasement_class == "encasement"


def test_mr_nerve_in_a_sleeve_of_ho_is_sized_as_beside_it_in_either_order(slicer_scene):
    # On an oblique MR of 4 mm slices, sections beside an HO segment kept their half-way
    # outline (the partial-volume sum cannot be read there) while the others were scaled
    # up to the nerve's size: with the HO step first, a 10 mm nerve in a 270-degree sleeve
    # read 9.15 mm and 246 degrees of encasement for 293 (288 with the steps the other way).
    from scipy.spatial.transform import Rotation

    oblique = Rotation.from_euler("xyz", [90.0, 20.0, 15.0], degrees=True).as_matrix()
    spec, analysis, ct_node, mr_node, seeds = _sleeve_on_ct_and_mr(slicer_scene, 0.0, oblique)
    oss = analysis.segment_ossifications(ct_node)
    traced = analysis.trace_nerve(mr_node, seeds, side="right", modality="mr", segmentation_node=oss.segmentation_node)
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    in_sleeve = np.abs(traced.trace.points_ras[:, 2] - spec.center_ras[2]) < 13.0
    assert np.median(traced.trace.diameter_mm[in_sleeve]) == pytest.approx(10.0, abs=0.5)
    assert contact.contact.max_encasement_deg == pytest.approx(293.0, abs=15.0)


def _sleeve_on_ct_and_mr(scene, gap_mm, mr_directions):
    """A 10 mm nerve in a 30 mm sleeve of HO (270 degrees, ``gap_mm`` of fat between
    them) on a CT of 0.8 x 0.8 x 1 mm and an MR of 0.7 x 0.7 x 4 mm voxels turned by
    ``mr_directions``, in ``scene``: (spec, analysis, CT node, MR node, seeds node)."""
    from HOSciaticModuleLib.phantom import make_shell_spec

    spec = make_shell_spec(270.0, gap_mm=gap_mm, length_mm=30.0, radius_mm=5.0, include_native_bone=True)
    ct = generate_phantom(spec, spacing_ijk=(0.8, 0.8, 1.0), fov_mm=(130.0, 130.0, 120.0))
    mr = generate_phantom(spec, modality="mr", spacing_ijk=(0.7, 0.7, 4.0), fov_mm=(130.0, 120.0, 130.0),
                          directions_ras=mr_directions)
    ct_node = scene_io.volume_node_from_array(scene, ct.image, ct.geometry, "CT")
    mr_node = scene_io.volume_node_from_array(scene, mr.image.astype(np.float32), mr.geometry, "MR")
    seeds = scene_io.points_node_from_array(scene, ct.seeds_ras([8.0, 50.0, 92.0]), "seeds")
    return spec, HOSciaticAnalysis(scene), ct_node, mr_node, seeds


def test_mr_trace_cut_short_of_ho_or_ct_cut_short_of_the_nerve_is_named(slicer_scene):
    # An MR whose field of view ends 8 mm below a sleeve of HO the CT shows: the trace ended
    # at the MR's edge and contact read "none" without a word. A CT ending halfway up the
    # nerve traced on a full MR: the stations beyond it were said to lie off an erased
    # nerve segment, with advice to repaint or trace again.
    from HOSciaticModuleLib.phantom import make_shell_spec

    spec = make_shell_spec(270.0, gap_mm=0.0, length_mm=30.0, radius_mm=5.0)
    ct = generate_phantom(spec, spacing_ijk=(1.0, 1.0, 2.0), fov_mm=(90.0, 90.0, 110.0))
    mr = generate_phantom(spec, modality="mr", spacing_ijk=(1.0, 1.0, 2.0), fov_mm=(90.0, 90.0, 110.0))
    sleeve_bottom = spec.center_ras[2] - 15.0
    below = np.flatnonzero(mr.geometry.kji_to_ras_points(
        np.c_[np.arange(mr.image.shape[0]), np.zeros((mr.image.shape[0], 2))])[:, 2] < sleeve_bottom - 8.0)
    cut = (slice(0, below[-1] + 1), slice(None), slice(None))
    analysis = HOSciaticAnalysis(slicer_scene)
    ct_node = scene_io.volume_node_from_array(slicer_scene, ct.image, ct.geometry, "CT")
    mr_node = scene_io.volume_node_from_array(slicer_scene, np.ascontiguousarray(mr.image[cut]),
                                              mr.geometry.cropped(cut), "MR")
    oss = analysis.segment_ossifications(ct_node)
    top = sleeve_bottom - 8.0 - ct.centreline_ras[0, 2]   # the MR's top, in mm along the straight nerve
    seeds = scene_io.points_node_from_array(slicer_scene, ct.seeds_ras([6.0, top - 2.0]), "seeds")
    traced = analysis.trace_nerve(mr_node, seeds, side="right", modality="mr", segmentation_node=oss.segmentation_node)
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right").contact
    assert contact.encasement_class == "none"
    (warning,) = [w for w in contact.warnings if "trace ends at the edge of 'MR'" in w]
    assert "(its upper end), and HO 1 lies beyond that edge" in warning
    # The sleeve's inner surface lies 5 mm off the nerve's axis, from its bottom up.
    end_z = scene_io.control_points_world(traced.centreline_node)[:, 2].max()
    reported_mm = float(re.search(r"beyond that edge, (\d+) mm from the end", warning).group(1))
    assert reported_mm == pytest.approx(np.hypot(sleeve_bottom - end_z, 5.0), abs=2.0)

    # The CT ends halfway up the nerve, the MR covers all of it.
    half = (slice(0, ct.image.shape[0] // 2), slice(None), slice(None))
    scene = create_headless_slicer().scene
    analysis = HOSciaticAnalysis(scene)
    ct_node = scene_io.volume_node_from_array(scene, np.ascontiguousarray(ct.image[half]), ct.geometry.cropped(half),
                                              "CT")
    mr_node = scene_io.volume_node_from_array(scene, mr.image, mr.geometry, "MR")
    oss = analysis.segment_ossifications(ct_node)
    seeds = scene_io.points_node_from_array(scene, ct.seeds_ras([6.0, ct.centreline_s_mm[-1] - 6.0]), "seeds")
    traced = analysis.trace_nerve(mr_node, seeds, side="right", modality="mr", segmentation_node=oss.segmentation_node)
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right").contact
    assert any("the curve runs beyond the image the segments lie on" in w for w in contact.warnings)
    assert not any("outside the nerve segment" in w for w in contact.warnings)
    scene.Clear(True)


@pytest.mark.parametrize("short_of_top_mm, named", [(20.0, False), (3.0, True)])
def test_trace_end_is_at_the_edge_within_5_mm_along_the_slices_too(slicer_scene, short_of_top_mm, named):
    # On an MR of 0.5 x 0.5 x 4 mm the edge's 5 mm were counted in voxels of the finest
    # spacing on every axis: along the 4 mm slices that made 40 mm, and a trace ending
    # 20 mm below the MR's top was said to end at its edge.
    from HOSciaticModuleLib.geometry import VolumeGeometry
    from HOSciaticModuleLib.pipeline import TRACED_VOLUME_ROLE

    mr_geometry = VolumeGeometry(np.diag([0.5, 0.5, 4.0, 1.0]), (30, 100, 100))   # faces at z -2 and 118 mm
    mr = scene_io.volume_node_from_array(slicer_scene, np.zeros((30, 100, 100), np.float32), mr_geometry, "MR")
    curve = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "centreline")
    curve.SetNodeReferenceID(TRACED_VOLUME_ROLE, mr.GetID())
    centreline = np.array([[25.0, 25.0, 10.0], [25.0, 25.0, 118.0 - short_of_top_mm]])
    ct_geometry = VolumeGeometry(np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -10.0], [0, 0, 0, 1]]), (180, 60, 60))
    above_mr = (slice(132, 137), slice(20, 30), slice(20, 30))                    # HO 4-9 mm above the MR
    warnings = HOSciaticAnalysis._ho_beyond_traced_image_warnings(
        curve, "right", [(1, "HO 1", np.ones((5, 10, 10), bool), above_mr)], ct_geometry, centreline, {1: "HO 1"})
    assert bool(warnings) == named


def test_a_row_of_the_islands_table_leads_to_its_island_as_it_is_now(slicer_scene, phantom):
    # The panel centres the slice views on the island of a clicked row: its centre of
    # mass, that of the table until the segment is edited, then the edited one's.
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    oss = analysis.segment_ossifications(volume)
    for row, island in enumerate(oss.result.islands):
        np.testing.assert_allclose(analysis.island_centre(oss.segmentation_node, oss.islands_table_node, row),
                                   island.centroid_ras, atol=1e-6)
    segment_id = scene_io.segment_id_by_name(oss.segmentation_node, "HO 2")
    mask = scene_io.segment_mask_on_grid(oss.segmentation_node, segment_id, phantom.geometry)
    kept = mask & (np.arange(mask.shape[0]) < np.argwhere(mask)[:, 0].mean())[:, None, None]  # its lower half
    scene_io.replace_segments(oss.segmentation_node, {"HO 2": kept}, phantom.geometry, scene_io.BONE_COLOR)
    row = [oss.islands_table_node.GetCellText(r, 1) for r in range(oss.islands_table_node.GetNumberOfRows())].index(
        "HO 2")
    np.testing.assert_allclose(analysis.island_centre(oss.segmentation_node, oss.islands_table_node, row),
                               phantom.geometry.kji_to_ras_points(np.argwhere(kept).mean(axis=0))[0], atol=1e-6)
    with pytest.raises(InputError, match="no island on row 9"):
        analysis.island_centre(oss.segmentation_node, oss.islands_table_node, 8)
    oss.segmentation_node.GetSegmentation().RemoveSegment(segment_id)
    with pytest.raises(InputError, match="'HO 2' is no longer in"):
        analysis.island_centre(oss.segmentation_node, oss.islands_table_node, row)


@pytest.mark.parametrize("brighter", [1.0, 1.6])
def test_a_nerve_bright_on_mr_where_ho_presses_on_it_reads_its_signal_ratio(slicer_scene, tmp_path, brighter):
    # On T2 fat-saturated MR a compressed nerve turns bright (oedema). Here the nerve in
    # a sleeve of HO (30 mm of contact about s = 50 mm) is ``brighter`` times as bright
    # at the sleeve's middle, fading over 20 mm either side: the signal ratio (largest in
    # contact over the median more than 10 mm from contact) reads that factor within
    # 0.08, and 1 for a nerve of even signal; it survives saving and reloading the scene.
    # A nerve traced on CT has no signal.
    from HOSciaticModuleLib.phantom import make_shell_spec

    spec = make_shell_spec(270.0, gap_mm=0.0, length_mm=30.0, radius_mm=5.0, include_native_bone=True,
                           nerve_signal_center_s_mm=50.0, nerve_signal_half_length_mm=20.0,
                           nerve_signal_scale=brighter)
    ct = generate_phantom(spec, spacing_ijk=(0.8, 0.8, 1.0), fov_mm=(130.0, 130.0, 120.0))
    mr = generate_phantom(spec, modality="mr", spacing_ijk=(0.8, 0.8, 3.0), fov_mm=(130.0, 130.0, 120.0))
    analysis = HOSciaticAnalysis(slicer_scene)
    ct_node = scene_io.volume_node_from_array(slicer_scene, ct.image, ct.geometry, "CT")
    mr_node = scene_io.volume_node_from_array(slicer_scene, mr.image, mr.geometry, "MR")
    seeds = scene_io.points_node_from_array(slicer_scene, ct.seeds_ras([8.0, 50.0, 92.0]), "seeds")
    oss = analysis.segment_ossifications(ct_node)
    traced = analysis.trace_nerve(mr_node, seeds, side="right", modality="mr", segmentation_node=oss.segmentation_node)
    contact = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    assert contact.contact.encasement_class == "encasement"
    assert contact.contact.signal_ratio == pytest.approx(brighter, abs=0.08)
    assert contact.contact.thickening_ratio == pytest.approx(1.0, abs=0.1)  # brighter, not thicker
    assert scene_io.curve_measurement(traced.centreline_node, "signal") is not None
    if brighter == 1.0:
        on_ct = analysis.trace_nerve(ct_node, seeds, side="left", modality="ct",
                                     segmentation_node=oss.segmentation_node)
        assert on_ct.trace.signal is None and scene_io.curve_measurement(on_ct.centreline_node, "signal") is None
        return
    _, _, contacts = _analysis_saved_and_reloaded(slicer_scene, tmp_path)
    ((side, reloaded),) = contacts
    assert side == "right" and reloaded.contact.signal_ratio == pytest.approx(contact.contact.signal_ratio, abs=1e-4)


def test_a_nerve_pressed_by_ho_is_compared_with_the_other_side_at_its_mirror_image(slicer_scene, tmp_path):
    # Both hips: on the right a nerve 5 mm in radius in a 270° sleeve of HO, on the left
    # (the right's anatomy mirrored, with no HO) a nerve 4 mm in radius lying 6 mm more
    # anterior; both traced on an MR of 3 mm slices, the HO segmented on the CT. The
    # right nerve's area in contact over the left's at the mirror image is (5/4)² =
    # 1.5625 (within 0.08), its own thickening ratio 1; the left nerve touches no HO, so
    # it has no ratio. The figure survives the scene bundle.
    from HOSciaticModuleLib.phantom import pressed_and_healthy_hips
    from HOSciaticModuleLib.session import SessionResults

    def both_hips(modality, spacing):
        hips = pressed_and_healthy_hips(modality, spacing)
        return scene_io.volume_node_from_array(slicer_scene, hips.image, hips.geometry, modality.upper()), hips

    ct, _ = both_hips("ct", (0.8, 0.8, 1.0))
    mr, hips = both_hips("mr", (0.8, 0.8, 3.0))
    analysis = HOSciaticAnalysis(slicer_scene)
    oss = analysis.segment_ossifications(ct)
    right_seeds = hips.right.seeds_ras([8.0, 50.0, 92.0])
    left_seeds = hips.left_seeds_ras([8.0, 50.0, 92.0])

    def traced(side, seeds):
        return analysis.trace_nerve(mr, scene_io.points_node_from_array(slicer_scene, seeds, f"{side} seeds"),
                                    side=side, modality="mr", segmentation_node=oss.segmentation_node)

    # In the panel's order: the right nerve traced and measured before the left one is traced.
    right_nerve = traced("right", right_seeds)
    first = analysis.compute_contact(oss.segmentation_node, right_nerve.centreline_node, side="right")
    assert first.contact.encasement_class == "encasement" and first.contact.contralateral_area_ratio is None
    assert first.contact.other_side_diameter_mm is None
    assert np.isnan(_other_side_diameters(right_nerve.centreline_node, first.stations_table_node)).all()
    assert "Other side diameter" not in _series_styles(first.chart_node)
    session = SessionResults()
    session.measured("right", first)
    left_nerve = traced("left", left_seeds)
    session.traced("left", left_nerve)
    left = analysis.compute_contact(oss.segmentation_node, left_nerve.centreline_node, side="left")
    session.measured("left", left)
    assert left.contact.encasement_class == "none" and left.contact.contralateral_area_ratio is None
    # Measuring the left nerve's contact measured the right one's against it again: in
    # the contact table and in the panel's results alike.
    assert set(left.other_side_area_ratio) == {"right"}
    assert left.other_side_area_ratio["right"] == pytest.approx(1.5625, abs=0.08)
    assert first.contact.contralateral_area_ratio == left.other_side_area_ratio["right"]

    def right_row_ratio():
        columns = scene_io.table_columns(left.contact_table_node)
        rows = [r for r, (nerve, island) in enumerate(zip(columns["Nerve"], columns["Island"]))
                if nerve == "Sciatic nerve right" and island == "all HO"]
        return columns["Area vs other side"][rows[0]]

    assert right_row_ratio() == round(left.other_side_area_ratio["right"], 3)
    # Each nerve's stations show the other nerve's diameter at their mirror images (on its
    # curve, in its stations table, dashed on its chart): the left nerve's 8 mm beside the
    # right one, the right nerve's 10 mm beside the left one, each within 0.4 mm (as a
    # nerve's own diameter reads on these slices); none at the ends, where the other trace
    # stops. The right nerve measured first had none; the left one's contact gave it its own.
    right_values = _other_side_diameters(right_nerve.centreline_node, first.stations_table_node)
    left_values = _other_side_diameters(left_nerve.centreline_node, left.stations_table_node)
    assert np.isnan(right_values[[0, -1]]).all() and np.isfinite(right_values[1:-1]).all()
    assert np.nanmedian(right_values) == pytest.approx(8.0, abs=0.4)
    assert np.nanmedian(left_values) == pytest.approx(10.0, abs=0.4)
    assert np.nanmax(np.abs(right_values - 8.0)) < 0.6 and np.nanmax(np.abs(left_values - 10.0)) < 0.6
    np.testing.assert_allclose(first.contact.other_side_diameter_mm, right_values, atol=0.005)
    for chart in (first.chart_node, left.chart_node):
        assert _series_styles(chart)["Other side diameter"] == "dashed"
    right = analysis.compute_contact(oss.segmentation_node, right_nerve.centreline_node, side="right").contact
    assert right.contralateral_area_ratio == pytest.approx(left.other_side_area_ratio["right"], abs=0.02)
    assert right.thickening_ratio == pytest.approx(1.0, abs=0.1)

    _, _, contacts = _analysis_saved_and_reloaded(slicer_scene, tmp_path)
    reloaded = dict(contacts)
    assert reloaded["right"].contact.contralateral_area_ratio == pytest.approx(right.contralateral_area_ratio, abs=0.02)
    np.testing.assert_allclose(reloaded["right"].contact.other_side_diameter_mm, right.other_side_diameter_mm,
                               atol=0.05)
    assert np.nanmedian(reloaded["left"].contact.other_side_diameter_mm) == pytest.approx(10.0, abs=0.4)

    # The contact runs over s = 35-65 mm; the left nerve traced again only over s = 80-98
    # mm. The right nerve's figure, measured against the nerve traced before, is emptied,
    # and measured again there is nothing to compare it with.
    beyond = traced("left", hips.left_seeds_ras([80.0, 98.0]))
    session.traced("left", beyond)
    assert np.isnan(right_row_ratio()) and first.contact.contralateral_area_ratio is None
    assert np.isnan(_other_side_diameters(right_nerve.centreline_node, first.stations_table_node)).all()
    assert first.contact.other_side_diameter_mm is None and "Other side diameter" not in _series_styles(first.chart_node)
    assert scene_io.control_points_world(beyond.centreline_node)[:, 2].min() > hips.right.seeds_ras([75.0])[0, 2]
    again = analysis.compute_contact(oss.segmentation_node, right_nerve.centreline_node, side="right").contact
    assert again.contralateral_area_ratio is None
    # Beside the right nerve, the left one's diameter now only where it was traced.
    beyond_z = scene_io.control_points_world(beyond.centreline_node)[:, 2]
    compared = np.isfinite(again.other_side_diameter_mm)
    assert compared.any() and np.nanmedian(again.other_side_diameter_mm) == pytest.approx(8.0, abs=0.4)
    compared_z = np.asarray(again.points_ras)[compared, 2]
    assert compared_z.min() >= beyond_z.min() - 1.0 and compared_z.max() <= beyond_z.max() + 1.0


def _other_side_diameters(centreline_node, stations_table_node) -> np.ndarray:
    """The other side's diameter beside each station, as the curve and the stations table
    (rounded) both hold it (a curve holds no array of a figure no station has)."""
    in_table = np.asarray(scene_io.table_columns(stations_table_node)["Other side diameter"], float)
    on_curve = scene_io.curve_measurement(centreline_node, "other_side_diameter_mm")
    if on_curve is None:
        on_curve = np.full(len(in_table), np.nan)
    np.testing.assert_allclose(on_curve, in_table, atol=0.005)
    return in_table


def _series_styles(chart_node) -> dict:
    """A chart's series, by the column each draws: "dashed" or "solid"."""
    styles = {}
    for n in range(chart_node.GetNumberOfPlotSeriesNodes()):
        series = chart_node.GetNthPlotSeriesNode(n)
        styles[series.GetYColumnName()] = "dashed" if series.GetLineStyle() == series.LineStyleDash else "solid"
    return styles


def test_a_contact_table_of_an_earlier_layout_keeps_the_other_nerves_rows(slicer_scene, phantom):
    # A scene saved by an earlier version: its contact table lacks the nerve's own
    # figures. Computing the right nerve's contact again keeps the left nerve's rows, with
    # what they hold, the new columns empty; the right nerve's rows are the new ones.
    from HOSciaticModuleLib import measurements

    analysis, _, _, oss, traced, contact = _run_chain(slicer_scene, phantom)
    columns = [("nerve", "Nerve", "", "str", ""), ("island", "Island", "", "str", "")]
    columns += [m.column() for m in measurements.CONTACT_MEASURES]
    left_row = dict(nerve="Sciatic nerve left", island="all HO",
                    **measurements.as_table_row(measurements.CONTACT_MEASURES, contact.contact))
    scene_io.fill_table(slicer_scene, contact.contact_table_node, contact.contact_table_node.GetName(), columns,
                        [left_row])
    again = analysis.compute_contact(oss.segmentation_node, traced.centreline_node, side="right")
    table = scene_io.table_columns(again.contact_table_node)
    assert table["Nerve"] == ["Sciatic nerve left"] + ["Sciatic nerve right"] * (1 + len(phantom.islands))
    assert table["Max encasement"][0] == left_row["max_encasement_deg"] and np.isnan(table["Deflection"][0])
    assert table["Deflection"][1] == round(again.contact.deflection_mm, 2)


def test_a_row_of_the_contact_table_leads_to_its_closest_point_on_the_nerve(slicer_scene, phantom):
    # The panel centres the slice views on the nerve's point of a clicked row's closest
    # pair: all HO's on the nerve's first row, each island's on its own (to the table's
    # 0.1 mm). A row that is gone, or holds no pair, gets a message.
    from HOSciaticModuleLib import measurements

    analysis, _, _, _, _, contact = _run_chain(slicer_scene, phantom)
    table = contact.contact_table_node
    pairs = [contact.contact.closest_points_ras] + [island.closest_points_ras for island in contact.contact.islands]
    assert table.GetNumberOfRows() == len(pairs)
    for row, pair in enumerate(pairs):
        np.testing.assert_allclose(analysis.contact_row_closest_point(table, row), pair[0], atol=0.05 + 1e-9)
    with pytest.raises(InputError, match="no contact row 9"):
        analysis.contact_row_closest_point(table, 8)
    columns = [("nerve", "Nerve", "", "str", ""), ("island", "Island", "", "str", "")]
    columns += [m.column() for m in measurements.CONTACT_MEASURES]
    scene_io.fill_table(slicer_scene, table, table.GetName(), columns,
                        [dict(nerve="Sciatic nerve right", island="HO 1", closest_points_ras="")])
    with pytest.raises(InputError, match="has no closest points"):
        analysis.contact_row_closest_point(table, 0)
    with pytest.raises(InputError, match="compute contact first"):
        analysis.contact_row_closest_point(None, 0)
