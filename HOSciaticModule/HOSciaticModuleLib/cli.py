"""``hosciatic``: the analysis from a command line, for batch work.

    hosciatic analyze CT --out DIR [--roi ROI.mrk.json] [--bones BONES.seg.nrrd|LABELS.nii.gz|MASKS_DIR]
                         [--bone-threshold HU] [--min-island-ml ML]
                         [--nerve-seeds SEEDS.mrk.json ...] [--modality ct|mr]
                         [--contact-tolerance MM]
    hosciatic batch CASES.csv --out DIR [--skip-existing] [shared options]
    hosciatic demo --out DIR

The command builds a Slicer scene (real MRML classes) and runs the same
:class:`~HOSciaticModuleLib.pipeline.HOSciaticAnalysis` as the module panel.
Results are written to a private folder inside DIR and moved into place only
when every file is complete, so a failed run leaves nothing half-written.
Exit status: 0 success, 2 bad input (one-paragraph message on stderr),
1 unexpected failure, 3 a batch in which some cases were not analysed (its
summary says which and why).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

from . import __version__, bonelabels, export, measurements, ossification
from . import contact as contact_module
from .defaults import MAX_CONTACT_TOLERANCE_MM, SIDES
from .errors import AnalysisCancelled, InputError
from .hounsfield import looks_like_ct
from .imageio import mask_files, read_markups_json, read_volume, reader_error_reason
from .midline import ct_body_midline, side_of_midline

#: Largest label value read as one segment each; a larger one is no label map.
MAX_LABEL_VALUE = 65535
#: Exit status of a batch that ran but could not analyse every case.
BATCH_INCOMPLETE_STATUS = 3


# ---------------------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a finite, non-negative number")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' must be finite")
    return value


def _path(text: str) -> str:
    """An option type: a path that is not empty (an unset shell variable gives '')."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path was given (an unset variable in a script?)")
    return text


def _float_within(low: float, high: float):
    """An option type: a number from ``low`` to ``high``, checked before any case runs."""
    def parse(text: str) -> float:
        value = _finite_float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"'{text}' is outside {low:g} to {high:g}")
        return value

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InputError(f"{message}. Run '{self.prog} --help' for the options.")


def _add_shared_options(command) -> None:
    """The analysis settings ``analyze`` and ``batch`` both take."""
    command.add_argument("--bone-threshold",
                         type=_float_within(ossification.MIN_BONE_THRESHOLD_HU, ossification.MAX_BONE_THRESHOLD_HU),
                         default=ossification.DEFAULT_BONE_THRESHOLD_HU, metavar="HU",
                         help=f"bone threshold (default {ossification.DEFAULT_BONE_THRESHOLD_HU:g} HU)")
    command.add_argument("--min-island-ml", type=_positive_float, default=ossification.DEFAULT_MIN_ISLAND_ML,
                         metavar="ML", help=f"smallest HO island (default {ossification.DEFAULT_MIN_ISLAND_ML:g} mL)")
    command.add_argument("--contact-tolerance", type=_float_within(0.0, MAX_CONTACT_TOLERANCE_MM),
                         default=contact_module.DEFAULT_CONTACT_TOLERANCE_MM, metavar="MM",
                         help=f"contact tolerance (default {contact_module.DEFAULT_CONTACT_TOLERANCE_MM:g} mm)")
    command.add_argument("--no-scene", action="store_true", help="do not write scene.mrb (faster for batch runs)")
    command.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hosciatic", description="Heterotopic ossification and sciatic nerve analysis.")
    parser.add_argument("--version", action="version", version=f"hosciatic {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    analyze = commands.add_parser("analyze", help="analyse one CT (or MR) volume")
    analyze.add_argument("image", type=_path,
                         help="CT (or MR with --modality mr): NRRD, NIfTI, MHA or a DICOM folder")
    analyze.add_argument("--out", type=_path, required=True, help="output folder (created if missing)")
    analyze.add_argument("--modality", choices=("ct", "mr"), default="ct",
                         help="ct (default): HO segmentation + nerve; mr: nerve tracing only")
    analyze.add_argument("--roi", type=_path,
                         help="markups ROI (.mrk.json) limiting the HO search: islands meeting it are "
                              "reported; the bone around it and its mirror image across the body's midline "
                              "are read for context")
    analyze.add_argument("--bones", type=_path,
                         help="native-bone segmentation (.seg.nrrd), label map (NRRD/NIfTI) or folder of one "
                         "mask file per structure (TotalSegmentator's default output); of a whole-body "
                         "segmentation only the segments named as bones are used")
    analyze.add_argument("--nerve-seeds", type=_path, action="append", default=[], metavar="SEEDS.mrk.json",
                         help="points along one sciatic nerve, a Slicer markups .mrk.json or an older .fcsv point "
                              "list (repeat for the other side); the side is read from "
                              "the markup or file name ('right'/'left'), else from the points' side of the body's "
                              "midline on a CT of both hips, else from the sign of R")
    _add_shared_options(analyze)

    batch_command = commands.add_parser(
        "batch", help="analyse every case of a case list (CSV), one output folder per case, and a summary table")
    batch_command.add_argument("cases", type=_path,
                               help="CSV with a header row: case, image (required), nerve_seeds (several "
                               "files separated by ';' or '|'), roi, bones, modality; paths relative to the CSV's "
                               "folder; columns separated by commas, semicolons or tabs")
    batch_command.add_argument("--out", type=_path, required=True,
                               help="output folder: one folder per case and summary.csv")
    _add_shared_options(batch_command)
    batch_command.add_argument("--skip-existing", action="store_true",
                               help="keep cases whose folder already holds the metrics.json of the same inputs and "
                                    "settings, made by this version after the inputs were last saved (resume a "
                                    "batch)")

    demo = commands.add_parser("demo", help="generate the synthetic demo case and analyse it")
    demo.add_argument("--out", type=_path, default="demo-output", help="output folder (default demo-output)")
    demo.add_argument("--quiet", action="store_true")
    return parser


# ---------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------
class _ConsoleProgress:
    def __init__(self, quiet: bool, stream=sys.stderr):
        self.quiet = quiet
        self.stream = stream
        self.stage = ""

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet:
            return
        if not self.stream.isatty():
            # A log file gets one line per finished stage, not a redrawn bar.
            if fraction >= 1.0:
                self.stream.write(f"{self.stage}: {message}\n")
            return
        filled = int(round(fraction * 20))
        self.stream.write(f"\r[{'#' * filled}{'.' * (20 - filled)}] {self.stage}: {message[:60]:<60}")
        self.stream.flush()
        if fraction >= 1.0:
            self.stream.write("\n")

    def for_stage(self, stage: str):
        self.stage = stage
        return self


# ---------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------
def _side_of(markup, points_ras: np.ndarray, midline) -> tuple[str, str | None]:
    """The nerve's side from the markup's name; failing that from the body's midline
    (``midline()`` gives it, or None), failing that from the sign of R."""
    name = f"{markup.name} {Path(markup.source).name}".lower()
    has_right, has_left = "right" in name, "left" in name
    if has_right != has_left:
        return ("right" if has_right else "left"), None
    unnamed = f"The side of '{markup.source}' was not named ('right'/'left' in the markup name)"
    plane = midline()
    if plane is not None:
        side, distance = side_of_midline(points_ras, plane)
        if side is not None:
            return side, (f"{unnamed}; '{side}' was inferred from the points' position, {distance:.0f} mm to the "
                          "patient's " + side + " of the body's midline (where the skeleton is symmetric).")
    side = "right" if float(np.median(points_ras[:, 0])) > 0 else "left"
    return side, (f"{unnamed}; '{side}' was inferred from the sign of the points' R coordinate (R > 0 is the "
                  "patient's right), which assumes the scanner's origin lies near the body's midline.")


#: Markups that hold points along a nerve (lines, angles and planes do not); a file
#: without a type is read as points.
SEED_MARKUP_TYPES = ("Fiducial", "Curve", "ClosedCurve", "")


def _load_seeds(paths, midline=lambda: None) -> list[tuple[str, np.ndarray, list[str]]]:
    """(side, RAS points, warnings) of each seed-point file."""
    seeds = []
    for path in paths:
        markups = read_markups_json(path, "seed-point file")
        if all(m.roi is not None for m in markups):
            raise InputError(f"The seed-point file '{path}' holds an ROI, not points along the nerve. Give the "
                             "nerve's seed points (Markups > Point list or Curve, saved as .mrk.json).")
        along = [m for m in markups if m.roi is None and m.kind in SEED_MARKUP_TYPES]
        if not along:
            raise InputError(f"The seed-point file '{path}' holds no point list or curve (only "
                             f"{', '.join(sorted({m.kind or 'untyped' for m in markups}))}). Give the nerve's seed "
                             "points (Markups > Point list or Curve, saved as .mrk.json).")
        if len(along) > 1:
            raise InputError(f"The seed-point file '{path}' holds {len(along)} point lists or curves "
                             f"({', '.join(repr(m.name) for m in along)}): which are the nerve's is not clear. "
                             "Save the nerve's seed points alone, one file per nerve.")
        (seed_markup,) = along
        points, unplaced = seed_markup.points_ras, seed_markup.unplaced
        if len(points) < 2 and unplaced:
            raise InputError(f"The seed-point file '{path}' has {len(points)} placed point(s) and {unplaced} without "
                             "a position (added to the list but never placed). Place them on the nerve in Slicer "
                             "and save again.")
        side, warning = _side_of(seed_markup, points, midline) if len(points) else ("right", None)
        warnings = [warning] if warning else []
        if unplaced:
            warnings.append(f"{unplaced} point(s) of the seed-point file '{Path(path).name}' had no position (added "
                            "to the list but never placed) and were left out.")
        seeds.append((side, points, warnings))
    sides = [s[0] for s in seeds]
    if len(set(sides)) != len(sides):
        raise InputError(f"Two seed files were given for the same side ({', '.join(sides)}). Give one file per "
                         "nerve, named with 'right' or 'left'.")
    return seeds


def _check_seeds_in_image(paths, seeds, geometry) -> None:
    """Refuse, before any step runs, a seed-point file with a point outside the image,
    naming the file: found while tracing, after the HO step and the other nerve, the
    point was named by its number alone."""
    from .nerve import check_seeds_inside
    from .pipeline import check_seeds_on_one_nerve

    for path, (side, points, _) in zip(paths, seeds):
        try:
            # Points on both legs, one of them beyond an image of one hip, are named as such.
            check_seeds_on_one_nerve(points)
            check_seeds_inside(points, geometry)
        except InputError as error:
            raise InputError(f"In the seed-point file '{path}' ({side} nerve): {error}") from None


def _add_roi_node(scene, path):
    markups = [m for m in read_markups_json(path, "ROI file") if m.roi is not None]
    if not markups:
        raise InputError(f"The ROI file '{path}' holds no markups ROI. Save an ROI from Slicer (Markups > ROI) "
                         "as .mrk.json.")
    roi = markups[0].roi
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", markups[0].name or "ROI")
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    matrix = vtkMatrix4x4()
    axes = np.asarray(roi["axes"], float)
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(axes[r, c]))
    node.SetAndObserveObjectToNodeMatrix(matrix)
    node.SetCenterWorld(*[float(v) for v in roi["center_ras"]])
    node.SetSize(*[float(v) for v in roi["size_mm"]])
    return node


def _add_bones_node(scene, path, reference_node) -> tuple:
    """The native-bone segmentation node made from ``--bones``, and what the reader
    should know about how it was read."""
    from . import scene as scene_io

    path = Path(path)
    if not path.exists():
        raise InputError(f"The native-bone segmentation '{path}' does not exist. Check the path.")
    masks = mask_files(path) if path.is_dir() else {}
    if masks:
        return _add_bones_folder_node(scene, path, masks, reference_node)
    if path.is_dir():
        holding = sorted(entry.name for entry in path.iterdir() if entry.is_dir() and mask_files(entry))
        if holding:
            which = (f"its subfolder '{holding[0]}' does: give that folder" if len(holding) == 1 else
                     f"its subfolders {bonelabels.listed(repr(name) for name in holding)} do: give the one of "
                     "the bones' masks")
            raise InputError(f"The native-bone folder '{path}' holds no mask file itself, but {which} "
                             "(TotalSegmentator writes its masks into a folder of their own).")
    if _is_slicer_segmentation_file(path):
        import slicer

        _check_voxels_readable(path, "native-bone segmentation")
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Native bone")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node) or node.GetSegmentation().GetNumberOfSegments() == 0:
            scene.RemoveNode(node)
            raise InputError(f"The native-bone segmentation '{path}' could not be read or has no segment. "
                             "Save it from Slicer as .seg.nrrd, or give a label map (NRRD/NIfTI).")
        return node, []
    loaded = read_volume(path, "native-bone label map")
    _check_not_an_image_in_hounsfield_units(loaded.array, path)
    segments = label_map_segments(loaded.array, bonelabels.nifti_label_names(path))
    if not segments:
        raise InputError(f"The native-bone file '{path}' is empty (no voxel above 0). Give the bones' "
                         "segmentation made on this CT, or leave --bones out to have them estimated.")
    node = scene_io.ensure_segmentation_node(scene, None, "Native bone", reference_node)
    scene_io.replace_segments(node, segments, loaded.geometry, scene_io.BONE_COLOR)
    return node, []


def _check_not_an_image_in_hounsfield_units(array: np.ndarray, path: Path) -> None:
    """Refuse a native-bone file that holds a CT (given in place of its bones)."""
    if looks_like_ct(array):
        raise InputError(f"The native-bone file '{path}' holds an image in Hounsfield units (fat, air or bone "
                         "levels), not a segmentation or label map. Give the bones' segmentation (for example "
                         "TotalSegmentator's output for this CT), or leave --bones out to have them estimated.")


def _add_bones_folder_node(scene, folder: Path, files: dict, reference_node) -> tuple:
    """A folder of one mask file per structure (TotalSegmentator's default output):
    only the files named as bones are read (a whole-body folder holds over a hundred,
    each as large as the CT), each file one segment of its voxels above 0, named after
    the file. Masks of structures outside the field of view, empty, are passed over."""
    from concurrent.futures import ThreadPoolExecutor

    from . import scene as scene_io
    from .geometry import bounding_slices

    choice = bonelabels.choose_native_bone({name: bonelabels.label_kind(name) for name in files})
    if not choice.used:
        raise InputError(f"No file of the native-bone folder '{folder}' is bone by its name "
                         f"({bonelabels.listed(files)}). Give the folder of the bones' masks made on this CT (each "
                         "bone's file named after it: femur_left.nii.gz, hip_right.nii.gz, sacrum.nii.gz), or leave "
                         "--bones out to have them estimated.")

    def read_mask(name):
        loaded = read_volume(files[name], "native-bone mask", share_memory=True)
        _check_not_an_image_in_hounsfield_units(loaded.array, files[name])
        block = bounding_slices(loaded.array)
        return None if block is None else (loaded.array[block] > 0, tuple(b.start for b in block), loaded.geometry)

    # The reader releases Python's lock while it inflates a file: two at a time.
    with ThreadPoolExecutor(min(2, os.cpu_count() or 1), thread_name_prefix="hosciatic-bones") as executor:
        masks = {name: mask for name, mask in zip(choice.used, executor.map(read_mask, choice.used)) if mask}
    if not masks:
        raise InputError(f"The bones' masks in '{folder}' ({bonelabels.listed(choice.used)}) are empty (no voxel "
                         "above 0). Give the masks made on this CT, or leave --bones out to have them estimated.")
    node = scene_io.ensure_segmentation_node(scene, None, "Native bone", reference_node)
    for name, (block, offset, geometry) in masks.items():
        scene_io.replace_segments(node, {name: (block, offset)}, geometry, scene_io.BONE_COLOR)
    return node, bonelabels.choice_warnings(choice, {name: name for name in files}, folder.name)


def _check_voxels_readable(path: Path, what: str) -> None:
    """Refuse a file whose voxels cannot all be read (cut short in a copy or download,
    or damaged) before Slicer's reader sees it: that reader's error ends the process,
    and a batch with it, without a message."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.Execute()
    except RuntimeError as error:
        raise InputError(f"The {what} '{path}' cannot be read whole: the file may be cut short (an interrupted "
                         f"copy or download) or damaged ({reader_error_reason(error, 'unreadable')}). Copy or save "
                         "it again.") from None


def _is_slicer_segmentation_file(path: Path) -> bool:
    """A Slicer segmentation file, by its name (.seg.nrrd in any case) or, for another
    NRRD name, by the segment fields of its header: read as a plain label map it would
    lose the segments' names and layers."""
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        return True
    if not name.endswith(".nrrd"):
        return False
    with contextlib.suppress(OSError), path.open("rb") as handle:
        header = handle.read(65536).split(b"\n\n", 1)[0]
        return b"\nSegment0_ID:=" in header
    return False


def label_map_segments(labels: np.ndarray, names: dict) -> dict:
    """Segments of a label map: one per label value, named after ``names`` (value ->
    name) or "label N", as (block mask, offset) pairs. A map of one value, or one
    that is no label map (fractions, huge values), is one "native bone" segment of
    every value above 0; a map without any is none."""
    from scipy import ndimage

    positive = labels > 0
    if not positive.any():
        return {}
    whole = {"native bone": positive}
    if labels.dtype.kind not in "iuf":
        return whole
    if labels.dtype.kind == "f":
        values = labels[positive]
        if not np.array_equal(values, np.round(values)):
            return whole
        labels = np.where(positive, labels, 0).astype(np.int32)
    elif labels.dtype.kind == "i" and labels.min() < 0:
        labels = np.where(positive, labels, 0)
    if labels.max() > MAX_LABEL_VALUE:
        return whole
    blocks = ndimage.find_objects(labels)
    present = [value for value, block in enumerate(blocks, start=1) if block is not None]
    if len(present) == 1 and present[0] not in names:
        return whole
    return {names.get(value, f"label {value}"):
            (labels[blocks[value - 1]] == value, tuple(b.start for b in blocks[value - 1])) for value in present}


# ---------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _stage(timings: dict | None, name: str):
    """Accumulate the wall time of a stage into ``timings`` (for the benchmark)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _load_in_background(module_name: str) -> threading.Thread:
    """Import a module on a worker thread; a failure is left for the main thread's own
    import to report."""
    import SimpleITK  # noqa: F401  (imported here first, so the two threads never import the same module)

    def load():
        with contextlib.suppress(Exception):
            importlib.import_module(module_name)

    thread = threading.Thread(target=load, name=f"hosciatic-import-{module_name}", daemon=True)
    thread.start()
    return thread


def run_analyze(args, progress: _ConsoleProgress, timings: dict | None = None, release_scene: bool = False,
                on_published=None) -> Path:
    """Run the whole analysis for parsed ``args``; ``timings`` (optional) receives
    seconds per stage: read, ossification, nerve, metrics, write. With
    ``release_scene`` the scene is emptied at the end, so the next case of a batch
    does not keep this one's CT in memory. ``on_published(folder)`` is called once
    every result is in place (see :func:`export.publish`)."""
    from . import scene as scene_io
    from .mrml_app import create_headless_slicer
    from .pipeline import HOSciaticAnalysis

    out_dir = Path(args.out)
    export.check_inputs_not_overwritten(out_dir, [p for p in (args.image, args.roi, args.bones, *args.nerve_seeds) if p])
    prepared = export.prepare_output_folder(out_dir)
    volume_writer = None
    scene = None
    finished = False
    try:
        with _stage(timings, "read"):
            # Slicer's libraries load on another thread while the image is read.
            loader = _load_in_background("slicer")
            # The voxels stay where SimpleITK read them: no copy of a full CT.
            image = read_volume(args.image, "CT image" if args.modality == "ct" else "MR image", share_memory=True,
                                modality=args.modality)
            seeds = _load_seeds(args.nerve_seeds, _midline_finder(args, image))
            _check_seeds_in_image(args.nerve_seeds, seeds, image.geometry)
            _check_modality_inputs(args, seeds)
            if not args.no_scene:
                # The bundle's copy of the CT is compressed from now on, while the
                # libraries load and the analysis runs, in a private folder of the
                # output folder (where the bundle will go).
                volume_writer = export.BackgroundVolumeWriter(image, out_dir)
            loader.join()

        with _stage(timings, "read"):
            slicer_core = create_headless_slicer()
            scene = slicer_core.scene
            analysis = HOSciaticAnalysis(scene)
            volume_name = Path(args.image.rstrip("/")).name.split(".")[0] or "volume"
            # The scene shares the CT's memory: one copy of the voxels, however large the CT.
            volume_node = scene_io.volume_node_from_array(scene, image.array, image.geometry, volume_name,
                                                          copy=False, memory_owner=image.sitk_image)
        _analyze_and_write(args, progress, timings, scene, analysis, image, volume_node, seeds, out_dir,
                           {volume_node.GetID(): volume_writer} if volume_writer else {}, on_published)
        finished = True
    finally:
        if volume_writer is not None:
            volume_writer.discard()
        if not finished:
            # A refused run leaves no empty folder behind.
            export.remove_created_folders(prepared.created)
        prepared.release()
        if release_scene and scene is not None:
            scene.Clear(True)
    return out_dir


def _midline_finder(args, image):
    """The body's midline of the CT, found once and only when asked for (an MR has no
    skeleton to read it from)."""
    return functools.cache(lambda: ct_body_midline(image.array, image.geometry, args.bone_threshold)
                           if args.modality == "ct" else None)


def _check_modality_inputs(args, seeds) -> None:
    if args.modality == "mr" and (args.roi or args.bones):
        raise InputError("--roi and --bones (a case list's roi and bones columns) belong to the HO segmentation, "
                         "which needs a CT; an MR run (--modality mr, or modality 'mr' in a case list) only traces "
                         "the nerve. Remove them or give the CT.")
    if args.modality == "mr" and not seeds:
        raise InputError("An MR run traces the nerve only, so it needs seed points along the nerve. Give a "
                         "seed-point file (--nerve-seeds, or the nerve_seeds column of a case list).")


def _analyze_and_write(args, progress, timings, scene, analysis, image, volume_node, seeds, out_dir, writers,
                       on_published=None):
    from . import scene as scene_io
    from .pipeline import refresh_other_side

    # Corrections made while reading (a tilted or unevenly sliced DICOM series) come first.
    warnings: list[str] = list(image.warnings)

    oss_outputs = None
    segmentation_node = None
    if args.modality == "ct":
        with _stage(timings, "read"):
            roi_node = _add_roi_node(scene, args.roi) if args.roi else None
            bones_node, bones_warnings = (_add_bones_node(scene, args.bones, volume_node) if args.bones
                                          else (None, []))
            warnings += bones_warnings
        with _stage(timings, "ossification"):
            oss_outputs = analysis.segment_ossifications(
                volume_node, roi_node=roi_node, native_bone_segmentation_node=bones_node,
                bone_threshold_hu=args.bone_threshold, min_island_ml=args.min_island_ml,
                progress=progress.for_stage("HO segmentation"))
        segmentation_node = oss_outputs.segmentation_node
        warnings += oss_outputs.result.warnings

    nerves = []
    for side, points, seed_warnings in seeds:
        warnings += seed_warnings
        seeds_node = scene_io.points_node_from_array(scene, points, f"Sciatic nerve {side} seeds")
        with _stage(timings, "nerve"):
            nerve_outputs = analysis.trace_nerve(
                volume_node, seeds_node, side=side, modality=args.modality, segmentation_node=segmentation_node,
                bone_threshold_hu=args.bone_threshold, progress=progress.for_stage(f"Nerve {side}"))
        segmentation_node = nerve_outputs.segmentation_node
        nerves.append((side, nerve_outputs))
    contacts = []
    if oss_outputs is not None:
        for side, nerve_outputs in nerves:
            with _stage(timings, "metrics"):
                contacts.append((side, analysis.compute_contact(
                    segmentation_node, nerve_outputs.centreline_node, side=side, tolerance_mm=args.contact_tolerance,
                    reference_volume_node=volume_node, bone_threshold_hu=args.bone_threshold,
                    progress=progress.for_stage(f"Contact {side}"))))
            refresh_other_side(dict(contacts), contacts[-1][1])

    input_info = {
        "image": str(Path(args.image).resolve()), "description": image.description, "modality": args.modality,
        "shape_ijk": list(image.geometry.shape_kji[::-1]),
        "spacing_mm": measurements.rounded(list(image.geometry.spacing_ijk), 4),
        "ijk_to_ras": measurements.rounded(image.geometry.ijk_to_ras.tolist(), 5),
        "roi": str(Path(args.roi).resolve()) if args.roi else None,
        "bones": str(Path(args.bones).resolve()) if args.bones else None,
        "nerve_seeds": [str(Path(p).resolve()) for p in args.nerve_seeds],
    }
    parameters = export.default_parameters(args.bone_threshold, args.min_island_ml, args.contact_tolerance,
                                           args.modality)
    document = export.metrics_document(input_info, parameters, oss_outputs, nerves, contacts, warnings)

    # Everything is computed: write into a private folder, then move into place.
    with _stage(timings, "write"):
        try:
            export.publish(out_dir, lambda folder: export.write_results(
                folder, scene, segmentation_node, nerves, document, with_scene=not args.no_scene,
                prewritten={node_id: writer.result() for node_id, writer in writers.items()}), on_published)
        except OSError as error:
            raise InputError(f"The results could not be written into '{out_dir}' ({error.strerror or error}). "
                             "Check that the folder is writable and the disk has free space, and run again; the "
                             "folder holds what it held before.") from None


# ---------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------
def run_batch(args, progress: _ConsoleProgress) -> tuple[Path, list[dict]]:
    """Analyse every case of the case list ``args.cases``, each into its own folder of
    ``args.out``; a case that fails is recorded and the batch goes on. Returns the
    summary's path and its rows."""
    from . import batch

    cases = batch.read_case_list(args.cases)
    # Absolute, as the images are: the summary's output column must not depend on the
    # folder the batch was started from.
    out_dir = Path(args.out).absolute()
    summary_path = out_dir / batch.SUMMARY_NAME
    if summary_path.resolve() == Path(args.cases).resolve():
        raise InputError(f"The case list '{args.cases}' would be overwritten by the batch's summary of the same name "
                         "in the output folder. Choose another output folder (--out), or rename the case list.")
    with export.prepare_output_folder(out_dir):
        shared = ["--bone-threshold", repr(args.bone_threshold), "--min-island-ml", repr(args.min_island_ml),
                  "--contact-tolerance", repr(args.contact_tolerance)] + (["--no-scene"] if args.no_scene else [])
        rows = [batch.summary_row(case, batch.NOT_RUN) for case in cases]
        batch.write_summary(summary_path, rows)
        for index, case in enumerate(cases):
            case_dir = out_dir / case.folder_name
            earlier = _same_earlier_result(case, case_dir, args) if args.skip_existing else None
            if earlier is not None:
                rows[index] = batch.summary_row(case, batch.DONE_EARLIER, "", case_dir, earlier)
            else:
                stage = f"Case {index + 1}/{len(cases)} {case.name}"
                progress.for_stage(stage)(0.0, "starting")
                rows[index] = _run_case(case, out_dir, shared, progress)
                progress.for_stage(stage)(1.0, rows[index]["status"])
            batch.write_summary(summary_path, rows)
    return summary_path, rows


def _run_case(case, out_dir: Path, shared: list, progress: _ConsoleProgress) -> dict:
    from .batch import ANALYSED

    row = _run_case_once(case, out_dir, shared, progress)
    case_dir = out_dir / case.folder_name
    if row["status"] not in ANALYSED and (case_dir / "metrics.json").is_file():
        # Nothing was written, so the folder holds an earlier run's results, perhaps of
        # another image or setting: a reader collecting DIR/*/metrics.json must know.
        row["message"] += (f" The folder '{case_dir}' still holds the results of an earlier run, not of this case "
                           "as listed now.")
    return row


def _run_case_once(case, out_dir: Path, shared: list, progress: _ConsoleProgress) -> dict:
    from . import batch

    case_dir = out_dir / case.folder_name
    if case_dir.exists() and not case_dir.is_dir():
        return batch.summary_row(case, batch.REFUSED, f"A file '{case_dir}' lies where this case's results folder "
                                                      "goes. Move or rename that file, or rename the case.")
    try:
        case_args = build_parser().parse_args(["analyze", *case.analyze_arguments(out_dir), *shared])
        run_analyze(case_args, progress, release_scene=True)
        return batch.summary_row(case, batch.DONE, "", case_dir, json.loads((case_dir / "metrics.json").read_text()))
    except InputError as error:
        return batch.summary_row(case, batch.REFUSED, str(error))
    except MemoryError:
        return batch.summary_row(case, batch.REFUSED, "The volume does not fit in memory. Give an ROI around the hip "
                                                      "(roi column) or crop the volume.")
    except AnalysisCancelled:
        return batch.summary_row(case, batch.REFUSED, "Cancelled.")
    except Exception as error:  # a defect in one case must not stop the others
        if os.environ.get("HOSCIATIC_DEBUG"):
            raise
        return batch.summary_row(case, batch.FAILED, f"internal error ({type(error).__name__}: {error}); run this "
                                                     "case alone with HOSCIATIC_DEBUG=1 for the details and report them")


def _same_earlier_result(case, case_dir: Path, args) -> dict | None:
    """The metrics document a case's folder holds from an earlier run of the same
    inputs and settings (None otherwise: a corrected case list runs the case again)."""
    try:
        document = json.loads((case_dir / "metrics.json").read_text())
        recorded, parameters = document["input"], document["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None

    def resolved(path):
        return str(Path(path).resolve()) if path else None

    expected = {"image": resolved(case.image), "modality": case.modality, "roi": resolved(case.roi),
                "bones": resolved(case.bones), "nerve_seeds": [resolved(p) for p in case.nerve_seeds]}
    same_inputs = all(recorded.get(key) == value for key, value in expected.items())
    same_settings = parameters == export.default_parameters(args.bone_threshold, args.min_island_ml,
                                                            args.contact_tolerance, case.modality)
    # Another version's figures may differ: its results are made again, as are those of
    # an input saved again since (a corrected seed file, a re-exported series).
    same_version = document.get("software", {}).get("version") == __version__
    inputs = [p for p in (case.image, case.roi, case.bones, *case.nerve_seeds) if p]
    # An input gone since is no earlier result to keep: the case runs, and says it is missing.
    present = all(Path(p).exists() for p in inputs)
    fresh = present and _latest_change_ns(inputs, case_dir) <= (case_dir / "metrics.json").stat().st_mtime_ns
    # A folder missing a file this version writes (an earlier version's), or one its
    # last run wrote (a run killed while moving its results in), runs again.
    complete = ((args.no_scene or (case_dir / "scene.mrb").is_file())
                and (case.modality != "ct" or (case_dir / "islands.csv").is_file())
                and all((case_dir / name).exists() for name in export.earlier_results(case_dir)))
    return document if same_inputs and same_settings and same_version and fresh and complete else None


def _is_result_file(file: Path, results_dir: Path, results_dir_is_input: bool) -> bool:
    """Whether ``file`` (resolved) is one of a run's results in ``results_dir``: every
    file under it, or, when that folder is an input folder itself (its slices are
    inputs, in subfolders too), the result files and private folders only."""
    if not results_dir_is_input or results_dir not in file.parents:
        return results_dir in file.parents
    inside = file.relative_to(results_dir).parts
    return inside[0].startswith(".hosciatic-") or (len(inside) == 1 and inside[0] in export.RESULT_NAMES)


def _latest_change_ns(paths, results_dir: Path) -> int:
    """When the newest of these files (or of the files in these folders, a DICOM series)
    was last written, in ns since the epoch; the results' own folder, were it inside an
    input folder, is no input, and in the input folder itself (a case named as its DICOM
    folder, with --out where the folder lies) the results' files are none."""
    latest = 0
    results_dir = results_dir.resolve()
    for path in map(Path, paths):
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
        for file in files:
            if _is_result_file(file.resolve(), results_dir, path.resolve() == results_dir):
                continue
            with contextlib.suppress(OSError):
                latest = max(latest, file.stat().st_mtime_ns)
    return latest


def _batch_summary(summary_path: Path, rows: list[dict]) -> str:
    from . import batch

    analysed = sum(row["status"] in batch.ANALYSED for row in rows)
    lines = [f"{analysed} of {len(rows)} cases analysed; summary in {summary_path.resolve()}"]
    for row in rows:
        if row["status"] not in batch.ANALYSED:
            lines.append(f"  {row['case']}: {row['status']}: {row['message']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------------------
#: The demo case's files the demo reads.
DEMO_CASE_FILES = ("ct.nrrd", "nerve_seeds_right.mrk.json")


def run_demo(args, progress, on_published=None) -> Path:
    from .phantom import generate_phantom, write_phantom_case

    out_dir = Path(args.out)
    # Held while the demo case is written; its results go into a folder of their own.
    with export.prepare_output_folder(out_dir):
        case_dir = out_dir / "demo_case"
        if not all((case_dir / name).is_file() for name in DEMO_CASE_FILES):
            progress.for_stage("Demo case")(0.0, "generating the synthetic hip CT")
            # Written whole or not at all: an interrupted demo left a CT without its seeds,
            # and every later demo was refused for want of them.
            partial = Path(tempfile.mkdtemp(prefix=export.PARTIAL_PREFIX, dir=out_dir))
            export.give_default_mode(partial, directory=True)
            try:
                write_phantom_case(generate_phantom(), partial)
                shutil.rmtree(case_dir, ignore_errors=True)
                os.replace(partial, case_dir)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            progress.for_stage("Demo case")(1.0, f"written to {case_dir}")
        analyze_args = build_parser().parse_args([
            "analyze", str(case_dir / "ct.nrrd"), "--out", str(out_dir / "results"),
            "--nerve-seeds", str(case_dir / "nerve_seeds_right.mrk.json")] + (["--quiet"] if args.quiet else []))
        return run_analyze(analyze_args, progress, on_published=on_published)


def _summary(out_dir: Path) -> str:
    from .batch import doubted_count, doubted_volume_ml

    document = json.loads((out_dir / "metrics.json").read_text())
    lines = [f"Results in {out_dir.resolve()}"]
    for name in sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")):
        lines.append(f"  {name}")
    oss = document.get("ossifications")
    if oss:
        doubted = doubted_count(oss["islands"])
        doubted_ml = doubted_volume_ml(oss["islands"], oss["total_volume_ml"]) if doubted else None
        by_side = {side: export.side_volume_ml(oss["islands"], side) for side in SIDES}
        lines.append(f"HO islands: {oss['count']}, total {oss['total_volume_ml']:.3f} mL"
                     + (f" (right {by_side['right']:.3f} mL, left {by_side['left']:.3f} mL)"
                        if oss["count"] and None not in by_side.values() else "")
                     + (f"; {doubted} named as possibly not HO, {doubted_ml:.3f} mL (see each island's doubts and the "
                        "warnings)" if doubted else ""))
    ratios = (("thickening_ratio", "thickening ratio"), ("signal_ratio", "signal ratio"),
              ("contralateral_area_ratio", "area vs other side"))
    for entry in document["nerves"]:
        lines.append(f"Sciatic nerve {entry['side']}: length {entry['length_mm']} mm, mean diameter "
                     f"{entry['mean_diameter_mm']} mm"
                     + (f", class {entry['encasement_class']}, max encasement {entry['max_encasement_deg']} deg, "
                        f"min distance {entry['min_distance_mm']} mm" if "encasement_class" in entry else "")
                     + "".join(f", {label} {entry[key]}" for key, label in ratios if entry.get(key) is not None))
    for warning in document.get("warnings", []):
        lines.append(f"Warning: {warning}")
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's time limit, or `kill`): stopped as Ctrl-C stops a run,
    its partial files removed."""


def _stop_on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None) -> int:
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm) if on_main_thread else None
    try:
        return _main(argv)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _print_closing(text: str) -> None:
    """Print the closing summary; a reader that stopped reading (``| head``) takes
    nothing from the results, which are written by then."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the closed pipe again at exit: the rest goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(argv=None) -> int:
    debug = bool(os.environ.get("HOSCIATIC_DEBUG"))
    # What an interruption leaves: nothing of a single run, the cases done of a batch.
    left = "no output was written"
    try:
        args = build_parser().parse_args(argv)
        progress = _ConsoleProgress(getattr(args, "quiet", False))
        if args.command == "batch":
            from .batch import ANALYSED, SUMMARY_NAME

            left = (f"any case analysed before it is kept and listed in {Path(args.out) / SUMMARY_NAME} (run "
                    "again with --skip-existing to go on)")
            summary_path, rows = run_batch(args, progress)
            left = f"every case had run by then, and the summary is complete in {summary_path}"
            _print_closing(_batch_summary(summary_path, rows))
            return 0 if all(row["status"] in ANALYSED for row in rows) else BATCH_INCOMPLETE_STATUS

        def published(folder):
            nonlocal left
            left = f"the results were written in full into {Path(folder).resolve()} before it"

        # Stopped once the results are in place (as the summary is printed, or as the
        # run lets go of the folder), the run has still written everything.
        if args.command == "demo":
            out_dir = run_demo(args, progress, published)
        else:
            out_dir = run_analyze(args, progress, on_published=published)
        _print_closing(_summary(out_dir))
        return 0
    except InputError as error:
        sys.stderr.write("\n" + textwrap.fill(f"hosciatic: {error}", width=100) + "\n")
        return 2
    except AnalysisCancelled:
        sys.stderr.write("\nhosciatic: cancelled; no output was written.\n")
        return 2
    except MemoryError:
        sys.stderr.write("\nhosciatic: the volume does not fit in memory. Give an ROI (--roi) around the hip or "
                         "crop the volume, and run again.\n")
        return 2
    except Terminated:
        sys.stderr.write(f"\nhosciatic: terminated; {left}.\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write(f"\nhosciatic: interrupted; {left}.\n")
        return 130
    except Exception as error:  # a defect, not bad input: say so plainly
        if debug:
            raise
        sys.stderr.write(f"\nhosciatic: internal error ({type(error).__name__}: {error}). No output was written. "
                         "Run again with HOSCIATIC_DEBUG=1 for the details and report them.\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
