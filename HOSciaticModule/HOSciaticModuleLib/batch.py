"""Many cases in one run: the case list a batch reads and the summary it writes.

A case list is a CSV file with a header row: ``case`` and ``image`` on every row,
optionally ``nerve_seeds`` (one or more files separated by ``;`` or ``|``), ``roi``,
``bones`` and ``modality``. Columns are separated by commas, or by semicolons or tabs
as spreadsheets save CSV in many locales. Paths are taken relative to the list's own
folder. The summary has one row per case: whether it was analysed, why not, and its
headline figures.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .defaults import SIDES
from .errors import InputError
from .export import PARTIAL_PREFIX, give_default_mode, side_volume_ml

REQUIRED_COLUMNS = ("case", "image")
OPTIONAL_COLUMNS = ("nerve_seeds", "roi", "bones", "modality")
#: Several seed files of one case (one per nerve) share a cell, separated by one of these.
SEED_SEPARATORS = re.compile(r"[;|]")
#: Column separators a case list may use: the header row tells which.
COLUMN_SEPARATORS = (",", ";", "\t")
#: A case name becomes a folder name: characters other than letters and digits of any
#: script, ".", "_" and "-" are replaced by "_" (a Chinese or Greek name keeps its letters).
_UNSAFE_NAME = re.compile(r"[^\w.-]")

#: The summary's file name, beside the cases' folders.
SUMMARY_NAME = "summary.csv"
#: Status of a case in the summary.
DONE, DONE_EARLIER, REFUSED, FAILED, NOT_RUN = "done", "done earlier", "refused", "failed", "not run"
ANALYSED = (DONE, DONE_EARLIER)
NERVE_FIGURES = ("length_mm", "mean_diameter_mm", "encasement_class", "max_encasement_deg", "contact_length_mm",
                 "min_distance_mm", "thickening_ratio", "signal_ratio", "contralateral_area_ratio")


@dataclass
class BatchCase:
    name: str
    folder_name: str
    image: str
    nerve_seeds: list = field(default_factory=list)
    roi: str | None = None
    bones: str | None = None
    modality: str = "ct"

    def analyze_arguments(self, out_dir: Path) -> list[str]:
        """The ``hosciatic analyze`` arguments of this case (shared options not included)."""
        arguments = [self.image, "--out", str(out_dir / self.folder_name), "--modality", self.modality]
        for seeds in self.nerve_seeds:
            arguments += ["--nerve-seeds", seeds]
        if self.roi:
            arguments += ["--roi", self.roi]
        if self.bones:
            arguments += ["--bones", self.bones]
        return arguments


def read_case_list(path) -> list[BatchCase]:
    """The cases of a case list, checked as a whole before any case runs."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The case list '{path}' does not exist or is not a file. Give a CSV file with a header "
                         f"row holding at least the columns {', '.join(REQUIRED_COLUMNS)}.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
        rows = _numbered_rows(text)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"The case list '{path}' cannot be read as a CSV text file ({error}). Save it as CSV "
                         "(UTF-8) from the spreadsheet.") from None
    rows = [(number, row) for number, row in rows if any(cell.strip() for cell in row)]
    for number, row in rows:
        if any("\n" in cell or "\r" in cell for cell in row):
            # Read as one line, a path broken in two could name another file.
            raise InputError(f"Line {number} of the case list '{path}' has a quoted cell holding a line break, "
                             "or a double quote left open (the rest of the file was read into that cell). Put each "
                             "cell's text on one line, and close every opening double quote.")
    if not rows:
        raise InputError(f"The case list '{path}' is empty. Give a header row (case,image,nerve_seeds,...) and "
                         "one row per case.")
    header = [cell.strip().lower() for cell in rows[0][1]]
    # Spreadsheets save empty columns after the last named one: they are no columns.
    while header and not header[-1]:
        header.pop()
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        raise InputError(
            f"The header row of the case list '{path}' is {', '.join(header) or 'empty'}"
            + (f"; it lacks {', '.join(missing)}" if missing else "")
            + (f"; {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a known column" if unknown else "")
            + ("; a column is repeated" if len(set(header)) != len(header) else "")
            + f". The columns are {', '.join(REQUIRED_COLUMNS)} (required) and {', '.join(OPTIONAL_COLUMNS)}.")
    if len(rows) == 1:
        raise InputError(f"The case list '{path}' has a header but no case. Add one row per case.")
    for number, row in rows[1:]:
        if any(cell.strip() for cell in row[len(header):]):
            raise InputError(f"Line {number} of the case list '{path}' has more cells than the header row "
                             f"({len(header)}): a path holding the column separator must be put in double "
                             "quotes.")
    cases = [_case_from_row(dict(zip(header, (cell.strip() for cell in row))), number, path.parent)
             for number, row in rows[1:]]
    _check_unique(cases, path)
    return cases


def _numbered_rows(text: str) -> list:
    """The rows of a CSV text, each with the number of the line it starts on as a text
    editor shows it (empty lines counted, a quoted cell's line breaks too)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_column_separator(text))
    rows, last_line = [], 0
    for row in reader:
        rows.append((last_line + 1, row))
        last_line = reader.line_num
    return rows


def _column_separator(text: str) -> str:
    """The separator the header row uses most (commas unless it holds none)."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {separator: header.count(separator) for separator in COLUMN_SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _case_from_row(row: dict, line: int, base: Path) -> BatchCase:
    name, image = row.get("case", ""), row.get("image", "")
    if not name or not image:
        raise InputError(f"Line {line} of the case list has no {'case name' if not name else 'image'}. Every row "
                         "needs both.")
    modality = (row.get("modality") or "ct").lower()
    if modality not in ("ct", "mr"):
        raise InputError(f"Line {line} of the case list (case '{name}') has modality '{row['modality']}'; use ct or "
                         "mr (or leave it empty for ct).")

    def located(text: str | None) -> str | None:
        if not text:
            return None
        candidate = Path(os.path.expanduser(text))
        # Made absolute: a list given by its bare name gave bare names, and one starting
        # with "-" was taken for an option of the case's analysis.
        return str(candidate if candidate.is_absolute() else (base / candidate).absolute())

    seeds = [located(part.strip()) for part in SEED_SEPARATORS.split(row.get("nerve_seeds") or "") if part.strip()]
    folder_name = _UNSAFE_NAME.sub("_", unicodedata.normalize("NFC", name)).strip("._") or "case"
    return BatchCase(name=name, folder_name=folder_name, image=located(image), nerve_seeds=seeds,
                     roi=located(row.get("roi")), bones=located(row.get("bones")), modality=modality)


def _check_unique(cases: list[BatchCase], path: Path) -> None:
    seen: dict = {SUMMARY_NAME: "the summary"}
    for case in cases:
        key = case.folder_name.lower()
        if key in seen:
            raise InputError(f"The cases '{seen[key]}' and '{case.name}' of the case list '{path}' would share the "
                             f"output folder '{case.folder_name}'. Give every case its own name.")
        seen[key] = case.name


# ---------------------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------------------
def summary_columns(sides=SIDES) -> list[str]:
    return (["case", "status", "message", "image", "output", "ho_islands", "ho_total_ml", "ho_doubted",
             "ho_doubted_ml"] + [f"ho_{side}_ml" for side in sides]
            + [f"{side}_{figure}" for side in sides for figure in NERVE_FIGURES] + ["warnings"])


def summary_row(case: BatchCase, status: str, message: str = "", output: Path | None = None,
                document: dict | None = None) -> dict:
    """One row of the summary: the case's status and, when analysed, its headline
    figures from its ``metrics.json`` document."""
    row = {"case": case.name, "status": status, "message": message, "image": case.image,
           "output": str(output) if output else ""}
    if document:
        ossifications = document.get("ossifications") or {}
        row["ho_islands"] = ossifications.get("count", "")
        row["ho_total_ml"] = ossifications.get("total_volume_ml", "")
        doubted = doubted_count(ossifications["islands"]) if "islands" in ossifications else None
        row["ho_doubted"] = "" if doubted is None else doubted
        doubted_ml = (doubted_volume_ml(ossifications["islands"], ossifications.get("total_volume_ml"))
                      if "islands" in ossifications else None)
        row["ho_doubted_ml"] = "" if doubted_ml is None else doubted_ml
        for side in SIDES:
            side_ml = side_volume_ml(ossifications["islands"], side) if "islands" in ossifications else None
            row[f"ho_{side}_ml"] = "" if side_ml is None else side_ml
        for entry in document.get("nerves", []):
            for figure in NERVE_FIGURES:
                value = entry.get(figure)
                row[f"{entry['side']}_{figure}"] = "" if value is None else value
        row["warnings"] = len(document.get("warnings", []))
    return row


def doubted_count(islands: list[dict]) -> int | None:
    """How many of a ``metrics.json`` document's islands the HO step named as possibly not
    HO; None when the document does not say (written before islands had doubts)."""
    if any("doubts" not in island for island in islands):
        return None
    return sum(bool(island["doubts"]) for island in islands)


def doubted_volume_ml(islands: list[dict], total_ml=None) -> float | None:
    """The volume (mL) of a ``metrics.json`` document's islands named as possibly not HO:
    on a CT with no HO at all, its native bone beside an implant or its mirrored
    prominences can make up the whole total, which alone reads as a burden of HO. None
    when the document does not say. No more than the document's total ``total_ml``,
    which counts voxels two segments share once (the islands' own volumes count them
    in each)."""
    if any("doubts" not in island or "volume_ml" not in island for island in islands):
        return None
    doubted = round(sum((float(island["volume_ml"]) for island in islands if island["doubts"]), 0.0), 3)
    return min(doubted, float(total_ml)) if isinstance(total_ml, (int, float)) else doubted


def write_summary(path: Path, rows: list[dict]) -> None:
    """The summary as CSV, replaced whole: an interrupted batch leaves the last complete one."""
    path = Path(path)
    try:
        handle, partial = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}summary-", suffix=".csv", dir=path.parent)
        try:
            with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=summary_columns(), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
            give_default_mode(Path(partial))
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    except OSError as error:
        raise InputError(f"The batch's summary could not be written into '{path.parent}' "
                         f"({error.strerror or error}). Choose a folder you can write to, on a disk with free space, "
                         "and run again with --skip-existing to keep the cases already analysed.") from None
