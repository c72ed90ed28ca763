"""The module's self-test body, Qt-free so it runs in the Slicer application
(``HOSciaticModuleTest``) and under pytest with the same assertions.

It builds a small synthetic hip CT in the scene, drives the analysis the way the
panel's buttons do -- segment, trace, compute, then each step again -- and checks
the figures against the phantom's truth and that re-runs replace their outputs.
"""

from __future__ import annotations

import numpy as np

from . import scene as scene_io
from .errors import InputError
from .phantom import generate_phantom
from .pipeline import HOSciaticAnalysis

OUTPUT_CLASSES = ("vtkMRMLSegmentationNode", "vtkMRMLTableNode", "vtkMRMLMarkupsCurveNode",
                  "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLModelNode")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _node_counts(scene) -> dict:
    return {name: scene.GetNumberOfNodesByClass(name) for name in OUTPUT_CLASSES}


def add_phantom_to_scene(scene, spacing_ijk=(1.0, 1.0, 2.0)):
    """A synthetic CT volume node and a seed list on its sciatic nerve."""
    phantom = generate_phantom(spacing_ijk=spacing_ijk)
    volume = scene_io.volume_node_from_array(scene, np.round(phantom.image).astype(np.int16), phantom.geometry,
                                             "HOSciatic phantom CT")
    visible = phantom.centreline_s_mm[phantom.geometry.contains_ras(phantom.centreline_ras, 3.0)]
    seeds = scene_io.points_node_from_array(
        scene, phantom.seeds_ras([visible[0] + 5.0, visible[-1] - 5.0]), "Sciatic nerve right seeds")
    return phantom, volume, seeds


def run_self_test(scene, progress=None) -> dict:
    """Run the chain on a phantom in ``scene``; raise AssertionError on any wrong figure."""
    phantom, volume, seeds = add_phantom_to_scene(scene)
    analysis = HOSciaticAnalysis(scene)

    oss = analysis.segment_ossifications(volume, progress=progress)
    truth_total = sum(island["volume_ml"] for island in phantom.islands)
    total = sum(island.volume_ml for island in oss.result.islands)
    _check(len(oss.result.islands) == len(phantom.islands),
           f"{len(oss.result.islands)} HO islands found, {len(phantom.islands)} expected")
    _check(abs(total - truth_total) <= 0.10 * truth_total, f"HO volume {total:.2f} mL, truth {truth_total:.2f} mL")

    nerve = analysis.trace_nerve(volume, seeds, side="right", modality="ct",
                                 segmentation_node=oss.segmentation_node, progress=progress)
    _check(nerve.trace.length_mm > 100.0, f"nerve traced over {nerve.trace.length_mm:.0f} mm only")
    contact = analysis.compute_contact(oss.segmentation_node, nerve.centreline_node, side="right", progress=progress)
    result = contact.contact
    _check(result.encasement_class == "encasement", f"class {result.encasement_class}, expected encasement")
    _check(250.0 <= result.max_encasement_deg <= 330.0, f"max encasement {result.max_encasement_deg:.0f} deg")
    _check(result.min_distance_mm == 0.0, f"min distance {result.min_distance_mm:.2f} mm, expected 0")

    # Running each step again updates the same nodes.
    before = _node_counts(scene)
    analysis.segment_ossifications(volume, segmentation_node=oss.segmentation_node,
                                   islands_table_node=oss.islands_table_node)
    again = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node,
                                 centreline_node=nerve.centreline_node, stations_table_node=nerve.stations_table_node)
    analysis.compute_contact(oss.segmentation_node, again.centreline_node, side="right")
    _check(_node_counts(scene) == before, f"re-running added nodes: {before} -> {_node_counts(scene)}")

    # A failing step leaves the results as they were.
    segments = scene_io.segment_ids(oss.segmentation_node)
    nodes = scene.GetNumberOfNodes()
    try:
        analysis.compute_contact(oss.segmentation_node, nerve.centreline_node, side="right", tolerance_mm=-1.0)
    except InputError:
        pass
    else:
        raise AssertionError("a negative contact tolerance was accepted")
    _check(scene.GetNumberOfNodes() == nodes and scene_io.segment_ids(oss.segmentation_node) == segments,
           "a failed step changed the scene")
    return {"islands": len(oss.result.islands), "total_volume_ml": total, "nerve_length_mm": nerve.trace.length_mm,
            "max_encasement_deg": result.max_encasement_deg, "encasement_class": result.encasement_class}
