"""A catalogue of bad and unusual inputs: each ends in a clear refusal or a correct, warned result.

Command line: exit status 2, a message saying what was wrong and what to do, no traceback, nothing
left in the output folder. Scene: an InputError, no stray node, previous results untouched.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from HOSciaticModuleLib import scene as scene_io
from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.geometry import VolumeGeometry
from HOSciaticModuleLib.imageio import write_volume
from HOSciaticModuleLib.phantom import (PhantomSpec, generate_phantom, write_dicom_slices, write_markups_points_json,
                                         write_phantom_case)
from HOSciaticModuleLib.pipeline import HOSciaticAnalysis

SMALL = dict(spacing_ijk=(1.2, 1.2, 2.0), fov_mm=(110.0, 110.0, 120.0))


def run_cli(*args, env=None):
    import os

    environment = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "HOSciaticModuleLib.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=environment)


def assert_refused(result, out: Path, *phrases):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    message = " ".join(result.stderr.split()).lower()
    for phrase in phrases:
        assert phrase.lower() in message, result.stderr
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    phantom = generate_phantom(**SMALL)
    return phantom, write_phantom_case(phantom, folder)


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------
def _nrrd_with_header(path: Path, sizes, spacings=None, directions=None, dimension=3, data_type="short"):
    """A raw NRRD written by hand, for headers no writer would produce."""
    header = ["NRRD0004", f"type: {data_type}", f"dimension: {dimension}", f"sizes: {' '.join(map(str, sizes))}",
              "encoding: raw", "endian: little"]
    if directions is not None:
        header.append("space: left-posterior-superior")
        header.append("space directions: " + " ".join("(" + ",".join(map(str, d)) + ")" for d in directions))
        header.append("space origin: (0,0,0)")
    elif spacings is not None:
        header.append(f"spacings: {' '.join(map(str, spacings))}")
    payload = np.zeros(int(np.prod(sizes)), np.int16).tobytes()
    path.write_bytes(("\n".join(header) + "\n\n").encode() + payload)


@pytest.mark.parametrize("case, phrases", [
    ("missing", ["does not exist"]),
    ("not_image", ["not an image"]),
    ("two_d", ["2D"]),
    ("four_d", ["4D"]),
    ("nan", ["NaN"]),
    ("inf", ["infinite"]),
    ("zero_spacing", ["spacing"]),
    ("sheared", ["non-orthogonal"]),
    ("spacing_in_metres", ["another unit"]),
    ("huge_voxels", ["larger than 10 mm"]),
    # A missing spacing would be read as 1 mm, and a file cut short filled with zeros.
    ("nan_spacing", ["no usable voxel spacing"]),
    ("no_spacing", ["no voxel spacing"]),
    ("nifti_zero_pixdim", ["no usable voxel spacing"]),
    ("nifti_gz_cut_short", ["cut short"]),
    ("nifti_cut_short", ["cut short"]),
    # Said not to be an image SimpleITK can read, with advice to give a NRRD file.
    ("nrrd_cut_short", ["cut short", "bytes of", "Copy or export it again"]),
    # A PACS export packed into one file, its name without a suffix: told by its signature.
    ("archive", ["is an archive", "Unpack it and give the folder"]),
])
def test_bad_image_files(tmp_path, case, phrases):
    image = tmp_path / "image.nrrd"
    geometry = VolumeGeometry.from_spacing_origin_directions((6, 6, 6), (1, 1, 1), (0, 0, 0))
    if case == "not_image":
        image.write_text("patient notes, not pixels")
    elif case == "two_d":
        import SimpleITK as sitk

        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 12), np.int16)), str(image))
    elif case == "four_d":
        _nrrd_with_header(image, (4, 4, 4, 3), dimension=4)
    elif case in ("nan", "inf"):
        values = np.zeros((6, 6, 6), np.float32)
        values[1, 2, 3] = np.nan if case == "nan" else np.inf
        write_volume(image, values, geometry)
    elif case == "zero_spacing":
        _nrrd_with_header(image, (4, 4, 4), directions=[(0, 0, 0), (0, 1, 0), (0, 0, 1)])
    elif case == "sheared":
        _nrrd_with_header(image, (4, 4, 4), directions=[(1, 0, 0), (0.7, 0.7, 0), (0, 0, 1)])
    elif case == "spacing_in_metres":
        _nrrd_with_header(image, (4, 4, 4), spacings=(0.0008, 0.0008, 0.001))
    elif case == "huge_voxels":
        _nrrd_with_header(image, (4, 4, 4), spacings=(20, 20, 20))
    elif case == "nan_spacing":
        _nrrd_with_header(image, (4, 4, 4), spacings=("nan", 1, 1))
    elif case == "no_spacing":
        _nrrd_with_header(image, (4, 4, 4))
    elif case == "archive":
        import zipfile

        image = tmp_path / "study"
        with zipfile.ZipFile(image, "w") as archive:
            archive.writestr("DICOM/IM0001", b"DICM")
    elif case == "nrrd_cut_short":
        write_volume(image, np.full((20, 30, 40), -1000, np.int16), geometry)
        import SimpleITK as sitk

        sitk.WriteImage(sitk.ReadImage(str(image)), str(image), useCompression=False)
        data = image.read_bytes()
        image.write_bytes(data[:len(data) * 2 // 3])
    elif case.startswith("nifti"):
        import gzip
        import struct

        image = tmp_path / "image.nii"
        write_volume(image, np.full((20, 30, 40), -1000, np.int16),
                     VolumeGeometry.from_spacing_origin_directions((40, 30, 20), (0.8, 0.8, 1.5), (0, 0, 0)))
        data = image.read_bytes()
        if case == "nifti_zero_pixdim":
            data = bytearray(data)
            data[254:256] = struct.pack("<h", 0)  # no sform: the spacing is read from pixdim
            data[80:84] = struct.pack("<f", 0.0)  # pixdim[1]
        elif case == "nifti_cut_short":
            data = data[:len(data) * 2 // 3]
        else:
            image.unlink()
            image = tmp_path / "image.nii.gz"
            compressed = gzip.compress(data)
            data = compressed[:len(compressed) * 2 // 3]
        image.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", image, "--out", out), out, *phrases)


def test_volume_over_memory_budget_is_refused_with_advice(tmp_path, ct_case):
    phantom, paths = ct_case
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, env={"HOSCIATIC_MEMORY_GB": "0.001"})
    assert_refused(result, out, "budget", "Give an ROI around the hip")
    # With an ROI already given, the advice is about the ROI.
    roi = _roi_file(tmp_path / "roi.mrk.json", np.asarray(phantom.spec.center_ras), (60, 60, 60))
    result = run_cli("analyze", paths["image"], "--out", out, "--roi", roi, env={"HOSCIATIC_MEMORY_GB": "0.001"})
    assert_refused(result, out, "budget", "read for the ROI", "make the ROI smaller")


def test_output_path_that_is_a_file_is_refused(tmp_path, ct_case):
    _, paths = ct_case
    out = tmp_path / "taken"
    out.write_text("already here")
    result = run_cli("analyze", paths["image"], "--out", out)
    assert result.returncode == 2 and "not a folder" in result.stderr
    assert out.read_text() == "already here"


def test_output_folder_that_cannot_be_created_is_refused(tmp_path, ct_case):
    _, paths = ct_case
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")
    result = run_cli("analyze", paths["image"], "--out", blocker / "out")
    assert result.returncode == 2 and "output folder" in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "in the way"


def test_unknown_option_is_refused_without_usage_dump(tmp_path, ct_case):
    _, paths = ct_case
    result = run_cli("analyze", paths["image"], "--out", tmp_path / "o", "--bone-threshold", "lots")
    assert result.returncode == 2 and "--bone-threshold" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# Wrong content
# ---------------------------------------------------------------------------------------
def test_mri_given_as_ct_is_refused(tmp_path):
    phantom = generate_phantom(modality="mr", **SMALL)
    paths = write_phantom_case(phantom, tmp_path / "mr", name="mr")
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", paths["image"], "--out", out), out, "MR")


@pytest.mark.parametrize("heights, phrases", [
    ([0.0, 1.0, 2.0, 9.0, 10.0], ["gap of 7.0 mm", "missing"]),
    ([0.0, 1.0, 1.0, 2.0, 3.0], ["same position"]),
])
def test_dicom_series_with_missing_or_duplicate_slices_is_refused(tmp_path, heights, phrases):
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    planes = np.full((len(heights), 8, 8), -100, np.int16)
    write_dicom_slices(tmp_path / "dicom", planes, [(0.0, 0.0, z) for z in heights], row, column, (1.0, 1.0))
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", tmp_path / "dicom", "--out", out), out, *phrases)


def test_ct_without_its_rescale_intercept_is_refused(tmp_path, ct_case):
    phantom, _ = ct_case
    raw = tmp_path / "raw.nrrd"
    write_volume(raw, np.clip(np.round(phantom.image) + 1024, 0, None).astype(np.uint16), phantom.geometry)
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", raw, "--out", out), out, "subtract the intercept")


def test_nerve_without_a_fat_plane_is_refused(tmp_path):
    # Nothing separates the nerve from the muscle: its outline would run into the muscle.
    phantom = generate_phantom(PhantomSpec(nerve_sheath_mm=0.0, islands=()), spacing_ijk=(1.0, 1.0, 2.0))
    paths = write_phantom_case(phantom, tmp_path / "case")
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", paths["seeds"]), out,
                   "wider than any sciatic nerve", "fat plane")


def test_ct_without_bone_or_ho_is_a_valid_empty_result(tmp_path):
    phantom = generate_phantom(PhantomSpec(include_native_bone=False, islands=(), calcification_z=()), **SMALL)
    paths = write_phantom_case(phantom, tmp_path / "case")
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", paths["seeds"], "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    assert document["ossifications"]["count"] == 0
    assert document["nerves"][0]["encasement_class"] == "none"
    assert document["nerves"][0]["contact_length_mm"] == 0.0


def _phantom_with_a_stem():
    """The small phantom with a metal stem inside the femur, away from the HO islands;
    and the stem's mask."""
    phantom = generate_phantom(**SMALL)
    centre = phantom.geometry.ras_to_kji_points(np.asarray(phantom.spec.center_ras) + [36.0, 15.0, -35.0])[0]
    k, j, i = np.ogrid[:phantom.image.shape[0], :phantom.image.shape[1], :phantom.image.shape[2]]
    spacing = phantom.geometry.spacing_kji
    stem = ((k - centre[0]) * spacing[0]) ** 2 / 900 + ((j - centre[1]) * spacing[1]) ** 2 / 36 + \
           ((i - centre[2]) * spacing[2]) ** 2 / 36 <= 1.0
    phantom.image[stem] = 8000.0
    return phantom, stem


def test_metal_prosthesis_is_not_ho_and_is_reported(tmp_path):
    # With a blob of bone cement (1800 HU throughout) 20 mm from the stem's axis, outside
    # the femur: it is reported as an island with its doubt, in metrics.json and in the
    # summary the command prints. The mature islands (cortex and marrow) have none.
    phantom, _ = _phantom_with_a_stem()
    offset = phantom.geometry.voxel_ras_grid() - (np.asarray(phantom.spec.center_ras) + [36.0, 35.0, -35.0])
    cement = np.sum((offset / [4.0, 4.0, 8.0]) ** 2, axis=-1) <= 1.0
    phantom.image[cement] = 1800.0
    paths = write_phantom_case(phantom, tmp_path / "case")
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    islands = document["ossifications"]["islands"]
    assert document["ossifications"]["count"] == len(phantom.islands) + 1
    assert all(island["max_hu"] < 2500 for island in islands)
    assert any("metal" in warning.lower() for warning in document["warnings"])
    centre = phantom.geometry.kji_to_ras_points(np.argwhere(cement).mean(axis=0))[0]
    (at_cement,) = [i for i in islands if np.linalg.norm(np.asarray(i["centroid_ras"]) - centre) < 2.0]
    assert "without a cortex near metal (a streak or bone cement?)" in at_cement["doubts"].split("; ")
    assert all(island["doubts"] == "" for island in islands if island["maturity"] == "mature")
    doubted = [island for island in islands if island["doubts"]]
    doubted_ml = sum(island["volume_ml"] for island in doubted)
    assert f"{len(doubted)} named as possibly not HO, {doubted_ml:.3f} mL" in result.stdout


def test_stations_near_metal_carry_their_caveat_in_every_output(tmp_path):
    # The same stem, with the nerve traced: each station within 50 mm of the metal says
    # "near metal" in the stations CSV and in metrics.json, and still does once the
    # scene is saved, reloaded and measured again (the caveats are kept on the curve).
    import csv

    from scipy.spatial import cKDTree

    from HOSciaticModuleLib import export
    from HOSciaticModuleLib.mrml_app import create_headless_slicer
    from HOSciaticModuleLib.pipeline import HOSciaticAnalysis

    phantom, stem = _phantom_with_a_stem()
    paths = write_phantom_case(phantom, tmp_path / "case")
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", paths["seeds"])
    assert result.returncode == 0, result.stderr
    to_metal = cKDTree(phantom.geometry.kji_to_ras_points(np.argwhere(stem)))

    def assert_near_metal_flagged(points, caveats):
        distance = to_metal.query(np.asarray(points, float))[0]
        flagged = np.array(["near metal" in caveat for caveat in caveats])
        assert distance.min() < 45.0 and distance.max() > 55.0  # both kinds of station are there
        assert flagged[distance <= 48.5].all() and not flagged[distance > 51.5].any()

    document = json.loads((out / "metrics.json").read_text())
    stations = document["nerves"][0]["stations"]
    assert_near_metal_flagged([s["ras"] for s in stations], [s["caveats"] for s in stations])
    with open(out / "stations_right.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["caveats"] for row in rows] == [s["caveats"] for s in stations]

    fresh = create_headless_slicer(expose_as_slicer_globals=False).scene
    assert fresh.ReadFromMRB(str((out / "scene.mrb").resolve()))
    analysis = HOSciaticAnalysis(fresh)
    oss, nerves, contacts = analysis.analysis_from_scene(fresh.GetFirstNodeByName("HOSciatic segmentation"))
    reloaded = export.station_rows(nerves[0][1], contacts[0][1])
    assert_near_metal_flagged([s["ras"] for s in reloaded], [s["caveats"] for s in reloaded])


def test_thick_slices_give_a_result_with_a_warning(tmp_path):
    # 5 mm slices that average their slab, as a scanner's do: the three islands and the
    # encasement (270 deg sleeve) survive, and the reader is told what thick slices cost.
    phantom = generate_phantom(PhantomSpec(integrate_voxels=True), spacing_ijk=(1.0, 1.0, 5.0),
                               fov_mm=(110.0, 110.0, 130.0))
    paths = write_phantom_case(phantom, tmp_path / "case")
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", paths["seeds"], "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    assert any("thick" in warning for warning in document["warnings"])
    assert document["ossifications"]["count"] == len(phantom.islands)
    nerve = document["nerves"][0]
    # Thick slices blur the sleeve's edges: its encasement still reads as one (more than
    # half the circumference) and is never over-read: at most 270 + 4 asin(tau / 2r) deg
    # (the 1 mm tolerance reaches past both edges of the sleeve; r about 4.6 mm), 295 deg.
    assert nerve["encasement_class"] == "encasement" and 180.0 < nerve["max_encasement_deg"] <= 295.0


# ---------------------------------------------------------------------------------------
# Markups
# ---------------------------------------------------------------------------------------
def _seeds_file(tmp_path, points, name="Sciatic nerve right seeds"):
    path = tmp_path / f"{len(list(tmp_path.glob('*.mrk.json')))}_seeds.mrk.json"
    write_markups_points_json(path, points, name)
    return path


def _visible_ends(phantom):
    """Two points on the nerve, 5 mm inside where it enters and leaves the volume."""
    s = phantom.centreline_s_mm[phantom.geometry.contains_ras(phantom.centreline_ras, 3.0)]
    return phantom.seeds_ras([s[0] + 5.0, s[-1] - 5.0])


@pytest.mark.parametrize("case, phrases", [
    ("one_point", ["two"]),
    ("coincident", ["coincide"]),
    ("outside", ["outside", "In the seed-point file", "(right nerve)"]),
    ("in_air", ["air"]),
    ("both_legs", ["both legs"]),
    ("far_off", ["seed point 1", "outside the volume"]),  # not a second leg: no body is a kilometre wide
])
def test_bad_seed_points(tmp_path, ct_case, case, phrases):
    phantom, paths = ct_case
    ends = _visible_ends(phantom)
    points = {
        "one_point": ends[:1],
        "coincident": np.vstack([ends[0], ends[0] + 0.01]),
        "outside": np.vstack([ends[0], ends[1] + [0.0, 0.0, 500.0]]),
        "in_air": np.vstack([ends[0], phantom.geometry.kji_to_ras_points([[5, 2, phantom.image.shape[2] - 3]])[0]]),
        "both_legs": np.vstack([ends, ends + [-180.0, 0.0, 0.0]]),
        "far_off": np.vstack([ends[0] + [1e6, 0.0, 0.0], ends[1]]),
    }[case]
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", _seeds_file(tmp_path, points), "--no-scene")
    assert_refused(result, out, *phrases)


def test_malformed_markups_and_roi_files(tmp_path, ct_case):
    _, paths = ct_case
    out = tmp_path / "out"
    broken = tmp_path / "broken.mrk.json"
    broken.write_text(json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [{"position": ["a", 1]}]}]}))
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", broken), out, "malformed")
    not_objects = tmp_path / "not_objects.mrk.json"
    not_objects.write_text(json.dumps({"markups": [1, 2]}))
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", not_objects), out, "malformed")
    cut_short = tmp_path / "cut_short.mrk.json"
    cut_short.write_text(Path(paths["seeds"]).read_text()[:-40])
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", cut_short), out,
                   "not valid JSON", "line")
    old_format = tmp_path / "seeds.fcsv"
    old_format.write_text("# Markups fiducial file version = 4.11\n1,80,-20,-120,0,0,0,1,1,1,0,F-1,,\n")
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", old_format), out,
                   "does not say its coordinate system", ".mrk.json")
    roi = _roi_file(tmp_path / "roi.mrk.json", (0.0, 0.0, 0.0), (50, 50, 50))
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", roi), out, "holds an ROI")
    unplaced = tmp_path / "unplaced_right.mrk.json"
    document = json.loads(Path(paths["seeds"]).read_text())
    for control_point in document["markups"][0]["controlPoints"][1:]:
        control_point["positionStatus"] = "undefined"
    unplaced.write_text(json.dumps(document))
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", unplaced), out,
                   "1 placed point(s)", "without a position")
    no_roi = tmp_path / "points.mrk.json"
    write_markups_points_json(no_roi, np.zeros((2, 3)), "points")
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--roi", no_roi), out, "no markups ROI")


def test_seed_points_never_placed_are_left_out_with_a_warning(tmp_path, ct_case):
    _, paths = ct_case
    document = json.loads(Path(paths["seeds"]).read_text())
    points = document["markups"][0]["controlPoints"]
    points.append(dict(points[-1], id="extra", label="extra", positionStatus="undefined"))
    seeds = tmp_path / "nerve_right.mrk.json"
    seeds.write_text(json.dumps(document))
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", seeds, "--no-scene")
    assert result.returncode == 0, result.stderr
    warnings = json.loads((out / "metrics.json").read_text())["warnings"]
    assert any("1 point(s) of the seed-point file 'nerve_right.mrk.json' had no position" in w for w in warnings)


def test_nifti_without_orientation_is_read_with_a_warning(tmp_path, ct_case):
    # Neither qform nor sform: the axes are taken as stored, and left and right may be swapped.
    import struct

    import SimpleITK as sitk

    _, paths = ct_case
    image = tmp_path / "ct.nii"
    sitk.WriteImage(sitk.ReadImage(str(paths["image"])), str(image))
    header = bytearray(image.read_bytes())
    header[252:256] = struct.pack("<2h", 0, 0)
    image.write_bytes(bytes(header))
    out = tmp_path / "out"
    result = run_cli("analyze", image, "--out", out, "--no-scene")
    assert result.returncode == 0, result.stderr
    warnings = json.loads((out / "metrics.json").read_text())["warnings"]
    assert any("gives no orientation" in w and "left and right may be swapped" in w for w in warnings)


def test_roi_without_coordinates_is_refused(tmp_path, ct_case):
    _, paths = ct_case
    out = tmp_path / "out"
    roi = _roi_file(tmp_path / "roi.mrk.json", (float("nan"), 0.0, 0.0), (50, 50, 50))
    result = run_cli("analyze", paths["image"], "--out", out, "--roi", roi)
    assert_refused(result, out, "no usable position or orientation")
    assert "RuntimeWarning" not in result.stderr


@pytest.mark.parametrize("option, value, phrase", [
    ("--out", "", "empty path"), ("--roi", " ", "empty path"), ("--bone-threshold", "50", "outside 100 to 2000"),
    ("--bone-threshold", "2500", "outside 100 to 2000"),
])
def test_empty_paths_and_useless_thresholds_are_refused(tmp_path, ct_case, option, value, phrase):
    # An unset shell variable gives an empty --out, which would write into the working
    # folder; a threshold below muscle's level makes the whole body one bone (no HO).
    _, paths = ct_case
    out = tmp_path / "out"
    arguments = ["analyze", paths["image"], "--out", out, option, value]
    if option == "--out":
        arguments = ["analyze", paths["image"], "--out", value]
    assert_refused(run_cli(*arguments), out, phrase)


def test_a_refused_run_removes_the_folders_it_created(tmp_path):
    flat = tmp_path / "flat.nrrd"
    _nrrd_with_header(flat, (9, 9, 1), spacings=(1, 1, 1))
    out = tmp_path / "new" / "nested" / "out"
    assert_refused(run_cli("analyze", flat, "--out", out), out, "2D")
    assert not (tmp_path / "new").exists()


def test_seed_file_holding_other_markups_or_micrometres(tmp_path, ct_case):
    # Seeds saved with a line measured elsewhere and an ROI named for the other side (the
    # file's name names no side): the line's points were joined to the seeds (the trace
    # then refused as too wide), and the ROI's name set the side. Micrometres were read as
    # millimetres. Two point lists cannot be told apart and are refused.
    _, paths = ct_case
    seeds = json.loads(Path(paths["seeds"]).read_text())["markups"][0]
    line = {"type": "Line", "coordinateSystem": "LPS", "name": "L",
            "controlPoints": [{"position": [0.0, 0.0, 0.0]}, {"position": [0.0, 300.0, 0.0]}]}
    roi = {"type": "ROI", "coordinateSystem": "LPS", "name": "left hip crop", "center": [0.0, 0.0, 0.0],
           "size": [10.0, 10.0, 10.0], "controlPoints": []}
    in_micrometres = json.loads(json.dumps(seeds))
    in_micrometres["coordinateUnits"] = "um"
    for point in in_micrometres["controlPoints"]:
        point["position"] = [1000.0 * v for v in point["position"]]
    lengths = {}
    for name, markups in (("plain", [seeds]), ("mixed", [roi, line, seeds]), ("micrometres", [in_micrometres])):
        path = tmp_path / f"{name}.mrk.json"
        path.write_text(json.dumps({"markups": markups}))
        out = tmp_path / f"{name}_out"
        result = run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", path, "--no-scene")
        assert result.returncode == 0, result.stderr
        (nerve,) = json.loads((out / "metrics.json").read_text())["nerves"]
        assert nerve["side"] == "right"
        lengths[name] = nerve["length_mm"]
    assert lengths["mixed"] == lengths["micrometres"] == lengths["plain"]
    twice = tmp_path / "twice.mrk.json"
    twice.write_text(json.dumps({"markups": [seeds, dict(seeds, name="other points")]}))
    out = tmp_path / "twice_out"
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", twice), out,
                   "2 point lists or curves", "one file per nerve")


def _roi_file(path: Path, center_ras, size):
    center_lps = [-center_ras[0], -center_ras[1], center_ras[2]]
    document = {"markups": [{"type": "ROI", "coordinateSystem": "LPS", "name": "R", "center": center_lps,
                             "size": list(size), "orientation": [-1, 0, 0, 0, -1, 0, 0, 0, 1], "controlPoints": []}]}
    path.write_text(json.dumps(document))
    return path


def test_roi_outside_or_empty_is_refused(tmp_path, ct_case):
    phantom, paths = ct_case
    out = tmp_path / "out"
    far = _roi_file(tmp_path / "far.mrk.json", np.asarray(phantom.spec.center_ras) + [0, 0, 900.0], (50, 50, 50))
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--roi", far), out, "outside the volume")
    flat = _roi_file(tmp_path / "flat.mrk.json", phantom.spec.center_ras, (50, 0, 50))
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--roi", flat), out, "zero")


def test_roi_limits_the_search(tmp_path, ct_case):
    phantom, paths = ct_case
    out = tmp_path / "out"
    free_island = next(i for i in phantom.spec.islands if i.name == "free")
    centre = np.asarray(phantom.spec.center_ras) + np.asarray(free_island.center_offset)
    roi = _roi_file(tmp_path / "roi.mrk.json", centre, (40, 40, 40))
    result = run_cli("analyze", paths["image"], "--out", out, "--roi", roi, "--no-scene")
    assert result.returncode == 0, result.stderr
    islands = json.loads((out / "metrics.json").read_text())["ossifications"]["islands"]
    assert len(islands) == 1
    assert np.linalg.norm(np.asarray(islands[0]["centroid_ras"]) - centre) < 3.0


def test_bone_segmentation_on_another_grid_is_resampled_and_empty_one_refused(tmp_path, ct_case):
    phantom, paths = ct_case
    coarse = generate_phantom(spacing_ijk=(2.0, 2.0, 3.0), fov_mm=(130.0, 130.0, 140.0))
    write_volume(tmp_path / "bones.nrrd", coarse.native_bone_mask.astype(np.uint8), coarse.geometry)
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--bones", tmp_path / "bones.nrrd", "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    assert document["ossifications"]["count"] == len(phantom.islands)
    write_volume(tmp_path / "empty.nrrd", np.zeros_like(coarse.native_bone_mask, np.uint8), coarse.geometry)
    out2 = tmp_path / "out2"
    result = run_cli("analyze", paths["image"], "--out", out2, "--bones", tmp_path / "empty.nrrd")
    assert_refused(result, out2, "empty", "empty.nrrd' is empty")
    assert "ERR" not in result.stderr  # refused before the segmentation logic complains of an empty label map



def test_whole_body_label_map_uses_its_bones_alone(tmp_path, ct_case):
    """A TotalSegmentator-style multi-label NIfTI (label names in its header): the HO
    inside the muscle label is found, and the reader is told what was left out."""
    from scipy import ndimage

    from HOSciaticModuleLib.phantom import write_named_label_map

    phantom, paths = ct_case
    labels = np.zeros(phantom.native_bone_mask.shape, np.uint8)
    labels[ndimage.binary_dilation(phantom.ho_labels > 0, iterations=5)] = 2    # gluteus around the HO
    labels[phantom.native_bone_mask] = 1
    names = {1: "femur_right", 2: "gluteus_maximus_right", 3: "urinary_bladder"}
    labels[:4, :6, :6] = 3
    write_named_label_map(tmp_path / "total.nii.gz", labels, phantom.geometry, names)
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--bones", tmp_path / "total.nii.gz", "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    assert document["ossifications"]["count"] == len(phantom.islands)
    assert any("2 of the 3 segments" in w and "gluteus_maximus_right" in w for w in document["warnings"])
    # Without names every label counts, and the reader is warned that muscles would hide HO.
    write_volume(tmp_path / "unnamed.nrrd", labels, phantom.geometry)
    out2 = tmp_path / "out2"
    result = run_cli("analyze", paths["image"], "--out", out2, "--bones", tmp_path / "unnamed.nrrd", "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out2 / "metrics.json").read_text())
    assert document["ossifications"]["count"] == 0
    assert any("No segment of 'Native bone' is named as a bone" in w for w in document["warnings"])
    # Muscles alone: nothing to take as native bone, refused before anything is written.
    write_named_label_map(tmp_path / "muscles.nii.gz", (labels == 2).astype(np.uint8), phantom.geometry,
                          {1: "gluteus_maximus_right"})
    out3 = tmp_path / "out3"
    assert_refused(run_cli("analyze", paths["image"], "--out", out3, "--bones", tmp_path / "muscles.nii.gz"), out3,
                   "bone by its name", "gluteus_maximus_right")


def test_folder_of_one_mask_per_structure_uses_its_bones_alone(tmp_path, ct_case):
    """TotalSegmentator's default output: a folder of one mask file per structure. Only
    the files named as bones are read (an empty one, as for a structure outside the
    field of view, is passed over; a damaged organ's file is never opened), the HO inside
    the muscle's mask is found, and the reader is told which files were left out."""
    from scipy import ndimage

    phantom, paths = ct_case
    folder = tmp_path / "segmentations"
    folder.mkdir()
    muscle = ndimage.binary_dilation(phantom.ho_labels > 0, iterations=5) & ~phantom.native_bone_mask
    write_volume(folder / "femur_right.nii.gz", phantom.native_bone_mask.astype(np.uint8), phantom.geometry)
    write_volume(folder / "gluteus_maximus_right.nii.gz", muscle.astype(np.uint8), phantom.geometry)
    write_volume(folder / "skull.nii.gz", np.zeros(muscle.shape, np.uint8), phantom.geometry)
    (folder / "liver.nii.gz").write_bytes(b"damaged")
    (folder / "statistics.json").write_text("{}")
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--bones", folder, "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    truth_total = sum(island["volume_ml"] for island in phantom.islands)
    assert document["ossifications"]["count"] == len(phantom.islands)
    assert abs(document["ossifications"]["total_volume_ml"] - truth_total) <= 0.10 * truth_total
    assert any("2 of the 4 segments of 'segmentations'" in w and "gluteus_maximus_right" in w and "liver" in w
               for w in document["warnings"])
    assert document["input"]["bones"] == str(folder.resolve())
    # Muscles alone, or a bone's file that cannot be read: refused, naming the files.
    for name in ("femur_right.nii.gz", "skull.nii.gz", "liver.nii.gz"):
        (folder / name).unlink()
    out2 = tmp_path / "out2"
    assert_refused(run_cli("analyze", paths["image"], "--out", out2, "--bones", folder), out2,
                   "no file of the native-bone folder", "gluteus_maximus_right", "femur_left.nii.gz")
    (folder / "hip_right.nii.gz").write_bytes(b"damaged")
    out3 = tmp_path / "out3"
    assert_refused(run_cli("analyze", paths["image"], "--out", out3, "--bones", folder), out3, "hip_right.nii.gz")
    # The CT itself among the masks (copied under a bone's name): refused as the CT.
    (folder / "hip_right.nii.gz").unlink()
    write_volume(folder / "hip_right.nrrd", phantom.image, phantom.geometry)
    out_ct = tmp_path / "out_ct"
    assert_refused(run_cli("analyze", paths["image"], "--out", out_ct, "--bones", folder), out_ct,
                   "hip_right.nrrd' holds an image in Hounsfield units")
    # The folder above the masks' (TotalSegmentator's output folder): told which to give.
    out4 = tmp_path / "out4"
    above = tmp_path / "total"
    above.mkdir()
    folder.rename(above / "segmentations")
    assert_refused(run_cli("analyze", paths["image"], "--out", out4, "--bones", above), out4,
                   "holds no mask file itself", "its subfolder 'segmentations' does: give that folder")

# ---------------------------------------------------------------------------------------
# In a scene
# ---------------------------------------------------------------------------------------
def test_failed_steps_in_a_scene_leave_no_trace(slicer_scene, ct_case):
    phantom, _ = ct_case
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    oss = analysis.segment_ossifications(volume)
    segments = scene_io.segment_ids(oss.segmentation_node)
    rows = oss.islands_table_node.GetNumberOfRows()
    node_count = slicer_scene.GetNumberOfNodes()

    mr_like = scene_io.volume_node_from_array(slicer_scene, np.abs(phantom.image) / 10.0 + 5.0, phantom.geometry, "MR")
    empty_bones = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty bones")
    empty_bones.GetSegmentation().AddEmptySegment("bone")
    far_seeds = scene_io.points_node_from_array(slicer_scene, phantom.seeds_ras([10.0]) + [0, 0, 900.0], "far")
    added = slicer_scene.GetNumberOfNodes() - node_count
    failing_steps = [
        lambda: analysis.segment_ossifications(mr_like, segmentation_node=oss.segmentation_node,
                                               islands_table_node=oss.islands_table_node),
        lambda: analysis.segment_ossifications(volume, native_bone_segmentation_node=empty_bones,
                                               segmentation_node=oss.segmentation_node),
        lambda: analysis.trace_nerve(volume, far_seeds, segmentation_node=oss.segmentation_node),
        lambda: analysis.compute_contact(oss.segmentation_node, None, side="left"),
        lambda: analysis.trace_nerve(volume, far_seeds, side="middle"),
    ]
    for step in failing_steps:
        with pytest.raises(InputError):
            step()
        assert slicer_scene.GetNumberOfNodes() == node_count + added
        assert scene_io.segment_ids(oss.segmentation_node) == segments
        assert oss.islands_table_node.GetNumberOfRows() == rows


def test_analysis_inside_roi_node(slicer_scene, ct_case):
    phantom, _ = ct_case
    analysis = HOSciaticAnalysis(slicer_scene)
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    roi = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    wrap = next(i for i in phantom.spec.islands if i.kind == "shell")
    centre = phantom.seeds_ras([(wrap.s_start_mm + wrap.s_stop_mm) / 2.0])[0]
    roi.SetCenterWorld(*centre)
    roi.SetSize(45.0, 45.0, 45.0)
    oss = analysis.segment_ossifications(volume, roi_node=roi)
    assert len(oss.result.islands) == 1
    truth = next(i for i in phantom.islands if i["kind"] == "shell")
    assert abs(oss.result.islands[0].volume_ml - truth["volume_ml"]) < 0.15 * truth["volume_ml"]


def test_roi_around_one_hip_still_compares_both_sides(slicer_scene):
    """An ROI drawn around one hip of a CT of both: the HO step also reads the region
    mirrored across the body's midline, so a thick mass fused to the femur (found only
    by comparing both sides) is found as on the whole CT, and no warning says the
    midline is missing. Without that region it stayed native bone, silently."""
    import dataclasses

    from HOSciaticModuleLib.phantom import IslandSpec, other_hip_bones

    thick = IslandSpec("thick", "ellipsoid", True, center_offset=(48.0, -6.0, -10.0), semi_axes=(14.0, 12.0, 18.0))
    spec = PhantomSpec(islands=PhantomSpec().islands + (thick,), extra_bones=other_hip_bones(PhantomSpec()))
    phantom = generate_phantom(spec, spacing_ijk=(1.5, 1.5, 2.0), fov_mm=(300.0, 120.0, 150.0))
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    centre = np.asarray(spec.center_ras) + thick.center_offset
    whole = HOSciaticAnalysis(slicer_scene).segment_ossifications(volume).result
    roi = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    roi.SetCenterWorld(*centre)
    roi.SetSize(70.0, 70.0, 70.0)
    inside = HOSciaticAnalysis(slicer_scene).segment_ossifications(volume, roi_node=roi).result

    def at_mass(result):
        (island,) = [i for i in result.islands if np.linalg.norm(np.asarray(i.centroid_ras) - centre) < 10.0]
        return island

    truth = next(i for i in phantom.islands if i["name"] == "thick")
    assert at_mass(whole).volume_ml >= 0.7 * truth["volume_ml"]
    assert at_mass(inside).volume_ml == pytest.approx(at_mass(whole).volume_ml, rel=0.05)
    assert inside.body_midline is not None
    assert not any("midline was not found" in w for w in inside.warnings)
    assert dataclasses.astuple(at_mass(inside))[5:] == dataclasses.astuple(at_mass(whole))[5:]


@pytest.mark.parametrize("file_name", ["bones.seg.nrrd", "BONES.SEG.NRRD", "bones_saved_as.nrrd"])
def test_native_bone_segmentation_file(tmp_path, ct_case, slicer_scene, file_name):
    """A Slicer segmentation of the native skeleton (as TotalSegmentator gives) is
    honoured, segment names included, whatever the case of its extension or, for a plain
    .nrrd name, by its header (read as a label map, the muscle holding HO was bone)."""
    import slicer

    phantom, paths = ct_case
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bones")
    free = next(i["label"] for i in phantom.islands if i["name"] == "free")
    scene_io.replace_segments(node, {"femur and hip": phantom.native_bone_mask,
                                     "gluteus_maximus_right": phantom.ho_labels == free},
                              phantom.geometry, scene_io.BONE_COLOR)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / file_name))
    assert storage.WriteData(node)
    out = tmp_path / "out"
    result = run_cli("analyze", paths["image"], "--out", out, "--bones", tmp_path / file_name, "--no-scene")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "metrics.json").read_text())
    assert document["ossifications"]["count"] == len(phantom.islands)
    assert sum(i["fused_to_native_bone"] for i in document["ossifications"]["islands"]) == 1


def test_native_bone_segmentation_cut_short_is_refused(tmp_path, ct_case, slicer_scene):
    """A .seg.nrrd cut short in a copy: Slicer's reader ended the process (exit 134, no
    message, the CT's partial copy left in the output folder), and a batch with it."""
    import slicer

    phantom, paths = ct_case
    node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bones")
    scene_io.replace_segments(node, {"femur and hip": phantom.native_bone_mask}, phantom.geometry,
                              scene_io.BONE_COLOR)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "whole.seg.nrrd"))
    assert storage.WriteData(node)
    whole = (tmp_path / "whole.seg.nrrd").read_bytes()
    (tmp_path / "bones.seg.nrrd").write_bytes(whole[:len(whole) * 7 // 10])
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--bones", tmp_path / "bones.seg.nrrd"), out,
                   "cannot be read whole", "cut short")


# ---------------------------------------------------------------------------------------
# Values that are not what they claim
# ---------------------------------------------------------------------------------------
def test_ct_without_rescale_or_shifted_mr_is_refused_for_ho():
    """A CT stored without its rescale intercept (HU + 1024) with the scanner's padding
    value (-2000) outside its circular field of view, and an MR whose values were shifted
    below zero or normalised, do not pass for a CT: the padding is below air, and the MR
    has neither air near -1000 HU nor dense cortex; nor does one shifted and scaled so that
    its suppressed fat reads as fat and its nerve as cortex, whose muscle lies far above
    soft tissue's HU."""
    from HOSciaticModuleLib.ossification import segment_ossifications

    ct = generate_phantom(**SMALL)
    raw = ct.image + 1024.0
    k, j, i = np.indices(raw.shape)
    centre = (np.asarray(raw.shape[1:]) - 1) / 2.0
    raw[(j - centre[0]) ** 2 + (i - centre[1]) ** 2 > (0.48 * raw.shape[1]) ** 2] = -2000.0
    mr = generate_phantom(modality="mr", **SMALL).image
    for image in (raw, mr - 100.0, (mr - mr.mean()) / mr.std(), np.round(mr * 3.0 - 200.0)):
        with pytest.raises(InputError, match="rescale intercept"):
            segment_ossifications(image, ct.geometry)
    # The CT itself, padded the same way in HU, is a CT.
    padded = ct.image.copy()
    padded[raw == -2000.0] = -3024.0
    assert len(segment_ossifications(padded, ct.geometry).islands) == len(ct.islands)


def test_ct_traced_as_mr_is_refused(ct_case):
    from HOSciaticModuleLib.nerve import trace_nerve

    phantom, _ = ct_case
    with pytest.raises(InputError, match="modality 'ct'"):
        trace_nerve(phantom.image, phantom.geometry, _visible_ends(phantom), modality="mr")


def test_mr_traced_as_ct_is_told_to_be_traced_as_mr():
    # Traced with the default modality, an MR was read by a CT's rules without a word,
    # or failed on them with advice to move the seeds or to trace on a T2 fat-saturated
    # MR, which the image was.
    from HOSciaticModuleLib.nerve import trace_nerve

    mr = generate_phantom(modality="mr", **SMALL)
    traced = trace_nerve(mr.image, mr.geometry, _visible_ends(mr), modality="ct")
    assert "trace it with modality 'mr'" in traced.warnings[0]
    mr = generate_phantom(modality="mr", spacing_ijk=(1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="trace it with modality 'mr'.* Traced as a CT: The traced outline"):
        trace_nerve(mr.image, mr.geometry, mr.seeds_ras([5.0, 70.0, 140.0]), modality="ct")
    ct = generate_phantom(**SMALL)
    assert not [w for w in trace_nerve(ct.image, ct.geometry, _visible_ends(ct)).warnings if "modality 'mr'" in w]


def test_ct_given_as_native_bones_is_refused(tmp_path, ct_case):
    _, paths = ct_case
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", paths["image"], "--out", out, "--bones", paths["image"], "--no-scene"), out,
                   "Hounsfield", "not a segmentation")


# ---------------------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------------------
def test_result_that_would_replace_an_input_is_refused(tmp_path, ct_case):
    """--out is the case's own folder, and the seed file is named as the traced curve
    will be (names compared without case): refused before any work, the seeds intact."""
    _, paths = ct_case
    folder = tmp_path / "case"
    folder.mkdir()
    seeds = folder / "Nerve_Right.mrk.json"
    seeds.write_text(Path(paths["seeds"]).read_text())
    before = seeds.read_text()
    result = run_cli("analyze", paths["image"], "--out", folder, "--nerve-seeds", seeds)
    assert result.returncode == 2 and "would be overwritten" in " ".join(result.stderr.split()), result.stderr
    assert seeds.read_text() == before and sorted(p.name for p in folder.iterdir()) == [seeds.name]


def test_results_of_an_earlier_run_not_written_again_are_removed(tmp_path, ct_case):
    """A second run into the same folder leaves no result of the first beside its own:
    the scene bundle of a run with a scene goes when the next has none. Files the tool
    did not write stay, even when named like a result (a seed file for the other side)."""
    _, paths = ct_case
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "nerve_left.mrk.json").write_text("{}")
    assert run_cli("analyze", paths["image"], "--out", out, "--nerve-seeds", paths["seeds"]).returncode == 0
    assert (out / "scene.mrb").is_file() and (out / "nerve_right.mrk.json").is_file()
    result = run_cli("analyze", paths["image"], "--out", out, "--no-scene")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["islands.csv", "metrics.json", "nerve_left.mrk.json", "notes.txt", "segmentation.seg.nrrd"]
    assert json.loads((out / "metrics.json").read_text())["nerves"] == []


@pytest.mark.parametrize("with_qform", [True, False])
def test_nifti_with_sheared_sform_is_refused(tmp_path, with_qform):
    """A gantry-tilted CT converted to NIfTI without tilt correction: a sheared sform,
    perhaps beside an orthogonal qform the reader would silently fall back to."""
    import struct

    import SimpleITK as sitk

    image = tmp_path / "tilted.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 6, 6), np.int16)), str(image))
    header = bytearray(image.read_bytes())
    row_y = list(struct.unpack("<4f", header[296:312]))
    row_y[2] += 0.4  # y moves with the slice index: the tilt's shear
    header[296:312] = struct.pack("<4f", *row_y)
    header[252:256] = struct.pack("<hh", 1 if with_qform else 0, 1)
    image.write_bytes(bytes(header))
    out = tmp_path / "out"
    assert_refused(run_cli("analyze", image, "--out", out), out, "sheared", "tilt")
