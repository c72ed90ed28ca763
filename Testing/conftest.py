"""Shared fixtures: a real MRML scene built as the Slicer application builds it."""

import pytest

from HOSciaticModuleLib.mrml_app import create_headless_slicer


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
