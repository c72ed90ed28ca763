"""Shared fixtures: a real MRML scene built as the Slicer application builds it."""

import pytest

from HOSciaticModuleLib.mrml_app import create_headless_slicer


@pytest.fixture
def slicer_scene():
    """A fresh scene with Slicer's module logics registered (no mocks)."""
    headless = create_headless_slicer()
    yield headless.scene
    headless.scene.Clear(True)
