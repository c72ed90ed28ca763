"""HOSciatic: heterotopic ossification and the sciatic nerve.

Module (metadata), Widget (the panel: reads the GUI, calls the Logic, shows results),
Logic (scene glue over the Qt-free ``HOSciaticModuleLib``) and Test (the self-test
shared with the pytest suite). No algorithm lives in this file.
"""

import contextlib
import importlib.util
import logging
import pathlib
import subprocess
from typing import Annotated, Optional

import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsCurveNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from HOSciaticModuleLib.defaults import (
    DEFAULT_BONE_THRESHOLD_HU,
    DEFAULT_CONTACT_TOLERANCE_MM,
    DEFAULT_MIN_ISLAND_ML,
    MAX_BONE_THRESHOLD_HU,
    MAX_CONTACT_TOLERANCE_MM,
    MIN_BONE_THRESHOLD_HU,
    MODALITIES,
    REQUIRED_PACKAGES,
    SIDES,
)
from HOSciaticModuleLib.errors import InputError


#
# HOSciaticModule
#
class HOSciaticModule(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "HOSciatic"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = ["Segmentations", "Markups", "Tables", "Plots"]
        self.parent.contributors = ["HOSciatic developers"]
        self.parent.helpText = (
            "Segments heterotopic ossification (HO) around the hip on CT, traces the sciatic nerve on CT or MRI "
            "from a few clicked points, and measures distance, contact and encasement between HO and the nerve. "
            "Definitions of every figure: see the README of the HOSciatic extension."
        )
        self.parent.acknowledgementText = (
            "HOSciatic builds on 3D Slicer's segmentation, markups, tables and plots infrastructure."
        )


#
# Parameter node: every setting of the panel, saved with the scene.
#
@parameterNodeWrapper
class HOSciaticModuleParameterNode:
    ctVolume: vtkMRMLScalarVolumeNode
    mrVolume: vtkMRMLScalarVolumeNode
    nativeBoneSegmentation: vtkMRMLSegmentationNode
    roi: vtkMRMLMarkupsROINode
    boneThresholdHU: Annotated[float, WithinRange(MIN_BONE_THRESHOLD_HU, MAX_BONE_THRESHOLD_HU)] = (
        DEFAULT_BONE_THRESHOLD_HU)
    minIslandMl: Annotated[float, WithinRange(0.0, 100.0)] = DEFAULT_MIN_ISLAND_ML
    side: Annotated[str, Choice(list(SIDES))] = SIDES[0]
    modality: Annotated[str, Choice(list(MODALITIES))] = MODALITIES[0]
    seeds: vtkMRMLMarkupsFiducialNode
    contactToleranceMm: Annotated[float, WithinRange(0.0, MAX_CONTACT_TOLERANCE_MM)] = DEFAULT_CONTACT_TOLERANCE_MM
    exportDirectory: pathlib.Path
    segmentation: vtkMRMLSegmentationNode
    islandsTable: vtkMRMLTableNode
    centreline: vtkMRMLMarkupsCurveNode
    stationsTable: vtkMRMLTableNode
    contactTable: vtkMRMLTableNode
    chart: vtkMRMLPlotChartNode


#
# HOSciaticModuleWidget
#
class HOSciaticModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False
        self._busy = False
        self._sceneClosedDuringStep = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HOSciaticModule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HOSciaticModuleLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.traceButton.connect("clicked(bool)", self.onTraceButton)
        self.ui.computeButton.connect("clicked(bool)", self.onComputeButton)
        self.ui.analyzeAllButton.connect("clicked(bool)", self.onAnalyzeAllButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlotButton)
        self.ui.jumpClosestButton.connect("clicked(bool)", self.onJumpClosestButton)
        self.ui.jumpMaxEncasementButton.connect("clicked(bool)", self.onJumpMaxEncasementButton)
        self.ui.islandsTableView.connect("clicked(QModelIndex)", self.onIslandRowClicked)
        self.ui.contactTableView.connect("clicked(QModelIndex)", self.onContactRowClicked)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.seedsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSeedsChanged)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setVisible(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        # A step running while the scene closes stops at its next progress report, before
        # it writes into nodes that are gone.
        self._cancelRequested = self._cancelRequested or self._busy
        self._sceneClosedDuringStep = self._sceneClosedDuringStep or self._busy
        self.setParameterNode(None)
        self.logic.forgetResults()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            # Label maps and vector volumes are scalar volumes too, but never the CT (the
            # selector, which shows no subclass, would show none while one was chosen).
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            firstVolume = next((v for v in volumes if v.GetClassName() == "vtkMRMLScalarVolumeNode"), None)
            if firstVolume:
                self._parameterNode.ctVolume = firstVolume
        if str(self._parameterNode.exportDirectory) in ("", "."):
            # The folder button shows the working folder for an empty path, where Export
            # refused to write ("Choose an export folder first"), and choosing that same
            # folder changed nothing: it starts at Slicer's default scene folder instead.
            self._parameterNode.exportDirectory = pathlib.Path(slicer.app.defaultScenePath)

    def setParameterNode(self, inputParameterNode: Optional[HOSciaticModuleParameterNode]) -> None:
        # The panel stays connected to its parameter node while the module is hidden, and
        # is connected once per node: in Slicer 5.8-5.10 every connection leaves an observer
        # on the node that disconnecting does not remove, with its wrapper, so connecting
        # on each visit piled them up.
        if (inputParameterNode is not None and self._parameterNode is not None
                and inputParameterNode.parameterNode is self._parameterNode.parameterNode):
            self._updateButtons()
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # connectGui returns no tag in Slicer 5.8.x (fixed in 5.10), so its connections could
            # never be undone and piled up on every visit, resetting the combo boxes;
            # connectParametersToGui returns the tag in every version.
            widgets = {widget.property("SlicerParameterName"): widget for widget in vars(self.ui).values()
                       if hasattr(widget, "property") and widget.property("SlicerParameterName")}
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(widgets)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        traceVolume = p.mrVolume if p.modality == "mr" else p.ctVolume
        self.ui.segmentButton.enabled = bool(p.ctVolume) and not self._busy
        self.ui.traceButton.enabled = bool(traceVolume and p.seeds) and not self._busy
        self.ui.computeButton.enabled = bool(p.segmentation and p.centreline) and not self._busy
        self.ui.analyzeAllButton.enabled = bool(p.ctVolume and traceVolume and p.seeds) and not self._busy
        self.ui.exportButton.enabled = bool(p.segmentation) and not self._busy
        self.ui.jumpClosestButton.enabled = bool(p.contactTable or p.centreline) and not self._busy
        self.ui.jumpMaxEncasementButton.enabled = bool(p.centreline) and not self._busy
        self.ui.showPlotButton.enabled = bool(p.chart)
        # Setting a table rebuilds its view: only when it changed, not at every spin-box step.
        for view, table in ((self.ui.islandsTableView, p.islandsTable), (self.ui.contactTableView, p.contactTable)):
            if view.mrmlTableNode() is not table:
                view.setMRMLTableNode(table)

    def onSeedsChanged(self, node) -> None:
        self.ui.seedsPlaceWidget.setCurrentNode(node)

    # -- long steps ------------------------------------------------------------------
    def _progress(self, fraction: float, message: str) -> None:
        from HOSciaticModuleLib.errors import AnalysisCancelled

        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()
        if self._cancelRequested:
            raise AnalysisCancelled("Cancelled by the user.")

    def _run(self, title: str, step) -> None:
        """Run one step with progress, cancellation and a plain-language error dialog."""
        from HOSciaticModuleLib.errors import AnalysisCancelled

        self._cancelRequested = False
        self._sceneClosedDuringStep = False
        self._busy = True
        self._updateButtons()
        # The panel keeps drawing during a step (progress, Cancel): its settings stay out
        # of reach until the step ends, so the step works on the inputs it started with.
        self._setSectionsEnabled(False)
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(True)
        self.ui.cancelButton.setVisible(True)
        try:
            with self._errorsShown(f"{title} failed.", waitCursor=True):
                try:
                    self.logic.ensureDependencies()
                    step()
                    if self._sceneClosedDuringStep:
                        # Closed during the step's last report, which does not stop: what it
                        # kept of that scene's results is dropped with the scene.
                        self.logic.forgetResults()
                        self.ui.statusLabel.text = f"{title}: stopped, the scene was closed."
                        return
                    # Caveats (metal, thick slices, islands at the image edge, a straying
                    # path...) stay in view until the next step.
                    warnings = self.logic.currentWarnings(self._parameterNode)
                    for warning in warnings:
                        logging.warning(warning)
                    self.ui.statusLabel.text = "\n".join([f"{title}: done."] + [f"Warning: {w}" for w in warnings])
                except AnalysisCancelled:
                    self.ui.statusLabel.text = f"{title}: cancelled; earlier results are unchanged."
        finally:
            self._busy = False
            self._setSectionsEnabled(True)
            self.ui.progressBar.setVisible(False)
            self.ui.cancelButton.setVisible(False)
            self._updateButtons()

    @contextlib.contextmanager
    def _errorsShown(self, message: str, waitCursor: bool = False):
        """An input the step cannot work with is shown as its message alone; anything
        else, a defect, with its traceback for a report (slicer.util.tryWithErrorDisplay
        shows and logs a traceback for every error)."""
        with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
            try:
                yield
            except InputError as error:
                slicer.util.errorDisplay(f"{message}\n\n{error}")
                self.ui.statusLabel.text = f"{message} {error}"

    def _setSectionsEnabled(self, enabled: bool) -> None:
        for section in (self.ui.inputsCollapsibleButton, self.ui.ossificationsCollapsibleButton,
                        self.ui.nerveCollapsibleButton, self.ui.contactCollapsibleButton,
                        self.ui.exportCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = enabled

    def onCancelButton(self) -> None:
        self._cancelRequested = True

    def onSegmentButton(self) -> None:
        self._run("HO segmentation", lambda: self.logic.segmentOssifications(self._parameterNode, self._progress))

    def onTraceButton(self) -> None:
        self._run("Nerve tracing", lambda: self.logic.traceNerve(self._parameterNode, self._progress))

    def onComputeButton(self) -> None:
        self._run("Contact measurement", lambda: self.logic.computeContact(self._parameterNode, self._progress))

    def onAnalyzeAllButton(self) -> None:
        self._run("Analysis", lambda: self.logic.analyzeAll(self._parameterNode, self._progress))

    def onExportButton(self) -> None:
        self._run("Export", lambda: self.logic.exportResults(self._parameterNode, self._progress))

    def onShowPlotButton(self) -> None:
        with self._errorsShown("Cannot show the chart."):
            chart = self.logic.sideChart(self._parameterNode)
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalPlotView)
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onJumpClosestButton(self) -> None:
        with self._errorsShown("Cannot jump to the closest point."):
            self._jumpTo(self.logic.closestPoint(self._parameterNode))

    def onJumpMaxEncasementButton(self) -> None:
        with self._errorsShown("Cannot jump to the maximum encasement."):
            self._jumpTo(self.logic.maxEncasementPoint(self._parameterNode))

    def onIslandRowClicked(self, index) -> None:
        if self._busy:  # a click while a step runs and rewrites the segments
            return
        with self._errorsShown("Cannot jump to the island."):
            # The view may be sorted by a column: its rows are the table's through its proxy.
            row = self.ui.islandsTableView.sortFilterProxyModel().mapToSource(index).row()
            self._jumpTo(self.logic.islandCentre(self._parameterNode, row))

    def onContactRowClicked(self, index) -> None:
        if self._busy:
            return
        with self._errorsShown("Cannot jump to the closest point."):
            row = self.ui.contactTableView.sortFilterProxyModel().mapToSource(index).row()
            self._jumpTo(self.logic.contactRowClosestPoint(self._parameterNode, row))

    def _jumpTo(self, point) -> None:
        slicer.modules.markups.logic().JumpSlicesToLocation(point[0], point[1], point[2], True)


#
# HOSciaticModuleLogic
#
class HOSciaticModuleLogic(ScriptedLoadableModuleLogic):
    """The panel's steps on the scene; usable from the Python console with a parameter node
    or directly through :attr:`analysis` (``HOSciaticModuleLib.pipeline.HOSciaticAnalysis``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from HOSciaticModuleLib.session import SessionResults

        self._analysis = None
        self._latest = SessionResults()

    def getParameterNode(self):
        return HOSciaticModuleParameterNode(super().getParameterNode())

    def forgetResults(self) -> None:
        """Drop this session's results (the scene that held them is closing): an export
        or a jump after it must not reach into the previous case."""
        self._latest.forget()
        self._analysis = None

    @staticmethod
    def _goneWithScene(*nodes) -> bool:
        """The scene was closed during the step's last report (which does not stop the
        step): its outputs went with it. The parameter node outlives a scene close and
        must not be pointed at their IDs: the next case's nodes get those IDs."""
        return any(node is not None and node.GetScene() is not slicer.mrmlScene for node in nodes)

    @staticmethod
    def _sideNode(node, output: tuple):
        """``node`` when it is the current side's own ``output`` (class, name, role as
        ``pipeline.centreline_output`` gives them): by its name, or by the role a step tagged
        it with, so a renamed output stays in use. Else None: the step then finds or creates
        that side's node, and the other side's results stay."""
        if node is None:
            return None
        from HOSciaticModuleLib.pipeline import OUTPUT_ROLE_ATTRIBUTE

        _, name, role = output
        return node if node.GetName() == name or node.GetAttribute(OUTPUT_ROLE_ATTRIBUTE) == role else None

    @staticmethod
    def missingPackages() -> list:
        return [package for module, package in REQUIRED_PACKAGES.items() if importlib.util.find_spec(module) is None]

    def ensureDependencies(self) -> None:
        """Install the Python packages the algorithms need into Slicer's Python, once."""
        missing = self.missingPackages()
        if not missing:
            return
        if not slicer.app.commandOptions().testingEnabled and not slicer.util.confirmOkCancelDisplay(
                f"HOSciatic needs these Python packages: {', '.join(missing)}. Install them now (internet access "
                "required, takes a minute)?"):
            raise InputError("The required Python packages are not installed; the step was not run.")
        try:
            slicer.util.pip_install(" ".join(missing))
        except subprocess.CalledProcessError as error:
            # pip's own message is in the Python console; its command line is no advice.
            raise InputError(f"Installing {', '.join(missing)} failed (pip ended with status {error.returncode}; its "
                             "message is in the Python console). Check the internet access (or the proxy "
                             "settings), or install them from the Python console with slicer.util.pip_install."
                             ) from None
        # Packages installed while Slicer runs are found only once the import caches are renewed.
        importlib.invalidate_caches()
        stillMissing = self.missingPackages()
        if stillMissing:
            raise InputError(f"Installing {', '.join(stillMissing)} failed; see the Python console for pip's message, "
                             "or install them from the Python console with slicer.util.pip_install.")

    @property
    def analysis(self):
        if self._analysis is None or self._analysis.scene is not slicer.mrmlScene:
            from HOSciaticModuleLib.pipeline import HOSciaticAnalysis

            self._analysis = HOSciaticAnalysis(slicer.mrmlScene)
        return self._analysis

    def segmentOssifications(self, p, progress=None):
        outputs = self.analysis.segment_ossifications(
            p.ctVolume, roi_node=p.roi, native_bone_segmentation_node=p.nativeBoneSegmentation,
            bone_threshold_hu=p.boneThresholdHU, min_island_ml=p.minIslandMl,
            segmentation_node=p.segmentation, islands_table_node=p.islandsTable, progress=progress)
        if self._goneWithScene(outputs.segmentation_node, outputs.islands_table_node):
            return outputs
        p.segmentation = outputs.segmentation_node
        p.islandsTable = outputs.islands_table_node
        outputs.segmentation_node.CreateClosedSurfaceRepresentation()
        slicer.util.setSliceViewerLayers(background=p.ctVolume, fit=False)
        self._latest.segmented(outputs)
        return outputs

    def traceNerve(self, p, progress=None):
        from HOSciaticModuleLib.pipeline import centreline_output, stations_output

        volume = p.mrVolume if p.modality == "mr" else p.ctVolume
        if volume is None:
            raise InputError("Select the MR volume to trace the nerve on (or set the modality to CT)."
                             if p.modality == "mr" else "Select the CT volume.")
        outputs = self.analysis.trace_nerve(
            volume, p.seeds, side=p.side, modality=p.modality, segmentation_node=p.segmentation,
            centreline_node=self._sideNode(p.centreline, centreline_output(p.side)),
            stations_table_node=self._sideNode(p.stationsTable, stations_output(p.side)),
            bone_threshold_hu=p.boneThresholdHU, progress=progress)
        if self._goneWithScene(outputs.segmentation_node, outputs.centreline_node):
            return outputs
        p.segmentation = outputs.segmentation_node
        p.centreline = outputs.centreline_node
        p.stationsTable = outputs.stations_table_node
        outputs.segmentation_node.CreateClosedSurfaceRepresentation()
        self._latest.traced(p.side, outputs)
        return outputs

    def computeContact(self, p, progress=None):
        from HOSciaticModuleLib.pipeline import centreline_output, chart_output, stations_output

        outputs = self.analysis.compute_contact(
            p.segmentation, self._sideNode(p.centreline, centreline_output(p.side)),
            side=p.side, tolerance_mm=p.contactToleranceMm, contact_table_node=p.contactTable,
            stations_table_node=self._sideNode(p.stationsTable, stations_output(p.side)),
            chart_node=self._sideNode(p.chart, chart_output(p.side)),
            islands_table_node=p.islandsTable, bone_threshold_hu=p.boneThresholdHU, progress=progress)
        if self._goneWithScene(outputs.contact_table_node, outputs.centreline_node):
            return outputs
        p.contactTable = outputs.contact_table_node
        p.centreline = outputs.centreline_node
        if outputs.islands_table_node is not None:
            p.islandsTable = outputs.islands_table_node
        p.stationsTable = outputs.stations_table_node
        p.chart = outputs.chart_node
        self._latest.measured(p.side, outputs)
        return outputs

    def currentWarnings(self, p) -> list:
        """Warnings of the current HO segmentation, nerve tracing and contact."""
        return self.analysis.recorded_warnings(p.segmentation, p.centreline)

    def analyzeAll(self, p, progress=None):
        from HOSciaticModuleLib.progress import report, sub_progress

        if p.ctVolume:
            self.segmentOssifications(p, sub_progress(progress, 0.0, 0.5))
            # A cancel (or a scene closed) during the HO step's last report stops here,
            # before the next step reads inputs the close took away.
            report(progress, 0.5, "Tracing the nerve")
        self.traceNerve(p, sub_progress(progress, 0.5, 0.8))
        if p.ctVolume:
            self.computeContact(p, sub_progress(progress, 0.8, 1.0))

    def closestPoint(self, p):
        """The nerve's point closest to HO: exact from this session's contact, else (a
        scene saved earlier) the centreline station nearest to HO."""
        from HOSciaticModuleLib import scene as scene_io

        contact = self._latest.contact_of(p.side)
        if contact is not None and contact.contact.closest_points_ras is not None:
            return contact.contact.closest_points_ras[0]
        curve = self.sideCentreline(p)
        nearest = scene_io.station_nearest_to_ho(curve) if curve else None
        if nearest is None:
            raise InputError("Compute contact first (there is no HO near this nerve otherwise).")
        return nearest

    def islandCentre(self, p, row: int):
        """The centre of mass of the island on ``row`` of the HO islands table."""
        return self.analysis.island_centre(p.segmentation, p.islandsTable, row)

    def contactRowClosestPoint(self, p, row: int):
        """The nerve's point closest to the HO of ``row`` of the contact table."""
        return self.analysis.contact_row_closest_point(p.contactTable, row)

    def maxEncasementPoint(self, p):
        from HOSciaticModuleLib import scene as scene_io

        curve = self.sideCentreline(p)
        values = scene_io.curve_measurement(curve, "encasement_deg") if curve else None
        if values is None or len(values) == 0:
            raise InputError(f"Compute contact for the {p.side} nerve first: its centreline has no encasement values "
                             "yet.")
        points = scene_io.control_points_world(curve)
        return points[int(values.argmax())]

    def sideCentreline(self, p):
        """The centreline of the nerve of the panel's side (the selected curve is the last
        one a step made, perhaps the other side's), found by name or by its role tag."""
        from HOSciaticModuleLib.pipeline import centreline_output

        output = centreline_output(p.side)
        return self._sideNode(p.centreline, output) or self.analysis.output_node(*output)

    def sideChart(self, p):
        """The encasement chart of the nerve of the panel's side."""
        from HOSciaticModuleLib.pipeline import chart_output

        output = chart_output(p.side)
        chart = self._sideNode(p.chart, output) or self.analysis.output_node(*output)
        if chart is None:
            raise InputError(f"Compute contact for the {p.side} nerve first: it has no chart yet.")
        return chart

    def exportResults(self, p, progress=None):
        """Write the result files of the analysis into the export folder: this session's,
        or the one a reloaded scene holds. A cancellation (from ``progress``) leaves the
        folder as it was."""
        from HOSciaticModuleLib import export
        from HOSciaticModuleLib.progress import report

        folder = pathlib.Path(str(p.exportDirectory)) if p.exportDirectory else None
        if folder is None or str(folder) in ("", "."):
            raise InputError("Choose an export folder first.")
        oss, nerves, contacts, staleWarnings = self._latest.current(slicer.mrmlScene)
        if oss is None and not nerves and p.segmentation:
            # The steps ran in an earlier session: the saved scene holds their results.
            oss, nerves, contacts = self.analysis.analysis_from_scene(
                p.segmentation, tolerance_mm=p.contactToleranceMm, bone_threshold_hu=p.boneThresholdHU,
                reference_volume_node=p.ctVolume)
        if oss is None and not nerves:
            raise InputError("Nothing to export yet: run the analysis first.")
        volume = p.ctVolume or p.mrVolume
        inputInfo = {"image": volume.GetName() if volume else None, "modality": p.modality}
        if p.modality == "mr" and p.mrVolume:
            inputInfo["nerve_image"] = p.mrVolume.GetName()
        export.check_not_another_images_results(folder, inputInfo["image"])
        # The HO and contact settings are the run's when the HO step ran (on the CT); a
        # nerve traced alone on an MR used none of them.
        parameters = export.default_parameters(p.boneThresholdHU, p.minIslandMl, p.contactToleranceMm,
                                               "ct" if oss is not None else p.modality)
        warnings = (list(oss.result.warnings) if oss is not None else []) + staleWarnings
        document = export.metrics_document(inputInfo, parameters, oss, nerves, contacts, warnings)
        export.publish(folder, lambda staging: export.write_results(
            staging, slicer.mrmlScene, p.segmentation, nerves, document, progress=progress))
        report(progress, 1.0, f"Results written to {folder}", final=True)
        logging.info(f"HOSciatic results written to {folder}")


#
# HOSciaticModuleTest
#
class HOSciaticModuleTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_HOSciaticModuleChain()

    def test_HOSciaticModuleChain(self):
        """Segment, trace and measure on a synthetic hip CT; the same body runs under pytest."""
        from HOSciaticModuleLib.selftest import run_self_test

        self.delayDisplay("Running the HOSciatic chain on a synthetic hip CT")
        HOSciaticModuleLogic().ensureDependencies()
        figures = run_self_test(slicer.mrmlScene)
        self.delayDisplay(f"Test passed: {figures}")
