"""Shared fixtures: a real MRML scene built as the Slicer application builds it; and
phantoms generated once per set of arguments in a test run."""

import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest

import HOSciaticModuleLib.phantom as phantom_module
from HOSciaticModuleLib.mrml_app import create_headless_slicer

# The folder where a test run keeps the phantoms it generated, shared by its worker
# processes (they inherit the variable from the process that starts them).
PHANTOM_FOLDER_VARIABLE = "HOSCIATIC_TEST_PHANTOMS"
_generate_phantom = phantom_module.generate_phantom


def pytest_configure(config):
    if not hasattr(config, "workerinput") and PHANTOM_FOLDER_VARIABLE not in os.environ:
        config.hosciatic_phantom_folder = tempfile.mkdtemp(prefix="hosciatic-test-phantoms-")
        os.environ[PHANTOM_FOLDER_VARIABLE] = config.hosciatic_phantom_folder


def pytest_unconfigure(config):
    folder = getattr(config, "hosciatic_phantom_folder", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(PHANTOM_FOLDER_VARIABLE, None)


def generate_phantom_once(*args, **kwargs):
    """``generate_phantom``, run at most twice for each set of arguments in a test run:
    painting a phantom takes seconds and most tests start from a few of them. One asked
    for again is kept in the run's folder (one asked for once is not: the folder would
    hold gigabytes), and every call gets a copy of its own, so a test that changes its
    phantom's arrays leaves the next test's alone. The pickled bytes of the arguments
    and of the module's settings name the phantom: equal ones pickled differently only
    generate it again."""
    folder = os.environ.get(PHANTOM_FOLDER_VARIABLE)
    if folder is None:
        return _generate_phantom(*args, **kwargs)
    # The module's own settings too: tests change its tissue values.
    settings = sorted((name, value) for name, value in vars(phantom_module).items() if name.isupper())
    key = hashlib.sha256(pickle.dumps((args, sorted(kwargs.items()), settings), protocol=4)).hexdigest()
    path = Path(folder) / f"{key}.pickle"
    try:
        with open(path, "rb") as stored:
            return pickle.load(stored)
    except FileNotFoundError:
        pass
    # Given as every later call gets it: read back from its pickled bytes.
    pickled = pickle.dumps(_generate_phantom(*args, **kwargs), protocol=5)
    asked_before = Path(folder) / f"{key}.asked"
    if asked_before.exists():
        # Written whole, then renamed: another worker never reads a part.
        partial = path.with_name(f"{key}.{os.getpid()}.partial")
        partial.write_bytes(pickled)
        os.replace(partial, path)
    else:
        asked_before.touch()
    return pickle.loads(pickled)


# Before the test modules import it.
phantom_module.generate_phantom = generate_phantom_once


@pytest.fixture
def slicer_scene():
    """A fresh scene with Slicer's module logics registered (no mocks). The IDs Slicer
    makes up for new segments are random, seeded from the clock: seeded here, a test
    depending on them fails every time rather than once in a thousand runs."""
    import slicer

    slicer.vtkSegmentation.GetSegmentIDRandomSequenceInstance().SetSeed(1)
    headless = create_headless_slicer()
    yield headless.scene
    headless.scene.Clear(True)
