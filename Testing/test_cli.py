"""The ``hosciatic`` command end to end on a small synthetic case written to disk."""

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scipy.spatial import cKDTree

from HOSciaticModuleLib import cli
from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.imageio import read_markups_json, read_volume
from HOSciaticModuleLib.imageio import write_volume
from HOSciaticModuleLib.phantom import (PhantomSpec, generate_phantom, other_hip_bones, pressed_and_healthy_hips,
                                         write_markups_points_json, write_phantom_case, write_tilted_dicom_series)

SMALL_SPACING = (1.0, 1.0, 2.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    phantom = generate_phantom(spacing_ijk=SMALL_SPACING)
    paths = write_phantom_case(phantom, folder)
    return phantom, paths


@pytest.fixture(scope="module")
def analysed(case, tmp_path_factory):
    phantom, paths = case
    out = tmp_path_factory.mktemp("out")
    code = cli.main(["analyze", str(paths["image"]), "--out", str(out), "--nerve-seeds", str(paths["seeds"]), "--quiet"])
    assert code == 0
    return phantom, out, json.loads((out / "metrics.json").read_text())


def test_outputs_written(analysed):
    _, out, document = analysed
    names = {p.name for p in out.iterdir()}
    assert {"segmentation.seg.nrrd", "metrics.json", "scene.mrb", "islands.csv", "nerve_right.mrk.json",
            "stations_right.csv"} <= names
    assert not any(name.startswith(".hosciatic-partial") for name in names)
    assert document["schema"] == "hosciatic-metrics/1"
    assert set(document) >= {"input", "parameters", "ossifications", "nerves"}


def test_both_nerves_files_give_the_other_sides_diameter_beside_each_station(tmp_path):
    # Both hips on a CT of 1 mm slices: the right nerve 5 mm in radius in an HO sleeve, the
    # left one 4 mm, both traced in one run. Each nerve's stations in the CSV and in
    # metrics.json hold the other nerve's diameter at their mirror images (8 and 10 mm,
    # each within 0.4 mm as a nerve's own diameter reads), the ends none; the right
    # nerve's was written when the left nerve's contact was measured, after its own.
    hips = pressed_and_healthy_hips("ct", (0.8, 0.8, 1.0))
    write_volume(tmp_path / "ct.nrrd", hips.image, hips.geometry)
    write_markups_points_json(tmp_path / "right.mrk.json", hips.right.seeds_ras([8.0, 50.0, 92.0]), "R")
    write_markups_points_json(tmp_path / "left.mrk.json", hips.left_seeds_ras([8.0, 50.0, 92.0]), "L")
    out = tmp_path / "out"
    assert cli.main(["analyze", str(tmp_path / "ct.nrrd"), "--out", str(out), "--nerve-seeds",
                     str(tmp_path / "right.mrk.json"), "--nerve-seeds", str(tmp_path / "left.mrk.json"),
                     "--no-scene", "--quiet"]) == 0
    document = json.loads((out / "metrics.json").read_text())
    assert [n["side"] for n in document["nerves"]] == ["right", "left"]
    for nerve, expected in zip(document["nerves"], (8.0, 10.0)):
        in_json = np.array([np.nan if s["other_side_diameter_mm"] is None else s["other_side_diameter_mm"]
                            for s in nerve["stations"]])
        rows = list(csv.DictReader((out / f"stations_{nerve['side']}.csv").open()))
        in_csv = np.array([float(r["other_side_diameter_mm"]) if r["other_side_diameter_mm"] else np.nan for r in rows])
        np.testing.assert_array_equal(in_csv, in_json)
        assert np.isnan(in_json[[0, -1]]).all() and np.isfinite(in_json[1:-1]).all()
        assert np.nanmedian(in_json) == pytest.approx(expected, abs=0.4)


def test_ossification_figures_match_truth(analysed):
    phantom, _, document = analysed
    truth_total = sum(island["volume_ml"] for island in phantom.islands)
    oss = document["ossifications"]
    assert oss["count"] == len(phantom.islands)
    assert abs(oss["total_volume_ml"] - truth_total) <= 0.10 * truth_total
    assert [i["segment"] for i in oss["islands"]] == [f"HO {n}" for n in range(1, oss["count"] + 1)]
    volumes = [i["volume_ml"] for i in oss["islands"]]
    assert volumes == sorted(volumes, reverse=True)
    assert sum(i["fused_to_native_bone"] for i in oss["islands"]) == 1
    # One hip imaged: no side told, so no volume per side (null, not 0).
    assert oss["right_volume_ml"] is None and oss["left_volume_ml"] is None
    for island in oss["islands"]:
        assert {"id", "segment", "side", "volume_ml", "mean_hu", "max_hu", "centroid_ras", "size_rl_mm", "size_ap_mm",
                "size_si_mm", "fused_to_native_bone", "native_bone", "maturity", "doubts", "min_distance_to_nerve_mm",
                "contact_area_mm2", "encasement_class", "nearest_nerve"} <= set(island)


def test_islands_csv_holds_what_metrics_json_holds(analysed):
    import csv

    _, out, document = analysed
    with open(out / "islands.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    islands = document["ossifications"]["islands"]
    assert [row["segment"] for row in rows] == [island["segment"] for island in islands]
    for row, island in zip(rows, islands):
        assert float(row["volume_ml"]) == island["volume_ml"]
        assert [float(row[f"centroid_ras_{axis}"]) for axis in "ras"] == island["centroid_ras"]
        assert [float(row[key]) for key in ("size_rl_mm", "size_ap_mm", "size_si_mm")] == [
            island[key] for key in ("size_rl_mm", "size_ap_mm", "size_si_mm")]
        assert row["fused_to_native_bone"] == ("yes" if island["fused_to_native_bone"] else "no")
        assert row["doubts"] == island["doubts"] and row["nearest_nerve"] == "right"
        # One hip imaged: the side is not told (an empty cell, an empty string); no
        # native-bone segmentation given: no bone named.
        assert row["side"] == island["side"] == "" and row["native_bone"] == island["native_bone"] == ""
        assert float(row["min_distance_to_nerve_mm"]) == island["min_distance_to_nerve_mm"]
        assert row["encasement_class"] == island["encasement_class"]
    # The sleeve (the largest island) wraps the nerve; the other two lie well away from it.
    assert (float(rows[0]["min_distance_to_nerve_mm"]), rows[0]["encasement_class"]) == (0.0, "encasement")
    assert all(float(row["min_distance_to_nerve_mm"]) > 5.0 and row["encasement_class"] == "none" for row in rows[1:])


def test_nerve_and_contact_figures(case, analysed):
    _, paths = case
    phantom, _, document = analysed
    (nerve,) = document["nerves"]
    assert nerve["side"] == "right"
    seeds = read_markups_json(paths["seeds"])[0].points_ras
    seeds_s = phantom.centreline_s_mm[cKDTree(phantom.centreline_ras).query(seeds)[1]]
    seeds_span = seeds_s.max() - seeds_s.min()
    assert abs(nerve["length_mm"] - seeds_span) < 0.1 * seeds_span
    assert nerve["min_distance_mm"] == pytest.approx(0.0, abs=0.5)
    # A 270 deg gap-free shell: encasement class, about 270 + 4 asin(tau / 2r) deg.
    assert nerve["encasement_class"] == "encasement"
    assert 250 <= nerve["max_encasement_deg"] <= 330
    shell_length = 25.0
    assert abs(nerve["longest_contact_mm"] - (shell_length + 2.0)) <= 4.0
    station = nerve["stations"][0]
    assert {"s_mm", "ras", "area_mm2", "diameter_mm", "min_diameter_mm", "max_diameter_mm",
            "encasement_deg", "distance_to_ho_mm", "bone_encasement_deg"} <= set(station)
    assert len(nerve["stations"]) == pytest.approx(nerve["length_mm"], abs=2)


def test_thickening_ratio_against_truth(case, analysed):
    """The nerve's largest area along the contact over its area away from it, against the
    same ratio of the phantom's true sections at the traced stations (within 0.15): a
    section drawn too large at the end of the contact, where the shell's rim blurs into
    the nerve, does not count as a swelling (it read 1.56 for a true 1.26)."""
    phantom, _, document = analysed
    (nerve,) = document["nerves"]
    stations = nerve["stations"]
    points = np.array([s["ras"] for s in stations])
    s_mm = np.array([s["s_mm"] for s in stations])
    in_contact = np.array([s["distance_to_ho_mm"] for s in stations]) <= document["parameters"]["contact_tolerance_mm"]
    true_area = np.pi / 4.0 * phantom.true_equivalent_diameter_mm[cKDTree(phantom.centreline_ras).query(points)[1]] ** 2
    away = np.min(np.abs(s_mm[:, None] - s_mm[in_contact][None, :]), axis=1) > 10.0
    true_ratio = true_area[in_contact].max() / np.median(true_area[away])
    assert nerve["thickening_ratio"] == pytest.approx(true_ratio, abs=0.15), (nerve["thickening_ratio"], true_ratio)


def test_repeatable_apart_from_timestamp(case, analysed, tmp_path):
    _, paths = case
    _, out, document = analysed
    assert cli.main(["analyze", str(paths["image"]), "--out", str(tmp_path), "--nerve-seeds", str(paths["seeds"]),
                     "--quiet", "--no-scene"]) == 0
    again = json.loads((tmp_path / "metrics.json").read_text())
    for item in (document, again):
        item.pop("generated")
        item["input"].pop("image")
        item["input"]["nerve_seeds"] = []
    assert json.dumps(again, sort_keys=True) == json.dumps(document, sort_keys=True)


def test_mr_run_traces_nerve_only(tmp_path):
    phantom = generate_phantom(modality="mr", spacing_ijk=SMALL_SPACING)
    paths = write_phantom_case(phantom, tmp_path / "mr", name="mr")
    out = tmp_path / "out"
    assert cli.main(["analyze", str(paths["image"]), "--modality", "mr", "--nerve-seeds", str(paths["seeds"]),
                     "--out", str(out), "--quiet", "--no-scene"]) == 0
    document = json.loads((out / "metrics.json").read_text())
    assert document["ossifications"] is None and not (out / "islands.csv").exists()
    assert document["parameters"] == {}  # no HO or contact setting is read on an MR
    assert len(document["nerves"]) == 1 and document["nerves"][0]["length_mm"] > 100


def _run_cli_subprocess(args, cwd, module="HOSciaticModuleLib.cli"):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _assert_clean_refusal(result, out: Path, *phrases):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase.lower() in result.stderr.lower(), result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_bad_inputs_exit_2_with_message(tmp_path, case):
    _, paths = case
    out = tmp_path / "out"
    _assert_clean_refusal(_run_cli_subprocess(["analyze", str(tmp_path / "missing.nrrd"), "--out", str(out)], tmp_path),
                          out, "does not exist")
    # Run as a module, the entry point of the 'hosciatic' command did nothing and exited 0.
    _assert_clean_refusal(_run_cli_subprocess(["analyze", str(tmp_path / "missing.nrrd"), "--out", str(out)], tmp_path,
                                              "HOSciaticModuleLib.command"), out, "does not exist")
    text = tmp_path / "notes.nrrd"
    text.write_text("this is not an image")
    _assert_clean_refusal(_run_cli_subprocess(["analyze", str(text), "--out", str(out)], tmp_path), out, "not an image")
    bad_seeds = tmp_path / "seeds.mrk.json"
    bad_seeds.write_text("{not json")
    _assert_clean_refusal(_run_cli_subprocess(
        ["analyze", str(paths["image"]), "--out", str(out), "--nerve-seeds", str(bad_seeds)], tmp_path),
        out, "not valid JSON", ".mrk.json")


def test_nan_and_2d_images_refused(tmp_path):
    from HOSciaticModuleLib.geometry import VolumeGeometry

    geometry = VolumeGeometry.from_spacing_origin_directions((8, 8, 8), (1, 1, 1), (0, 0, 0))
    values = np.zeros((8, 8, 8), np.float32)
    values[2, 2, 2] = np.nan
    write_volume(tmp_path / "nan.nrrd", values, geometry)
    out = tmp_path / "out"
    _assert_clean_refusal(_run_cli_subprocess(["analyze", str(tmp_path / "nan.nrrd"), "--out", str(out)], tmp_path),
                          out, "NaN")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(tmp_path / "flat.nrrd"))
    _assert_clean_refusal(_run_cli_subprocess(["analyze", str(tmp_path / "flat.nrrd"), "--out", str(out)], tmp_path),
                          out, "2D")


def test_too_few_seed_points_refused(tmp_path, case):
    phantom, paths = case
    seeds = tmp_path / "one_right.mrk.json"
    write_markups_points_json(seeds, phantom.seeds_ras([40.0]), "Sciatic nerve right seeds")
    out = tmp_path / "out"
    _assert_clean_refusal(_run_cli_subprocess(
        ["analyze", str(paths["image"]), "--out", str(out), "--nerve-seeds", str(seeds), "--no-scene"], tmp_path),
        out, "seed")


def test_scene_bundle_holds_the_ct(case, analysed):
    """The CT, written on a second thread while the analysis ran, loads back from the
    bundle with its voxels and geometry, beside the segmentation and tables."""
    from HOSciaticModuleLib import scene as scene_io
    from HOSciaticModuleLib.mrml_app import create_headless_slicer

    phantom, paths = case
    _, out, _ = analysed
    fresh = create_headless_slicer(expose_as_slicer_globals=False).scene
    assert fresh.ReadFromMRB(str(out / "scene.mrb"))
    volume = fresh.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert volume is not None and volume.GetImageData() is not None
    voxels, geometry = scene_io.array_from_volume(volume, "CT")
    written = read_volume(paths["image"])
    assert np.array_equal(voxels, written.array)
    assert np.allclose(geometry.ijk_to_ras, written.geometry.ijk_to_ras, atol=1e-4)
    assert fresh.GetFirstNodeByClass("vtkMRMLSegmentationNode") is not None
    assert fresh.GetFirstNodeByName("HO islands") is not None


def test_scene_bundle_from_a_relative_output_folder_loads(case, tmp_path):
    """``--out results`` (relative, as in the README's demo command): the bundle's files
    are found when it is opened, not looked for in the working folder it was built in."""
    from HOSciaticModuleLib.mrml_app import create_headless_slicer

    _, paths = case
    result = _run_cli_subprocess(["analyze", str(paths["image"]), "--out", "results", "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr
    fresh = create_headless_slicer(expose_as_slicer_globals=False).scene
    assert fresh.ReadFromMRB(str(tmp_path / "results" / "scene.mrb"))
    volume = fresh.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert volume is not None and volume.GetImageData() is not None
    segmentation = fresh.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    assert segmentation is not None and segmentation.GetSegmentation().GetNumberOfSegments() > 0


def test_tilted_dicom_series_gives_true_figures(case, analysed, tmp_path):
    """A CT acquired with a 15 degree gantry tilt, read from its DICOM slices: once the
    slices are put on a grid at right angles, the HO and nerve figures match the
    truth as on the straight CT."""
    phantom, paths = case
    _, _, straight = analysed
    folder = tmp_path / "tilted"
    write_tilted_dicom_series(phantom, folder, tilt_deg=15.0)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(folder), "--out", str(out), "--nerve-seeds", str(paths["seeds"]),
                     "--quiet", "--no-scene"]) == 0
    document = json.loads((out / "metrics.json").read_text())
    assert any("gantry tilt of 15.0 degrees" in warning for warning in document["warnings"])
    truth_total = sum(island["volume_ml"] for island in phantom.islands)
    assert document["ossifications"]["count"] == len(phantom.islands)
    assert abs(document["ossifications"]["total_volume_ml"] - truth_total) <= 0.10 * truth_total
    (nerve,), (straight_nerve,) = document["nerves"], straight["nerves"]
    assert abs(nerve["length_mm"] - straight_nerve["length_mm"]) <= 3.0
    assert abs(nerve["mean_diameter_mm"] - straight_nerve["mean_diameter_mm"]) <= 0.5
    assert nerve["encasement_class"] == "encasement"


def test_side_from_the_body_midline_and_a_wrong_side_flagged(tmp_path):
    # Both hips imaged and the body off-centre, left of the scanner's R = 0: the right
    # nerve has R < 0, so only the skeleton's midline tells its side.
    spec = PhantomSpec(center_ras=(-60.0, -20.0, -120.0))
    phantom = generate_phantom(dataclasses.replace(spec, extra_bones=other_hip_bones(spec)),
                               spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    paths = write_phantom_case(phantom, tmp_path / "case")
    seeds = read_markups_json(paths["seeds"])[0].points_ras
    assert np.all(seeds[:, 0] < 0)

    def analyse(markup_name):
        seeds_path = tmp_path / f"{markup_name}.mrk.json"
        write_markups_points_json(seeds_path, seeds, markup_name)
        out = tmp_path / f"out-{markup_name}"
        assert cli.main(["analyze", str(paths["image"]), "--out", str(out), "--nerve-seeds", str(seeds_path),
                         "--quiet", "--no-scene"]) == 0
        return json.loads((out / "metrics.json").read_text())

    unnamed = analyse("points")
    assert unnamed["nerves"][0]["side"] == "right"
    assert any("inferred from the points' position" in w and "right of the body's midline" in w
               for w in unnamed["warnings"])
    assert not any("was traced as the" in w for w in unnamed["warnings"])

    mislabelled = analyse("nerve left")
    assert mislabelled["nerves"][0]["side"] == "left"
    assert any("traced as the left sciatic nerve" in w and "patient's right" in w for w in mislabelled["warnings"])


def test_a_full_disk_while_writing_is_bad_input_and_leaves_the_folder_as_it_was(case, tmp_path, monkeypatch, capsys):
    """A disk that fills up while the results are written is the machine's state, not a
    defect: exit 2 with a message naming the folder, and an earlier run's results there
    stay whole."""
    import errno

    from HOSciaticModuleLib import export

    _, paths = case
    out = tmp_path / "out"
    assert cli.main(["analyze", str(paths["image"]), "--out", str(out), "--no-scene", "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(folder, *args, **kwargs):
        (folder / "metrics.json").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_results", disk_full)
    assert cli.main(["analyze", str(paths["image"]), "--out", str(out), "--no-scene", "--quiet"]) == 2
    message = "".join(capsys.readouterr().err.split())  # the message is wrapped at 100 characters
    assert "Nospaceleftondevice" in message and str(out) in message and "freespace" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _writing(names, text):
    """A results writer for :func:`export.publish`: files ``names`` holding ``text``."""
    return lambda folder: [(folder / name).write_text(text) for name in names]


def _with_earlier_results(out: Path) -> Path:
    """``out`` holding an earlier run's results, one of which the next run does not write."""
    from HOSciaticModuleLib import export

    export.publish(out, _writing(["metrics.json", "islands.csv", "stations_left.csv"], "old"))
    return out


def test_results_are_moved_into_place_all_or_nothing(tmp_path, monkeypatch):
    # A result that cannot replace its older copy (held open by another program, locked)
    # once left new and old files side by side, under a message saying the folder was
    # unchanged: now what was replaced is put back.
    import os

    from HOSciaticModuleLib import export

    out = _with_earlier_results(tmp_path / "out")
    replace = os.replace

    def held_open(source, target):
        if Path(target).name == "metrics.json" and ".hosciatic-partial-" in str(source):
            raise PermissionError(1, "Operation not permitted")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", held_open)
    with pytest.raises(PermissionError):
        export.publish(out, _writing(["islands.csv", "metrics.json"], "new"))
    assert {p.name: p.read_text() for p in out.iterdir() if not p.name.startswith(".")} == {
        "metrics.json": "old", "islands.csv": "old", "stations_left.csv": "old"}
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [export.RESULTS_MANIFEST]
    monkeypatch.setattr(os, "replace", replace)
    export.publish(out, _writing(["islands.csv", "metrics.json"], "new"))
    assert {p.name: p.read_text() for p in out.iterdir() if not p.name.startswith(".")} == {
        "metrics.json": "new", "islands.csv": "new"}


@pytest.mark.parametrize("moves_before_ctrl_c", [1, 2, 3, 4, 5])
def test_ctrl_c_while_results_are_moved_in_leaves_the_earlier_ones(tmp_path, monkeypatch, moves_before_ctrl_c):
    # Ctrl-C (or a scheduler's SIGTERM) right after a move of the swap: only a failed
    # move was rolled back, so the folder kept new and old results mixed, and the old
    # ones lay in a hidden folder nothing removed. The signal may also fall between a
    # move and the note of it.
    out = _with_earlier_results(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted_after_a_move(moves):
        if moves == moves_before_ctrl_c:
            raise KeyboardInterrupt

    _publish_interrupted(out, monkeypatch, interrupted_after_a_move)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _publish_interrupted(out: Path, monkeypatch, after_each_move, published=None) -> int:
    """Publish new results into ``out`` with ``after_each_move(moves so far)`` called
    after each file move, expecting the run to be interrupted; returns the moves made."""
    import os

    from HOSciaticModuleLib import export

    replace = os.replace
    moves = []

    def move(source, target):
        replace(source, target)
        moves.append(target)
        after_each_move(len(moves))

    monkeypatch.setattr(os, "replace", move)
    with pytest.raises(KeyboardInterrupt):
        export.publish(out, _writing(["islands.csv", "metrics.json"], "new"), published)
    monkeypatch.setattr(os, "replace", replace)
    return len(moves)


@pytest.fixture
def ctrl_c_as_in_a_terminal():
    """SIGINT raising KeyboardInterrupt, as Python sets it up in a terminal (a test
    runner's worker may ignore it)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_pressed_again_while_the_earlier_results_are_put_back_leaves_them_whole(
        tmp_path, monkeypatch, ctrl_c_as_in_a_terminal):
    # A real Ctrl-C at every move, so a second one while the earlier results were moved
    # back: the putting back stopped half way, new and old results mixed, the rest of the
    # old ones in a hidden folder the next run removed.
    import signal

    out = _with_earlier_results(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    published = []
    moves = _publish_interrupted(out, monkeypatch, lambda moves: signal.raise_signal(signal.SIGINT), published.append)
    assert moves == 4 + 3 + 4 and not published  # the earlier 4 moved aside, 3 new in, the 4 back
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ctrl_c_once_every_result_is_in_place_keeps_them(tmp_path, ctrl_c_as_in_a_terminal):
    # The signal waits until the folder holds one whole set, and the caller learns that
    # it does before the signal stops the run.
    import signal

    from HOSciaticModuleLib import export

    out = tmp_path / "out"
    export.publish(out, lambda folder: (folder / "islands.csv").write_text("old"))
    published = []

    def ctrl_c_once_published(folder):
        signal.raise_signal(signal.SIGINT)
        published.append(folder)

    with pytest.raises(KeyboardInterrupt):
        export.publish(out, lambda folder: (folder / "metrics.json").write_text("new"), ctrl_c_once_published)
    assert published == [out.resolve()]
    assert sorted(p.name for p in out.iterdir()) == [export.RESULTS_MANIFEST, "metrics.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("after_the_moves", [False, True])
def test_ctrl_c_while_the_results_are_published_is_reported_as_it_ended(
        case, tmp_path, monkeypatch, capsys, ctrl_c_as_in_a_terminal, after_the_moves):
    # Before, "no output was written" was said of a run whose results were in place, when
    # the Ctrl-C came after the last move, as the earlier results' folder was removed.
    import signal

    from HOSciaticModuleLib import export

    phantom, paths = case
    swap_in = export._swap_in

    def ctrl_c_during_the_swap(staging, out_dir, stale, held):
        if not after_the_moves:
            signal.raise_signal(signal.SIGINT)
        moved = swap_in(staging, out_dir, stale, held)
        if after_the_moves:
            signal.raise_signal(signal.SIGINT)
        return moved

    monkeypatch.setattr(export, "_swap_in", ctrl_c_during_the_swap)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(paths["image"]), "--out", str(out), "--no-scene", "--quiet"]) == 130
    message = " ".join(capsys.readouterr().err.split())
    if after_the_moves:
        assert f"the results were written in full into {out.resolve()}" in message
        assert (out / "metrics.json").is_file() and (out / "islands.csv").is_file()
    else:
        assert message == "hosciatic: interrupted; no output was written."
        assert not out.exists() or not any(out.iterdir())


def test_results_moved_aside_by_a_killed_run_are_cleared_and_its_case_runs_again(tmp_path):
    # A run killed outright (SIGKILL) while moving its results in leaves the new manifest
    # beside part of its results, and the earlier ones in a hidden folder: --skip-existing
    # took the case for done, and nothing removed the hidden folders.
    from HOSciaticModuleLib import export

    out = tmp_path / "out"
    export.publish(out, lambda folder: [(folder / name).write_text("x") for name in ("metrics.json", "islands.csv")])
    (out / "islands.csv").unlink()  # the kill came before it was moved in
    for prefix in (export.PARTIAL_PREFIX, export.PREVIOUS_RESULTS_PREFIX):
        (out / f"{prefix}killed").mkdir()
    # A batch killed while writing its summary leaves a partial file, which the clean-up
    # (made for folders) kept.
    (out / f"{export.PARTIAL_PREFIX}summary-killed.csv").write_text("case\n")
    assert not all((out / name).exists() for name in export.earlier_results(out))
    export.prepare_output_folder(out).release()
    assert not (out / f"{export.PARTIAL_PREFIX}killed").exists()
    assert not (out / f"{export.PARTIAL_PREFIX}summary-killed.csv").exists()
    export.publish(out, lambda folder: [(folder / name).write_text("y") for name in ("metrics.json", "islands.csv")])
    assert sorted(p.name for p in out.iterdir()) == [export.RESULTS_MANIFEST, "islands.csv", "metrics.json"]


def test_the_panel_export_does_not_replace_another_images_results(tmp_path):
    # Exported to the same folder (the panel's default), the next case replaced the one
    # before without a word.
    from HOSciaticModuleLib import export

    out = tmp_path / "results"
    export.check_not_another_images_results(out, "patient A CT")  # no folder yet
    export.publish(out, lambda folder: (folder / "metrics.json").write_text(
        json.dumps({"input": {"image": "patient A CT"}})))
    export.check_not_another_images_results(out, "patient A CT")  # the same case again
    with pytest.raises(InputError, match="holds the results of 'patient A CT'.*Choose another folder"):
        export.check_not_another_images_results(out, "patient B CT")
    (out / "metrics.json").write_text("not a results document")
    export.check_not_another_images_results(out, "patient B CT")


def test_a_file_made_private_first_gets_the_umask_mode_or_stays_private(tmp_path, monkeypatch):
    # The batch summary and the demo case are made by tempfile (0600 / 0700): given the
    # mode of an ordinary file, and where the umask cannot be read without changing it
    # (no /proc), left private rather than opened to 0644 against a site's umask 077.
    import os
    import tempfile

    from HOSciaticModuleLib import export

    previous = os.umask(0o077)
    try:
        handle, name = tempfile.mkstemp(dir=tmp_path)
        os.close(handle)
        export.give_default_mode(Path(name))
        assert os.stat(name).st_mode & 0o777 == 0o600
        os.umask(0o022)
        export.give_default_mode(Path(name))
        assert os.stat(name).st_mode & 0o777 == 0o644
        os.chmod(name, 0o600)
        monkeypatch.setattr(export, "process_umask", lambda: None)
        export.give_default_mode(Path(name))
        assert os.stat(name).st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


def test_terminated_run_leaves_no_output_and_its_stale_copy_is_cleared(case, tmp_path, monkeypatch):
    # SIGTERM, as a job scheduler's time limit sends, during the HO step: the run stopped
    # without its clean-up, leaving a compressed copy of the whole CT in the output folder,
    # which later runs into that folder kept.
    import os
    import signal

    from HOSciaticModuleLib import export, ossification

    _, paths = case
    segment = ossification.segment_ossifications

    def terminated_meanwhile(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return segment(*args, **kwargs)

    monkeypatch.setattr(ossification, "segment_ossifications", terminated_meanwhile)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(paths["image"]), "--out", str(out), "--quiet"]) == 143
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is previous
    monkeypatch.setattr(ossification, "segment_ossifications", segment)
    # A run killed outright (SIGKILL) cannot clean up: the next run into the folder does.
    stale = out / f"{export.PARTIAL_VOLUME_PREFIX}killed"
    stale.mkdir(parents=True)
    (stale / "volume.nrrd").write_bytes(b"0" * 1000)
    assert cli.main(["analyze", str(paths["image"]), "--out", str(out), "--quiet", "--no-scene"]) == 0
    assert not stale.exists() and (out / "metrics.json").is_file()


def test_seed_points_from_an_fcsv_file_are_those_of_the_json_file(tmp_path):
    # An older point list (.fcsv, LPS as Slicer 4.11 and later write it) gives the same
    # seeds and side as the same points saved as .mrk.json.
    points = np.array([[80.0, -20.0, -120.0], [82.0, -18.0, -60.0], [79.0, -21.0, 10.0]])
    json_path = tmp_path / "nerve_right.mrk.json"
    write_markups_points_json(json_path, points, "nerve")
    fcsv_path = tmp_path / "nerve_right.fcsv"
    fcsv_path.write_text("# Markups fiducial file version = 5.8\n# CoordinateSystem = LPS\n"
                         "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                         + "".join(f"{n},{-x},{-y},{z},0,0,0,1,1,1,0,F-{n},,,2,0\n"
                                   for n, (x, y, z) in enumerate(points, start=1)))
    ((side_json, from_json, _),) = cli._load_seeds([str(json_path)])
    ((side_fcsv, from_fcsv, warnings),) = cli._load_seeds([str(fcsv_path)])
    assert side_json == side_fcsv == "right" and warnings == []
    np.testing.assert_allclose(from_fcsv, from_json)
    np.testing.assert_allclose(from_fcsv, points)
    # Without its columns line (Slicer reads the rows in its standard order) the fifth
    # field, 0, was read as "never placed", and every point was left out.
    lines = fcsv_path.read_text().splitlines(keepends=True)
    fcsv_path.write_text("".join(line for line in lines if not line.startswith("# columns")))
    ((_, without_columns, warnings),) = cli._load_seeds([str(fcsv_path)])
    np.testing.assert_allclose(without_columns, points)
    assert warnings == []


def test_a_demo_case_left_half_written_is_made_again(tmp_path, monkeypatch):
    # A demo interrupted while writing its case left the CT without its seeds, and every
    # later demo was refused for want of them.
    from HOSciaticModuleLib import export

    case_dir = tmp_path / "demo_case"
    case_dir.mkdir()
    (case_dir / "ct.nrrd").write_bytes(b"NRRD0004\n")
    monkeypatch.setattr(cli, "run_analyze", lambda args, progress, on_published=None: args)
    analyze_args = cli.run_demo(cli.build_parser().parse_args(["demo", "--out", str(tmp_path), "--quiet"]),
                                cli._ConsoleProgress(True))
    assert all((case_dir / name).is_file() for name in cli.DEMO_CASE_FILES)
    assert Path(analyze_args.image) == case_dir / "ct.nrrd" and read_volume(analyze_args.image).array.ndim == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(export.PARTIAL_PREFIX)]


def test_ctrl_c_while_the_command_loads_is_answered_in_one_line(monkeypatch, capsys):
    # A Ctrl-C in the first second, while the command's libraries load, printed a traceback.
    import sys

    from HOSciaticModuleLib import command

    class InterruptedWhileLoading:
        def find_spec(self, name, path=None, target=None):
            if name == "HOSciaticModuleLib.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "HOSciaticModuleLib.cli")
    monkeypatch.setattr(sys, "meta_path", [InterruptedWhileLoading(), *sys.meta_path])
    assert command.main() == 130
    assert capsys.readouterr().err.strip() == "hosciatic: interrupted; no output was written."


def test_ctrl_c_after_the_results_are_written_says_so(case, tmp_path, monkeypatch, capsys):
    # A Ctrl-C while the closing summary was printed said "no output was written" of a
    # run whose results were all in place.
    phantom, paths = case

    def interrupted(text):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_print_closing", interrupted)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(paths["image"]), "--out", str(out), "--no-scene", "--quiet"]) == 130
    message = " ".join(capsys.readouterr().err.split())
    assert "written in full into" in message and "no output was written" not in message
    assert (out / "metrics.json").is_file() and (out / "islands.csv").is_file()


def test_closing_summary_gives_the_ho_volume_of_each_side_where_it_is_told(tmp_path):
    def summary_line(islands):
        document = {"ossifications": {"count": len(islands), "total_volume_ml": sum(i["volume_ml"] for i in islands),
                                      "islands": islands}, "nerves": []}
        (tmp_path / "metrics.json").write_text(json.dumps(document))
        (line,) = [line for line in cli._summary(tmp_path).splitlines() if line.startswith("HO islands")]
        return line

    both = [{"side": "left", "volume_ml": 4.0, "doubts": ""}, {"side": "right", "volume_ml": 1.5, "doubts": ""}]
    assert summary_line(both) == "HO islands: 2, total 5.500 mL (right 1.500 mL, left 4.000 mL)"
    one_hip = [{"side": "", "volume_ml": 4.0, "doubts": ""}]
    assert summary_line(one_hip) == "HO islands: 1, total 4.000 mL"


def test_closing_summary_gives_each_nerves_ratios_it_has(tmp_path):
    # The thickening, signal and other-side ratios follow the contact figures where the
    # nerve has them (a nerve without contact, or on CT, has none of some).
    nerve = {"side": "right", "length_mm": 84.0, "mean_diameter_mm": 9.81, "encasement_class": "encasement",
             "max_encasement_deg": 282.7, "min_distance_mm": 0.0, "thickening_ratio": 1.102, "signal_ratio": None,
             "contralateral_area_ratio": 1.621}
    untouched = {"side": "left", "length_mm": 84.0, "mean_diameter_mm": 7.87, "encasement_class": "none",
                 "max_encasement_deg": 0.0, "min_distance_mm": 78.88, "thickening_ratio": None, "signal_ratio": None,
                 "contralateral_area_ratio": None}
    (tmp_path / "metrics.json").write_text(json.dumps({"nerves": [nerve, untouched]}))
    lines = [line for line in cli._summary(tmp_path).splitlines() if line.startswith("Sciatic nerve")]
    assert lines == [
        "Sciatic nerve right: length 84.0 mm, mean diameter 9.81 mm, class encasement, max encasement 282.7 deg, "
        "min distance 0.0 mm, thickening ratio 1.102, area vs other side 1.621",
        "Sciatic nerve left: length 84.0 mm, mean diameter 7.87 mm, class none, max encasement 0.0 deg, "
        "min distance 78.88 mm"]
