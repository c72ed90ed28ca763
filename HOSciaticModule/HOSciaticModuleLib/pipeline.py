"""The chain on a Slicer scene: nodes in, algorithms, nodes out.

:class:`HOSciaticAnalysis` is what the module's Logic, the Python console, the
self-test and the command line all call. Each step reads its input nodes,
computes everything first, and only then writes its output nodes -- so a step
that fails leaves the previous results untouched and creates no node. A step run
again updates the nodes it is given (or finds by name in the analysis folder)
instead of piling up new ones.
"""

from __future__ import annotations

import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from . import contact as contact_module
from . import bonelabels, measurements, nerve, ossification
from . import scene as scene_io
from .defaults import (MAX_BONE_THRESHOLD_HU, MAX_CONTACT_TOLERANCE_MM, MIN_BONE_THRESHOLD_HU, MODALITIES, SIDES,
                       opposite_side)
from .errors import InputError, as_number
from .geometry import (arc_length_mm, block_relative_to, block_within, bounding_slices, corner_shift_mm,
                       distance_outside, pad_block)
from .hounsfield import looks_like_ct
from .memorypages import with_small_memory_pages
from .midline import ct_body_midline, side_of_body, side_of_midline
from .progress import ProgressCallback, report, sub_progress

HO_SEGMENT_PREFIX = "HO"
#: Island numbers are the labels of a 16-bit label map.
MAX_ISLAND_NUMBER = 65535
SEGMENTATION_NAME = "HOSciatic segmentation"
ISLANDS_TABLE_NAME = "HO islands"
CONTACT_TABLE_NAME = "HO–nerve contact"

#: Working memory the analysis needs per voxel of the analysed region (the CT itself,
#: bone masks, label maps and float32 distance maps at their peak).
BYTES_PER_ANALYSED_VOXEL = 14
#: Warnings are kept on the output nodes as one attribute, separated by this.
WARNING_SEPARATOR = " | "
#: Node attributes keeping each step's warnings.
OSSIFICATION_WARNINGS = "HOSciatic.OssificationWarnings"
NERVE_WARNINGS = "HOSciatic.NerveWarnings"
CONTACT_WARNINGS = "HOSciatic.ContactWarnings"
#: Each output node refers to the segmentation whose analysis made it (outputs are found
#: by name, so a second CT analysed in the same scene would take up the first's): by a
#: node reference, not an attribute holding the ID, so that a saved scene loaded into a
#: scene whose IDs clash keeps pointing at its own segmentation.
ANALYSIS_REFERENCE_ROLE = "HOSciaticSegmentation"
#: The contact table's row of a nerve against all HO (its own figures).
ALL_HO_ROW = "all HO"
#: Series of a nerve's contact chart drawn only where their stations hold figures.
BONE_ENCASEMENT_SERIES = measurements.find(measurements.STATION_CONTACT_MEASURES, "bone_encasement_deg").title
OTHER_SIDE_DIAMETER_SERIES = measurements.find(measurements.STATION_CONTACT_MEASURES, "other_side_diameter_mm").title
#: The image each structure was found on (the CT for the HO segments, the traced volume
#: for a nerve), referred to from the segmentation and the centreline, with where that
#: image lay relative to the segmentation then: one segmentation follows one image's
#: registration, and an image moved on its own since (a registration refined) no longer
#: shows its structure where the segmentation holds it.
HO_CT_ROLE = "HOSciaticCT"
TRACED_VOLUME_ROLE = "HOSciaticTracedVolume"
#: A move below this (mm, at the image's corners) is rounding, not a registration.
PLACEMENT_TOLERANCE_MM = 0.1
#: A nerve traced before the HO step, without the HO as a barrier, is drawn wider towards
#: HO this close (its outline reaching into the fat between them by a millimetre or
#: more): the HO step asks for it to be traced again.
RETRACE_NEAR_HO_MM = 5.0
#: A trace ending this close to a face of the image it was made on was stopped by that
#: edge (sections there are cut), not by a seed placed short of it.
TRACE_END_AT_EDGE_MM = 5.0
#: HO beyond the traced image's edge this close to the trace's end lies where the nerve
#: runs on untraced: about the length of a sleeve of HO around the sciatic nerve.
HO_BEYOND_TRACE_END_MM = 30.0
#: On the tracing and contact steps' outputs: what each is ("contact table", "contact
#: <side>" for one nerve's chart and models, "stations <side>", "centreline <side>"), so
#: that they are found when out of date whatever their names.
OUTPUT_ROLE_ATTRIBUTE = "HOSciatic.Output"
CONTACT_TABLE_ROLE = "contact table"
CONTACT_ROLE = "contact"
STATIONS_ROLE = "stations"
CENTRELINE_ROLE = "centreline"
#: On a traced nerve's curve: whether HO segments were its barrier ("yes"/"no").
TRACED_AGAINST_HO_ATTRIBUTE = "HOSciatic.TracedAgainstHO"
#: Per station of a traced nerve, its caveats (a JSON list of strings), on the curve.
STATION_CAVEATS_ATTRIBUTE = "HOSciatic.StationCaveats"
#: Segment tag saying whether an HO segment was found fused to the native skeleton.
FUSED_TAG = "HOSciatic.FusedToNativeBone"
#: Why the HO step doubted a segment is HO (kept with the segment and its file).
DOUBT_TAG = "HOSciatic.Doubt"
#: The given native-bone segments an HO segment lies on (see ossification.native_bones_near),
#: kept with the segment as the fused flag is: the native-bone segmentation may be gone.
NATIVE_BONE_TAG = "HOSciatic.NativeBone"
#: The patient's side an HO segment lies on ('right', 'left'; empty when the HO step
#: could not tell): kept with the segment, so a recompute needs no midline search.
SIDE_TAG = "HOSciatic.Side"
#: The contrast-filled vessels' level (HU) the HO step found, on the segmentation.
CONTRAST_LEVEL_ATTRIBUTE = "HOSciatic.ContrastLevelHU"
#: Margin around the nerve and HO segments kept when measuring contact.
WORKING_MARGIN_MM = 15.0
#: Bone around an ROI looked at to tell native bone cut by the ROI from HO.
ROI_CONTEXT_MM = 30.0
#: Slices thicker than this blur small islands and the nerve's calibre (partial volume
#: over more than a third of a 9-12 mm nerve).
THICK_SLICE_WARNING_MM = 3.0
#: The two sciatic nerves lie 15-25 cm apart; one nerve's clicks spread a few cm in R-L.
#: A gap this wide between clicked points means both legs were clicked in one list.
BOTH_LEGS_GAP_MM = 80.0
#: ... but no two points of one body lie farther apart than this from right to left (the
#: widest hips measure about 50 cm): a point farther out is misplaced, not on a leg.
BODY_WIDTH_MM = 600.0


def memory_budget_bytes() -> float:
    """Memory the analysis may use: HOSCIATIC_MEMORY_GB if set, else half the machine's RAM."""
    configured = os.environ.get("HOSCIATIC_MEMORY_GB")
    if configured:
        try:
            return float(configured) * 1024.0 ** 3
        except ValueError:
            raise InputError(f"HOSCIATIC_MEMORY_GB must be a number of gigabytes; got '{configured}'.") from None
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8.0 * 1024.0 ** 3


#: What to do when the analysed region is over the memory budget, without and with an ROI.
OVER_BUDGET_ADVICE = ("Give an ROI around the hip (the analysis then works inside it), or crop/resample the volume "
                      "(Crop Volume module), and run again.")
OVER_BUDGET_ROI_ADVICE = (f"The region read for an ROI is the ROI with {ROI_CONTEXT_MM:.0f} mm around it and the same "
                          "region mirrored across the body's midline: make the ROI smaller (about the hip and the "
                          "stretch of nerve to analyse), or resample the volume (Crop Volume module), and run again.")


def check_memory_budget(voxel_count: int, what: str, advice: str = OVER_BUDGET_ADVICE) -> None:
    needed = voxel_count * BYTES_PER_ANALYSED_VOXEL
    budget = memory_budget_bytes()
    if needed > budget:
        raise InputError(
            f"{what} has {voxel_count / 1e6:.0f} million voxels; analysing it needs about {needed / 1024 ** 3:.1f} GB, "
            f"more than the {budget / 1024 ** 3:.1f} GB budget. {advice}")


def thick_slice_warnings(geometry) -> list[str]:
    thickest = float(max(geometry.spacing_ijk))
    if thickest > THICK_SLICE_WARNING_MM:
        return [f"Voxels are {thickest:.1f} mm thick along one axis: small HO islands, thin gaps and the nerve's "
                "calibre are unreliable at this resolution. Use a reconstruction with slices of 1.5 mm or thinner."]
    return []


def check_seeds_on_one_nerve(seeds_ras: np.ndarray) -> None:
    """Refuse a seed list whose points fall into two clusters far apart in R-L (both legs)."""
    if len(seeds_ras) < 2:
        return
    right_left = np.sort(np.asarray(seeds_ras, float)[:, 0])
    widest_gap = float(np.max(np.diff(right_left)))
    if BOTH_LEGS_GAP_MM < widest_gap <= BODY_WIDTH_MM:
        raise InputError(
            f"The seed points form two groups {widest_gap:.0f} mm apart from right to left: they seem to be on both "
            "legs. Put the points of each sciatic nerve in its own point list and trace each side separately.")


def side_mismatch_warnings(midline, points_ras, side: str) -> list[str]:
    """A warning when a nerve called ``side`` runs clearly on the patient's other side of
    the body's ``midline`` (a wrong side setting, or an image flipped left-right)."""
    if midline is None:
        return []
    judged, distance = side_of_midline(points_ras, midline)
    if judged is None or judged == side:
        return []
    return [f"This nerve was traced as the {side} sciatic nerve, but it runs {distance:.0f} mm to the patient's "
            f"{judged} of the body's midline (the plane across which the skeleton is symmetric). Check the side "
            "setting, and the image's left-right orientation, before using the figures."]


def nerve_segment_name(side: str) -> str:
    return f"Sciatic nerve {side}"


def traced_before_ho_prefix(side: str) -> str:
    """How the HO step's warnings about a nerve traced before it begin."""
    return f"The {side} sciatic nerve was traced before this HO segmentation"


def centreline_name(side: str) -> str:
    return f"Sciatic nerve {side} centreline"


def stations_table_name(side: str) -> str:
    return f"Sciatic nerve {side} stations"


def chart_name(side: str) -> str:
    return f"Encasement and diameter {side}"


def side_role(role: str, side: str) -> str:
    """The OUTPUT_ROLE_ATTRIBUTE value of a side's output of ``role`` (CENTRELINE_ROLE,
    STATIONS_ROLE, CONTACT_ROLE): one nerve's outputs are told from the other's by it."""
    return f"{role} {side}"


def centreline_output(side: str) -> tuple[str, str, str]:
    """Class, default name and role (see OUTPUT_ROLE_ATTRIBUTE) of a side's centreline curve."""
    return "vtkMRMLMarkupsCurveNode", centreline_name(side), side_role(CENTRELINE_ROLE, side)


def stations_output(side: str) -> tuple[str, str, str]:
    """Class, default name and role of a side's stations table."""
    return "vtkMRMLTableNode", stations_table_name(side), side_role(STATIONS_ROLE, side)


def chart_output(side: str) -> tuple[str, str, str]:
    """Class, default name and role of a side's encasement and diameter chart."""
    return "vtkMRMLPlotChartNode", chart_name(side), side_role(CONTACT_ROLE, side)


def enhanced_vessels_warning(level_hu: str) -> str:
    return (f"The CT is contrast-enhanced (vessels up to {level_hu} HU, found by the HO step): of the vessels "
            "running along the nerve (the inferior gluteal artery and its veins accompany it), those 80 HU or more "
            "denser than the nerve (more on a noisy CT) are left out of its outline, but a vein enhanced less than "
            "that is drawn into it where it touches the nerve, reading its calibre up to 1-2 mm large there; vessels "
            "above the bone threshold are HO islands, named where they touch the nerve. A non-contrast CT or a T2 "
            "fat-saturated MR measures the calibre better.")


def wrapping_bone_name(side: str) -> str:
    return f"Bone around sciatic nerve {side} (review)"


def contact_patch_name(side: str) -> str:
    return f"Contact patch {side}"


def ho_distance_model_name(side: str) -> str:
    return f"HO distance to sciatic nerve {side}"


@dataclass
class OssificationOutputs:
    segmentation_node: object
    islands_table_node: object
    result: ossification.OssificationResult


@dataclass
class NerveOutputs:
    centreline_node: object
    stations_table_node: object
    segmentation_node: object
    segment_id: str
    trace: nerve.NerveTrace


@dataclass
class ContactOutputs:
    contact_table_node: object
    stations_table_node: object
    chart_node: object
    contact_patch_model_node: object
    ho_distance_model_node: object
    contact: contact_module.NerveContact
    island_segment_names: dict = field(default_factory=dict)
    #: The HO segments' figures as measured with the contact (None without the CT).
    islands: list | None = None
    islands_table_node: object = None
    centreline_node: object = None
    #: HO volume that two segments share (mL): each island's volume counts it, the
    #: total of the islands only once.
    shared_ho_ml: float = 0.0
    #: The other side's area against this nerve, measured again (side -> ratio, or None)
    #: where that side's contact stands: see :func:`refresh_other_side`.
    other_side_area_ratio: dict = field(default_factory=dict)
    #: ... and, per station of the other side's nerve, this nerve's diameter at its mirror
    #: image (side -> array), as written into that side's stations.
    other_side_diameters: dict = field(default_factory=dict)


def refresh_other_side(contacts: dict, outputs: ContactOutputs) -> None:
    """Bring the other side's contact held by a caller (side -> ContactOutputs) up to
    date with the figures the contact step just wrote into its row of the contact table
    and its stations: its area against this nerve, and this nerve's diameter beside
    each of its stations, which the other side's own contact step measured against this
    nerve as it was then (or not traced yet)."""
    for side, ratio in outputs.other_side_area_ratio.items():
        if side in contacts:
            contacts[side].contact.contralateral_area_ratio = ratio
    for side, diameters in outputs.other_side_diameters.items():
        if side in contacts and len(diameters) == len(contacts[side].contact.s_mm):
            contacts[side].contact.other_side_diameter_mm = diameters


def _one_per_row(values, count: int) -> np.ndarray:
    """``values`` when there is one per row (or point) of ``count``; NaN for each otherwise
    (a curve or table of another length holds figures of another trace)."""
    return np.asarray(values, float) if len(values) == count else np.full(count, np.nan)


def _table_cell(table_node, measure, row: int, what: str, advice: str):
    """The value of ``measure``'s column on ``row`` of a table a step wrote (a row the
    panel's view reports); a row or column that is not there gets a message naming
    ``what`` was asked for and the step that rebuilds the table."""
    table = table_node.GetTable()
    column = table.GetColumnByName(measure.title)
    if column is None or not 0 <= row < table.GetNumberOfRows():
        raise InputError(f"The table '{table_node.GetName()}' has no {what} {row + 1}: {advice}.")
    return column.GetValue(row)


def caveated_contact_warnings(stations: list[dict]) -> list[str]:
    """A warning when stations in contact with HO carry tracing caveats (an outline
    widened by fluid, no fat plane, metal nearby...): the contact figures there stand on
    that outline. Fluid against the nerve on MR pulled the centreline 3-3.6 mm into it,
    and with HO opposite the contact step read a deflection of 4.4-5.6 mm for 0.7."""
    touched = [row for row in stations if row["encasement_deg"] > 0 and row["caveats"]]
    if not touched:
        return []
    reasons = sorted({reason for row in touched for reason in row["caveats"].split("; ")})
    span = (min(row["s_mm"] for row in touched), max(row["s_mm"] for row in touched))
    return [f"Where HO touches the nerve ({span[0]:.0f}-{span[1]:.0f} mm along it), {len(touched)} station(s) carry "
            f"tracing caveats ({', '.join(reasons)}): the contact figures there (encasement, deflection, "
            "thickening) stand on an outline the tracing warnings question. Check the outline on the images there."]


#: A thickening ratio from this up, on a nerve traced on MR, may hold oedema.
MR_OEDEMA_THICKENING_RATIO = 1.2


def mr_thickening_warnings(modality, result) -> list[str]:
    """On MR, oedema in the muscle around HO, and fluid, are about as bright as the nerve
    (T2 fat-saturated): where they touch it, the outline takes them in, and a rim of
    oedema 3 mm thick read as a thickening of 1.6 on a nerve of even calibre, just as a
    true swelling of 1.6 did. The thickening is named as possibly oedema."""
    ratio = result.thickening_ratio
    if modality != "mr" or ratio is None or ratio < MR_OEDEMA_THICKENING_RATIO:
        return []
    return [f"The nerve reads {ratio:.2f} times thicker where HO touches it than elsewhere, traced on MR: oedema in "
            "the muscle around HO, or fluid, is about as bright as the nerve there and is taken into its outline "
            "where it touches it. Compare the outline with the nerve on the images (its fascicles) or on the CT "
            "before reading this as swelling of the nerve."]


def _check_node_of_side(node, side: str, name_of, what: str) -> None:
    """Refuse a node named as the other side's: this side's results would overwrite it
    (a right centreline measured as the left nerve, and renamed)."""
    if node is None:
        return
    for other in SIDES:
        if other != side and node.GetName() == name_of(other):
            raise InputError(f"The {what} '{node.GetName()}' belongs to the {other} nerve, but the side is {side}. "
                             f"Give the {side} nerve's {what} (or none: it is found by its name), or set the side "
                             f"to {other}.")


def _output_tables() -> dict:
    """Name -> what each table a step makes is."""
    return {ISLANDS_TABLE_NAME: "the HO islands table", CONTACT_TABLE_NAME: "the contact table",
            **{stations_table_name(side): f"the {side} nerve's stations table" for side in SIDES}}


def _check_not_another_table(node, own_names, what: str) -> None:
    """Refuse a table given as one step output that is another output table (by its
    name): filling it would overwrite that table's figures (the islands table given as
    the contact table read 4 contact rows under the name 'HO islands')."""
    name = node.GetName() if node is not None else None
    if name in _output_tables() and name not in own_names:
        raise InputError(f"The table '{name}' given as {what} is {_output_tables()[name]}: its figures would be "
                         f"overwritten. Choose {what} (or none: it is found by its name, or made).")


def _check_choice(value: str, choices, what: str) -> str:
    value = str(value).lower()
    if value not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}; got '{value}'.")
    return value


class HOSciaticAnalysis:
    """Scene-level HOSciatic analysis. Qt-free: give it any ``vtkMRMLScene``."""

    def __init__(self, scene):
        self.scene = scene
        # The body's midline per CT volume (its ID, its voxels' modification time, the
        # bone threshold): found once, used by the HO checks and the side check.
        self._midlines: dict = {}

    # -- helpers --------------------------------------------------------------------
    @staticmethod
    def _midline_key(volume_node, bone_threshold_hu):
        # The plane lies in world coordinates: a volume moved (its own matrix, or a
        # registration's transform) has its midline elsewhere.
        image_data = volume_node.GetImageData()
        placement = (tuple(np.round(scene_io.volume_geometry(volume_node, "CT volume").ijk_to_ras, 6).ravel())
                     if image_data is not None else ())
        return (volume_node.GetID(), image_data.GetMTime() if image_data is not None else 0, float(bone_threshold_hu),
                placement)

    def body_midline(self, ct_volume_node, ct=None, geometry=None, bone_threshold_hu=ossification.DEFAULT_BONE_THRESHOLD_HU):
        """The body's midline on a CT volume (None unless both hips are imaged), kept
        per volume: the HO step's checks may have found it already."""
        key = self._midline_key(ct_volume_node, bone_threshold_hu)
        if key not in self._midlines:
            if ct is None:
                ct, geometry = scene_io.array_from_volume(ct_volume_node, "CT volume")
            self._midlines[key] = ct_body_midline(ct, geometry, bone_threshold_hu)
        return self._midlines[key]

    def _folder_name(self, volume_node) -> str:
        return f"HOSciatic analysis: {volume_node.GetName()}" if volume_node is not None else "HOSciatic analysis"

    def _tag_outputs(self, segmentation_node, nodes) -> None:
        for node in nodes:
            if node is not None and segmentation_node is not None:
                node.SetNodeReferenceID(ANALYSIS_REFERENCE_ROLE, segmentation_node.GetID())

    def _check_one_analysis(self, segmentation_node, outputs) -> None:
        """Refuse, before anything is written, output nodes (given, or as found by
        (class, name)) that another analysis still in the scene made."""
        if segmentation_node is None:
            return
        for item in outputs:
            node = self._existing(None, *item) if isinstance(item, tuple) else item
            owner = node.GetNodeReference(ANALYSIS_REFERENCE_ROLE) if node is not None else None
            if owner is None or owner is segmentation_node:
                continue
            reference = self._reference_volume(owner)
            case = f" of the CT '{reference.GetName()}'" if reference is not None else ""
            raise InputError(f"'{node.GetName()}' belongs to the analysis in the segmentation '{owner.GetName()}'"
                             f"{case}, not to '{segmentation_node.GetName()}': measuring one case with the other's "
                             "nodes would mix the two. Analyse one CT per scene (save this scene and close it before "
                             f"loading the other CT), or delete '{node.GetName()}' to have it made again.")

    def _check_segmentation_of_this_ct(self, segmentation_node, ct_volume_node, what: str = "the HO of") -> None:
        """Refuse to put a CT's HO (or the nerve traced on it) into a segmentation that
        holds another CT's analysis (that CT still in the scene): its nerve, curves and
        tables are that case's."""
        reference = self._reference_volume(segmentation_node) if segmentation_node is not None else None
        if reference is None or reference is ct_volume_node or reference.GetScene() is not self.scene:
            return
        image = scene_io.array_from_volume(reference, "Reference volume")[0] if reference.GetImageData() else None
        if image is None or not looks_like_ct(image):
            return  # an MR the nerve was traced on first: the CT joins its analysis
        raise InputError(f"The segmentation '{segmentation_node.GetName()}' holds the analysis of the CT "
                         f"'{reference.GetName()}', which is still in the scene: {what} "
                         f"'{ct_volume_node.GetName()}' put into it would mix the two cases (its nerve, curves and "
                         "tables are the other CT's). Analyse one CT per scene: save this scene and close it "
                         f"before loading the other CT. If '{ct_volume_node.GetName()}' is the same CT (cropped or "
                         "resampled), delete "
                         f"'{reference.GetName()}' from the scene first.")

    def _existing(self, node, class_name: str, name: str, role: str | None = None):
        """The given node, else a node of that class and name already in the scene, else
        one a step tagged with ``role`` (OUTPUT_ROLE_ATTRIBUTE): an output the user renamed
        is still the one the steps fill, not left beside a new one."""
        if node is not None:
            return node
        collection = self.scene.GetNodesByClassByName(class_name, name)
        if collection.GetNumberOfItems():
            return collection.GetItemAsObject(0)
        tagged = self._outputs(class_name, (), role) if role else []
        return tagged[0] if tagged else None

    def output_node(self, class_name: str, name: str, role: str):
        """A step's output node in the scene, by its name or, renamed, by its role."""
        return self._existing(None, class_name, name, role)

    @staticmethod
    def _check_output_placement(*nodes) -> None:
        """Refuse, before anything is computed or written, output nodes under a
        non-linear transform (results are placed through linear ones)."""
        for node in nodes:
            if node is not None:
                scene_io.world_to_node(node, "Output node")

    def _segmentation_grid(self, segmentation_node, traced_geometry):
        """The grid the segmentation's segments lie on: its reference volume's (the CT's
        once the HO step has run), else the traced volume's. One grid for all segments:
        Slicer keeps a segmentation's label maps on one grid when it saves it, and
        resampled the CT's HO segments onto the voxels of an MR nerve saved with them."""
        reference = self._reference_volume(segmentation_node)
        if reference is None or reference.GetImageData() is None:
            return traced_geometry
        return scene_io.volume_geometry(reference, "Reference volume")

    def _nerve_on_segmentation_grid(self, trace, traced_geometry, grid, segmentation_node, has_ho):
        """The nerve's voxels as (block, offset) on ``grid``, the segmentation's: voxelised
        there from its cross-sections when that grid is not the traced volume's (an MR
        of other voxels than the CT's), HO segments left out as on the traced grid."""
        if grid.shape_kji == traced_geometry.shape_kji and np.allclose(grid.ijk_to_ras, traced_geometry.ijk_to_ras,
                                                                       atol=1e-6):
            return trace.mask_block, tuple(b.start for b in trace.mask_slices)
        block_mask, block = nerve.nerve_block_on_grid(trace, grid)
        if has_ho and block_mask.size:
            block_mask &= self.paste_labels(self.ho_blocks(segmentation_node, grid), grid, block) == 0
        return block_mask, tuple(b.start for b in block)

    def _reference_volume(self, segmentation_node):
        """The volume the segmentation was made on (stored as a node reference)."""
        reference = segmentation_node.GetNodeReference(
            segmentation_node.GetReferenceImageGeometryReferenceRole()) if hasattr(
            segmentation_node, "GetReferenceImageGeometryReferenceRole") else None
        return reference

    def _native_bones(self, native_bone_segmentation_node, geometry) -> tuple[np.ndarray, list[str], list[str]]:
        """The segments of the native-bone segmentation that are bone by their names, as
        a label map (label n for the n-th), their names, and what the reader should know
        about the choice."""
        name = native_bone_segmentation_node.GetName()
        ids = scene_io.segment_ids(native_bone_segmentation_node)
        descriptions = {sid: scene_io.segment_description(native_bone_segmentation_node, sid) for sid in ids}
        choice = bonelabels.choose_native_bone({sid: bonelabels.label_kind(*d) for sid, d in descriptions.items()})
        names = {sid: d[0] or sid for sid, d in descriptions.items()}
        if ids and not choice.used:
            raise InputError(f"No segment of the native-bone segmentation '{name}' is bone by its name "
                             f"({bonelabels.listed(names.values())}). Select the segmentation of the pelvis and femur "
                             "made on this CT (rename a bone segment with its bone's name if needed), or leave the "
                             "field empty to estimate the native skeleton automatically.")
        labels = scene_io.segments_labels_on_grid(native_bone_segmentation_node, choice.used, geometry)
        if not labels.any():
            raise InputError(f"The native-bone segmentation '{name}' is empty "
                             "(or does not overlap the CT). Select the segmentation of the pelvis and femur made on "
                             "this CT, or leave the field empty to estimate the native skeleton automatically.")
        return labels, [names[sid] for sid in choice.used], bonelabels.choice_warnings(choice, names, name)

    def ho_segment_ids(self, segmentation_node) -> list[str]:
        segmentation = segmentation_node.GetSegmentation()
        return [sid for sid in scene_io.segment_ids(segmentation_node)
                if scene_io._has_numbered_prefix(segmentation.GetSegment(sid).GetName(), HO_SEGMENT_PREFIX)]

    def ho_segment_numbers(self, segmentation_node) -> dict[str, int]:
        """Segment ID -> island number of every ``HO n`` segment: the number in its name,
        unless that is 0, beyond a label map's range or taken by a segment before it (a
        segment painted and named by hand); those get the lowest free numbers."""
        segmentation = segmentation_node.GetSegmentation()
        numbers, pending = {}, []
        for segment_id in self.ho_segment_ids(segmentation_node):
            number = int(segmentation.GetSegment(segment_id).GetName()[len(HO_SEGMENT_PREFIX):])
            if 1 <= number <= MAX_ISLAND_NUMBER and number not in numbers.values():
                numbers[segment_id] = number
            else:
                pending.append(segment_id)
        taken = set(numbers.values())
        free = (n for n in itertools.count(1) if n not in taken)
        for segment_id in pending:
            numbers[segment_id] = next(free)
        return numbers

    def renumber_ho_segments(self, segmentation_node) -> list[str]:
        """Rename the ``HO n`` segments whose name is not that of their island number
        ('HO 0', a second 'HO 3', 'HO 09'), so tables, warnings and segments agree;
        a sentence for the reader when any was renamed."""
        segmentation = segmentation_node.GetSegmentation()
        renamed = []
        for segment_id, number in self.ho_segment_numbers(segmentation_node).items():
            segment = segmentation.GetSegment(segment_id)
            if segment.GetName() != f"{HO_SEGMENT_PREFIX} {number}":
                renamed.append(f"'{segment.GetName()}' is now '{HO_SEGMENT_PREFIX} {number}'")
                segment.SetName(f"{HO_SEGMENT_PREFIX} {number}")
        if not renamed:
            return []
        return [f"HO segments were renamed so that each has a number of its own: {'; '.join(renamed)}."]

    def ho_blocks(self, segmentation_node, geometry) -> list[tuple[int, str, np.ndarray, tuple]]:
        """(label, segment name, block mask, block slices) of every ``HO n`` segment on ``geometry``."""
        segmentation = segmentation_node.GetSegmentation()
        result = []
        for segment_id, number in self.ho_segment_numbers(segmentation_node).items():
            name = segmentation.GetSegment(segment_id).GetName()
            found = scene_io.segment_block_on_grid(segmentation_node, segment_id, geometry)
            if found is not None:
                result.append((number, name, found[0], found[1]))
        return sorted(result, key=lambda item: item[0])

    @staticmethod
    def paste_labels(ho_blocks, geometry, window=None) -> np.ndarray:
        """The HO blocks as one label map over ``window`` (slices of the grid; default all)."""
        window = window or tuple(slice(0, n) for n in geometry.shape_kji)
        labelmap = np.zeros(tuple(w.stop - w.start for w in window), np.uint16)
        for label, _, mask, block in ho_blocks:
            overlap = tuple(slice(max(b.start, w.start), min(b.stop, w.stop)) for b, w in zip(block, window))
            if any(o.stop <= o.start for o in overlap):
                continue
            source = mask[block_relative_to(overlap, block)]
            target = labelmap[block_relative_to(overlap, window)]
            target[source & (target == 0)] = label
        return labelmap

    def ho_labelmap(self, segmentation_node, geometry) -> tuple[np.ndarray, dict]:
        """HO segments of the segmentation as one full-size label map (label -> segment name)."""
        blocks = self.ho_blocks(segmentation_node, geometry)
        return self.paste_labels(blocks, geometry), {label: name for label, name, _, _ in blocks}

    # -- step 1: ossifications ------------------------------------------------------
    @with_small_memory_pages
    def segment_ossifications(self, ct_volume_node, *, roi_node=None, native_bone_segmentation_node=None,
                              bone_threshold_hu=ossification.DEFAULT_BONE_THRESHOLD_HU,
                              min_island_ml=ossification.DEFAULT_MIN_ISLAND_ML,
                              segmentation_node=None, islands_table_node=None,
                              progress: ProgressCallback = None) -> OssificationOutputs:
        if ct_volume_node is None:
            raise InputError("No CT volume selected. Load the CT of the hip and select it as input.")
        # Its range is checked with the HO step's own reasons (see ossification).
        bone_threshold_hu = as_number(bone_threshold_hu, "The bone threshold (HU)")
        min_island_ml = as_number(min_island_ml, "The minimum island size (mL)")
        _check_not_another_table(islands_table_node, {ISLANDS_TABLE_NAME}, "the HO islands table")
        report(progress, 0.0, "Reading CT")
        ct, geometry = scene_io.array_from_volume(ct_volume_node, "CT volume")
        existing_segmentation = self._existing(segmentation_node, "vtkMRMLSegmentationNode", SEGMENTATION_NAME)
        self._check_output_placement(existing_segmentation)
        self._check_segmentation_of_this_ct(existing_segmentation, ct_volume_node)
        self._check_one_analysis(existing_segmentation,
                                 [islands_table_node or ("vtkMRMLTableNode", ISLANDS_TABLE_NAME)])
        roi_mask = scene_io.roi_mask_on_grid(roi_node, geometry) if roi_node is not None else None
        # Inside an ROI only a block around it is analysed: memory and time follow the ROI.
        block = (self._roi_context_block(ct_volume_node, ct, geometry, roi_mask, bone_threshold_hu)
                 if roi_mask is not None else tuple(slice(0, n) for n in geometry.shape_kji))
        if roi_mask is None:
            check_memory_budget(geometry.voxel_count, f"The CT '{ct_volume_node.GetName()}'")
        else:
            check_memory_budget(int(np.prod([s.stop - s.start for s in block])),
                                f"The region of the CT '{ct_volume_node.GetName()}' read for the ROI",
                                OVER_BUDGET_ROI_ADVICE)
        native_labels, native_names, native_warnings = (
            self._native_bones(native_bone_segmentation_node, geometry)
            if native_bone_segmentation_node is not None else (None, [], []))
        result = ossification.segment_ossifications(
            ct[block], geometry.cropped(block), bone_threshold_hu=bone_threshold_hu, min_island_ml=min_island_ml,
            native_bone_mask=native_labels[block] > 0 if native_labels is not None else None,
            roi_mask=roi_mask[block] if roi_mask is not None else None, progress=sub_progress(progress, 0.05, 0.85))

        report(progress, 0.9, "Writing HO segments")
        segmentation_node = scene_io.ensure_segmentation_node(self.scene, existing_segmentation, SEGMENTATION_NAME,
                                                              ct_volume_node)
        # A nerve traced before on an MR of other voxels joins the CT's grid, where the
        # HO segments will lie.
        scene_io.move_segments_onto_grid(segmentation_node, geometry)
        self._remember_placement(segmentation_node, HO_CT_ROLE, ct_volume_node, segmentation_node)
        masks = {}
        for island, island_block in zip(result.islands, result.island_blocks):
            island_mask, placed = result.labelmap[island_block] == island.label, block_within(block, island_block)
            masks[f"{HO_SEGMENT_PREFIX} {island.label}"] = (island_mask, tuple(p.start for p in placed))
            if native_labels is not None:
                near = ossification.native_bones_near(island_mask, placed, native_labels, geometry)
                island.native_bone = ", ".join(native_names[label - 1] for label in near)
        segment_ids = scene_io.replace_segments(segmentation_node, masks, geometry, scene_io.BONE_COLOR,
                                                remove_prefix=HO_SEGMENT_PREFIX)
        result.warnings += self._nerves_kept_out_of_ho(segmentation_node, masks, geometry)
        # Contact measured against the HO segments made before is no longer current.
        for side in SIDES:
            self._forget_contact(segmentation_node, side, geometry)
        set_apart_offset = tuple(s.start + b.start for s, b in zip(result.native_bone_slices or block, block))
        for name in ossification.SET_APART_SEGMENT_NAMES:
            self._show_set_apart(segmentation_node, name, result.set_apart.get(name), set_apart_offset, geometry)
        for island, segment_id in zip(result.islands, segment_ids):
            # Kept with the segment (and its file): the native skeleton it was judged
            # against is not, and re-measuring after an edit still knows the answer.
            segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
            segment.SetTag(FUSED_TAG, "yes" if island.fused_to_native_bone else "no")
            segment.SetTag(SIDE_TAG, island.side)
            if native_labels is not None:
                segment.SetTag(NATIVE_BONE_TAG, island.native_bone)
            if island.doubts:
                segment.SetTag(DOUBT_TAG, island.doubts)
                segment.SetColor(*scene_io.DOUBTED_COLOR)
        islands_table_node = self._fill_islands_table(islands_table_node, result.islands)
        if result.body_midline is not None:
            self._midlines[self._midline_key(ct_volume_node, bone_threshold_hu)] = result.body_midline
        result.warnings[:0] = thick_slice_warnings(geometry) + native_warnings
        self._record_warnings(segmentation_node, OSSIFICATION_WARNINGS, result.warnings)
        if result.contrast_level_hu is not None:
            segmentation_node.SetAttribute(CONTRAST_LEVEL_ATTRIBUTE, f"{result.contrast_level_hu:.0f}")
        else:
            segmentation_node.RemoveAttribute(CONTRAST_LEVEL_ATTRIBUTE)
        self._tag_outputs(segmentation_node, [islands_table_node])
        scene_io.place_in_folder(self.scene, self._folder_name(ct_volume_node), [segmentation_node, islands_table_node])
        report(progress, 1.0, f"{len(result.islands)} HO island(s) found", final=True)
        return OssificationOutputs(segmentation_node, islands_table_node, result)

    def _roi_context_block(self, ct_volume_node, ct, geometry, roi_mask, bone_threshold_hu):
        """The block analysed for an ROI: the ROI with ROI_CONTEXT_MM around it (to tell
        native bone cut by the ROI from HO), and the same region mirrored across the
        body's midline, so that the checks comparing both sides (thick fused masses,
        prominences, growth centres) run as on the whole CT."""
        roi_block = bounding_slices(roi_mask)
        corners = geometry.block_corners_ras(roi_block)
        plane = self.body_midline(ct_volume_node, ct, geometry, bone_threshold_hu)
        if plane is not None:
            corners = np.vstack([corners, plane.mirror(corners)])
        return geometry.bounding_slices_of_ras_box(corners, ROI_CONTEXT_MM)

    def _nerves_kept_out_of_ho(self, segmentation_node, ho_masks: dict, geometry) -> list[str]:
        """A nerve traced before the HO step (on an MR, say) was drawn without the HO as a
        barrier: its voxels inside the new HO segments are taken out, as a tracing after
        the HO step leaves them out, and a warning says the rest was measured so."""
        ho_blocks = [(1, name, ho, tuple(slice(o, o + n) for o, n in zip(offset, ho.shape)))
                     for name, (ho, offset) in ho_masks.items()]
        warnings = []
        for side in SIDES:
            nerve_id = scene_io.segment_id_by_name(segmentation_node, nerve_segment_name(side))
            found = scene_io.segment_block_on_grid(segmentation_node, nerve_id, geometry) if nerve_id else None
            if found is None:
                continue
            nerve, block = found
            ho_here = self.paste_labels(ho_blocks, geometry, block) > 0
            if not (nerve & ho_here).any():
                if any(curve.GetAttribute(TRACED_AGAINST_HO_ATTRIBUTE) == "yes"
                       for curve in self._outputs(*centreline_output(side))):
                    continue  # drawn with HO as a barrier (an HO step run again)
                gap = self._gap_to_ho_mm(nerve, block, ho_blocks, geometry)
                if gap <= RETRACE_NEAR_HO_MM:
                    warnings.append(
                        f"{traced_before_ho_prefix(side)}, without the HO as a barrier, and comes within {gap:.1f} mm "
                        "of it: its outline there did not stop at the HO's edge and may reach into the tissue "
                        "between them, which contact then reads as narrower than it is. Trace the nerve again "
                        "before computing contact.")
                continue
            nerve &= ~ho_here
            kept = {nerve_segment_name(side): (nerve, tuple(b.start for b in block))}
            scene_io.replace_segments(segmentation_node, kept, geometry, scene_io.NERVE_COLOR)
            warnings.append(f"{traced_before_ho_prefix(side)}, without the HO as a barrier: its voxels inside the "
                            "HO were taken out, but its outline and centreline were measured without it. Trace the "
                            "nerve again for figures that do not depend on the order of the steps.")
        return warnings

    def _gap_to_ho_mm(self, nerve, block, ho_blocks, geometry) -> float:
        """Shortest distance (mm) from a nerve mask (over ``block``) to the HO, looked for
        within RETRACE_NEAR_HO_MM of the nerve (inf beyond)."""
        margin = int(np.ceil(RETRACE_NEAR_HO_MM / min(geometry.spacing_kji))) + 1
        around = pad_block(block, geometry.shape_kji, margin)
        ho_around = self.paste_labels(ho_blocks, geometry, around) > 0
        if not ho_around.any():
            return float("inf")
        inner = block_relative_to(block, around)
        distance = distance_outside(ho_around, geometry.cropped(around))[inner][nerve]
        return float(distance.min()) if distance.size else float("inf")

    @staticmethod
    def _show_set_apart(segmentation_node, name, block_mask, offset, geometry):
        """Bone-dense parts not counted as HO, as a segment to review; a stale one of an
        earlier run goes when there are none."""
        if block_mask is None:
            stale = scene_io.segment_id_by_name(segmentation_node, name)
            if stale is not None:
                segmentation_node.GetSegmentation().RemoveSegment(stale)
            return
        scene_io.replace_segments(segmentation_node, {name: (block_mask, offset)}, geometry, scene_io.REVIEW_COLOR)

    def _fill_islands_table(self, table_node, islands):
        table_node = self._existing(table_node, "vtkMRMLTableNode", ISLANDS_TABLE_NAME)
        return scene_io.fill_table(self.scene, table_node, ISLANDS_TABLE_NAME,
                                   [m.column() for m in measurements.ISLAND_MEASURES],
                                   [measurements.as_table_row(measurements.ISLAND_MEASURES, i) for i in islands])

    def measure_islands(self, segmentation_node, ct, geometry, ho_blocks=None, midline=None) -> list:
        """Figures of the HO segments as they are now (after any edit in the Segment
        Editor), on the CT array ``ct`` of ``geometry``. ``midline``, a function giving
        the body's midline (or None), is called only for a segment the HO step did not
        make (painted by hand), to tell its side."""
        segmentation = segmentation_node.GetSegmentation()
        islands = []
        for label, name, mask, block in (ho_blocks if ho_blocks is not None else self.ho_blocks(segmentation_node, geometry)):
            # A voxel of background around the island, for its depth from the outside.
            padded = pad_block(block, geometry.shape_kji, 1)
            island = self.paste_labels([(label, name, mask, block)], geometry, padded) > 0
            if not island.any():
                continue
            segment = segmentation.GetSegment(scene_io.segment_id_by_name(segmentation_node, name))
            fused = scene_io.segment_tag(segment, FUSED_TAG)
            figures, _ = ossification.measure_island(label, ct[padded], island, geometry.cropped(padded),
                                                     None if fused is None else fused == "yes")
            # The HO step's doubts stay with the segment through edits and saving; a
            # segment added by hand has none.
            figures.doubts = scene_io.segment_tag(segment, DOUBT_TAG) or ""
            # Not tagged here: measuring leaves the scene as it was (the midline is kept
            # per CT for the session).
            side = scene_io.segment_tag(segment, SIDE_TAG)
            if side is None:
                side = side_of_body(figures.centroid_ras, midline()) if midline is not None else ""
            figures.side = side
            figures.native_bone = scene_io.segment_tag(segment, NATIVE_BONE_TAG) or ""
            islands.append(figures)
        return islands

    def island_centre(self, segmentation_node, islands_table_node, row: int) -> np.ndarray:
        """The centre of mass (RAS) of the HO segment on ``row`` of the islands table, as
        the segment is now (edits included): where the panel centres the slice views when
        that row is clicked."""
        if segmentation_node is None or islands_table_node is None:
            raise InputError("There is no HO islands table yet: segment the ossifications first.")
        name = _table_cell(islands_table_node, measurements.find(measurements.ISLAND_MEASURES, "segment"), row,
                           "island on row", "segment the ossifications again to rebuild the HO islands table")
        segment_id = scene_io.segment_id_by_name(segmentation_node, name)
        geometry = self._segmentation_geometry(segmentation_node, None)
        found = scene_io.segment_block_on_grid(segmentation_node, segment_id, geometry) if segment_id else None
        if found is None:
            raise InputError(f"The segment '{name}' is no longer in '{segmentation_node.GetName()}', or is empty: "
                             "compute contact again to bring the HO islands table up to date.")
        mask, block = found
        return geometry.kji_to_ras_points(np.argwhere(mask).mean(axis=0) + [b.start for b in block])[0]

    @staticmethod
    def contact_row_closest_point(contact_table_node, row: int) -> np.ndarray:
        """The nerve's point of the closest pair on ``row`` of the contact table (that
        island's, or all HO's, against that nerve): where the panel centres the slice
        views when that row is clicked."""
        if contact_table_node is None:
            raise InputError("There is no contact table yet: compute contact first.")
        cell = _table_cell(contact_table_node, measurements.find(measurements.CONTACT_MEASURES, "closest_points_ras"),
                           row, "contact row", "compute contact again to rebuild it")
        values = measurements.point_values(cell)
        if values is None or len(values) != 6:
            raise InputError(f"Row {row + 1} of '{contact_table_node.GetName()}' has no closest points: no HO lies "
                             "within reach of that nerve.")
        return np.array(values[:3])

    # -- step 2: nerve --------------------------------------------------------------
    @with_small_memory_pages
    def trace_nerve(self, volume_node, seeds_node, *, side="right", modality="ct", segmentation_node=None,
                    centreline_node=None, stations_table_node=None,
                    bone_threshold_hu=ossification.DEFAULT_BONE_THRESHOLD_HU,
                    progress: ProgressCallback = None) -> NerveOutputs:
        side = _check_choice(side, SIDES, "Side")
        modality = _check_choice(modality, MODALITIES, "Modality")
        bone_threshold_hu = as_number(bone_threshold_hu, "The bone threshold (HU)", MIN_BONE_THRESHOLD_HU,
                                      MAX_BONE_THRESHOLD_HU)
        _check_node_of_side(centreline_node, side, centreline_name, "centreline")
        _check_node_of_side(stations_table_node, side, stations_table_name, "stations table")
        _check_not_another_table(stations_table_node, {stations_table_name(side)}, "the stations table")
        if volume_node is None:
            raise InputError("No volume selected for nerve tracing. Select the CT or MR volume.")
        if seeds_node is None:
            raise InputError("No seed points given. Click two or more points along the sciatic nerve "
                             "(at least one near each end of the stretch to analyse).")
        image, geometry = scene_io.array_from_volume(volume_node, "Volume")
        seeds = scene_io.control_points_world(seeds_node)
        check_seeds_on_one_nerve(seeds)
        segmentation_node = self._existing(segmentation_node, "vtkMRMLSegmentationNode", SEGMENTATION_NAME)
        self._check_output_placement(segmentation_node)
        if modality == "ct":
            self._check_segmentation_of_this_ct(segmentation_node, volume_node, "the nerve traced on")
        self._check_one_analysis(segmentation_node, [
            centreline_node or centreline_output(side),
            stations_table_node or stations_output(side)])
        exclusion = None
        if segmentation_node is not None and self.ho_segment_ids(segmentation_node):
            exclusion = np.zeros(geometry.shape_kji, bool)
            for _, _, mask, block in self.ho_blocks(segmentation_node, geometry):
                exclusion[block] |= mask
        trace = nerve.trace_nerve(image, geometry, seeds, modality=modality, side=side,
                                  bone_threshold_hu=bone_threshold_hu, exclusion_mask=exclusion,
                                  progress=sub_progress(progress, 0.0, 0.9))
        if modality == "ct":
            midline = self.body_midline(volume_node, image, geometry, bone_threshold_hu)
            trace.warnings += side_mismatch_warnings(midline, trace.points_ras, side)
            level = segmentation_node.GetAttribute(CONTRAST_LEVEL_ATTRIBUTE) if segmentation_node is not None else None
            if level:
                trace.warnings.append(enhanced_vessels_warning(level))

        report(progress, 0.92, "Writing nerve outputs")
        segmentation_node = scene_io.ensure_segmentation_node(
            self.scene, segmentation_node, SEGMENTATION_NAME, volume_node if segmentation_node is None else None)
        grid = self._segmentation_grid(segmentation_node, geometry)
        segment_id = scene_io.replace_segments(
            segmentation_node, {nerve_segment_name(side): self._nerve_on_segmentation_grid(
                trace, geometry, grid, segmentation_node, exclusion is not None)},
            grid, scene_io.NERVE_COLOR)[0]
        stations = self.station_rows(trace)
        centreline_node = self._existing(centreline_node, *centreline_output(side))
        centreline_node = scene_io.fill_centreline_curve(
            self.scene, centreline_node, centreline_node.GetName() if centreline_node else centreline_name(side),
            trace.points_ras, self._station_arrays(stations),
            placed_like=segmentation_node)
        centreline_node.SetAttribute("HOSciatic.Side", side)
        centreline_node.SetAttribute("HOSciatic.Modality", modality)
        self._remember_placement(centreline_node, TRACED_VOLUME_ROLE, volume_node, segmentation_node)
        centreline_node.SetAttribute(TRACED_AGAINST_HO_ATTRIBUTE, "yes" if exclusion is not None else "no")
        # Found by role too, whatever the user names them (see OUTPUT_ROLE_ATTRIBUTE).
        centreline_node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, side_role(CENTRELINE_ROLE, side))
        stations_table_node = self._existing(stations_table_node, *stations_output(side))
        stations_table_node = self._fill_stations_table(stations_table_node, side, stations, with_contact=False)
        stations_table_node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, side_role(STATIONS_ROLE, side))
        self._record_warnings(centreline_node, NERVE_WARNINGS, trace.warnings)
        # The contact measured on the nerve traced before is gone with it, and so is the HO
        # step's call to trace that nerve again once it has been, with the HO as a barrier.
        self._forget_contact(segmentation_node, side, grid)
        self._forget_other_side_figures(segmentation_node, side)
        if exclusion is not None:
            self._record_warnings(segmentation_node, OSSIFICATION_WARNINGS, [
                w for w in self._warnings_of(segmentation_node, OSSIFICATION_WARNINGS)
                if not w.startswith(traced_before_ho_prefix(side))])
        centreline_node.SetAttribute(STATION_CAVEATS_ATTRIBUTE, json.dumps(list(trace.station_caveats)))
        self._tag_outputs(segmentation_node, [centreline_node, stations_table_node])
        scene_io.place_in_folder(self.scene, self._folder_name(volume_node),
                                 [segmentation_node, centreline_node, stations_table_node])
        report(progress, 1.0, f"Nerve traced over {trace.length_mm:.0f} mm", final=True)
        return NerveOutputs(centreline_node, stations_table_node, segmentation_node, segment_id, trace)

    # -- an analysis kept in the scene --------------------------------------------------
    def nerve_from_scene(self, centreline_node, segmentation_node=None) -> NerveOutputs:
        """A traced nerve as the scene keeps it (after reloading a saved scene): the
        centreline curve with its per-station measurements, side, modality and warnings."""
        side = centreline_node.GetAttribute("HOSciatic.Side") or "right"
        points = scene_io.control_points_world(centreline_node)
        figures = {key: scene_io.curve_measurement(centreline_node, key)
                   for key in ("area_mm2", "diameter_mm", "min_diameter_mm", "max_diameter_mm")}
        if len(points) < 2 or any(values is None or len(values) != len(points) for values in figures.values()):
            raise InputError(f"The curve '{centreline_node.GetName()}' has no nerve measurements. Trace the nerve "
                             "again with this module.")
        trace = nerve.NerveTrace(
            side=side, modality=centreline_node.GetAttribute("HOSciatic.Modality") or "ct", points_ras=points,
            s_mm=arc_length_mm(points),
            area_mm2=figures["area_mm2"], diameter_mm=figures["diameter_mm"],
            min_diameter_mm=figures["min_diameter_mm"], max_diameter_mm=figures["max_diameter_mm"],
            boundary_ras=[], mask_block=np.zeros((0, 0, 0), bool), mask_slices=(slice(0, 0),) * 3, volume_shape=(0, 0, 0),
            warnings=self._warnings_of(centreline_node, NERVE_WARNINGS),
            station_caveats=self._station_caveats_of(centreline_node, len(points)),
            signal=self._signal_of(centreline_node, len(points)))
        segment_id = (scene_io.segment_id_by_name(segmentation_node, nerve_segment_name(side))
                      if segmentation_node is not None else None)
        return NerveOutputs(centreline_node, self._existing(None, *stations_output(side)),
                            segmentation_node, segment_id, trace)

    @with_small_memory_pages
    def analysis_from_scene(self, segmentation_node, *, tolerance_mm=contact_module.DEFAULT_CONTACT_TOLERANCE_MM,
                            bone_threshold_hu=ossification.DEFAULT_BONE_THRESHOLD_HU, reference_volume_node=None):
        """The analysis the scene holds, when its steps ran in an earlier session: the HO
        segments measured as they are now, the traced nerves, and their contact computed
        again from the current segments. Returns (OssificationOutputs or None,
        [(side, NerveOutputs)], [(side, ContactOutputs)]) as the steps do."""
        ct = geometry = None
        if segmentation_node is not None and self.ho_segment_ids(segmentation_node):
            volume = reference_volume_node or self._reference_volume(segmentation_node)
            geometry = self._segmentation_geometry(segmentation_node, volume)
            ct = self._ct_on_grid(volume, geometry)
        nerves, contacts = [], []
        for side in SIDES:
            centreline_node = self._existing(None, *centreline_output(side))
            if centreline_node is None:
                continue
            nerves.append((side, self.nerve_from_scene(centreline_node, segmentation_node)))
            if ct is not None and nerves[-1][1].segment_id:
                contacts.append((side, self.compute_contact(
                    segmentation_node, centreline_node, side=side, tolerance_mm=tolerance_mm,
                    reference_volume_node=reference_volume_node, bone_threshold_hu=bone_threshold_hu)))
                refresh_other_side(dict(contacts), contacts[-1][1])
        if ct is None:
            return None, nerves, contacts
        # The contact step measured the segments and filled the islands table already.
        if contacts:
            islands, table_node = contacts[-1][1].islands, contacts[-1][1].islands_table_node
        else:
            islands = self.measure_islands(
                segmentation_node, ct, geometry,
                midline=lambda: self.body_midline(volume, ct, geometry, bone_threshold_hu))
            table_node = self._fill_islands_table(None, islands)
        result = ossification.OssificationResult(np.zeros((0, 0, 0), np.uint16), islands,
                                                 self.recorded_warnings(segmentation_node=segmentation_node))
        return OssificationOutputs(segmentation_node, table_node, result), nerves, contacts

    @staticmethod
    def station_rows(trace) -> list[dict]:
        caveats = trace.station_caveats if len(trace.station_caveats) == len(trace.s_mm) else [""] * len(trace.s_mm)
        return [
            {"s_mm": float(trace.s_mm[n]), "ras": trace.points_ras[n].tolist(), "area_mm2": float(trace.area_mm2[n]),
             "diameter_mm": float(trace.diameter_mm[n]), "min_diameter_mm": float(trace.min_diameter_mm[n]),
             "max_diameter_mm": float(trace.max_diameter_mm[n]), "caveats": caveats[n],
             "signal": float(trace.signal[n]) if trace.signal is not None else None}
            for n in range(len(trace.s_mm))
        ]

    @staticmethod
    def _signal_of(centreline_node, count: int) -> np.ndarray | None:
        """The signal per station kept on a nerve traced on MR (None on CT, or when the
        curve's points no longer match it)."""
        if centreline_node.GetAttribute("HOSciatic.Modality") != "mr":
            return None
        values = scene_io.curve_measurement(centreline_node, "signal")
        return values if values is not None and len(values) == count else None

    @staticmethod
    def _station_caveats_of(centreline_node, count: int) -> list[str]:
        """The stations' caveats kept on a traced nerve's curve ("" each when there are
        none, or when the curve's points no longer match them)."""
        try:
            caveats = json.loads(centreline_node.GetAttribute(STATION_CAVEATS_ATTRIBUTE) or "[]")
        except ValueError:
            caveats = []
        usable = isinstance(caveats, list) and len(caveats) == count and all(isinstance(c, str) for c in caveats)
        return caveats if usable else [""] * count

    @staticmethod
    def _station_arrays(stations: list[dict], with_contact: bool = False) -> dict:
        measures = [m for m in measurements.STATION_MEASURES if m.kind == "float" and m.key != "s_mm"]
        if with_contact:
            measures += measurements.STATION_CONTACT_MEASURES
        arrays = {m.key: (m.unit, m.description, [m.read(s) for s in stations]) for m in measures}
        # A figure no station has (the signal of a nerve traced on CT) is no array.
        return {key: array for key, array in arrays.items() if any(value is not None for value in array[2])}

    def _fill_stations_table(self, table_node, side, stations, with_contact):
        station_measures = measurements.station_measures(with_contact)
        return scene_io.fill_table(self.scene, table_node, stations_table_name(side),
                                   [m.column() for m in station_measures],
                                   [measurements.as_table_row(station_measures, s) for s in stations])

    # -- step 3: contact ------------------------------------------------------------
    @with_small_memory_pages
    def compute_contact(self, segmentation_node, centreline_node, *, side="right",
                        tolerance_mm=contact_module.DEFAULT_CONTACT_TOLERANCE_MM,
                        contact_table_node=None, stations_table_node=None, chart_node=None,
                        contact_patch_model_node=None, ho_distance_model_node=None, reference_volume_node=None,
                        islands_table_node=None,
                        bone_threshold_hu=ossification.DEFAULT_BONE_THRESHOLD_HU,
                        progress: ProgressCallback = None) -> ContactOutputs:
        """Contact and encasement between the HO segments and one nerve.

        Reads the current segments, so it recomputes after edits in the Segment
        Editor without re-running segmentation or tracing.
        """
        side = _check_choice(side, SIDES, "Side")
        _check_node_of_side(centreline_node, side, centreline_name, "centreline")
        _check_node_of_side(stations_table_node, side, stations_table_name, "stations table")
        _check_node_of_side(chart_node, side, chart_name, "chart")
        _check_not_another_table(stations_table_node, {stations_table_name(side)}, "the stations table")
        _check_not_another_table(contact_table_node, {CONTACT_TABLE_NAME}, "the contact table")
        _check_not_another_table(islands_table_node, {ISLANDS_TABLE_NAME}, "the HO islands table")
        tolerance_mm = as_number(tolerance_mm, "The contact tolerance (mm)")
        bone_threshold_hu = as_number(bone_threshold_hu, "The bone threshold (HU)", MIN_BONE_THRESHOLD_HU,
                                      MAX_BONE_THRESHOLD_HU)
        if not np.isfinite(tolerance_mm) or not 0.0 <= tolerance_mm <= MAX_CONTACT_TOLERANCE_MM:
            raise InputError(f"The contact tolerance must be between 0 and {MAX_CONTACT_TOLERANCE_MM:.0f} mm; "
                             f"got {tolerance_mm}.")
        segmentation_node = self._existing(segmentation_node, "vtkMRMLSegmentationNode", SEGMENTATION_NAME)
        centreline_node = self._existing(centreline_node, *centreline_output(side))
        if segmentation_node is None or centreline_node is None:
            raise InputError(f"Contact needs the HO segmentation and the {side} nerve centreline. "
                             "Run 'Segment' and 'Trace' first.")
        nerve_id = scene_io.segment_id_by_name(segmentation_node, nerve_segment_name(side))
        if nerve_id is None:
            raise InputError(f"The segmentation has no segment '{nerve_segment_name(side)}'. Trace the {side} "
                             "sciatic nerve first (or rename your own nerve segment to that name).")
        contact_patch_model_node = self._existing(contact_patch_model_node, "vtkMRMLModelNode",
                                                  contact_patch_name(side))
        ho_distance_model_node = self._existing(ho_distance_model_node, "vtkMRMLModelNode",
                                                ho_distance_model_name(side))
        self._check_output_placement(contact_patch_model_node, ho_distance_model_node)
        self._check_one_analysis(segmentation_node, [
            centreline_node, contact_patch_model_node, ho_distance_model_node,
            stations_table_node or stations_output(side),
            contact_table_node or ("vtkMRMLTableNode", CONTACT_TABLE_NAME, CONTACT_TABLE_ROLE),
            chart_node or chart_output(side),
            islands_table_node or ("vtkMRMLTableNode", ISLANDS_TABLE_NAME)])
        full_geometry = self._segmentation_geometry(segmentation_node, reference_volume_node)
        report(progress, 0.05, "Reading segments")
        nerve = scene_io.segment_block_on_grid(segmentation_node, nerve_id, full_geometry)
        if nerve is None:
            raise InputError(f"The segment '{nerve_segment_name(side)}' is empty. Trace the nerve again or paint it "
                             "in the Segment Editor.")
        # Numbered as renumber_ho_segments will name them, once the figures stand.
        ho_blocks = self.ho_blocks(segmentation_node, full_geometry)
        # Only the region holding the nerve and the HO (plus a margin) is needed: the
        # rest of a full CT would cost time, not change a figure.
        window = self._working_window(full_geometry, [nerve[1]] + [block for _, _, _, block in ho_blocks])
        geometry = full_geometry.cropped(window)
        labelmap = self.paste_labels(ho_blocks, full_geometry, window)
        shared = self._shared_ho_voxels(ho_blocks, labelmap, window)
        nerve_mask = self.paste_labels([(1, "", nerve[0], nerve[1])], full_geometry, window) > 0
        centreline = scene_io.control_points_world(centreline_node)
        signal = self._signal_of(centreline_node, len(centreline))
        reference = reference_volume_node or self._reference_volume(segmentation_node)
        full_ct = self._ct_on_grid(reference, full_geometry)
        ct = full_ct[window] if full_ct is not None else None
        # The surface models need the masks only: they are built on other threads while
        # the figures are measured (progress is reported from this thread alone).
        with ThreadPoolExecutor(2, thread_name_prefix="hosciatic-models") as executor:
            nerve_mesh_job = executor.submit(contact_module.nerve_surface_distance_mesh, nerve_mask, labelmap, geometry)
            ho_mesh_job = (executor.submit(contact_module.ho_surface_distance_mesh, labelmap, nerve_mask, geometry)
                           if labelmap.any() else None)
            result = contact_module.compute_contact(nerve_mask, labelmap, geometry, centreline,
                                                    tolerance_mm=float(tolerance_mm), ct_hu=ct,
                                                    bone_threshold_hu=bone_threshold_hu,
                                                    image_geometry=full_geometry, ct_checked=True,
                                                    signal_along_centreline=signal,
                                                    progress=sub_progress(progress, 0.1, 0.7))
            report(progress, 0.75, "Building surface models")
            nerve_mesh = nerve_mesh_job.result()
            ho_mesh = ho_mesh_job.result() if ho_mesh_job is not None else None

        report(progress, 0.85, "Measuring the HO segments")
        # The segments may have been edited since they were made: the island figures
        # follow them, as the contact figures do.
        def midline():
            return self.body_midline(reference, full_ct, full_geometry, bone_threshold_hu)

        islands = (self.measure_islands(segmentation_node, full_ct, full_geometry, ho_blocks, midline=midline)
                   if full_ct is not None else None)
        stations = self.stations_with_contact(centreline_node, result)
        other_side_ratio, other_side_diameters = (
            self._compare_with_other_nerve(result, stations, side, segmentation_node, midline)
            if full_ct is not None else ({}, {}))
        report(progress, 0.9, "Writing contact outputs")
        # The scene changes only from here on, with no cancellation point until the end: a
        # refused or cancelled run leaves it as it was (segments named by hand included).
        renamed = self.renumber_ho_segments(segmentation_node)
        names = {label: f"{HO_SEGMENT_PREFIX} {label}" for label, _, _, _ in ho_blocks}
        self._show_wrapping_bone(segmentation_node, side, result, full_geometry, window)
        result.warnings += renamed + self._doubted_contact_warnings(segmentation_node, names, result)
        result.warnings += mr_thickening_warnings(centreline_node.GetAttribute("HOSciatic.Modality"), result)
        result.warnings += self._moved_image_warnings(segmentation_node, centreline_node, side)
        result.warnings += self._ho_beyond_traced_image_warnings(centreline_node, side, ho_blocks, full_geometry,
                                                                 centreline, names)
        shared_ml = sum(shared.values()) * full_geometry.voxel_volume_ml
        if shared:
            result.warnings.append(
                f"HO segments overlap: {', '.join(names[label] for label in sorted(shared))} "
                f"{'shares' if len(shared) == 1 else 'share'} "
                f"{shared_ml:.2f} mL with segments of lower numbers. Each segment's volume counts those voxels, the "
                "total HO volume once, and the contact figures give them to the lower-numbered segment. Erase the "
                "overlap in the Segment Editor (or delete a duplicate segment) and compute contact again.")
        if islands is not None:
            islands_table_node = self._fill_islands_table(islands_table_node, islands)
        result.warnings += caveated_contact_warnings(stations)
        arrays = self._station_arrays(stations, with_contact=True)
        scene_io.fill_centreline_curve(self.scene, centreline_node, centreline_node.GetName(),
                                       np.array([s["ras"] for s in stations]), arrays)
        # The curve now holds the contact's stations: its caveats follow them.
        centreline_node.SetAttribute(STATION_CAVEATS_ATTRIBUTE, json.dumps([s["caveats"] for s in stations]))
        scene_io.colour_curve_by(centreline_node, "encasement_deg", (0.0, 360.0))
        stations_table_node = self._existing(stations_table_node, *stations_output(side))
        stations_table_node = self._fill_stations_table(stations_table_node, side, stations, with_contact=True)
        contact_table_node = self._existing(contact_table_node, "vtkMRMLTableNode", CONTACT_TABLE_NAME,
                                            CONTACT_TABLE_ROLE)
        contact_table_node = self._fill_contact_table(contact_table_node, side, result, names, other_side_ratio)
        chart_node = self._fill_contact_chart(self._existing(chart_node, *chart_output(side)), side,
                                              stations_table_node)
        self._show_other_side_diameters(segmentation_node, other_side_diameters)
        contact_patch_model_node = self._contact_patch_model(contact_patch_model_node, side, nerve_mesh,
                                                             result.tolerance_mm, segmentation_node)
        ho_distance_model_node = self._ho_distance_model(ho_distance_model_node, side, ho_mesh, segmentation_node)
        self._tag_outputs(segmentation_node, [contact_table_node, chart_node, contact_patch_model_node,
                                              ho_distance_model_node, stations_table_node, centreline_node,
                                              islands_table_node])
        # Found again by role, whatever the user named them, once they are out of date.
        contact_table_node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, CONTACT_TABLE_ROLE)
        stations_table_node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, side_role(STATIONS_ROLE, side))
        centreline_node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, side_role(CENTRELINE_ROLE, side))
        for node in (chart_node, contact_patch_model_node, ho_distance_model_node):
            if node is not None:
                node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, side_role(CONTACT_ROLE, side))
        scene_io.place_in_folder(self.scene, self._folder_name(self._reference_volume(segmentation_node)),
                                 [contact_table_node, chart_node, contact_patch_model_node, ho_distance_model_node])
        self._record_warnings(centreline_node, CONTACT_WARNINGS, result.warnings)
        report(progress, 1.0, f"Contact: {result.encasement_class}, max encasement {result.max_encasement_deg:.0f} deg",
               final=True)
        return ContactOutputs(contact_table_node, stations_table_node, chart_node, contact_patch_model_node,
                              ho_distance_model_node, result, names, islands,
                              islands_table_node if islands is not None else None, centreline_node, shared_ml,
                              other_side_ratio, other_side_diameters)

    def _fill_contact_chart(self, chart_node, side, stations_table_node):
        """The chart of a nerve's encasement and diameter along it. Bone outside the HO
        segments is plotted too where measured (a thick fused mass the HO step kept as
        native bone shows as a second encasement curve), and the other side's diameter
        beside the nerve's own where both nerves are traced, dashed."""
        optional = [title for title in (BONE_ENCASEMENT_SERIES, OTHER_SIDE_DIAMETER_SERIES)
                    if scene_io.column_has_numbers(stations_table_node, title)]
        return scene_io.fill_plot_chart(self.scene, chart_node, chart_name(side), stations_table_node, "s",
                                        ["Encasement", "Diameter"] + optional, "Encasement (deg) / diameter (mm)",
                                        dashed=[OTHER_SIDE_DIAMETER_SERIES])

    def _show_other_side_diameters(self, segmentation_node, diameters_by_side: dict) -> None:
        """Write this nerve's diameter beside each station of the other side's nerve of
        the same analysis (side -> values per station, NaN where not compared; an empty
        array empties them): into that nerve's curve, its stations table and its chart,
        where its contact stands."""
        measure = measurements.find(measurements.STATION_CONTACT_MEASURES, "other_side_diameter_mm")

        def of_this_analysis(nodes):
            return [node for node in nodes
                    if node.GetNodeReferenceID(ANALYSIS_REFERENCE_ROLE) == segmentation_node.GetID()]

        for side, values in diameters_by_side.items():
            for curve in of_this_analysis(self._outputs(*centreline_output(side))):
                if scene_io.curve_measurement(curve, "encasement_deg") is None:
                    continue
                scene_io.set_curve_measurement(curve, measure.key, measure.unit, measure.description,
                                               _one_per_row(values, curve.GetNumberOfControlPoints()))
            for table in of_this_analysis(self._outputs(*stations_output(side))):
                rows = _one_per_row(values, table.GetTable().GetNumberOfRows())
                if scene_io.set_table_column(table, measure.title, [measure.rounded(v) for v in rows]):
                    for chart in of_this_analysis(self._outputs(*chart_output(side))):
                        self._fill_contact_chart(chart, side, table)

    @staticmethod
    def _placement(volume_node, segmentation_node) -> np.ndarray:
        """The volume's IJK-to-RAS matrix in the segmentation's own coordinates."""
        return (scene_io.world_to_node(segmentation_node, "Segmentation")
                @ scene_io.volume_geometry(volume_node, "Volume").ijk_to_ras)

    def _remember_placement(self, holder, role, volume_node, segmentation_node) -> None:
        holder.SetNodeReferenceID(role, volume_node.GetID())
        holder.SetAttribute(f"HOSciatic.{role}Placement",
                            json.dumps(np.round(self._placement(volume_node, segmentation_node), 6).tolist()))

    def _moved_since(self, holder, role, segmentation_node):
        """(volume, mm) when the volume ``holder`` was made from has moved relative to the
        segmentation since (by that much at its corners), else None."""
        volume = holder.GetNodeReference(role) if holder is not None else None
        text = holder.GetAttribute(f"HOSciatic.{role}Placement") if holder is not None else None
        if volume is None or not text or volume.GetImageData() is None:
            return None
        try:
            then = np.array(json.loads(text), float).reshape(4, 4)
        except ValueError:
            return None
        try:
            now = self._placement(volume, segmentation_node)
        except InputError:
            return None  # under a warping transform: contact does not read that image
        moved = corner_shift_mm(now, then, volume.GetImageData().GetDimensions())
        return (volume, moved) if moved > PLACEMENT_TOLERANCE_MM else None

    def _moved_image_warnings(self, segmentation_node, centreline_node, side) -> list[str]:
        warnings = []
        moved = self._moved_since(segmentation_node, HO_CT_ROLE, segmentation_node)
        if moved is not None:
            warnings.append(f"The CT '{moved[0].GetName()}' has moved by up to {moved[1]:.1f} mm relative to the "
                            "segmentation since the HO step (a registration changed): the HO segments stay where it "
                            "lay, so the contact is measured against HO that the CT no longer shows there. Run the "
                            "HO step again.")
        moved = self._moved_since(centreline_node, TRACED_VOLUME_ROLE, segmentation_node)
        if moved is not None:
            warnings.append(f"The volume '{moved[0].GetName()}' has moved by up to {moved[1]:.1f} mm relative to the "
                            f"segmentation since the {side} nerve was traced on it (a registration changed): the "
                            "nerve segment and centreline stay where it lay. Trace the nerve again.")
        return warnings

    @staticmethod
    def _ho_beyond_traced_image_warnings(centreline_node, side, ho_blocks, geometry, centreline, names) -> list[str]:
        """A warning where the trace ends at the edge of the image it was made on (an MR
        with a smaller field of view than the CT) and HO lies beyond that edge near the
        end: the nerve runs on there untraced, so its contact with that HO is not measured."""
        volume = centreline_node.GetNodeReference(TRACED_VOLUME_ROLE)
        if volume is None or volume.GetImageData() is None or len(centreline) < 2 or not ho_blocks:
            return []
        try:
            traced = scene_io.volume_geometry(volume, "The traced volume")
        except InputError:
            return []  # under a warping transform: its edges are not where its grid says
        # Each end's distance (mm) to the nearest face, along each axis at its own spacing.
        ijk = traced.ras_to_ijk_points(centreline[[0, -1]])
        faces = np.minimum(ijk + 0.5, np.asarray(traced.shape_kji[::-1]) - 0.5 - ijk) * traced.spacing_ijk
        ends = [n for n, end in zip((0, len(centreline) - 1), faces) if end.min() <= TRACE_END_AT_EDGE_MM]
        beyond = {}
        for label, _, mask, block in (ho_blocks if ends else []):
            if traced.contains_ras(geometry.block_corners_ras(block)).all():
                continue  # the block, and the segment in it, lie wholly inside the traced image
            points = geometry.kji_to_ras_points(np.argwhere(mask) + [b.start for b in block])
            points = points[~traced.contains_ras(points)]
            if len(points):
                beyond[label] = cKDTree(points).query(centreline[ends])[0]
        warnings = []
        for n, end in enumerate(ends):
            near = {label: float(d[n]) for label, d in beyond.items() if d[n] <= HO_BEYOND_TRACE_END_MM}
            if not near:
                continue
            which = "upper" if centreline[end][2] >= centreline[len(centreline) - 1 - end][2] else "lower"
            warnings.append(
                f"The {side} nerve's trace ends at the edge of '{volume.GetName()}', the image it was traced on (its "
                f"{which} end), and {', '.join(names.get(label, str(label)) for label in sorted(near))} "
                f"{'lies' if len(near) == 1 else 'lie'} beyond that edge, {min(near.values()):.0f} mm from the end: "
                "the nerve runs on there untraced, so its contact with that HO is not measured. Trace the nerve on an "
                "image that covers the HO too (the CT), or check that stretch on the images.")
        return warnings

    @staticmethod
    def _shared_ho_voxels(ho_blocks, labelmap, window) -> dict:
        """{label: voxels its segment shares with one of a lower number} (the label map
        over ``window`` gives them to that one); segments sharing none are left out."""
        shared = {}
        for label, _, mask, block in ho_blocks:
            here = labelmap[block_relative_to(block, window)]
            count = int(np.count_nonzero(mask & (here != label)))
            if count:
                shared[label] = count
        return shared

    @staticmethod
    def _doubted_contact_warnings(segmentation_node, names: dict, result) -> list:
        """A warning for each segment touching the nerve that the HO step named as
        possibly not HO: the contact figures stand on it."""
        warnings = []
        for island in result.islands:
            if island.contact_length_mm <= 0 and island.min_distance_mm > result.tolerance_mm:
                continue  # not touching the nerve
            segment_id = scene_io.segment_id_by_name(segmentation_node, names.get(island.label, ""))
            if segment_id is None:
                continue
            doubt = scene_io.segment_tag(segmentation_node.GetSegmentation().GetSegment(segment_id), DOUBT_TAG)
            if doubt:
                warnings.append(f"{names[island.label]} touches the nerve but was named as possibly not HO ({doubt}); "
                                "the contact figures count it. Check it on the images; if it is not HO, delete the "
                                "segment and compute contact again.")
        return warnings

    def _show_wrapping_bone(self, segmentation_node, side, result, geometry, window):
        """The bone outside the HO segments that wraps the nerve, as a segment to review
        (renamed 'HO <n>', it counts as HO); removed once nothing wraps the nerve."""
        name = wrapping_bone_name(side)
        offset = (tuple(w.start + b.start for w, b in zip(window, result.wrapping_bone_slices))
                  if result.wrapping_bone_block is not None else None)
        self._show_set_apart(segmentation_node, name, result.wrapping_bone_block, offset, geometry)
        if result.wrapping_bone_block is None:
            return
        # The reader finds it by name in the scene.
        result.warnings[:] = [f"{w} That bone is shown as the segment '{name}'; renamed 'HO <n>', it counts as HO."
                              for w in result.warnings]

    @staticmethod
    def _ct_on_grid(volume_node, geometry):
        """The reference volume's voxels when it is a CT on the segmentation's grid."""
        if volume_node is None:
            return None
        image, _ = scene_io.array_from_volume(volume_node, "Reference volume")
        if image.shape != geometry.shape_kji or not looks_like_ct(image):
            return None
        return image

    @staticmethod
    def _working_window(geometry, blocks):
        low = np.min([[b.start for b in block] for block in blocks], axis=0)
        high = np.max([[b.stop for b in block] for block in blocks], axis=0)
        margin = np.ceil(WORKING_MARGIN_MM / np.asarray(geometry.spacing_kji)).astype(int)
        low = np.maximum(low - margin, 0)
        high = np.minimum(high + margin, geometry.shape_kji)
        return tuple(slice(int(a), int(b)) for a, b in zip(low, high))

    def _segmentation_geometry(self, segmentation_node, reference_volume_node):
        volume = reference_volume_node or self._reference_volume(segmentation_node)
        if volume is None:
            raise InputError("The segmentation has no reference volume. Select the CT as the segmentation's "
                             "source geometry (Segment Editor > Source volume) and run again.")
        return scene_io.volume_geometry(volume, "Reference volume")

    def stations_with_contact(self, centreline_node, result) -> list[dict]:
        """Station rows: the traced cross-section figures joined with contact per station."""
        points = scene_io.control_points_world(centreline_node)
        traced = {m.key: scene_io.curve_measurement(centreline_node, m.key)
                  for m in measurements.STATION_MEASURES if m.kind == "float" and m.key != "s_mm"}
        s_traced = arc_length_mm(points) if len(points) else np.zeros(0)
        caveats = self._station_caveats_of(centreline_node, len(points))
        rows = []
        for n, s in enumerate(np.asarray(result.s_mm, float)):
            nearest = int(np.argmin(np.abs(s_traced - s))) if len(s_traced) else 0
            row = {"s_mm": float(s), "ras": np.asarray(result.points_ras[n], float).tolist(),
                   "encasement_deg": float(result.encasement_deg[n]),
                   "distance_to_ho_mm": float(result.distance_to_ho_mm[n]),
                   "bone_encasement_deg": (float(result.bone_encasement_deg[n])
                                           if result.bone_encasement_deg is not None else None),
                   "other_side_diameter_mm": (float(result.other_side_diameter_mm[n])
                                              if result.other_side_diameter_mm is not None else None)}
            for key, values in traced.items():
                usable = values is not None and len(values) == len(points)
                row[key] = float(values[nearest]) if usable else None
            row["caveats"] = caveats[nearest] if caveats else ""
            if row.get("area_mm2") is None and result.area_mm2 is not None:
                area = float(result.area_mm2[n])
                row["area_mm2"] = area
                row["diameter_mm"] = float(nerve.equivalent_diameter_mm(area))
            rows.append(row)
        return rows

    def _compare_with_other_nerve(self, result, stations, side, segmentation_node, midline) -> tuple:
        """The nerve's area in contact against the other side's nerve of the same analysis
        at their mirror images across the body's midline (``midline``: a callable giving
        it, None unless both hips are imaged), as the other nerve's curve holds it now, and
        that nerve's diameter beside each station (into ``result`` and ``stations``);
        and, where the other nerve's contact stands (its curve holds its encasement), its
        area against this nerve as now traced and this nerve's diameter beside each of its
        stations: ({other side: ratio}, {other side: diameters}). Areas only: an MR's
        signal is read on each nerve's block with its own shading divided out, whose scale
        N4 leaves free, so two nerves' signals are not comparable."""
        other_side = opposite_side(side)
        other = self._existing(None, *centreline_output(other_side))
        if other is None or other.GetNodeReferenceID(ANALYSIS_REFERENCE_ROLE) != segmentation_node.GetID():
            return {}, {}
        points = scene_io.control_points_world(other)
        area = scene_io.curve_measurement(other, "area_mm2")
        if area is None or len(area) != len(points) or not len(points):
            return {}, {}
        plane = midline()
        if plane is None:
            return {}, {}
        def own(key):
            return np.array([np.nan if row.get(key) is None else row[key] for row in stations], float)

        own_area, own_diameter = own("area_mm2"), own("diameter_mm")
        own_points = np.array([row["ras"] for row in stations], float)
        other_diameter = scene_io.curve_measurement(other, "diameter_mm")
        if other_diameter is not None and len(other_diameter) == len(points):
            result.other_side_diameter_mm = contact_module.other_side_values(own_points, other_diameter, points,
                                                                             plane.mirror)
            for row, value in zip(stations, result.other_side_diameter_mm):
                row["other_side_diameter_mm"] = float(value)
        own_in_contact = np.asarray(result.encasement_deg) > 0.0
        encasement = scene_io.curve_measurement(other, "encasement_deg")
        other_in_contact = np.asarray(encasement) > 0.0 if encasement is not None and len(encasement) == len(points) \
            else None
        result.contralateral_area_ratio = contact_module.contralateral_ratio(
            own_area, own_points, own_in_contact, area, points, plane.mirror, other_in_contact)
        if other_in_contact is None:
            return {}, {}
        return ({other_side: contact_module.contralateral_ratio(area, points, other_in_contact, own_area, own_points,
                                                                plane.mirror, own_in_contact)},
                {other_side: contact_module.other_side_values(points, own_diameter, own_points, plane.mirror)})

    def _fill_contact_table(self, table_node, side, result, names, other_side_ratio=None):
        """One row per island x nerve; rows of the other side's nerve are kept, with its
        area against this nerve as ``other_side_ratio`` gives it ({side: ratio}). The row
        of all HO holds the nerve's own figures too (deflection, the ratios): the panel
        shows them there."""
        columns = [("nerve", "Nerve", "", "str", "Nerve the row refers to"),
                   ("island", "Island", "", "str", "HO segment (or 'all HO' for the nerve as a whole)")]
        columns += [m.column() for m in measurements.NERVE_CONTACT_MEASURES]
        kept = []
        if table_node is not None and table_node.GetTable().GetNumberOfColumns():
            existing = scene_io.table_columns(table_node)
            titles = [c[1] for c in columns]
            # A table of an earlier version has fewer columns: its rows keep what they hold.
            if {"Nerve", "Island"} <= set(existing) <= set(titles):
                for r in range(len(existing["Nerve"])):
                    if existing["Nerve"][r] != nerve_segment_name(side):
                        kept.append({c[0]: existing[c[1]][r] for c in columns if c[1] in existing})
        for other_side, ratio in (other_side_ratio or {}).items():
            for row in kept:
                if row["nerve"] == nerve_segment_name(other_side) and row["island"] == ALL_HO_ROW:
                    row["contralateral_area_ratio"] = measurements.find(
                        measurements.NERVE_CONTACT_MEASURES, "contralateral_area_ratio").table_cell(ratio)
        rows = kept + [dict(nerve=nerve_segment_name(side), island=ALL_HO_ROW,
                            **measurements.as_table_row(measurements.NERVE_CONTACT_MEASURES, result))]
        for island in result.islands:
            rows.append(dict(nerve=nerve_segment_name(side), island=names.get(island.label, f"HO {island.label}"),
                             **measurements.as_table_row(measurements.CONTACT_MEASURES, island)))
        return scene_io.fill_table(self.scene, table_node, CONTACT_TABLE_NAME, columns, rows)

    def _forget_other_side_figures(self, segmentation_node, side) -> None:
        """Empty the other nerve's area against this one in the contact table, and this
        nerve's diameter beside its stations, once this nerve has been traced again: they
        were measured against the nerve as it was."""
        self._show_other_side_diameters(segmentation_node, {opposite_side(side): np.zeros(0)})
        other = nerve_segment_name(opposite_side(side))
        title = measurements.find(measurements.NERVE_CONTACT_MEASURES, "contralateral_area_ratio").title
        for table_node in self._outputs("vtkMRMLTableNode", CONTACT_TABLE_NAME, CONTACT_TABLE_ROLE):
            table = table_node.GetTable()
            nerves, islands, ratios = (table.GetColumnByName(name) for name in ("Nerve", "Island", title))
            if nerves is None or islands is None or ratios is None:
                continue
            for row in range(table.GetNumberOfRows()):
                if nerves.GetValue(row) == other and islands.GetValue(row) == ALL_HO_ROW:
                    ratios.SetValue(row, float("nan"))
            table.Modified()
            table_node.Modified()

    def _forget_contact(self, segmentation_node, side, grid) -> None:
        """Remove what the contact step made for one side's nerve, once the nerve or the HO
        it was measured against has been made again: its rows of the contact table, its
        chart (and the series no other chart shows), contact patch and HO distance models,
        the bone it found wrapping the nerve, its warnings, and the contact columns of its
        curve and stations table. Left in place they read as current (a contact table
        listing an island no longer there, an encasement on the curve that the nerve
        traced again no longer has). Outputs are found by their default names and by the
        role the contact step tagged them with (a table or chart chosen in the panel)."""
        nerve_name = nerve_segment_name(side)
        for table in self._outputs("vtkMRMLTableNode", CONTACT_TABLE_NAME, CONTACT_TABLE_ROLE):
            nerves = scene_io.table_columns(table).get("Nerve", []) if table.GetTable().GetNumberOfColumns() else []
            rows = [r for r, name in enumerate(nerves) if name == nerve_name]
            if rows and len(rows) == len(nerves):
                self.scene.RemoveNode(table)
                continue
            for row in reversed(rows):
                table.RemoveRow(row)
        for chart in self._outputs(*chart_output(side)):
            series = [chart.GetNthPlotSeriesNode(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
            self.scene.RemoveNode(chart)
            shown_elsewhere = {other.GetNthPlotSeriesNodeID(n) for other in self._nodes_of("vtkMRMLPlotChartNode")
                               for n in range(other.GetNumberOfPlotSeriesNodes())}
            for node in series:
                if node is not None and node.GetID() not in shown_elsewhere:
                    self.scene.RemoveNode(node)
        for model in self._outputs("vtkMRMLModelNode", (contact_patch_name(side), ho_distance_model_name(side)),
                                   side_role(CONTACT_ROLE, side)):
            self.scene.RemoveNode(model)
        self._show_set_apart(segmentation_node, wrapping_bone_name(side), None, None, grid)
        for curve in self._outputs(*centreline_output(side)):
            self._record_warnings(curve, CONTACT_WARNINGS, [])
            if scene_io.curve_measurement(curve, "encasement_deg") is None:
                continue
            try:
                stations = self.station_rows(self.nerve_from_scene(curve).trace)
            except InputError:
                continue  # a curve drawn by hand: it holds no traced figures to keep
            scene_io.fill_centreline_curve(self.scene, curve, curve.GetName(),
                                           np.array([s["ras"] for s in stations]), self._station_arrays(stations))
            for table in self._outputs(*stations_output(side)):
                self._fill_stations_table(table, side, stations, with_contact=False)

    def _nodes_of(self, class_name: str) -> list:
        count = self.scene.GetNumberOfNodesByClass(class_name)
        return [self.scene.GetNthNodeByClass(n, class_name) for n in range(count)]

    def _outputs(self, class_name: str, names, role: str) -> list:
        """Nodes of a class named as ``names`` (one name or several) or tagged with
        ``role`` (OUTPUT_ROLE_ATTRIBUTE)."""
        names = {names} if isinstance(names, str) else set(names)
        return [node for node in self._nodes_of(class_name)
                if node.GetName() in names or node.GetAttribute(OUTPUT_ROLE_ATTRIBUTE) == role]

    def _contact_patch_model(self, model_node, side, nerve_mesh, tolerance_mm, placed_like=None):
        vertices, faces, distance = nerve_mesh
        in_contact = faces[np.all(distance[faces] <= tolerance_mm, axis=1)] if len(faces) else faces
        used = np.unique(in_contact)
        remap = np.full(len(vertices), -1, np.int64)
        remap[used] = np.arange(len(used))
        polydata = scene_io.polydata_from_mesh(vertices[used], remap[in_contact],
                                               {"distance_to_ho_mm": distance[used]})
        return scene_io.fill_model(self.scene, model_node, contact_patch_name(side), polydata, color=(0.9, 0.1, 0.1),
                                   placed_like=placed_like)

    def _ho_distance_model(self, model_node, side, ho_mesh, placed_like=None):
        if ho_mesh is None:
            vertices, faces, distance = np.zeros((0, 3)), np.zeros((0, 3), np.int64), np.zeros(0)
        else:
            vertices, faces, distance = ho_mesh[:3]
        polydata = scene_io.polydata_from_mesh(vertices, faces, {"distance_to_nerve_mm": distance})
        return scene_io.fill_model(self.scene, model_node, ho_distance_model_name(side), polydata,
                                   scalar_name="distance_to_nerve_mm", scalar_range=(0.0, 10.0), placed_like=placed_like)

    @staticmethod
    def _record_warnings(node, attribute: str, warnings) -> None:
        node.SetAttribute(attribute, WARNING_SEPARATOR.join(warnings) if warnings else "")

    @staticmethod
    def _warnings_of(node, attribute: str) -> list[str]:
        text = node.GetAttribute(attribute) if node is not None else None
        return [w for w in (text or "").split(WARNING_SEPARATOR) if w]

    @classmethod
    def recorded_warnings(cls, segmentation_node=None, centreline_node=None) -> list[str]:
        """The warnings of the last HO segmentation, nerve tracing and contact, as kept
        on their nodes (so they survive saving and reloading the scene)."""
        return (cls._warnings_of(segmentation_node, OSSIFICATION_WARNINGS) + cls._warnings_of(centreline_node, NERVE_WARNINGS)
                + cls._warnings_of(centreline_node, CONTACT_WARNINGS))
