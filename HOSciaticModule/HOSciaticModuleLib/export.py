"""Result files: the metrics document and the files a Slicer user can load back.

Shared by the command line and the panel's Export section, so both write the
same ``metrics.json``, ``segmentation.seg.nrrd``, ``nerve_<side>.mrk.json``,
``stations_<side>.csv`` and ``scene.mrb``. Files are written into a private
folder inside the destination and moved into place only when all are complete.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

from . import __version__, measurements
from .defaults import DEFAULT_CONTACT_TOLERANCE_MM

SCHEMA = "hosciatic-metrics/1"
ENCASEMENT_ORDER = ("none", "abutment", "encasement", "circumferential")


# ---------------------------------------------------------------------------------------
# Metrics document
# ---------------------------------------------------------------------------------------
def station_rows(nerve_outputs, contact_outputs) -> list[dict]:
    """Stations in the measure registry's terms, joined with contact when measured."""
    from .pipeline import HOSciaticAnalysis

    analysis = HOSciaticAnalysis(nerve_outputs.centreline_node.GetScene())
    if contact_outputs is None:
        return [measurements.as_dict(measurements.STATION_MEASURES, row)
                for row in analysis.station_rows(nerve_outputs.trace)]
    rows = analysis.stations_with_contact(nerve_outputs.centreline_node, contact_outputs.contact)
    return [measurements.as_dict(measurements.STATION_MEASURES + measurements.STATION_CONTACT_MEASURES, row)
            for row in rows]


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
    entry["warnings"] = list(trace.warnings)
    return entry


def island_entries(oss_result, contacts) -> list[dict]:
    """Islands with their contact against the nearest nerve (``contacts``: [(side, ContactOutputs)])."""
    entries = []
    for island in oss_result.islands:
        entry = measurements.as_dict(measurements.ISLAND_MEASURES, island)
        per_nerve = []
        for side, outputs in contacts:
            match = next((c for c in outputs.contact.islands if c.label == island.label), None)
            if match is not None:
                per_nerve.append((side, match))
        if per_nerve:
            closest_side, closest = min(per_nerve, key=lambda item: item[1].min_distance_mm)
            entry["min_distance_to_nerve_mm"] = measurements.rounded(closest.min_distance_mm, 2)
            entry["contact_area_mm2"] = measurements.rounded(sum(c.contact_area_mm2 for _, c in per_nerve), 1)
            entry["encasement_class"] = max((c.encasement_class for _, c in per_nerve), key=ENCASEMENT_ORDER.index)
            entry["nearest_nerve"] = closest_side
        entries.append(entry)
    return entries


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
        "warnings": list(warnings) + [w for _, o in nerves for w in o.trace.warnings],
    }
    if oss_outputs is not None:
        islands = island_entries(oss_outputs.result, contacts)
        document["ossifications"] = {
            "count": len(islands),
            "total_volume_ml": measurements.rounded(sum(i.volume_ml for i in oss_outputs.result.islands), 3),
            "islands": islands,
        }
    return document


def default_parameters(bone_threshold_hu, min_island_ml, contact_tolerance_mm=DEFAULT_CONTACT_TOLERANCE_MM) -> dict:
    return {"bone_threshold_hu": float(bone_threshold_hu), "min_island_ml": float(min_island_ml),
            "contact_tolerance_mm": float(contact_tolerance_mm)}


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------
def write_stations_csv(path: Path, stations: list[dict]) -> None:
    measures = measurements.STATION_MEASURES + measurements.STATION_CONTACT_MEASURES
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = []
        for m in measures:
            if m.kind == "point":
                header += [f"{m.key}_{axis}" for axis in ("r", "a", "s")]
            else:
                header.append(f"{m.key}" + (f" ({m.unit})" if m.unit and m.unit not in m.key else ""))
        writer.writerow(header)
        for station in stations:
            row = []
            for m in measures:
                value = station.get(m.key)
                if m.kind == "point":
                    row += list(value) if value is not None else ["", "", ""]
                else:
                    row.append("" if value is None else value)
            writer.writerow(row)


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


def write_scene_bundle(scene, path: Path) -> None:
    """The whole scene as a Slicer data bundle (.mrb)."""
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None and not node.GetHideFromEditors():
            node.AddDefaultStorageNode()
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
            _crop_segmentation_files(node.GetStorageNode())
    with tempfile.TemporaryDirectory(prefix="hosciatic-mrb-") as work:
        bundle = Path(work) / path.name
        if not scene.WriteToMRB(str(bundle)):
            raise OSError("Writing the scene bundle failed; check free disk space.")
        shutil.move(str(bundle), path)


def write_results(folder: Path, scene, segmentation_node, nerves, document, with_scene: bool = True) -> None:
    """Every result file into ``folder`` (``nerves``: [(side, NerveOutputs)])."""
    if segmentation_node is not None:
        _write_with("vtkMRMLSegmentationStorageNode", segmentation_node, folder / "segmentation.seg.nrrd")
    for (side, outputs), entry in zip(nerves, document["nerves"]):
        _write_with("vtkMRMLMarkupsJsonStorageNode", outputs.centreline_node, folder / f"nerve_{side}.mrk.json")
        write_stations_csv(folder / f"stations_{side}.csv", entry["stations"])
    (folder / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    if with_scene:
        write_scene_bundle(scene, folder / "scene.mrb")


def publish(out_dir: Path, write) -> None:
    """Run ``write(folder)`` on a private folder inside ``out_dir``, then move its files in.

    A failure leaves ``out_dir`` as it was (apart from being created).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".hosciatic-partial-", dir=out_dir))
    try:
        write(staging)
        for item in sorted(staging.iterdir()):
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
