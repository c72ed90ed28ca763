"""Reading and writing images and markups files for the command line.

Files on disk are LPS (ITK convention); the scene and every algorithm are RAS.
This is the only module that converts between the two for images.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import bonelabels
from .errors import InputError
from .geometry import VolumeGeometry, corner_shift_mm, orthonormal

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: Folders searched below a DICOM folder that holds no series itself: a study's export
#: has a few to a few hundred (patient / study / series levels); more is an archive.
DICOM_MAX_FOLDERS = 2000
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
#: Slice positions in DICOM headers are rounded: slices within a tenth of the spacing of
#: an even grid lie on it, and positions closer than that are duplicates.
SLICE_POSITION_TOLERANCE = 0.1
#: One missing slice is bridged by interpolation (as Slicer does); a wider gap is
#: missing anatomy.
MAX_SLICE_GAP_FACTOR = 2.5
#: A gantry tilt shifting the last slice by less than half a pixel is rounding.
TILT_TOLERANCE_PIXELS = 0.5
#: Direction cosines written with a few decimals differ by rounding only.
ORIENTATION_TOLERANCE = 1e-3


@dataclass
class LoadedImage:
    array: np.ndarray            # (k, j, i)
    geometry: VolumeGeometry
    source: str
    description: str
    #: The image as read, when the array shares its memory (``share_memory``).
    sitk_image: object = None
    #: Corrections made while reading (a DICOM series' slice geometry).
    warnings: list = field(default_factory=list)


def _sitk():
    import SimpleITK as sitk

    return sitk


def geometry_from_sitk(image) -> VolumeGeometry:
    direction_lps = np.asarray(image.GetDirection(), float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), float)
    origin_lps = np.asarray(image.GetOrigin(), float)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction_lps @ np.diag(spacing)
    matrix[:3, 3] = LPS_TO_RAS @ origin_lps
    size = image.GetSize()
    return VolumeGeometry(matrix, (size[2], size[1], size[0]))


def sitk_image_from_array(array: np.ndarray, geometry: VolumeGeometry):
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in geometry.spacing_ijk))
    image.SetOrigin(tuple(float(v) for v in LPS_TO_RAS @ geometry.origin_ras))
    image.SetDirection(tuple(float(v) for v in (LPS_TO_RAS @ geometry.directions).ravel()))
    return image


def _dicom_series_in(folder: Path) -> dict:
    """{series key: slice files} of the DICOM series in ``folder``; when it holds none
    itself, those of its subfolders (a PACS or CD export keeps each series in a folder
    of its own, several levels down), each keyed by its folder and series UID."""
    sitk = _sitk()

    def listed(directory: Path) -> dict:
        # Each listing scans the folder's headers: once per series is enough.
        return {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), sid)
                for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)) or []}

    # A folder without a series is no news here (ITK would say so on the console each time).
    with _itk_warnings_silenced():
        found = listed(folder)
        if found:
            return found
        for visited, (directory, subfolders, file_names) in enumerate(os.walk(folder)):
            subfolders.sort()
            if visited >= DICOM_MAX_FOLDERS:
                break
            if Path(directory) != folder and file_names:
                relative = Path(directory).relative_to(folder).as_posix()
                found.update({f"{relative}: {sid}": names for sid, names in listed(Path(directory)).items()})
    return found


@contextlib.contextmanager
def _itk_warnings_silenced():
    sitk = _sitk()
    showed_warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(showed_warnings)


def reader_error_reason(error: Exception, default: str) -> str:
    """The last line of a reader's error text (ITK's own reason, after where it was
    raised), or ``default`` for an empty one."""
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else default


def _read_dicom_series(folder: Path, modality: str | None = None):
    """The series in ``folder`` (or its subfolders) a user means, on a regular orthogonal
    grid; returns the image, a description and warnings about the choice and about
    corrections of the slice geometry.

    Series are tried in the order of :func:`_series_rank`; one that cannot be read as
    one volume (a diffusion series' repeated positions, a scout saved in its stack) is
    passed over for the next, and named. Series of the other modality, localizers,
    diffusion series and series of fewer than MIN_VOLUME_SLICES files are tried only when
    the folder holds nothing else: a refused CT does not give way to its scout."""
    files = _dicom_series_in(folder)
    if not files:
        raise InputError(f"The folder '{folder}' holds no DICOM series, nor do its subfolders. Give a folder of DICOM "
                         f"slices or an image file ({', '.join(IMAGE_SUFFIXES)}).")
    headers = {sid: _series_header(names) for sid, names in files.items()}
    files, headers = _echoes_apart(files, headers)
    ranks = {sid: _series_rank(headers[sid], _slice_count(files[sid], headers[sid]), modality) for sid in files}
    ranked = sorted(files, key=ranks.__getitem__, reverse=True)
    volumes = [sid for sid in ranked if _is_candidate_volume(ranks[sid])]
    refused: dict = {}
    for sid in volumes or ranked:
        try:
            image, corrections = _read_series_volume(files[sid], folder)
        except InputError as error:
            if len(files) == 1:
                raise
            refused[sid] = str(error)
            continue
        description = f"DICOM series {sid} ({len(files)} series in folder)"
        choice = [_other_series_warning(files, sid, headers, ranks, refused, modality)] if len(files) > 1 else []
        return image, description, choice + corrections + _multiframe_warnings(files[sid], headers[sid])
    if len(refused) == 1 and len(files) > 1:
        (sid, reason), = refused.items()
        others = [_series_label(files[other], headers[other]) for other in ranked if other != sid]
        raise InputError(f"{reason} (The series read was {_series_label(files[sid], headers[sid])}, of the "
                         f"{len(files)} in '{folder}'; {', '.join(others)} "
                         f"{'is' if len(others) == 1 else 'are'} no volume to analyse.)")
    left_aside = [_series_label(files[sid], headers[sid]) for sid in ranked if sid not in refused]
    raise InputError(f"None of the {len(refused)} series tried in '{folder}' can be read as one volume: "
                     + "; ".join(f"{_series_label(files[sid], headers[sid])}: {_first_sentence(refused[sid])}"
                                 for sid in refused)
                     + (f" ({', '.join(left_aside)} left aside: no volume to analyse)" if left_aside else "")
                     + ". Export the one series to analyse, or load the study in Slicer's DICOM module and save "
                       "the volume as NRRD.")


def _read_series_volume(file_names, folder: Path):
    """One series' slices as one volume on a regular grid, and the corrections made. A
    series of one file is read by the file reader: a multi-frame (enhanced) file is a
    volume of its own, which the series reader would stack into a 4D image of one."""
    sitk = _sitk()
    if len(file_names) > 1:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(file_names)
        reader.MetaDataDictionaryArrayUpdateOn()
    else:
        reader = sitk.ImageFileReader()
        reader.SetFileName(file_names[0])
    # ITK's own remarks on uneven slices go to the console; they are checked and answered below.
    with _itk_warnings_silenced():
        try:
            image = reader.Execute()
        except RuntimeError as error:
            if len(file_names) == 1:
                raise InputError(f"The DICOM series in '{folder}' is one file ('{Path(file_names[0]).name}') that "
                                 f"cannot be read ({reader_error_reason(error, 'unreadable')}): it is damaged, or "
                                 "its compression is not supported here. Export the series again (uncompressed, or "
                                 "one file per slice), or load it in Slicer and save the volume as NRRD.") from None
            # Slices of several sizes in one series (a scout saved with its stack, as some
            # scanners and anonymisers do) or a damaged slice.
            raise InputError(f"The DICOM series in '{folder}' cannot be read as one volume "
                             f"({reader_error_reason(error, 'unreadable')}): its slices "
                             "differ in size (several stacks, or a scout, saved as one series) or one is damaged. "
                             "Export the one axial stack to analyse, or load the series in Slicer and save the "
                             "volume as NRRD.") from None
    if len(file_names) == 1:
        return image, []
    slices = dicom_slice_geometry(reader, len(file_names), folder)
    if slices is None or image.GetDimension() != 3 or image.GetDepth() != len(file_names):
        return image, []
    return regular_slice_grid(image, slices)


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[a-z)])\. ", text, maxsplit=1)[0].rstrip(".")


@dataclass(frozen=True)
class SeriesHeader:
    """What a series shows, from its first file's header (empty where not given)."""

    description: str = ""
    modality: str = ""
    image_type: str = ""
    scan_options: str = ""
    scanning_sequence: str = ""
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    #: Which echo of a multi-echo series the files hold ("" for a series of one echo).
    echo: str = ""
    #: Frames in the file (a multi-frame, or enhanced, file holds a whole series).
    frames: int = 1

    def words(self) -> set:
        """Upper-case words of the description and image type ("t2_tse_fs_tra" gives
        T2, TSE, FS, TRA)."""
        return {w for w in re.split(r"[^A-Z0-9]+", f"{self.description} {self.image_type}".upper()) if w}

    def word_pairs(self) -> set:
        """Two neighbouring words joined ("FAT SAT" gives FATSAT), for names written
        apart; never for words that must stand alone ("tra CE" is no TRACE)."""
        words = [w for w in re.split(r"[^A-Z0-9]+", self.description.upper()) if w]
        return {a + b for a, b in zip(words, words[1:])}


def _series_header(file_names) -> SeriesHeader:
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_names[0])
    try:
        with _itk_warnings_silenced():
            reader.ReadImageInformation()
    except RuntimeError:
        return SeriesHeader()

    def text(tag):
        return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""

    def number(tag):
        try:
            value = float(text(tag).split("\\")[0])
        except ValueError:
            return None
        return value if np.isfinite(value) else None

    return SeriesHeader(text("0008|103e"), text("0008|0060").upper(), text("0008|0008"), text("0018|0022").upper(),
                        text("0018|0020").upper(), number("0018|0081"), number("0018|0082"),
                        frames=max(1, int(number("0028|0008") or 1)))


def _slice_count(file_names, header: SeriesHeader) -> int:
    """The slices a series holds: its files, or the frames of its one multi-frame file."""
    return header.frames if len(file_names) == 1 else len(file_names)


def _multiframe_warnings(file_names, header: SeriesHeader) -> list[str]:
    """What the reader should know of a series read from one multi-frame file: its frames'
    positions are not checked here (as each slice's are), but taken as the file describes
    its stack."""
    if len(file_names) > 1 or header.frames < MIN_VOLUME_SLICES:
        return []
    return [f"The DICOM series was read from one multi-frame (enhanced) file of {header.frames} frames, as one "
            "evenly spaced stack placed as the file describes it (its frames' own positions are not checked one "
            "by one, as a series of single-slice files' are): check the volume's extent and orientation on the "
            "images; a series of one file per slice, or a NRRD file saved from Slicer, is read with those checks."]


#: Words naming a series that is no volume of the anatomy: a localizer, or diffusion and
#: its maps (repeated positions, or a parameter instead of a signal).
NOT_A_VOLUME_WORDS = {"LOCALIZER", "LOC", "SCOUT", "TOPOGRAM", "SURVEY", "DWI", "DIFFUSION", "DIFF", "ADC", "TRACEW",
                      "TRACE", "EADC", "DTI"}
#: Words of a fat-suppressed series: spectral (FS, SPAIR, SPIR) or inversion (STIR, TIRM)
#: suppression, or a Dixon water image.
FAT_SUPPRESSED_WORDS = {"FS", "FATSAT", "FSAT", "FATSUP", "SPAIR", "SPIR", "STIR", "TIRM", "WATER"}
#: An echo time this long weights an MR by T2 (T1 and proton density use under 40 ms).
T2_MIN_ECHO_TIME_MS = 50.0
#: STIR nulls fat with an inversion time of about 150 ms at 1.5 T and 230 ms at 3 T.
STIR_INVERSION_TIME_MS = (100.0, 300.0)


def _is_fat_suppressed(header: SeriesHeader, words: set) -> bool:
    options = set(re.split(r"[^A-Z_]+", header.scan_options))
    stir = ("IR" in header.scanning_sequence and header.inversion_time_ms is not None
            and STIR_INVERSION_TIME_MS[0] <= header.inversion_time_ms <= STIR_INVERSION_TIME_MS[1])
    dixon_water = "W" in words and bool(words & {"DIXON", "MDIXON", "IDEAL", "FLEX"})
    return (bool((words | header.word_pairs()) & FAT_SUPPRESSED_WORDS) or bool(options & {"FS", "FAT_SAT", "SFS"})
            or stir or dixon_water)


def _is_t2_weighted(header: SeriesHeader, words: set) -> bool:
    if header.echo and header.echo_time_ms is not None:
        # The echoes of one series share its name ("PD_T2"): each echo's own time tells.
        return header.echo_time_ms >= T2_MIN_ECHO_TIME_MS
    named = any(w.startswith("T2") for w in words) or bool(words & {"STIR", "TIRM"})
    return named or (header.echo_time_ms is not None and header.echo_time_ms >= T2_MIN_ECHO_TIME_MS)


#: Fewer slices than this make no volume to analyse (a scout, a dose report, a key image).
MIN_VOLUME_SLICES = 3


def _is_candidate_volume(rank: tuple) -> bool:
    """Whether a series (by its :func:`_series_rank`) is worth reading as the volume: of
    the modality analysed (or not saying), no localizer or diffusion series, and of
    MIN_VOLUME_SLICES files or more."""
    modality_matches, is_volume, _, file_count = rank
    return modality_matches and is_volume and file_count >= MIN_VOLUME_SLICES


def _series_rank(header: SeriesHeader, file_count: int, modality: str | None) -> tuple:
    """A series' place among the folder's: of the modality analysed, a volume (no
    localizer, no diffusion), for an MR the T2-weighted fat-suppressed contrast the nerve
    is traced on, and then the most slices (scouts and dose reports are small)."""
    words = header.words()
    wanted = {"ct": "CT", "mr": "MR"}.get(modality or "")
    score = 0
    if modality == "mr":
        score = _is_fat_suppressed(header, words) + _is_t2_weighted(header, words)
    return (not wanted or header.modality in ("", wanted), not words & NOT_A_VOLUME_WORDS, score, file_count)


def _series_label(file_names, header: SeriesHeader) -> str:
    """A series as a reader knows it: its description (and echo) and its number of files
    (or frames, for one multi-frame file)."""
    description = header.description
    count = f"{len(file_names)} file{'s' if len(file_names) > 1 else ''}"
    if len(file_names) == 1 and header.frames > 1:
        count = f"one file of {header.frames} frames"
    if not description:
        return f"a series of {count}" + (f" ({header.echo})" if header.echo else "")
    return f"'{description}' ({header.echo}; {count})" if header.echo else f"'{description}' ({count})"


def _echo_groups(file_names) -> list | None:
    """The slice files of a series holding several echoes, one list per echo in the order
    of their echo numbers (or echo times, where numbers are not given); None for a series
    of one echo, or one whose slices do not all say which echo they hold. Each slice's
    header is read (about a millisecond a file): GDCM's order of files with repeated
    positions tells nothing."""
    sitk = _sitk()
    reader = sitk.ImageFileReader()

    def header(name):
        reader.SetFileName(name)
        with _itk_warnings_silenced():
            reader.ReadImageInformation()
        return {tag: _file_header_numbers(reader, tag) for tag in ("0018|0086", "0018|0081")}

    try:
        slices = [header(name) for name in file_names]
    except RuntimeError:
        return None
    for tag in ("0018|0086", "0018|0081"):
        if all(h[tag] is not None for h in slices):
            groups: dict = {}
            for name, h in zip(file_names, slices):
                groups.setdefault(float(h[tag][0]), []).append(name)
            return [groups[key] for key in sorted(groups)] if len(groups) > 1 else None
    return None


def _echoes_apart(files: dict, headers: dict) -> tuple:
    """Each MR series whose slices hold several echoes (a dual-echo series, proton
    density and T2, saves both under one UID, each position twice) split into one series
    per echo, keyed and labelled by it, so that the ranking picks the T2-weighted echo
    and the warning names the other; other series as given."""
    split_files, split_headers = {}, {}
    for sid, names in files.items():
        groups = _echo_groups(names) if headers[sid].modality == "MR" and len(names) >= 2 else None
        if groups is None:
            split_files[sid], split_headers[sid] = names, headers[sid]
            continue
        for number, echo_names in enumerate(groups, start=1):
            header = _series_header(echo_names)
            time = f", TE {header.echo_time_ms:g} ms" if header.echo_time_ms is not None else ""
            key = f"{sid} echo {number}"
            split_files[key] = echo_names
            split_headers[key] = replace(header, echo=f"echo {number} of {len(groups)}{time}")
    return split_files, split_headers


def _other_series_warning(files: dict, chosen: str, headers: dict, ranks: dict, refused: dict,
                          modality: str | None) -> str:
    """Which of several series in a folder was analysed and why, the others named (and
    why those tried first were passed over), so the reader knows what the figures belong
    to and how to pick another."""
    others = [sid for sid in files if sid != chosen and sid not in refused]
    rank = ranks[chosen]
    tied = [sid for sid in others if ranks[sid] == rank]
    if modality == "mr" and rank[2] == 2:
        why = "a T2-weighted fat-suppressed series by its header"
    elif modality == "mr" and rank[2] == 1:
        why = "the nearest to a T2-weighted fat-suppressed series by its header"
    elif rank[3] >= max(r[3] for r in ranks.values()):
        why = "the one with the most slices"
    else:
        larger = [sid for sid in files if ranks[sid][3] > rank[3]]
        reasons = []
        if any(sid in refused for sid in larger):
            reasons.append("could be read")
        if any(not ranks[sid][0] for sid in larger):
            reasons.append(f"are {modality.upper()}" if modality else "are of its modality")
        if any(not ranks[sid][1] for sid in larger):
            reasons.append("are no localizer or diffusion series")
        why = f"the one with the most slices of those that {' and '.join(reasons) or 'are volumes'}"
    apart = " (each echo of a multi-echo series counted apart)" if any(headers[sid].echo for sid in files) else ""
    text = (f"The DICOM folder holds {len(files)} series{apart}; {_series_label(files[chosen], headers[chosen])}, "
            f"{why}, was analysed")
    text += (f", and {', '.join(_series_label(files[sid], headers[sid]) for sid in others)} left aside." if others
             else ".")
    if refused:
        passed_over = {sid: _first_sentence(reason) for sid, reason in refused.items()}
        text += " " + " ".join(f"{_series_label(files[sid], headers[sid])} was passed over: "
                               f"{reason[0].lower()}{reason[1:]}." for sid, reason in passed_over.items())
    if tied and modality == "mr":
        text += (" Another series has as many slices and the same contrast by its header (another plane or a "
                 "repeat?): check that the analysed one is the T2 fat-saturated series meant.")
    elif tied:
        text += (" Another series has as many slices (a second reconstruction of the same scan, with another "
                 "kernel or window?): check that the analysed one is the intended one; a soft-tissue kernel "
                 "gives the steadiest bone edges.")
    return text + (" To analyse another series, give a folder holding only that series, or export it from "
                   "Slicer's DICOM module as a NRRD file.")


@dataclass
class DicomSlices:
    """Orientation and position (LPS, from the DICOM header) of each slice, in the
    order of the volume's slices."""

    row_lps: np.ndarray
    column_lps: np.ndarray
    positions_lps: np.ndarray

    @property
    def normal_lps(self) -> np.ndarray:
        return np.cross(self.row_lps, self.column_lps)


def _numbers(text: str, count: int | None = None):
    """The numbers of a DICOM value ("a\\b\\c"), or None unless all are finite (and
    ``count`` of them, when given)."""
    try:
        values = np.asarray([float(v) for v in text.strip().split("\\")])
    except ValueError:
        return None
    return values if np.all(np.isfinite(values)) and (count is None or values.shape == (count,)) else None


def _header_numbers(reader, index: int, tag: str, count: int):
    """A tag's numbers on slice ``index`` of a series reader."""
    return _numbers(reader.GetMetaData(index, tag), count) if reader.HasMetaDataKey(index, tag) else None


def _file_header_numbers(reader, tag: str, count: int | None = None):
    """A tag's numbers in the header a file reader read."""
    return _numbers(reader.GetMetaData(tag), count) if reader.HasMetaDataKey(tag) else None


def dicom_slice_geometry(reader, count: int, folder) -> DicomSlices | None:
    """Each slice's orientation and position from its header (None when a slice lacks
    them, e.g. a single multi-frame file); slices of differing orientation are refused."""
    orientations, positions = [], []
    for index in range(count):
        orientation = _header_numbers(reader, index, "0020|0037", 6)
        position = _header_numbers(reader, index, "0020|0032", 3)
        if orientation is None or position is None:
            return None
        orientations.append(orientation)
        positions.append(position)
    orientations = np.asarray(orientations)
    if np.max(np.abs(orientations - orientations[0])) > ORIENTATION_TOLERANCE:
        raise InputError(f"The DICOM series in '{folder}' mixes slices of different orientations (several stacks, "
                         "or a scout, saved as one series). Export the one axial stack to analyse, or load the "
                         "series in Slicer and save the volume as NRRD.")
    row, column = orientations[0, :3], orientations[0, 3:]
    return DicomSlices(row / np.linalg.norm(row), column / np.linalg.norm(column), np.asarray(positions))


def _check_slice_gaps(gaps: np.ndarray, spacing: float) -> None:
    if spacing <= 0 or np.min(gaps) < SLICE_POSITION_TOLERANCE * spacing:
        raise InputError("The DICOM series has two or more slices at the same position (several echoes, "
                         "acquisitions or reconstructions saved as one series). Export the one series to analyse, "
                         "or load it in Slicer's DICOM module and save the one volume meant as NRRD.")
    if np.max(gaps) > MAX_SLICE_GAP_FACTOR * spacing:
        raise InputError(f"The DICOM series has a gap of {np.max(gaps):.1f} mm between slices spaced {spacing:.2f} mm: "
                         "slices are missing. Export the complete series from the scanner or PACS.")


def _in_plane_shifts(positions_lps: np.ndarray, along: np.ndarray, normal: np.ndarray, slices: DicomSlices,
                     pixel_mm: np.ndarray) -> np.ndarray:
    """Each slice's offset from the stack through the first slice along the normal, in
    pixels (j along the column direction, i along the row direction): a gantry tilt."""
    offsets = positions_lps - positions_lps[0] - np.outer(along - along[0], normal)
    return np.stack([offsets @ slices.column_lps / pixel_mm[1], offsets @ slices.row_lps / pixel_mm[0]], axis=1)


def _resample_slices(source: np.ndarray, along: np.ndarray, shifts: np.ndarray | None, spacing: float) -> np.ndarray:
    """Slices (in order along the normal, at ``along`` mm) moved in their plane by
    ``shifts`` and interpolated linearly onto an even ``spacing``."""
    targets = along[0] + spacing * np.arange(int(round((along[-1] - along[0]) / spacing)) + 1)
    corrected = np.empty((len(targets),) + source.shape[1:], source.dtype)
    air = float(source.min())
    aligned: dict = {}

    def slice_at(k):
        if k not in aligned:
            plane = source[k].astype(np.float32)
            aligned[k] = (ndimage.shift(plane, shifts[k], order=1, mode="constant", cval=air)
                          if shifts is not None else plane)
        return aligned[k]

    for m, target in enumerate(targets):
        k = int(np.clip(np.searchsorted(along, target, side="right") - 1, 0, len(along) - 2))
        weight = float(np.clip((target - along[k]) / (along[k + 1] - along[k]), 0.0, 1.0))
        plane = (1.0 - weight) * slice_at(k) + weight * slice_at(k + 1)
        for passed in [key for key in aligned if key < k]:
            del aligned[passed]
        corrected[m] = np.rint(plane) if corrected.dtype.kind in "iu" else plane
    return corrected


def regular_slice_grid(image, slices: DicomSlices):
    """The image on a regular grid at right angles to its slices, with warnings.

    A gantry tilt stacks slices obliquely and a scanner may leave slices unevenly
    spaced (or one missing); a volume built from the first slice's position and a
    single spacing would then be sheared or stretched. Each slice is shifted in its
    plane to undo the tilt and the slices are interpolated onto an even spacing, as
    Slicer's acquisition-geometry correction does. Duplicate positions (two
    acquisitions in one series) and gaps wider than one missing slice are refused.
    """
    normal = slices.normal_lps
    along = slices.positions_lps @ normal
    if along[-1] < along[0]:
        normal, along = -normal, -along
    order = np.argsort(along, kind="stable")
    along, positions = along[order], slices.positions_lps[order]
    gaps = np.diff(along)
    if len(gaps) == 0:
        return image, []
    spacing = float(np.median(gaps))
    _check_slice_gaps(gaps, spacing)
    pixel = np.asarray(image.GetSpacing(), float)[:2]
    shifts = _in_plane_shifts(positions, along, normal, slices, pixel)
    tilted = float(np.max(np.abs(shifts))) > TILT_TOLERANCE_PIXELS
    step = (along[-1] - along[0]) / len(gaps)
    uneven = float(np.max(np.abs(along - along[0] - step * np.arange(len(along))))) > SLICE_POSITION_TOLERANCE * spacing
    in_order = bool(np.all(order == np.arange(len(order))))
    if not (tilted or uneven) and in_order:
        return image, []

    source = _sitk().GetArrayViewFromImage(image)
    corrected = _resample_slices(source[order] if not in_order else source, along, shifts if tilted else None,
                                 spacing if uneven else step)
    result = _sitk().GetImageFromArray(corrected)
    result.SetSpacing((float(pixel[0]), float(pixel[1]), spacing if uneven else step))
    result.SetOrigin(tuple(float(v) for v in positions[0]))
    result.SetDirection(tuple(float(v) for v in np.stack([slices.row_lps, slices.column_lps, normal], axis=1).ravel()))
    warnings = []
    if tilted:
        stacking = positions[-1] - positions[0]
        tilt = np.degrees(np.arccos(min(1.0, abs(float(stacking @ normal)) / float(np.linalg.norm(stacking)))))
        warnings.append(f"The DICOM series was acquired with a gantry tilt of {tilt:.1f} degrees: each slice was "
                        "shifted in its plane onto a grid at right angles, so shapes, distances and positions are "
                        "true.")
    if uneven:
        warnings.append(f"The DICOM series has unevenly spaced slices ({np.min(gaps):.2f} to {np.max(gaps):.2f} mm "
                        f"apart): they were interpolated onto an even {spacing:.2f} mm spacing. Check the "
                        "region of the widest gap on the images.")
    return result, warnings


def _bytes_read_of_expected(reason: str) -> tuple[int, int] | None:
    """(bytes read, bytes expected) when the reader's error says the voxel data ended
    early: as the NRRD readers word it, compressed ("expected N bytes but received M")
    or raw ("fread got only M S-sized things, not N")."""
    compressed = re.search(r"expected (\d+) bytes,? but (?:only )?received (\d+)", reason)
    if compressed:
        return int(compressed.group(2)), int(compressed.group(1))
    raw = re.search(r"got only (\d+) (\d+)-sized things, not (\d+)", reason)
    if raw:
        size = int(raw.group(2))
        return int(raw.group(1)) * size, int(raw.group(3)) * size
    return None


def mask_files(folder) -> dict:
    """The image files directly inside ``folder``, by their names less the suffix
    (``femur_left`` for ``femur_left.nii.gz``): a folder of one mask per structure, as
    TotalSegmentator writes by default. Hidden files are left out."""
    found = {}
    for entry in sorted(Path(folder).iterdir()):
        suffix = next((s for s in IMAGE_SUFFIXES if entry.name.lower().endswith(s)), None)
        # ".nii" is not a suffix of "x.nii.gz": each file ends in one of them at most.
        if suffix and not entry.name.startswith(".") and entry.is_file():
            found[entry.name[:-len(suffix)]] = entry
    return found


def read_volume(path, what: str = "image", share_memory: bool = False, modality: str | None = None) -> LoadedImage:
    """Read a 3D scalar image (NRRD, NIfTI, MHA or a DICOM folder) as RAS geometry + array.

    With ``share_memory`` the array is a read-only view of the image as read (no copy
    of a full CT); the image is then kept in ``sitk_image`` for as long as the array lives.
    ``modality`` ("ct" or "mr") picks the series of a DICOM folder holding several.

    Raises :class:`InputError` with a user-readable message for anything that is not
    a readable 3D scalar volume with sane geometry and finite values.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.exists():
        raise InputError(f"The {what} '{path}' does not exist. Check the path.")
    warnings: list[str] = []
    placements: dict = {}
    if path.is_dir():
        image, description, warnings = _read_dicom_series(path, modality)
    else:
        if not os.access(path, os.R_OK):
            raise InputError(f"The {what} '{path}' cannot be read (permission denied).")
        warnings, placements = _checked_nifti_header(path, what)
        _check_nrrd_spacing(path, what)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            reason = reader_error_reason(error, "")
            if reason.startswith("Reason:"):
                # The reader's last system error, not its own reason: the file is there.
                reason = "its data could not be read: the file may be cut short or damaged"
            short = _bytes_read_of_expected(reason)
            if short:
                # A readable header over too few voxels: not a format to change, a copy to redo.
                raise InputError(f"The {what} '{path}' ends before its voxel data do ({short[0]} bytes of "
                                 f"{short[1]}): the file was cut short, in a copy or download. Copy or export "
                                 "it again.") from None
            if _is_archive(path):
                raise InputError(f"The {what} '{path}' is an archive (a PACS or CD export packed into one file), "
                                 "not an image. Unpack it and give the folder it holds (its DICOM series are "
                                 "searched for there), or the image file inside it.") from None
            raise InputError(f"The {what} '{path}' is not an image SimpleITK can read ({reason}). "
                             f"Give a NRRD, NIfTI, MHA file or a DICOM folder.") from None
        description = path.name
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {what} '{path}' has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); a scalar CT or MR volume is required.")
    if image.GetDimension() == 4 or (image.GetDimension() > 3):
        raise InputError(f"The {what} '{path}' is {image.GetDimension()}D (a time series or multi-volume); "
                         "extract the one 3D volume to analyse first.")
    if image.GetDimension() == 2 or min(image.GetSize()) < 2:
        raise InputError(f"The {what} '{path}' is a 2D image (size {image.GetSize()}); a 3D volume is required.")
    geometry = geometry_from_sitk(image)
    geometry.validate(f"The {what} '{path}'")
    warnings += _placements_disagree_warnings(placements, geometry, path, what)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise InputError(f"The {what} '{path}' holds {bad} NaN or infinite voxel values. "
                             "Fix or mask them (for example replace them by air, -1000 HU) and try again.")
    if share_memory:
        return LoadedImage(array, geometry, str(path), description, image, warnings)
    return LoadedImage(np.array(array), geometry, str(path), description, warnings=warnings)


#: Archive formats a study is exported in, by their names' endings.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar")


def _is_archive(path: Path) -> bool:
    """A packed export, by its name or by a ZIP or tar file's own signature (an export
    renamed, or without a suffix)."""
    import tarfile
    import zipfile

    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return True
    try:
        return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)
    except OSError:
        return False


def _checked_nifti_header(path: Path, what: str) -> tuple[list[str], dict]:
    """The checks of a NIfTI file's header (read once; none for another file): the
    warnings it calls for, and its placements (see :func:`nifti_placements`)."""
    read = bonelabels.nifti1_header(path)
    if read is None:
        return [], {}
    header, endian, _ = read
    _check_nifti_sform(header, endian, path, what)
    _check_nifti_spacing_and_size(header, endian, path, what)
    return _nifti_orientation_warnings(header, endian, path, what), nifti_placements(header, endian)


def _check_nifti_sform(header: bytes, endian: str, path: Path, what: str) -> None:
    """Refuse a NIfTI file whose sform is sheared (a gantry-tilted CT converted without
    tilt correction): its reader then falls back to the orthogonal qform without a word,
    which places every slice where it was not acquired."""
    sform_code = struct.unpack(endian + "h", header[254:256])[0]
    if sform_code <= 0:
        return
    rows = np.array([struct.unpack(endian + "4f", header[offset:offset + 16]) for offset in (280, 296, 312)])
    columns = rows[:, :3]
    lengths = np.linalg.norm(columns, axis=0)
    if not np.all(np.isfinite(columns)) or np.any(lengths <= 0):
        return  # left to the reader's own checks
    if not orthonormal(columns / lengths):
        raise InputError(f"The {what} '{path}' has a sheared (non-orthogonal) sform, as written for a CT acquired "
                         "with a gantry tilt and converted without tilt correction; read through its qform instead, "
                         "its slices would lie where they were not acquired. Convert the DICOM series again with "
                         "tilt correction (or give the DICOM folder itself, which is corrected here).")


#: NIfTI-1 datatype code -> bytes per voxel (the codes a scalar image uses).
NIFTI_BYTES_PER_VOXEL = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}


def _check_nifti_spacing_and_size(header: bytes, endian: str, path: Path, what: str) -> None:
    """Refuse a NIfTI file whose voxel spacing is missing (0 or not a number, which the
    reader would take for 1 mm) or whose voxel data end early (a file cut short in a
    copy or download, which the reader would fill with zeros)."""
    dims = struct.unpack(endian + "8h", header[40:56])
    datatype = struct.unpack(endian + "h", header[70:72])[0]
    pixdim = struct.unpack(endian + "8f", header[76:108])
    voxel_offset = struct.unpack(endian + "f", header[108:112])[0]
    sform_code = struct.unpack(endian + "h", header[254:256])[0]
    spatial = min(max(dims[0], 0), 3)
    # The sform, when given, carries the spacing; else the pixdims do.
    if sform_code <= 0 and not all(np.isfinite(pixdim[n]) and pixdim[n] > 0 for n in range(1, spatial + 1)):
        raise InputError(f"The {what} '{path}' gives no usable voxel spacing (pixdim "
                         f"{', '.join(f'{v:g}' for v in pixdim[1:spatial + 1])} mm): it would be read as 1 mm, and "
                         "every volume and distance would be wrong. Convert the original (DICOM) images again.")
    if datatype not in NIFTI_BYTES_PER_VOXEL or not 1 <= dims[0] <= 7 or min(dims[1:dims[0] + 1]) < 1:
        return  # left to the reader's own checks
    expected = int(voxel_offset) + int(np.prod(dims[1:dims[0] + 1], dtype=np.int64)) * NIFTI_BYTES_PER_VOXEL[datatype]
    if not _holds_bytes(path, expected):
        raise InputError(f"The {what} '{path}' ends before its voxel data do (the file was cut short, in a copy or "
                         "download): the missing slices would be read as zeros. Copy the file again.")


#: Two placements of one NIfTI file further apart than this (mm, at a corner of the
#: image) are two different places, not the same one written twice with round-off.
PLACEMENT_TOLERANCE_MM = 1.0


def nifti_placements(header: bytes, endian: str) -> dict:
    """{"qform": 4 x 4 ijk-to-RAS matrix, "sform": ...} of a NIfTI-1 header, for each one
    it declares (code above 0), with the image's size as "size"."""
    dims = struct.unpack(endian + "8h", header[40:56])
    pixdim = np.array(struct.unpack(endian + "8f", header[76:108]), float)
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    placements: dict = {"size": np.array([max(int(d), 1) for d in dims[1:4]])}
    if qform_code > 0:
        b, c, d, x, y, z = struct.unpack(endian + "6f", header[256:280])
        a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
        rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                             [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                             [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - b * b - c * c]])
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        matrix = np.eye(4)
        matrix[:3, :3] = rotation * np.abs(pixdim[1:4]) * [1.0, 1.0, qfac]
        matrix[:3, 3] = (x, y, z)
        placements["qform"] = matrix
    if sform_code > 0:
        matrix = np.eye(4)
        matrix[:3] = np.array([struct.unpack(endian + "4f", header[offset:offset + 16]) for offset in (280, 296, 312)])
        placements["sform"] = matrix
    return {key: value for key, value in placements.items() if np.all(np.isfinite(value))}


def _placements_disagree_warnings(placements: dict, geometry: VolumeGeometry, path: Path, what: str) -> list[str]:
    """A warning for a NIfTI file whose qform and sform place the image in two places
    (a registration saved in one of them only): the reader takes one by its own rules
    (Slicer's the same), which the user may not have meant."""
    if "qform" not in placements or "sform" not in placements:
        return []
    size = placements["size"]
    apart = corner_shift_mm(placements["qform"], placements["sform"], size)
    if apart <= PLACEMENT_TOLERANCE_MM:
        return []
    used = min(("qform", "sform"), key=lambda name: corner_shift_mm(placements[name], geometry.ijk_to_ras, size))
    other = "sform" if used == "qform" else "qform"
    return [f"The {what} '{path.name}' holds two placements, its NIfTI qform and sform, up to {apart:.1f} mm apart "
            f"(a registration or a reorientation saved in one of them only): it was read through its {used}, as "
            f"Slicer reads it. Check that it lies on the other images; if its {other} is the placement meant, "
            f"write the file again with both set to it."]


def _nifti_orientation_warnings(header: bytes, endian: str, path: Path, what: str) -> list[str]:
    """A warning for a NIfTI file that gives no orientation (neither qform nor sform):
    its axes are then taken as they are stored, and its left and right may be swapped."""
    qform_code, sform_code = struct.unpack(endian + "2h", header[252:256])
    if qform_code > 0 or sform_code > 0:
        return []
    return [f"The {what} '{path.name}' gives no orientation (its NIfTI header sets neither a qform nor an sform): "
            "its axes were taken as stored, so the patient's left and right may be swapped. Check the side of each "
            "nerve and island against the images, or convert the original (DICOM) images again."]


def _holds_bytes(path: Path, expected: int) -> bool:
    """Whether a file holds ``expected`` bytes, once decompressed if it is gzipped. A
    gzip file's last four bytes give its size (modulo 4 GiB) and a truncated one ends
    in compressed data: only when they differ from the size expected is the whole
    stream read and counted."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size >= expected
    with path.open("rb") as stream:
        stream.seek(max(path.stat().st_size - 4, 0))
        trailer = stream.read(4)
    if len(trailer) == 4 and struct.unpack("<I", trailer)[0] == expected % (1 << 32):
        return True
    counted = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                counted += len(chunk)
    except (EOFError, OSError, zlib.error):
        return False
    return counted >= expected


def _check_nrrd_spacing(path: Path, what: str) -> None:
    """Refuse a NRRD file whose header gives no spacing for an axis of the volume, or
    one that is 0 or not a number: the reader would take it for 1 mm."""
    if not path.name.lower().endswith((".nrrd", ".nhdr")):
        return
    try:
        with path.open("rb") as stream:
            lines = re.split(rb"\r?\n\r?\n", stream.read(65536), maxsplit=1)[0].decode("latin-1").splitlines()
    except OSError:
        return
    fields = {}
    for line in lines[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    if not lines or not lines[0].startswith("NRRD") or fields.get("dimension") != "3":
        return  # not a NRRD file, or not a volume: left to the reader, which says so
    kinds = fields.get("kinds", "").split()
    if "space directions" in fields:
        # One "(x,y,z)" per spatial axis, "none" for the others; writers may put spaces inside.
        lengths = []
        for vector in re.findall(r"\(([^)]*)\)", fields["space directions"]):
            try:
                lengths.append(float(np.linalg.norm([float(x) for x in vector.split(",")])))
            except ValueError:
                lengths.append(float("nan"))
    elif "spacings" in fields:
        lengths = []
        for value in fields["spacings"].split():
            try:
                lengths.append(float(value))
            except ValueError:
                lengths.append(float("nan"))
        # Spacings of non-spatial axes (a vector's components) are 'nan' by the format.
        lengths = [v for v, kind in zip(lengths, kinds or ["space"] * len(lengths))
                   if kind.lower() in ("space", "domain")] or lengths
    else:
        raise InputError(f"The {what} '{path}' has no voxel spacing in its header (neither 'space directions' nor "
                         "'spacings'): it would be read as 1 mm, and every volume and distance would be wrong. "
                         "Save it again from the program that made it, with its spacing.")
    if not lengths or not all(np.isfinite(v) and v > 0 for v in lengths):
        raise InputError(f"The {what} '{path}' gives no usable voxel spacing ("
                         f"{', '.join(f'{v:g}' for v in lengths)} mm): it would be read as 1 mm, and every volume "
                         "and distance would be wrong. Save it again from the program that made it, with its spacing.")


def write_volume(path, array: np.ndarray, geometry: VolumeGeometry, compress: bool = True) -> None:
    sitk = _sitk()
    sitk.WriteImage(sitk_image_from_array(array, geometry), str(path), compress)


#: NRRD's names of the voxel types a CT or MR arrives in.
NRRD_TYPES = {"int8": "signed char", "uint8": "uchar", "int16": "short", "uint16": "ushort", "int32": "int",
              "uint32": "uint", "int64": "longlong", "uint64": "ulonglong", "float32": "float", "float64": "double"}
#: ISA-L's deflate at level 3 packs a CT as tightly as zlib at level 2 (ITK's NRRD
#: default) in a third of the time (measured: 51.6 % against 51.3 % of a 512 x 512 x 400
#: CT, 0.53 s against 1.8 s; 64.1 % against 64.2 % on a real 3 mm CT).
FAST_GZIP_LEVEL = 3
_GZIP_CHUNK_BYTES = 1 << 24


def nrrd_header(dtype, geometry: VolumeGeometry, encoding: str) -> bytes:
    """The header of an NRRD file holding a (k, j, i) array of ``dtype`` on ``geometry``,
    in the LPS space Slicer and ITK write."""
    dtype = np.dtype(dtype)
    if dtype.name not in NRRD_TYPES:
        raise ValueError(f"NRRD holds no voxels of type {dtype.name}")
    to_lps = LPS_TO_RAS @ geometry.ijk_to_ras[:3]

    def vector(values):
        return "(" + ",".join(repr(float(v)) for v in values) + ")"

    lines = ["NRRD0004", f"type: {NRRD_TYPES[dtype.name]}", "dimension: 3", "space: left-posterior-superior",
             "sizes: " + " ".join(str(n) for n in geometry.shape_kji[::-1]),
             "space directions: " + " ".join(vector(to_lps[:, axis]) for axis in range(3)),
             "kinds: domain domain domain",
             f"endian: {'big' if dtype.byteorder == '>' else 'little'}",
             f"encoding: {encoding}", f"space origin: {vector(to_lps[:, 3])}"]
    return ("\n".join(lines) + "\n\n").encode("ascii")


def write_nrrd_fast(path, array: np.ndarray, geometry: VolumeGeometry) -> bool:
    """Write a gzip-compressed NRRD (as Slicer reads and writes it) compressed by ISA-L
    at :data:`FAST_GZIP_LEVEL`, chunk by chunk, without a copy of the voxels. Returns
    False, writing nothing, when ISA-L is not installed (the caller writes otherwise)."""
    try:
        from isal import isal_zlib
    except ImportError:
        return False
    if array.shape != geometry.shape_kji:
        raise ValueError(f"array of shape {array.shape} on a grid of shape {geometry.shape_kji}")
    voxels = memoryview(np.ascontiguousarray(array)).cast("B")
    # wbits 16 + 15: a gzip stream, which NRRD's "gzip" encoding is.
    compressor = isal_zlib.compressobj(FAST_GZIP_LEVEL, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)
    with open(path, "wb") as file:
        file.write(nrrd_header(array.dtype, geometry, "gzip"))
        for start in range(0, len(voxels), _GZIP_CHUNK_BYTES):
            file.write(compressor.compress(voxels[start:start + _GZIP_CHUNK_BYTES]))
        file.write(compressor.flush())
    return True


# ---------------------------------------------------------------------------------------
# Markups JSON
# ---------------------------------------------------------------------------------------
@dataclass
class MarkupsPoints:
    name: str
    points_ras: np.ndarray       # (N, 3)
    source: str
    kind: str                    # markups type as written in the file
    roi: dict | None = None      # for ROI markups: center_ras, size_mm, axes (3x3 columns)
    unplaced: int = 0            # control points without a position (positionStatus not "defined")


#: Millimetres per coordinate unit of a markups file.
MARKUPS_UNITS_MM = {"mm": 1.0, "um": 0.001}


def read_markups_json(path, what: str = "markups file") -> list[MarkupsPoints]:
    """Read every markup in a Slicer ``.mrk.json`` file (or the point list of an older
    ``.fcsv`` file); coordinates returned in RAS."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"The {what} '{path}' does not exist. Check the path.")
    if path.suffix.lower() == ".fcsv":
        return [read_fcsv(path, what)]
    if path.suffix.lower() == ".csv":
        raise InputError(f"The {what} '{path}' is a .csv table, whose coordinate system is not known. Load the "
                         "points into Slicer and save them as .mrk.json (or .fcsv).")
    try:
        # A byte-order mark, as some editors on Windows write, is no reason to refuse.
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise InputError(f"The {what} '{path}' is not a text file. Save the points from Slicer as .mrk.json.") from None
    except json.JSONDecodeError as error:
        raise InputError(f"The {what} '{path}' is not valid JSON ({error.msg} at line {error.lineno}, column "
                         f"{error.colno}): the file may be cut short or edited by hand. Save the points from "
                         "Slicer again as .mrk.json.") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not markups:
        raise InputError(f"The {what} '{path}' is not a Slicer markups JSON file (no 'markups' list). "
                         "Save the points from Slicer as .mrk.json.")
    result = []
    for markup in markups:
        try:
            system = str(markup.get("coordinateSystem", "LPS")).upper()
            flip = LPS_TO_RAS if system == "LPS" else np.eye(3)
            if system not in ("LPS", "RAS"):
                raise ValueError(f"unknown coordinate system {system}")
            # The markups format allows micrometres; everything here is in mm.
            units = str(markup.get("coordinateUnits", "mm")).lower()
            if units not in MARKUPS_UNITS_MM:
                raise ValueError(f"unknown coordinate units '{units}' (mm or um)")
            to_ras_mm = flip * MARKUPS_UNITS_MM[units]
            control_points = markup.get("controlPoints", [])
            positions = [cp["position"] for cp in control_points if cp.get("positionStatus", "defined") == "defined"]
            points = np.asarray(positions, float).reshape(-1, 3) @ to_ras_mm.T
            if not np.all(np.isfinite(points)):
                raise ValueError("non-finite coordinates")
            roi = None
            if markup.get("type") == "ROI":
                center = np.asarray(markup["center"], float) @ to_ras_mm.T
                size = np.asarray(markup["size"], float) * MARKUPS_UNITS_MM[units]
                orientation = np.asarray(markup.get("orientation", np.eye(3).ravel()), float).reshape(3, 3)
                roi = {"center_ras": center, "size_mm": size, "axes": flip @ orientation}
            result.append(MarkupsPoints(str(markup.get("name", path.stem)), points, str(path),
                                        str(markup.get("type", "")), roi, len(control_points) - len(positions)))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise InputError(f"The {what} '{path}' has a malformed markup ({error}). "
                             "Re-save it from Slicer's Markups module.") from None
    return result


#: The coordinate systems an ``.fcsv`` header names: Slicer wrote a number up to 4.10
#: (0 RAS, 1 LPS, 2 IJK), the name since.
FCSV_COORDINATE_SYSTEMS = {"0": "RAS", "RAS": "RAS", "1": "LPS", "LPS": "LPS", "2": "IJK", "IJK": "IJK"}


#: The columns of a Slicer point list (.fcsv) in the order Slicer writes them.
FCSV_STANDARD_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"


def read_fcsv(path, what: str = "markups file") -> MarkupsPoints:
    """Read the point list of a Slicer ``.fcsv`` file (Markups fiducial file, version 4
    or later); coordinates returned in RAS.

    Its header names the coordinate system (RAS before Slicer 4.11, LPS since) and the
    columns; a file without that header (a table written by hand) is refused, since
    RAS and LPS differ only in the signs of two coordinates and a guess would put the
    seeds on the other side of the body."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"The {what} '{path}' is not a text file. Save the points from Slicer as .mrk.json.") from None
    header = {}
    for line in lines:
        if line.startswith("#") and "=" in line:
            key, _, value = line[1:].partition("=")
            header[key.strip().lower()] = value.strip()
    system = FCSV_COORDINATE_SYSTEMS.get(header.get("coordinatesystem", "").upper())
    if "markups fiducial file version" not in header or system is None:
        found = header.get("coordinatesystem")
        raise InputError(f"The {what} '{path}' does not say its coordinate system (a '# CoordinateSystem = LPS' or "
                         f"'= RAS' line{f'; it says {found!r}' if found else ''}), as every point list Slicer writes "
                         "does: RAS and LPS differ in the signs of two coordinates, so the points cannot be placed. "
                         "Load them into Slicer and save them as .mrk.json, or add that line.")
    if system == "IJK":
        raise InputError(f"The {what} '{path}' holds voxel indices (CoordinateSystem IJK), not positions in the "
                         "patient. Load the points into Slicer with their volume and save them as .mrk.json.")
    # Without a columns line, Slicer reads the rows in its own standard order.
    columns = [c.strip().lower() for c in header.get("columns", FCSV_STANDARD_COLUMNS).split(",")]
    try:
        x_column = columns.index("x")
        rows = list(csv.reader(line for line in lines if line.strip() and not line.startswith("#")))
        # Slicer 5 writes each point's position status after the named columns; only
        # a defined position (2) was placed, as "defined" in the JSON format.
        placed = [len(row) <= len(columns) or not row[len(columns)].strip() or int(row[len(columns)]) == 2
                  for row in rows]
        points = np.asarray([[float(row[x_column + n]) for n in range(3)] for row, ok in zip(rows, placed) if ok],
                            float).reshape(-1, 3)
    except (ValueError, IndexError) as error:
        raise InputError(f"The {what} '{path}' has a malformed point line ({error}). Re-save it from Slicer's "
                         "Markups module.") from None
    if not np.all(np.isfinite(points)):
        raise InputError(f"The {what} '{path}' has a point without finite coordinates. Re-save it from Slicer's "
                         "Markups module.")
    if system == "LPS":
        points = points @ LPS_TO_RAS.T
    return MarkupsPoints(path.name.split(".")[0], points, str(path), "Fiducial", unplaced=len(rows) - len(points))
