"""Every number HOSciatic reports, defined once.

Each :class:`Measure` has a key (used in ``metrics.json`` and CSV), a column
title (tables in the scene), a unit, a description and one function that reads
the value from a result object. Tables, JSON and CSV are all written from these
lists, so a figure cannot mean one thing in the panel and another in a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Measure:
    key: str
    title: str
    unit: str
    kind: str            # 'float', 'int', 'str', 'bool', 'point'
    description: str
    read: Callable[[Any], Any]
    digits: int = 3

    def value(self, item):
        """The measure's value for ``item``, rounded for stable, readable output."""
        return self.rounded(self.read(item))

    def rounded(self, raw):
        """A value of this measure rounded as :meth:`value` rounds it."""
        return rounded(raw, self.digits) if self.kind in ("float", "point") else raw

    def column(self):
        """(key, title, unit, table kind, description) for :func:`scene.fill_table`."""
        table_kind = {"float": "float", "int": "int", "str": "str", "bool": "str", "point": "str"}[self.kind]
        return (self.key, self.title, self.unit, table_kind, self.description)

    def table_value(self, item):
        return self.table_cell(self.read(item))

    def table_cell(self, raw):
        """A value of this measure as a table cell holds it."""
        value = self.rounded(raw)
        if self.kind == "bool":
            return "" if value is None else ("yes" if value else "no")
        if self.kind == "point":
            return "" if value is None else ", ".join(f"{v:.1f}" for v in value)
        return value


def point_values(cell: str) -> list | None:
    """The numbers of a point's table cell as :meth:`Measure.table_cell` writes it; None
    for an empty or unreadable cell."""
    try:
        values = [float(v) for v in cell.split(",")]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def rounded(value, digits: int):
    """Round floats (also inside lists/tuples); NaN and inf become None for JSON."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if hasattr(value, "tolist"):
        return rounded(value.tolist(), digits)
    value = float(value)
    if not math.isfinite(value):
        return None
    result = round(value, digits)
    return 0.0 if result == 0 else result


def _attribute(name):
    return lambda item: getattr(item, name)


ISLAND_MEASURES = [
    Measure("id", "Island", "", "int", "Island number, largest first", _attribute("label")),
    Measure("segment", "Segment", "", "str", "Segment name in the segmentation", lambda i: f"HO {i.label}"),
    Measure("side", "Side", "", "str",
            "The patient's side of the body's midline (empty: the midline is unknown, as on an image of one hip)",
            lambda i: i.side or ""),
    Measure("volume_ml", "Volume", "mL", "float", "Volume including the marrow cavity", _attribute("volume_ml"), 3),
    Measure("mean_hu", "Mean HU", "HU", "float", "Mean attenuation over the island", _attribute("mean_hu"), 1),
    Measure("max_hu", "Max HU", "HU", "float", "Maximum attenuation in the island", _attribute("max_hu"), 1),
    Measure("centroid_ras", "Centroid (RAS)", "mm", "point", "Centre of mass in RAS coordinates",
            _attribute("centroid_ras"), 2),
    Measure("size_rl_mm", "Size R-L", "mm", "float", "Extent along the patient's right-left axis",
            lambda i: i.size_ras_mm[0], 1),
    Measure("size_ap_mm", "Size A-P", "mm", "float", "Extent along the patient's anterior-posterior axis",
            lambda i: i.size_ras_mm[1], 1),
    Measure("size_si_mm", "Size S-I", "mm", "float", "Extent along the patient's superior-inferior axis",
            lambda i: i.size_ras_mm[2], 1),
    Measure("fused_to_native_bone", "Fused to native bone", "", "bool",
            "The island touches the native skeleton and was cut from it (empty: not judged, for a segment "
            "added by hand)", _attribute("fused_to_native_bone")),
    Measure("native_bone", "Native bone", "", "str",
            "The given native-bone segment the island is fused to (each, when it bridges two) or, when free, the "
            "nearest within 40 mm (empty: no native-bone segmentation given, or none that near)",
            lambda i: i.native_bone or ""),
    Measure("maturity", "Maturity", "", "str",
            "mature: cortex and marrow (corticomedullary differentiation); immature: amorphous mineralisation",
            _attribute("maturity")),
    # Last, after the figures it qualifies.
    Measure("doubts", "Doubts", "", "str",
            "Why the island may not be HO, as the HO step's warnings name it: shaped like a vessel, at the "
            "contrast-filled vessels' level, near metal, mirrored by bone on the other side, possibly native bone, "
            "clustered like a hand's bones, in the subcutaneous fat, touching gas (empty: none)",
            lambda i: i.doubts or ""),
]

#: Each island against the nearest traced nerve (once contact is measured), after its own figures.
ISLAND_CONTACT_MEASURES = [
    Measure("min_distance_to_nerve_mm", "Min distance to nerve", "mm", "float",
            "Smallest distance between the island and the nearest traced nerve",
            lambda e: e["min_distance_to_nerve_mm"], 2),
    Measure("contact_area_mm2", "Contact area", "mm2", "float",
            "Nerve surface within the contact tolerance of the island, over every traced nerve",
            lambda e: e["contact_area_mm2"], 1),
    Measure("encasement_class", "Class", "", "str", "The highest class against any traced nerve",
            lambda e: e["encasement_class"]),
    Measure("nearest_nerve", "Nearest nerve", "", "str", "Side of the nearest traced nerve",
            lambda e: e["nearest_nerve"]),
]

STATION_MEASURES = [
    Measure("s_mm", "s", "mm", "float", "Arc length along the centreline from its first point", lambda s: s["s_mm"], 1),
    Measure("ras", "Position (RAS)", "mm", "point", "Station centre in RAS coordinates", lambda s: s["ras"], 2),
    Measure("area_mm2", "Area", "mm2", "float", "Cross-section area orthogonal to the centreline",
            lambda s: s["area_mm2"], 2),
    Measure("diameter_mm", "Diameter", "mm", "float", "Equivalent diameter sqrt(4 area / pi)",
            lambda s: s["diameter_mm"], 2),
    Measure("min_diameter_mm", "Min diameter", "mm", "float", "Smallest caliper width of the cross-section",
            lambda s: s["min_diameter_mm"], 2),
    Measure("max_diameter_mm", "Max diameter", "mm", "float", "Largest caliper width of the cross-section",
            lambda s: s["max_diameter_mm"], 2),
    Measure("signal", "Signal", "", "float",
            "MR only: median signal over the inner half of the cross-section, the coils' uneven sensitivity divided "
            "out (the series' own units: compare along the nerve, not between series)", lambda s: s.get("signal"), 1),
]

STATION_CONTACT_MEASURES = [
    Measure("encasement_deg", "Encasement", "deg", "float",
            "Angle around the nerve centroid covered by nerve boundary within the contact tolerance of HO",
            lambda s: s.get("encasement_deg"), 1),
    Measure("distance_to_ho_mm", "Distance to HO", "mm", "float",
            "Smallest distance from the nerve boundary at this station to HO", lambda s: s.get("distance_to_ho_mm"), 2),
    Measure("bone_encasement_deg", "Bone encasement (not HO)", "deg", "float",
            "Angle around the nerve centroid within the contact tolerance of CT bone that is in no HO segment "
            "(native bone, or HO the segments miss; over 180 deg is not native anatomy)",
            lambda s: s.get("bone_encasement_deg"), 1),
    Measure("other_side_diameter_mm", "Other side diameter", "mm", "float",
            "Both sciatic nerves traced: the other side's nerve's equivalent diameter at its station nearest this "
            "station's mirror image across the body's midline (empty where that nerve was not traced at this level "
            "or passes more than 15 mm from the mirror image)", lambda s: s.get("other_side_diameter_mm"), 2),
]

#: Last among the station columns, after the figures it qualifies.
STATION_CAVEATS = Measure(
    "caveats", "Caveats", "", "str",
    "Why this station's figures are less reliable, as named in the tracing's warnings: near metal, slices along "
    "the nerve, no fat plane, swollen or widened, wider than a nerve, outline collapsed, thinner than a nerve, at "
    "the image edge (empty: none)",
    lambda s: s.get("caveats") or "")


def station_measures(with_contact: bool) -> list:
    """The columns of a nerve's stations, in the order every table and file shows them:
    the traced figures, the contact figures once contact is measured, the caveats last."""
    return STATION_MEASURES + (STATION_CONTACT_MEASURES if with_contact else []) + [STATION_CAVEATS]


NERVE_MEASURES = [
    Measure("side", "Side", "", "str", "Body side of the nerve", lambda n: n["side"]),
    Measure("length_mm", "Length", "mm", "float", "Traced centreline length", lambda n: n["length_mm"], 1),
    Measure("mean_diameter_mm", "Mean diameter", "mm", "float", "Mean equivalent diameter over the stations",
            lambda n: n["mean_diameter_mm"], 2),
]

CONTACT_MEASURES = [
    Measure("min_distance_mm", "Min distance", "mm", "float",
            "Smallest distance between nerve and HO surfaces (0 when touching)", _attribute("min_distance_mm"), 2),
    Measure("closest_points_ras", "Closest points (RAS)", "mm", "point",
            "Closest nerve point and HO point", lambda c: _flatten_pair(c.closest_points_ras), 2),
    Measure("contact_area_mm2", "Contact area", "mm2", "float",
            "Area of nerve surface within the contact tolerance of HO", _attribute("contact_area_mm2"), 1),
    Measure("contact_length_mm", "Contact length", "mm", "float",
            "Arc length of stations with encasement > 0", _attribute("contact_length_mm"), 1),
    Measure("max_encasement_deg", "Max encasement", "deg", "float", "Largest encasement angle over the stations",
            _attribute("max_encasement_deg"), 1),
    Measure("encasement_class", "Class", "", "str", "none / abutment / encasement / circumferential",
            _attribute("encasement_class")),
]

NERVE_CONTACT_MEASURES = CONTACT_MEASURES + [
    Measure("contact_fraction", "Contact fraction", "", "float",
            "Contact area / nerve surface area in the analysed span", _attribute("contact_fraction"), 4),
    Measure("longest_contact_mm", "Longest contact", "mm", "float", "Longest contiguous run of contact stations",
            _attribute("longest_contact_mm"), 1),
    Measure("deflection_mm", "Deflection", "mm", "float",
            "Largest departure of the centreline in a contact zone from the course interpolated either side",
            _attribute("deflection_mm"), 2),
    Measure("thickening_ratio", "Thickening ratio", "", "float",
            "Largest area in a contact zone / median area of stations > 10 mm from contact",
            _attribute("thickening_ratio"), 3),
    Measure("signal_ratio", "Signal ratio", "", "float",
            "MR only: largest signal in a contact zone / median signal of stations > 10 mm from contact",
            _attribute("signal_ratio"), 3),
    Measure("contralateral_area_ratio", "Area vs other side", "", "float",
            "Largest area in a contact zone / the other side's nerve at its mirror image across the body's midline",
            _attribute("contralateral_area_ratio"), 3),
]


def _flatten_pair(pair):
    if pair is None:
        return None
    flat = [float(v) for point in pair if point is not None for v in point]
    return flat if len(flat) == 6 else None


def find(measures, key: str) -> Measure:
    """The measure of ``measures`` with that key (keys repeat across the lists: a nerve's
    side and an island's are two measures)."""
    return next(m for m in measures if m.key == key)


def as_dict(measures, item) -> dict:
    return {m.key: m.value(item) for m in measures}


def as_table_row(measures, item) -> dict:
    return {m.key: m.table_value(item) for m in measures}
