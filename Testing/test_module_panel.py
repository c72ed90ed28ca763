"""Static checks of the Slicer module panel (the Slicer application is not available here).

* the .ui file is well-formed Qt Designer XML;
* every ``self.ui.<name>`` the module uses exists in the .ui, and every method or
  property used on it exists for that widget class (table below, from the Qt, CTK and
  Slicer class references);
* every parameter-node field is bound to one widget of a class its type can connect to
  (Slicer's parameterNodeWrapper GUI connectors), with matching node types;
* CMakeLists lists every script and resource; the module imports only what Slicer has.
"""

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "HOSciaticModule"
MODULE_FILE = MODULE_DIR / "HOSciaticModule.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "HOSciaticModule.ui"

# Methods/properties used on each widget class, all present in Slicer 5.8's Qt 5, CTK and MRML widgets.
WIDGET_API = {
    "QPushButton": {"connect", "enabled", "setVisible", "text", "toolTip"},
    "QProgressBar": {"value", "setVisible"},
    "QLabel": {"text"},
    "QDoubleSpinBox": {"value", "connect"},
    "QComboBox": {"currentIndex", "connect"},
    "qMRMLNodeComboBox": {"connect", "currentNode", "setCurrentNode", "setMRMLScene"},
    "qMRMLTableView": {"setMRMLTableNode", "setMRMLScene", "connect", "sortFilterProxyModel"},
    "qSlicerMarkupsPlaceWidget": {"setCurrentNode", "setMRMLScene"},
    "ctkDirectoryButton": {"directory", "connect"},
    "ctkCollapsibleButton": {"collapsed"},
}
# Type of a parameter-node field -> widget classes Slicer's GUI connectors accept for it.
CONNECTABLE = {
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QComboBox", "QLineEdit"},
    "bool": {"QCheckBox", "QPushButton"},
    "pathlib.Path": {"ctkDirectoryButton", "ctkPathLineEdit"},
    "node": {"qMRMLNodeComboBox"},
}
SLICER_MODULES = {"qt", "ctk", "vtk", "slicer", "HOSciaticModuleLib"}


@pytest.fixture(scope="module")
def ui_widgets():
    tree = ElementTree.parse(UI_FILE)
    root = tree.getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.find("class").text == "HOSciaticModule"
    widgets = {}
    for widget in root.iter("widget"):
        name = widget.get("name")
        assert name not in widgets, f"duplicate widget name {name}"
        parameter = None
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameter = prop.find("string").text
        node_types = [s.text for p in widget.findall("property") if p.get("name") == "nodeTypes"
                      for s in p.iter("string")]
        widgets[name] = {"class": widget.get("class"), "parameter": parameter, "nodeTypes": node_types}
    custom = {c.find("class").text for c in root.iter("customwidget")}
    for info in widgets.values():
        assert info["class"].startswith("Q") or info["class"] in custom, info["class"]
    return widgets


@pytest.fixture(scope="module")
def module_tree():
    return ast.parse(MODULE_FILE.read_text())


def _ui_uses(tree):
    """(widget name, member) for every ``self.ui.<name>.<member>`` and bare ``self.ui.<name>``."""
    uses = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui" \
                and isinstance(node.value.value.value, ast.Name) and node.value.value.value.id == "self":
            uses.add((node.value.attr, node.attr))
    return uses


def test_ui_names_and_methods_exist(ui_widgets, module_tree):
    uses = _ui_uses(module_tree)
    assert len(uses) > 20
    for name, member in uses:
        assert name in ui_widgets, f"self.ui.{name} is not in the .ui file"
        widget_class = ui_widgets[name]["class"]
        assert member in WIDGET_API.get(widget_class, set()), f"{widget_class}.{member} (self.ui.{name})"


def _parameter_fields(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list):
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class")


def test_every_parameter_is_bound_to_a_fitting_widget(ui_widgets, module_tree):
    fields = _parameter_fields(module_tree)
    assert len(fields) >= 15
    bound = {}
    for name, info in ui_widgets.items():
        if info["parameter"]:
            assert info["parameter"] not in bound, f"{info['parameter']} bound twice"
            bound[info["parameter"]] = info
    assert set(bound) == set(fields), set(fields) ^ set(bound)
    for field, annotation in fields.items():
        info = bound[field]
        if annotation.startswith("vtkMRML"):
            assert info["class"] in CONNECTABLE["node"], field
            assert info["nodeTypes"] == [annotation], (field, info["nodeTypes"])
            continue
        base = re.match(r"Annotated\[(\w+)", annotation)
        kind = base.group(1) if base else annotation
        assert info["class"] in CONNECTABLE[kind], (field, kind, info["class"])
        if info["class"] == "QComboBox":
            assert "Choice(" in annotation, f"{field}: a combo box needs a Choice annotation"


def test_scene_is_passed_to_every_mrml_widget(ui_widgets):
    root = ElementTree.parse(UI_FILE).getroot()
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml_widgets = {name for name, info in ui_widgets.items()
                    if info["class"] in ("qMRMLNodeComboBox", "qMRMLTableView", "qSlicerMarkupsPlaceWidget")}
    assert mrml_widgets <= receivers, mrml_widgets - receivers


def test_cmake_lists_every_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = set(re.findall(r"\$\{MODULE_NAME\}Lib/(\w+\.py)", text))
    assert scripts == {p.name for p in (MODULE_DIR / "HOSciaticModuleLib").glob("*.py")}
    assert "${MODULE_NAME}.py" in text and "slicer_add_python_unittest" in text
    assert "Resources/UI/${MODULE_NAME}.ui" in text and "Resources/Icons/${MODULE_NAME}.png" in text
    assert (MODULE_DIR / "Resources" / "Icons" / "HOSciaticModule.png").is_file()
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer REQUIRED)",
                "add_subdirectory(HOSciaticModule)", "Slicer_EXTENSION_GENERATE_CONFIG"):
        assert key in top, key
    # Without these the package would carry Slicer's own licence and README.
    for key, name in (("EXTENSION_LICENSE_FILE", "LICENSE.txt"), ("EXTENSION_README_FILE", "README.md")):
        assert re.search(rf"set\({key} \$\{{CMAKE_CURRENT_SOURCE_DIR\}}/{re.escape(name)}\)", top), key
        assert (ROOT / name).is_file()


def test_module_imports_only_what_slicer_has(module_tree):
    import sys

    for node in ast.walk(module_tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert top in SLICER_MODULES or top in sys.stdlib_module_names, name


def test_module_heavy_imports_are_lazy(module_tree):
    """The module must load before scipy/scikit-image/edt are installed into Slicer."""
    light = {"HOSciaticModuleLib.defaults": set(), "HOSciaticModuleLib.errors": {"math"}}
    for node in module_tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("HOSciaticModuleLib"):
            assert node.module in light, node.module
    for module, allowed in light.items():
        tree = ast.parse((MODULE_DIR / (module.replace(".", "/") + ".py")).read_text())
        imported = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported <= allowed, (module, imported)
