"""Result files: the metrics document and the files a Slicer user can load back.

Shared by the command line and the panel's Export section, so both write the
same ``metrics.json``, ``segmentation.seg.nrrd``, ``nerve_<side>.mrk.json``,
``islands.csv``, ``stations_<side>.csv`` and ``scene.mrb``. Files are written into a private
folder inside the destination and moved into place only when all are complete.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import __version__, measurements
from .defaults import DEFAULT_CONTACT_TOLERANCE_MM, SIDES
from .errors import InputError
from .imageio import reader_error_reason, sitk_image_from_array, write_nrrd_fast
from .progress import ProgressCallback, report, sub_progress

SCHEMA = "hosciatic-metrics/1"
ENCASEMENT_ORDER = ("none", "abutment", "encasement", "circumferential")
#: Scheduling niceness of the thread compressing the bundle's CT (0 = as the analysis).
WRITER_NICENESS = 10
#: Private folders in the output folder: where results are written before they are
#: moved in (the bundle's copy of the CT is compressed in one of its own), and where
#: the results they replace are moved aside meanwhile.
PARTIAL_PREFIX = ".hosciatic-partial-"
PARTIAL_VOLUME_PREFIX = PARTIAL_PREFIX + "volume-"
PREVIOUS_RESULTS_PREFIX = ".hosciatic-previous-results-"
#: Every file a run may write into its output folder.
RESULT_NAMES = ("metrics.json", "segmentation.seg.nrrd", "scene.mrb", "islands.csv",
                *(f"nerve_{side}.mrk.json" for side in SIDES), *(f"stations_{side}.csv" for side in SIDES))
#: The names the last run wrote into a folder: the next run there removes those it does
#: not write again, so no result of another image is left beside the new ones.
RESULTS_MANIFEST = ".hosciatic-results.json"


# ---------------------------------------------------------------------------------------
# Metrics document
# ---------------------------------------------------------------------------------------
def station_rows(nerve_outputs, contact_outputs) -> list[dict]:
    """Stations in the measure registry's terms, joined with contact when measured."""
    from .pipeline import HOSciaticAnalysis

    analysis = HOSciaticAnalysis(nerve_outputs.centreline_node.GetScene())
    if contact_outputs is None:
        return [measurements.as_dict(measurements.station_measures(with_contact=False), row)
                for row in analysis.station_rows(nerve_outputs.trace)]
    rows = analysis.stations_with_contact(nerve_outputs.centreline_node, contact_outputs.contact)
    return [measurements.as_dict(measurements.station_measures(with_contact=True), row) for row in rows]


def _point_pair(pair):
    if pair is None or any(p is None for p in pair):
        return None
    return [measurements.rounded(list(p), 2) for p in pair]


def nerve_entry(side, nerve_outputs, contact_outputs) -> dict:
    trace = nerve_outputs.trace
    summary = {"side": side, "length_mm": trace.length_mm,
               "mean_diameter_mm": float(sum(trace.diameter_mm) / len(trace.diameter_mm)) if len(trace.diameter_mm)
               else None}
    entry = measurements.as_dict(measurements.NERVE_MEASURES, summary)
    entry["modality"] = trace.modality
    if contact_outputs is not None:
        contact = contact_outputs.contact
        entry.update(measurements.as_dict(measurements.NERVE_CONTACT_MEASURES, contact))
        entry["closest_points_ras"] = _point_pair(contact.closest_points_ras)
        entry["contact_runs_mm"] = measurements.rounded([list(run) for run in contact.contact_runs_mm], 1)
    entry["stations"] = station_rows(nerve_outputs, contact_outputs)
    entry["warnings"] = list(trace.warnings) + (list(contact_outputs.contact.warnings) if contact_outputs else [])
    return entry


def current_islands(oss_outputs, contacts) -> list | None:
    """The islands as last measured: with the contact (which follows edits of the HO
    segments) when it was computed, else as the HO step found them; None when neither ran."""
    for _, outputs in reversed(contacts):
        if outputs.islands is not None:
            return outputs.islands
    return oss_outputs.result.islands if oss_outputs is not None else None


def shared_ho_ml(contacts) -> float:
    """HO volume two segments share, as the contact that measured the current islands
    found it (0 when none did): counted in each island, once in the total."""
    for _, outputs in reversed(contacts):
        if outputs.islands is not None:
            return outputs.shared_ho_ml
    return 0.0


def island_entries(islands, contacts) -> list[dict]:
    """Islands with their contact against the nearest nerve (``contacts``: [(side, ContactOutputs)])."""
    entries = []
    for island in islands:
        entry = measurements.as_dict(measurements.ISLAND_MEASURES, island)
        per_nerve = []
        for side, outputs in contacts:
            match = next((c for c in outputs.contact.islands if c.label == island.label), None)
            if match is not None:
                per_nerve.append((side, match))
        if per_nerve:
            closest_side, closest = min(per_nerve, key=lambda item: item[1].min_distance_mm)
            entry.update(measurements.as_dict(measurements.ISLAND_CONTACT_MEASURES, {
                "min_distance_to_nerve_mm": closest.min_distance_mm,
                "contact_area_mm2": sum(c.contact_area_mm2 for _, c in per_nerve),
                "encasement_class": max((c.encasement_class for _, c in per_nerve), key=ENCASEMENT_ORDER.index),
                "nearest_nerve": closest_side}))
        entries.append(entry)
    return entries


def side_volume_ml(islands: list[dict], side: str) -> float | None:
    """The volume (mL) of a ``metrics.json`` document's islands on the patient's ``side``
    (the sum of their volumes); None when the document does not say (written before
    islands had sides) or no island's side could be told (an image of one hip, where
    the body's midline is not found). 0 when there are no islands."""
    if any("side" not in island or "volume_ml" not in island for island in islands):
        return None
    if islands and not any(island["side"] for island in islands):
        return None
    return round(sum((float(island["volume_ml"]) for island in islands if island["side"] == side), 0.0), 3)


def metrics_document(input_info: dict, parameters: dict, oss_outputs, nerves, contacts, warnings) -> dict:
    """The ``hosciatic-metrics/1`` document; only ``generated`` changes between identical runs."""
    contact_by_side = dict(contacts)
    document = {
        "schema": SCHEMA,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": {"name": "HOSciatic", "version": __version__},
        "input": input_info,
        "parameters": parameters,
        "ossifications": None,
        "nerves": [nerve_entry(side, outputs, contact_by_side.get(side)) for side, outputs in nerves],
        "warnings": (list(warnings) + [w for _, o in nerves for w in o.trace.warnings]
                     + [w for _, o in contacts for w in o.contact.warnings]),
    }
    islands = current_islands(oss_outputs, contacts)
    if islands is not None:
        entries = island_entries(islands, contacts)
        document["ossifications"] = {
            "count": len(islands),
            "total_volume_ml": measurements.rounded(sum(i.volume_ml for i in islands) - shared_ho_ml(contacts), 3),
            **{f"{side}_volume_ml": side_volume_ml(entries, side) for side in SIDES},
            "islands": entries,
        }
    return document


def default_parameters(bone_threshold_hu, min_island_ml, contact_tolerance_mm=DEFAULT_CONTACT_TOLERANCE_MM,
                       modality: str = "ct") -> dict:
    """The settings a run used: an MR run traces the nerve only, so the HO and contact
    settings, which it never reads, are not recorded for it."""
    if modality == "mr":
        return {}
    return {"bone_threshold_hu": float(bone_threshold_hu), "min_island_ml": float(min_island_ml),
            "contact_tolerance_mm": float(contact_tolerance_mm)}


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------
def write_measures_csv(path: Path, measures: list, entries: list[dict]) -> None:
    """``entries`` (dicts keyed by the measures' keys, as in ``metrics.json``) as CSV, one
    column per measure: a point as three (``_r``, ``_a``, ``_s``), a yes/no as ``yes`` or
    ``no``; a missing value is an empty cell."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = []
        for m in measures:
            if m.kind == "point":
                header += [f"{m.key}_{axis}" for axis in ("r", "a", "s")]
            else:
                # A unit the key already names (volume_ml, area_mm2) is not repeated.
                header.append(m.key + (f" ({m.unit})" if m.unit and m.unit.lower() not in m.key.lower() else ""))
        writer.writerow(header)
        for entry in entries:
            row = []
            for m in measures:
                value = entry.get(m.key)
                if m.kind == "point":
                    row += list(value) if value is not None else ["", "", ""]
                elif m.kind == "bool" and value is not None:
                    row.append("yes" if value else "no")
                else:
                    row.append("" if value is None else value)
            writer.writerow(row)


def write_stations_csv(path: Path, stations: list[dict]) -> None:
    write_measures_csv(path, measurements.station_measures(with_contact=True), stations)


def write_islands_csv(path: Path, islands: list[dict]) -> None:
    """The islands of a ``metrics.json`` document; the contact columns stay empty until
    contact is measured."""
    write_measures_csv(path, measurements.ISLAND_MEASURES + measurements.ISLAND_CONTACT_MEASURES, islands)


def _write_with(storage_class: str, node, path: Path) -> None:
    import slicer

    storage = getattr(slicer, storage_class)()
    storage.SetFileName(str(path))
    _crop_segmentation_files(storage)
    if not storage.WriteData(node):
        raise OSError(f"Writing {path.name} failed; check that the output folder is writable and has free space.")


def _crop_segmentation_files(storage) -> None:
    """Segments are small next to a full CT: store them in their own extent (Slicer
    reads the geometry from the file), not padded to the whole volume."""
    if storage.IsA("vtkMRMLSegmentationStorageNode"):
        storage.SetCropToMinimumExtent(True)


def write_scene_bundle(scene, path: Path, prewritten: dict | None = None, progress: ProgressCallback = None) -> None:
    """The whole scene as a Slicer data bundle (.mrb), with a progress report per node.

    The layout is the one Slicer writes and reads back: ``<stem>/<stem>.mrml`` with
    every storable node's file under ``<stem>/Data``, zipped. ``prewritten`` maps node
    IDs to files already written in the node's default format (a full CT compressed
    while the analysis ran, see :class:`BackgroundVolumeWriter`); they are moved in
    instead of written again. The scene's own file names are restored afterwards.
    """
    prewritten = dict(prewritten or {})
    # Slicer stores the files' paths relative to the scene's root folder only when both
    # are absolute: from a relative output folder (--out results) the bundle would point
    # at the working folder, gone once it is written.
    path = Path(path).resolve()
    # Work beside the bundle: a full CT is not copied between file systems.
    with tempfile.TemporaryDirectory(prefix=".hosciatic-partial-mrb-", dir=path.parent) as work:
        root = Path(work) / path.stem
        data = root / "Data"
        data.mkdir(parents=True)
        original_url, original_root = scene.GetURL(), scene.GetRootDirectory()
        original_names: dict = {}
        # Writing marks a node as saved; what was unsaved before must still be offered by
        # Slicer's Save dialog afterwards, for its own files.
        unsaved: list = []
        try:
            used: set = set()
            nodes = _bundled_nodes(scene)
            for index, node in enumerate(nodes):
                report(progress, 0.9 * index / len(nodes), f"Writing '{node.GetName()}' into the scene bundle")
                storage = node.GetStorageNode()
                if node.GetModifiedSinceRead() or not storage.GetFileName():
                    unsaved.append(node)
                original_names[storage] = [storage.GetFileName()] + [
                    storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames())]
                storage.ResetFileNameList()
                target = data / _bundle_file_name(node.GetName(), storage.GetDefaultWriteFileExtension(), used)
                storage.SetFileName(str(target))
                if node.GetID() in prewritten:
                    shutil.move(str(prewritten.pop(node.GetID())), target)
                elif not storage.WriteData(node):
                    raise OSError(f"Writing '{node.GetName()}' into the scene bundle failed; check free disk space.")
            scene.SetRootDirectory(str(root))
            scene.SetURL(str(root / f"{path.stem}.mrml"))
            if not scene.Commit():
                raise OSError("Writing the scene file of the bundle failed; check free disk space.")
        finally:
            scene.SetURL(original_url or "")
            scene.SetRootDirectory(original_root or "")
            for storage, names in original_names.items():
                storage.ResetFileNameList()
                storage.SetFileName(names[0] or "")
                for name in names[1:]:
                    storage.AddFileName(name or "")
            for node in unsaved:
                node.StorableModified()
        report(progress, 0.9, "Packing the scene bundle")
        partial = Path(work) / path.name
        # Members are stored: the volume and segmentation files inside are gzip-compressed already.
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as bundle:
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                _store_in_zip(bundle, file, f"{path.stem}/{file.relative_to(root).as_posix()}")
        shutil.move(str(partial), path)


#: Bytes copied at a time into the bundle: ``ZipFile.write`` copies 8 kB at a time, and
#: for a CT of 100 MB those 13 000 rounds took half of the packing's 0.2 s.
ZIP_COPY_CHUNK_BYTES = 1 << 20


def _store_in_zip(bundle: zipfile.ZipFile, file: Path, name: str) -> None:
    """``bundle.write(file, name)`` (the same entry, byte for byte: ``ZipFile.write``
    does just this), copied in larger chunks."""
    info = zipfile.ZipInfo.from_file(file, name)
    info.compress_type = bundle.compression
    with open(file, "rb") as source, bundle.open(info, "w") as target:
        shutil.copyfileobj(source, target, ZIP_COPY_CHUNK_BYTES)


def _bundled_nodes(scene) -> list:
    """Storable nodes a bundle holds, each with a storage node (a default one added)."""
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if not node.IsA("vtkMRMLStorableNode") or node.GetHideFromEditors() or not node.GetSaveWithScene():
            continue
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        if node.GetStorageNode() is not None:
            _crop_segmentation_files(node.GetStorageNode())
            nodes.append(node)
    return nodes


def _bundle_file_name(node_name: str | None, extension: str, used: set) -> str:
    """A portable, unique file name from a node name: letters, digits and ``-_.()``
    kept, anything else (slashes, colons, dashes beyond ASCII) replaced by ``_``."""
    base = re.sub(r"[^A-Za-z0-9 ._()+-]", "_", node_name or "unnamed").strip(" .") or "unnamed"
    base = base[:50]
    candidate, number = f"{base}.{extension.lower()}", 1
    while candidate.lower() in used:
        candidate, number = f"{base}_{number}.{extension.lower()}", number + 1
    used.add(candidate.lower())
    return candidate


class BackgroundVolumeWriter:
    """Writes a volume file (compressed NRRD) of a read image on a worker thread.

    The compressor (ISA-L's, or SimpleITK's without it) releases Python's lock, so a
    full CT is written into the scene bundle's format while the analysis runs on the
    other core instead of after it. :meth:`result` waits for the file; :meth:`discard`
    waits and removes it.
    """

    def __init__(self, image, folder: Path | None = None):
        import SimpleITK as sitk

        self._folder = Path(tempfile.mkdtemp(prefix=PARTIAL_VOLUME_PREFIX, dir=folder))
        self.path = self._folder / "volume.nrrd"
        self._error: Exception | None = None

        def write():
            # Below the analysis's own threads: compressing fills the time a core would
            # otherwise idle, and never holds the analysis up (Linux schedules each thread
            # on its own; SCHED_IDLE, where there is one, took 0.2 s off a full CT's run
            # against a niceness alone).
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
            with contextlib.suppress(AttributeError, OSError):
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
            try:
                if not write_nrrd_fast(self.path, image.array, image.geometry):
                    itk_image = image.sitk_image
                    if itk_image is None:
                        itk_image = sitk_image_from_array(image.array, image.geometry)
                    sitk.WriteImage(itk_image, str(self.path), True)
            except Exception as error:  # reported by result()
                self._error = error

        self._thread = threading.Thread(target=write, name="hosciatic-volume-writer", daemon=True)
        self._thread.start()

    def result(self) -> Path:
        self._thread.join()
        if self._error is not None:
            reason = reader_error_reason(self._error, type(self._error).__name__)
            raise OSError(f"Writing the CT into the scene bundle failed ({reason}); check free disk space.")
        return self.path

    def discard(self) -> None:
        self._thread.join()
        shutil.rmtree(self._folder, ignore_errors=True)


def write_results(folder: Path, scene, segmentation_node, nerves, document, with_scene: bool = True,
                  prewritten: dict | None = None, progress: ProgressCallback = None) -> None:
    """Every result file into ``folder`` (``nerves``: [(side, NerveOutputs)]);
    ``prewritten`` as in :func:`write_scene_bundle`."""
    report(progress, 0.0, "Writing the segmentation and tables")
    if segmentation_node is not None:
        _write_with("vtkMRMLSegmentationStorageNode", segmentation_node, folder / "segmentation.seg.nrrd")
    if document["ossifications"] is not None:
        write_islands_csv(folder / "islands.csv", document["ossifications"]["islands"])
    for (side, outputs), entry in zip(nerves, document["nerves"]):
        _write_with("vtkMRMLMarkupsJsonStorageNode", outputs.centreline_node, folder / f"nerve_{side}.mrk.json")
        write_stations_csv(folder / f"stations_{side}.csv", entry["stations"])
    (folder / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    if with_scene:
        write_scene_bundle(scene, folder / "scene.mrb", prewritten, sub_progress(progress, 0.1, 1.0))


def check_not_another_images_results(folder: Path, image_name: str | None) -> None:
    """Refuse to write a case's results into a folder holding another image's (its
    ``metrics.json`` names another input image): :func:`publish` would replace them, as
    the panel's next case did when exported to the same folder."""
    metrics = Path(folder) / "metrics.json"
    try:
        earlier = json.loads(metrics.read_text())["input"]["image"] if metrics.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a results document of this program: publish leaves it alone
    if earlier and image_name and earlier != image_name:
        raise InputError(f"The folder '{folder}' holds the results of '{earlier}': exporting '{image_name}' there "
                         "would replace them. Choose another folder (one per case), or delete those results first.")


def publish(out_dir: Path, write, on_published=None) -> None:
    """Run ``write(folder)`` on a private folder inside ``out_dir``, then move its files in,
    and remove the results an earlier run left there that this one did not write.

    A failure leaves ``out_dir`` as it was (apart from being created). Ctrl-C and SIGTERM
    wait while the files are moved (see :class:`HeldSignals`): one that comes then has
    the earlier results put back, unless every file had moved in, and
    ``on_published(out_dir)`` (called once they have, before a held signal is delivered)
    lets the caller say which.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=out_dir))
    try:
        write(staging)
        written = sorted(item.name for item in staging.iterdir())
        earlier = earlier_results(out_dir)
        (staging / RESULTS_MANIFEST).write_text(json.dumps(written) + "\n")
        with HeldSignals() as held:
            if _swap_in(staging, out_dir, sorted(earlier - set(written)), held) and on_published is not None:
                on_published(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Results a run killed outright while moving its own in had moved aside: the folder
    # now holds a whole set again, so they are no one's.
    for stale in out_dir.glob(f"{PREVIOUS_RESULTS_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


class HeldSignals:
    """Ctrl-C (SIGINT) and SIGTERM held back for the length of a ``with`` block and
    delivered as it ends, so that no signal cuts it short, a second Ctrl-C included. A
    block left by an exception drops them: the run is ending with its own message.
    Python takes signals on its main thread only; elsewhere nothing is held, and a
    handler set outside Python is left as it is."""

    def __init__(self):
        self.received: list[int] = []
        self._previous: dict = {}

    def __enter__(self) -> HeldSignals:
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM"):
                number = getattr(signal, name, None)
                previous = signal.getsignal(number) if number is not None else None
                if previous is not None:
                    self._previous[number] = previous
                    signal.signal(number, self._hold)
        return self

    def _hold(self, number, frame) -> None:
        self.received.append(number)

    def __exit__(self, kind, error, traceback) -> bool:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        if self.received and kind is None:
            signal.raise_signal(self.received[0])
        return False


def _swap_in(staging: Path, out_dir: Path, stale: list, held: HeldSignals) -> bool:
    """Move every item of ``staging`` into ``out_dir`` and remove the ``stale`` results
    there, all or nothing: what they replace is first moved aside, and moved back if a
    move fails (a file held open by another program, a folder turned read-only) or a
    signal was ``held`` meanwhile (then False is returned)."""
    incoming = sorted(item.name for item in staging.iterdir())
    aside = Path(tempfile.mkdtemp(prefix=PREVIOUS_RESULTS_PREFIX, dir=out_dir))
    try:
        for name in incoming + stale:
            if (out_dir / name).exists() or (out_dir / name).is_symlink():
                os.replace(out_dir / name, aside / name)
        for name in incoming:
            os.replace(staging / name, out_dir / name)
    except BaseException:
        _put_back(incoming, staging, out_dir, aside)
        raise
    if held.received:
        _put_back(incoming, staging, out_dir, aside)
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _put_back(incoming: list, staging: Path, out_dir: Path, aside: Path) -> None:
    """Undo :func:`_swap_in`'s moves. What moved is read from the folders, not from a
    list an exception may have cut short between a move and its note."""
    try:
        for name in incoming:
            target = out_dir / name
            if not (staging / name).exists() and (target.exists() or target.is_symlink()):
                remove_path(target)
        for item in aside.iterdir():
            os.replace(item, out_dir / item.name)
    except OSError as error:
        raise InputError(f"The results could not be moved into '{out_dir}', nor the earlier results put back "
                         f"({error.strerror or error}): these are in '{aside}'. Move them back by hand, check "
                         "that the folder is writable, and run again.") from None
    shutil.rmtree(aside, ignore_errors=True)


def earlier_results(out_dir: Path) -> set:
    """Result files the last run wrote into ``out_dir`` (from its manifest)."""
    try:
        names = json.loads((out_dir / RESULTS_MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(names, list):
        return set()
    return {name for name in names if isinstance(name, str) and name in RESULT_NAMES}


def check_inputs_not_overwritten(out_dir: Path, input_paths) -> None:
    """Refuse a run whose results would replace one of its own input files (an output
    folder holding the inputs, with a seed file named like the traced curve). Names
    are compared without case, as on the file systems of Windows and macOS."""
    folder = Path(out_dir).resolve()
    results = {name.casefold() for name in RESULT_NAMES}
    for path in input_paths:
        path = Path(path).resolve()
        if path.parent == folder and path.name.casefold() in results:
            raise InputError(f"The input file '{path}' would be overwritten by the result of the same name in the "
                             "output folder. Choose another output folder (--out), or rename or move the input.")


@dataclass
class PreparedFolder:
    """An output folder made ready for a run, held by it until :meth:`release`."""
    #: The folders the run created, deepest first (a refused run removes them again,
    #: see :func:`remove_created_folders`).
    created: list
    _lock: int | None = None

    def release(self) -> None:
        """Let another run write into the folder."""
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()


def prepare_output_folder(out_dir: Path) -> PreparedFolder:
    """Create ``out_dir`` if needed and make sure files can be written there, before
    any work, and hold it for this run (see :func:`_hold_folder`)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"The output path '{out_dir}' exists and is not a folder. Choose a folder for --out.")
    created = [folder for folder in (out_dir, *out_dir.absolute().parents) if not folder.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as error:
        remove_created_folders(created)
        raise InputError(f"Nothing can be written into the output folder '{out_dir}' ({error.strerror or error}). "
                         "Choose a folder you can write to, on a disk with free space.") from None
    try:
        prepared = PreparedFolder(created, _hold_folder(out_dir))
    except InputError:
        remove_created_folders(created)
        raise
    # A run killed outright (SIGKILL, a power cut) leaves its private files and folders
    # behind: the results it was writing, the bundle's partial copy of its CT (as large
    # as the CT), a batch's partial summary. No other run is writing here (it holds the
    # folder), so they are all left over.
    for stale in out_dir.glob(f"{PARTIAL_PREFIX}*"):
        with contextlib.suppress(OSError):
            remove_path(stale)
    return prepared


def _hold_folder(folder: Path) -> int | None:
    """An exclusive lock on ``folder`` for the life of a run, as an open descriptor to
    close at its end (the system drops it when the process ends, however it ends).

    A second run into the same folder removed the first one's unfinished files as left
    over from a killed run (its partial copy of the CT, its partial summary) and replaced
    its results: it is refused while the first runs. None where folders cannot be
    locked (Windows, file systems without locks): the runs are then not guarded.
    """
    try:
        import fcntl
    except ImportError:
        return None
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise InputError(f"Another run (an analysis, a batch or the demo) is writing into the output folder "
                         f"'{folder}'; two runs in one folder would remove each other's unfinished files and replace "
                         "each other's results. Wait until it has ended, or choose another output folder (--out)."
                         ) from None
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def process_umask() -> int | None:
    """The process's umask, read without changing it (another thread may be creating
    files meanwhile); None where it cannot be read so (no /proc: macOS, Windows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return None


def give_default_mode(path: Path, directory: bool = False) -> None:
    """Give a file or folder made by ``tempfile`` (private: 0600 / 0700) the mode an
    ordinary ``open`` or ``mkdir`` gives, so a shared results folder stays readable. With
    the umask unknown it stays private: never opened wider than a site's umask allows."""
    umask = process_umask()
    if umask is None:
        return
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def remove_path(path: Path) -> None:
    """Remove a file, a link or a folder with what it holds."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_created_folders(created: list[Path]) -> None:
    """Remove the (still empty) folders :func:`prepare_output_folder` created."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()
