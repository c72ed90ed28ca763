"""A Slicer scene without the Slicer desktop, built the way the application builds it.

Inside the Slicer application the scene and the module logics already exist
(``slicer.mrmlScene``, ``slicer.modules.<name>.logic()``) and this module is not
used. For the command line and the tests it creates a ``vtkMRMLScene`` with a
``vtkSlicerApplicationLogic`` and registers the real Segmentations, Volumes,
Markups, Tables, Plots, Models, Colors and Subject-hierarchy logics on it, then
exposes them where ``slicer.util`` helpers look for them.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import types
from dataclasses import dataclass


@dataclass
class HeadlessSlicer:
    scene: object
    application_logic: object
    logics: dict

    def logic(self, name: str):
        return self.logics[name]


_LIVE: list = []

_MODULE_LOGIC_CLASSES = {
    "Colors": "vtkSlicerColorLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Tables": "vtkSlicerTablesLogic",
    "Plots": "vtkSlicerPlotsLogic",
    "Models": "vtkSlicerModelsLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}


def create_headless_slicer(expose_as_slicer_globals: bool = True) -> HeadlessSlicer:
    """Create a scene + application logic with Slicer's module logics registered.

    With ``expose_as_slicer_globals`` the scene becomes ``slicer.mrmlScene`` and the
    logics ``slicer.modules.<name>.logic()``, as ``slicer.util`` expects -- unless the
    real application is running, which is never overridden.
    """
    import slicer
    from vtkmodules.vtkCommonCore import vtkCollection, vtkOutputWindow

    output = vtkOutputWindow()
    output.SetDisplayModeToAlwaysStdErr()
    vtkOutputWindow.SetInstance(output)

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)

    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    application_logic.GetColorLogic().SetMRMLScene(scene)
    application_logic.GetColorLogic().AddDefaultColorNodes()
    application_logic.SetSliceLogics(vtkCollection())
    application_logic.SetViewLogics(vtkCollection())

    logics = {}
    for name, class_name in _MODULE_LOGIC_CLASSES.items():
        if name == "Colors":
            logics[name] = application_logic.GetColorLogic()
            continue
        logic = getattr(slicer, class_name)()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(application_logic)
        application_logic.SetModuleLogic(name, logic)
        logics[name] = logic

    # Reading scene bundles (.mrb) goes through the data I/O manager and its cache,
    # as in the application.
    cache_directory = tempfile.mkdtemp(prefix="hosciatic-cache-")
    atexit.register(shutil.rmtree, cache_directory, True)
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    remote_io.SetMRMLApplicationLogic(application_logic)
    remote_io.GetCacheManager().SetRemoteCacheDirectory(cache_directory)
    data_io_logic = slicer.vtkDataIOManagerLogic()
    data_io_logic.SetMRMLScene(scene)
    data_io_logic.SetMRMLApplicationLogic(application_logic)
    data_io_logic.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    remote_io.AddDataIOToScene()
    logics["RemoteIO"] = remote_io
    logics["DataIOManager"] = data_io_logic

    headless = HeadlessSlicer(scene, application_logic, logics)
    # The module logics observe the scene; if they were freed while the scene lives
    # on (a caller keeping only ``.scene``), the next node event would reach freed
    # memory. Keep them for the life of the process.
    _LIVE.append(headless)
    if expose_as_slicer_globals and not hasattr(slicer, "app"):
        slicer.mrmlScene = scene
        slicer.modules = types.SimpleNamespace(**{
            name.lower(): types.SimpleNamespace(logic=(lambda logic=logic: logic)) for name, logic in logics.items()
        })
    return headless
