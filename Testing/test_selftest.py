"""The module's self-test body under pytest, and the panel's workflow against the command line."""

import json

import numpy as np
import pytest

from HOSciaticModuleLib import cli
from HOSciaticModuleLib.imageio import write_volume
from HOSciaticModuleLib.phantom import write_markups_points_json
from HOSciaticModuleLib.pipeline import HOSciaticAnalysis
from HOSciaticModuleLib.selftest import add_phantom_to_scene, run_self_test


def test_self_test_body(slicer_scene):
    figures = run_self_test(slicer_scene)
    assert figures["islands"] == 3 and figures["encasement_class"] == "encasement"


def test_panel_workflow_matches_command_line(slicer_scene, tmp_path):
    """The steps the panel's buttons run give the figures the command line writes."""
    phantom, volume, seeds = add_phantom_to_scene(slicer_scene)
    analysis = HOSciaticAnalysis(slicer_scene)
    oss = analysis.segment_ossifications(volume)
    nerve = analysis.trace_nerve(volume, seeds, side="right", segmentation_node=oss.segmentation_node)
    contact = analysis.compute_contact(oss.segmentation_node, nerve.centreline_node, side="right")

    image = tmp_path / "ct.nrrd"
    write_volume(image, np.round(phantom.image).astype(np.int16), phantom.geometry)
    seed_points = np.array([seeds.GetNthControlPointPositionWorld(n) for n in range(seeds.GetNumberOfControlPoints())])
    write_markups_points_json(tmp_path / "seeds_right.mrk.json", seed_points, "Sciatic nerve right seeds")
    assert cli.main(["analyze", str(image), "--out", str(tmp_path / "out"), "--nerve-seeds",
                     str(tmp_path / "seeds_right.mrk.json"), "--quiet", "--no-scene"]) == 0
    document = json.loads((tmp_path / "out" / "metrics.json").read_text())

    volumes = [i["volume_ml"] for i in document["ossifications"]["islands"]]
    np.testing.assert_allclose(volumes, [i.volume_ml for i in oss.result.islands], atol=1e-3)
    (entry,) = document["nerves"]
    assert entry["length_mm"] == pytest.approx(nerve.trace.length_mm, abs=0.05)
    assert entry["max_encasement_deg"] == pytest.approx(contact.contact.max_encasement_deg, abs=0.05)
    assert entry["contact_area_mm2"] == pytest.approx(contact.contact.contact_area_mm2, abs=0.05)
    assert entry["encasement_class"] == contact.contact.encasement_class
