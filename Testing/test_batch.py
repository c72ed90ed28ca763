"""``hosciatic batch``: many cases from a case list, one folder each, and a summary."""

import csv
import json
import os
import subprocess
import sys

import pytest

from HOSciaticModuleLib import __version__, cli, export
from HOSciaticModuleLib.errors import InputError
from HOSciaticModuleLib.phantom import generate_phantom, write_phantom_case

SMALL = dict(spacing_ijk=(1.2, 1.2, 2.0), fov_mm=(110.0, 110.0, 120.0))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A case list beside its images, with relative paths, as a researcher keeps one."""
    folder = tmp_path_factory.mktemp("cohort")
    phantom = generate_phantom(**SMALL)
    write_phantom_case(phantom, folder / "images")
    rows = [
        {"case": "p01", "image": "images/ct.nrrd", "nerve_seeds": "images/nerve_seeds_right.mrk.json"},
        # HO only; a name with a slash and a space still gets a folder of its own.
        {"case": "p 02/b", "image": "images/ct.nrrd", "nerve_seeds": ""},
        {"case": "p03", "image": "images/missing.nrrd", "nerve_seeds": ""},
    ]
    case_list = folder / "cases.csv"
    with case_list.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "image", "nerve_seeds"])
        writer.writeheader()
        writer.writerows(rows)
    return phantom, case_list


def _summary(out):
    with (out / "summary.csv").open(newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_every_case_is_analysed_or_explained_and_summarised(cohort, tmp_path, monkeypatch):
    phantom, case_list = cohort
    out = tmp_path / "results"
    assert cli.main(["batch", str(case_list), "--out", str(out), "--no-scene", "--quiet"]) == cli.BATCH_INCOMPLETE_STATUS
    summary = _summary(out)
    assert list(summary) == ["p01", "p 02/b", "p03"]

    first = summary["p01"]
    document = json.loads((out / "p01" / "metrics.json").read_text())
    assert first["status"] == "done" and first["output"] == str(out / "p01")
    assert first["image"] == str(case_list.parent / "images" / "ct.nrrd")
    truth_total = sum(island["volume_ml"] for island in phantom.islands)
    assert int(first["ho_islands"]) == document["ossifications"]["count"] == len(phantom.islands)
    assert float(first["ho_total_ml"]) == pytest.approx(truth_total, rel=0.10)
    # The phantom's islands are all HO: none is doubted.
    assert [i["doubts"] for i in document["ossifications"]["islands"]] == [""] * len(phantom.islands)
    assert first["ho_doubted"] == "0" and float(first["ho_doubted_ml"]) == 0.0
    # One hip imaged: no midline, so no volume per side (empty, not 0).
    assert first["ho_right_ml"] == first["ho_left_ml"] == ""
    (nerve,) = document["nerves"]
    assert first["right_encasement_class"] == nerve["encasement_class"] == "encasement"
    assert float(first["right_max_encasement_deg"]) == nerve["max_encasement_deg"]
    assert 250 <= nerve["max_encasement_deg"] <= 330
    assert first["left_length_mm"] == "" and int(first["warnings"]) == len(document["warnings"])
    # One nerve: nothing to compare it with (empty, as in its metrics.json).
    assert first["right_contralateral_area_ratio"] == "" and nerve["contralateral_area_ratio"] is None
    assert not (out / "p01" / "scene.mrb").exists()

    second = summary["p 02/b"]
    assert second["status"] == "done" and (out / "p_02_b" / "metrics.json").is_file()
    assert int(second["ho_islands"]) == len(phantom.islands) and second["right_length_mm"] == ""

    third = summary["p03"]
    assert third["status"] == "refused" and "missing.nrrd" in third["message"]
    assert third["ho_islands"] == third["ho_doubted"] == "" and not (out / "p03").exists()

    # Resumed: the analysed cases are kept as they are, the failed one is tried again.
    stamp = (out / "p01" / "metrics.json").stat().st_mtime_ns
    assert cli.main(["batch", str(case_list), "--out", str(out), "--no-scene", "--quiet",
                     "--skip-existing"]) == cli.BATCH_INCOMPLETE_STATUS
    resumed = _summary(out)
    assert [resumed[name]["status"] for name in ("p01", "p 02/b", "p03")] == ["done earlier", "done earlier", "refused"]
    assert resumed["p01"]["ho_total_ml"] == first["ho_total_ml"]
    assert (out / "p01" / "metrics.json").stat().st_mtime_ns == stamp

    # A folder without islands.csv (written by a version before it existed) runs again;
    # its summary row counts the doubted islands again.
    (out / "p01" / "islands.csv").unlink()
    cli.main(["batch", str(case_list), "--out", str(out), "--no-scene", "--quiet", "--skip-existing"])
    again = _summary(out)
    assert [again[name]["status"] for name in ("p01", "p 02/b")] == ["done", "done earlier"]
    assert (out / "p01" / "islands.csv").is_file() and again["p01"]["ho_doubted"] == "0"

    # A seed file saved again since (a corrected click), and the results of another
    # version, are made again.
    written = (out / "p01" / "metrics.json").stat().st_mtime_ns
    os.utime(case_list.parent / "images" / "nerve_seeds_right.mrk.json", ns=(written + 1000, written + 1000))
    older = out / "p_02_b" / "metrics.json"
    older.write_text(older.read_text().replace(f'"version": "{__version__}"', '"version": "0.0.1"'))
    assert '"0.0.1"' in older.read_text()
    cli.main(["batch", str(case_list), "--out", str(out), "--no-scene", "--quiet", "--skip-existing"])
    remade = _summary(out)
    assert [remade[name]["status"] for name in ("p01", "p 02/b")] == ["done", "done"]
    assert json.loads(older.read_text())["software"]["version"] == __version__

    # The list corrected: p01's image is another file. Its earlier result is not of this
    # image, so p01 runs again; the unchanged case is kept.
    import shutil

    shutil.copy(case_list.parent / "images" / "ct.nrrd", case_list.parent / "images" / "ct_corrected.nrrd")
    corrected = case_list.parent / "corrected.csv"
    corrected.write_text(case_list.read_text().replace("p01,images/ct.nrrd", "p01,images/ct_corrected.nrrd"))
    cli.main(["batch", str(corrected), "--out", str(out), "--no-scene", "--quiet", "--skip-existing"])
    rerun = _summary(out)
    assert [rerun[name]["status"] for name in ("p01", "p 02/b")] == ["done", "done earlier"]
    recorded = json.loads((out / "p01" / "metrics.json").read_text())["input"]["image"]
    assert recorded == str((case_list.parent / "images" / "ct_corrected.nrrd").resolve())

    # An input deleted since: no earlier result is kept, the case says what is missing.
    (case_list.parent / "images" / "nerve_seeds_right.mrk.json").unlink()
    cli.main(["batch", str(corrected), "--out", str(out), "--no-scene", "--quiet", "--skip-existing"])
    gone = _summary(out)["p01"]
    assert gone["status"] == "refused" and "nerve_seeds_right.mrk.json" in gone["message"]
    # Its folder still holds the results of the image listed before: said, for a reader
    # collecting every case's metrics.json.
    assert (out / "p01" / "metrics.json").is_file()
    assert f"The folder '{out / 'p01'}' still holds the results of an earlier run" in gone["message"]

    # Given relative to the working folder, the output is listed as a full path, as the
    # images are; the summary is readable by others as every other output is (it was
    # private, as the temporary file it is written to first).
    monkeypatch.chdir(tmp_path)
    previous = os.umask(0o022)
    try:
        cli.main(["batch", str(corrected), "--out", "results", "--no-scene", "--quiet", "--skip-existing"])
    finally:
        os.umask(previous)
    assert _summary(out)["p 02/b"]["output"] == str(out / "p_02_b")
    assert (out / "summary.csv").stat().st_mode & 0o777 == 0o644


def test_summary_counts_doubted_islands_only_where_the_document_says():
    from HOSciaticModuleLib.batch import BatchCase, summary_row

    case = BatchCase("p", "p", "ct.nrrd")

    def row(document):
        return summary_row(case, "done", document=document)

    islands = [{"doubts": "", "volume_ml": 4.0}, {"doubts": "touching gas", "volume_ml": 0.25},
               {"doubts": "shaped like a vessel; touching gas", "volume_ml": 1.5}]
    doubted = row({"ossifications": {"count": 3, "islands": islands}})
    assert doubted["ho_doubted"] == 2 and doubted["ho_doubted_ml"] == pytest.approx(1.75)
    # Two doubted segments sharing voxels: no more than the total, which counts them once.
    shared = [{"doubts": "touching gas", "volume_ml": 1.0}, {"doubts": "touching gas", "volume_ml": 0.5}]
    assert row({"ossifications": {"count": 2, "total_volume_ml": 1.2, "islands": shared}})["ho_doubted_ml"] == 1.2
    # Written before islands had doubts: not known, so not 0.
    unknown = row({"ossifications": {"count": 1, "islands": [{"volume_ml": 1.0}]}})
    assert unknown["ho_doubted"] == unknown["ho_doubted_ml"] == ""
    # An MR run has no HO step.
    mr = row({"ossifications": None, "nerves": []})
    assert mr["ho_doubted"] == mr["ho_doubted_ml"] == ""


def test_summary_gives_the_ho_volume_of_each_side_where_the_document_tells_it():
    from HOSciaticModuleLib.batch import BatchCase, summary_row

    case = BatchCase("p", "p", "ct.nrrd")

    def row(islands):
        found = summary_row(case, "done", document={"ossifications": {"count": len(islands), "islands": islands}})
        return found["ho_right_ml"], found["ho_left_ml"]

    both = [{"side": "left", "volume_ml": 4.0}, {"side": "right", "volume_ml": 0.25},
            {"side": "left", "volume_ml": 1.5}, {"side": "", "volume_ml": 0.5}]  # painted on the midline
    assert row(both) == (pytest.approx(0.25), pytest.approx(5.5))
    assert row([{"side": "right", "volume_ml": 2.0}]) == (pytest.approx(2.0), 0.0)
    assert row([]) == (0.0, 0.0)
    # An image of one hip (no island's side told) and a document written before islands
    # had sides: not known, so not 0.
    assert row([{"side": "", "volume_ml": 2.0}]) == ("", "")
    assert row([{"volume_ml": 2.0}]) == ("", "")


def test_case_list_saved_with_semicolons_or_tabs(tmp_path):
    """Spreadsheets in many locales save CSV with semicolons: the header row tells the
    separator; several seed files then go in one cell separated by '|'."""
    from HOSciaticModuleLib.batch import read_case_list

    for separator in (";", "\t"):
        case_list = tmp_path / f"cases{len(separator)}.csv"
        case_list.write_text(separator.join(["case", "image", "nerve_seeds", "modality"]) + "\n"
                             + separator.join(["p1", "ct.nrrd", "right.mrk.json|left.mrk.json", "CT"]) + "\n")
        (case,) = read_case_list(case_list)
        assert case.name == "p1" and case.image == str(tmp_path / "ct.nrrd") and case.modality == "ct"
        assert case.nerve_seeds == [str(tmp_path / "right.mrk.json"), str(tmp_path / "left.mrk.json")]


def test_empty_columns_a_spreadsheet_adds_are_ignored(tmp_path):
    from HOSciaticModuleLib.batch import read_case_list

    case_list = tmp_path / "cases.csv"
    case_list.write_text("case,image,nerve_seeds,,\r\np1,ct.nrrd,right.mrk.json,,\r\n")
    (case,) = read_case_list(case_list)
    assert case.name == "p1" and case.nerve_seeds == [str(tmp_path / "right.mrk.json")]


def test_results_written_inside_a_dicom_folder_are_not_taken_for_a_newer_input(tmp_path):
    # A case named as its DICOM folder, with --out beside it: its results land among the
    # slices, and the bundle written after metrics.json counted as an input saved since.
    series = tmp_path / "P1"
    series.mkdir()
    (series / "slice1.dcm").write_bytes(b"0")
    results = series / "results"
    results.mkdir()
    (results / "scene.mrb").write_bytes(b"1")
    slice_time = (series / "slice1.dcm").stat().st_mtime_ns
    os.utime(results / "scene.mrb", ns=(slice_time + 10**9, slice_time + 10**9))
    assert cli._latest_change_ns([str(series)], results) == slice_time
    # --out where the series lies: the results go into the series' own folder, and its
    # slices were all skipped as results, so a series exported again never ran again.
    (results / "scene.mrb").unlink()
    results.rmdir()
    (series / "metrics.json").write_bytes(b"{}")
    os.utime(series / "metrics.json", ns=(slice_time + 10**9, slice_time + 10**9))
    assert cli._latest_change_ns([str(series)], series) == slice_time
    # Slices in subfolders of such a folder (DICOM/IMAGES/...) are inputs too.
    (series / "IMAGES").mkdir()
    (series / "IMAGES" / "slice2.dcm").write_bytes(b"0")
    os.utime(series / "IMAGES" / "slice2.dcm", ns=(slice_time + 2 * 10**9, slice_time + 2 * 10**9))
    assert cli._latest_change_ns([str(series)], series) == slice_time + 2 * 10**9


def test_case_names_in_any_script_keep_their_letters_in_folder_names(tmp_path):
    # Only A-Z and 0-9 were kept: two Chinese or two Greek names became one folder, and
    # the list was refused as if two cases had one name.
    from HOSciaticModuleLib.batch import read_case_list

    case_list = tmp_path / "cases.csv"
    case_list.write_text("case,image\n张伟,ct.nrrd\n李娜,ct.nrrd\nα-1,ct.nrrd\nβ-1,ct.nrrd\nJosé/2,ct.nrrd\n",
                         encoding="utf-8")
    folders = [case.folder_name for case in read_case_list(case_list)]
    assert folders == ["张伟", "李娜", "α-1", "β-1", "José_2"]


@pytest.mark.parametrize("text, phrases", [
    ("", ["is empty"]),
    ("case,image\n", ["no case"]),
    ("case,nerve_seeds\np1,a.mrk.json\n", ["lacks image"]),
    ("case,image,nerve_seed\np1,ct.nrrd,a.mrk.json\n", ["nerve_seed is not a known column"]),
    ("case,image\np_1,ct.nrrd\np/1,ct.nrrd\n", ["would share the output folder"]),
    ("case,image\nsummary.csv,ct.nrrd\n", ["would share the output folder"]),
    ("case,image,modality\np1,ct.nrrd,pet\n", ["modality 'pet'"]),
    ("case,image\n,ct.nrrd\n", ["line 2", "no case name"]),
    # Lines numbered as an editor shows them; a path with an unquoted comma.
    ("case,image\n\np1,ct.nrrd\n\np2,my,ct.nrrd\n", ["line 5", "more cells than the header"]),
])
def test_bad_case_list_is_refused_before_any_case_runs(tmp_path, text, phrases):
    case_list = tmp_path / "cases.csv"
    case_list.write_text(text)
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "HOSciaticModuleLib.cli", "batch", str(case_list), "--out",
                             str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split()).lower()
    for phrase in phrases:
        assert phrase.lower() in message, result.stderr
    assert not out.exists()


def test_a_cell_holding_a_line_break_is_refused(tmp_path):
    # A quoted path broken over two lines was read joined ("my\nct.nrrd" as "myct.nrrd",
    # which may be another file).
    from HOSciaticModuleLib.batch import read_case_list

    case_list = tmp_path / "cases.csv"
    case_list.write_text('case,image\n\np1,"my\nct.nrrd"\n', encoding="utf-8")
    with pytest.raises(InputError, match="Line 3 of the case list .* line break"):
        read_case_list(case_list)
    case_list.write_text('case,image,nerve_seeds\np1,ct.nrrd,"a\n\nb"\np2,\n', encoding="utf-8")
    with pytest.raises(InputError, match="Line 2 "):
        read_case_list(case_list)


def test_a_case_list_the_summary_would_replace_is_refused(tmp_path, capsys):
    # A case list named summary.csv in the output folder was replaced by the summary
    # before the first case ran.
    case_list = tmp_path / "summary.csv"
    case_list.write_text("case,image\np01,ct.nrrd\n")
    assert cli.main(["batch", str(case_list), "--out", str(tmp_path), "--quiet"]) == 2
    assert "would be overwritten by the batch's summary" in " ".join(capsys.readouterr().err.split())
    assert case_list.read_text() == "case,image\np01,ct.nrrd\n"


def test_a_summary_that_cannot_be_written_is_a_refusal_not_an_internal_error(tmp_path, monkeypatch, capsys):
    # A full disk while writing the summary: "internal error", exit 1, "report it".
    from HOSciaticModuleLib import batch

    case_list = tmp_path / "cases.csv"
    case_list.write_text("case,image\np01,missing.nrrd\n")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch.csv, "DictWriter", disk_full)
    assert cli.main(["batch", str(case_list), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "No space left on device" in message and "--skip-existing" in message and "internal" not in message
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_the_closing_summary_into_a_closed_pipe_is_no_failure(tmp_path):
    # The summary printed into a pipe whose reader has gone (`| head -1`, `| true`): every
    # result was written, yet "internal error (BrokenPipeError) ... No output was
    # written" and exit 1.
    case_list = tmp_path / "cases.csv"
    case_list.write_text("case,image\np01,missing.nrrd\n")
    out = tmp_path / "out"
    command = f"{sys.executable} -m HOSciaticModuleLib.cli batch '{case_list}' --out '{out}' --quiet | true"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=600)
    assert result.returncode == cli.BATCH_INCOMPLETE_STATUS, result.stderr  # its one case has no image
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert _summary(out)["p01"]["status"] == "refused"


def test_an_interrupted_batch_says_what_it_kept(tmp_path, monkeypatch, capsys):
    # Ctrl-C during a batch said "no output was written", though the cases done were
    # kept and listed in the summary.
    def interrupted(args, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_batch", interrupted)
    assert cli.main(["batch", str(tmp_path / "cases.csv"), "--out", str(tmp_path / "out"), "--quiet"]) == 130
    message = " ".join(capsys.readouterr().err.split())
    assert "no output was written" not in message and "kept and listed in" in message and "--skip-existing" in message


def test_a_case_list_given_by_its_bare_name_reads_paths_starting_with_a_dash(tmp_path, monkeypatch):
    # Given by its bare name, the list's paths stayed bare, and "-scan.nrrd" was taken for
    # an option of the case's analysis ("the following arguments are required: image").
    from HOSciaticModuleLib import batch

    (tmp_path / "cases.csv").write_text("case,image,nerve_seeds\np01,-scan.nrrd,-seeds.mrk.json\n")
    monkeypatch.chdir(tmp_path)
    (case,) = batch.read_case_list("cases.csv")
    assert case.image == str(tmp_path / "-scan.nrrd") and case.nerve_seeds == [str(tmp_path / "-seeds.mrk.json")]
    parsed = cli.build_parser().parse_args(["analyze", *case.analyze_arguments(tmp_path / "out")])
    assert parsed.image == case.image and parsed.nerve_seeds == case.nerve_seeds


def test_a_file_where_a_case_folder_goes_is_named_with_what_to_do(tmp_path):
    # The case was refused with "Choose a folder for --out", which is no remedy there.
    (tmp_path / "cases.csv").write_text("case,image\np01,missing.nrrd\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p01").write_text("notes")
    assert cli.main(["batch", str(tmp_path / "cases.csv"), "--out", str(out), "--quiet"]) == cli.BATCH_INCOMPLETE_STATUS
    message = _summary(out)["p01"]["message"]
    assert "lies where this case's results folder goes" in message and "--out" not in message
    assert (out / "p01").read_text() == "notes"


def test_a_second_run_into_a_folder_in_use_is_refused_and_leaves_the_first_runs_files(cohort, tmp_path, capsys):
    """A second batch (or analysis) started into the folder of one still running removed
    that run's unfinished files as left over from a killed run, and replaced its summary."""
    phantom, case_list = cohort
    out = tmp_path / "out"
    first_run = export.prepare_output_folder(out)
    unfinished = out / f"{export.PARTIAL_PREFIX}summary-running.csv"
    unfinished.write_text("case\n")
    try:
        assert cli.main(["batch", str(case_list), "--out", str(out), "--no-scene", "--quiet"]) == 2
        assert "Another run" in " ".join(capsys.readouterr().err.split())
        image = case_list.parent / "images" / "ct.nrrd"
        assert cli.main(["analyze", str(image), "--out", str(out), "--no-scene", "--quiet"]) == 2
        assert "choose another output folder (--out)" in " ".join(capsys.readouterr().err.split())
        assert unfinished.is_file() and not (out / "summary.csv").exists() and not (out / "metrics.json").exists()
    finally:
        first_run.release()
    # Once the first run has ended, its leftovers are cleared and the folder is used.
    missing_only = tmp_path / "cases.csv"
    missing_only.write_text(f"case,image\np03,{case_list.parent / 'images' / 'missing.nrrd'}\n")
    assert cli.main(["batch", str(missing_only), "--out", str(out), "--quiet"]) == cli.BATCH_INCOMPLETE_STATUS
    assert not unfinished.exists() and _summary(out)["p03"]["status"] == "refused"
