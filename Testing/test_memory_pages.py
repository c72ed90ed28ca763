"""The analysis steps switch NumPy's 2 MB pages off while they run, and only then."""

import numpy as np
import pytest

from HOSciaticModuleLib import memorypages

multiarray = np._core.multiarray


@pytest.fixture
def numpy_pages():
    """NumPy's setting as a test found it, given back after."""
    before = multiarray._get_madvise_hugepage()
    yield
    multiarray._set_madvise_hugepage(before)


@pytest.mark.parametrize("host_setting", [True, False])
def test_ordinary_pages_inside_and_the_host_setting_given_back(numpy_pages, monkeypatch, host_setting):
    monkeypatch.delenv(memorypages.NUMPY_SETTING, raising=False)
    multiarray._set_madvise_hugepage(host_setting)
    with memorypages.small_memory_pages():
        assert multiarray._get_madvise_hugepage() is False
    assert multiarray._get_madvise_hugepage() is host_setting
    # Given back when the step fails too.
    with pytest.raises(ValueError):
        with memorypages.small_memory_pages():
            raise ValueError("a failing step")
    assert multiarray._get_madvise_hugepage() is host_setting


def test_a_setting_the_user_chose_is_left_alone(numpy_pages, monkeypatch):
    monkeypatch.setenv(memorypages.NUMPY_SETTING, "1")
    multiarray._set_madvise_hugepage(True)
    with memorypages.small_memory_pages():
        assert multiarray._get_madvise_hugepage() is True


def test_the_analysis_steps_run_with_ordinary_pages(numpy_pages, monkeypatch, slicer_scene):
    from HOSciaticModuleLib import ossification
    from HOSciaticModuleLib import scene as scene_io
    from HOSciaticModuleLib.phantom import generate_phantom
    from HOSciaticModuleLib.pipeline import HOSciaticAnalysis

    monkeypatch.delenv(memorypages.NUMPY_SETTING, raising=False)
    multiarray._set_madvise_hugepage(True)
    seen = []
    original = ossification.segment_ossifications

    def spy(*args, **kwargs):
        seen.append(multiarray._get_madvise_hugepage())
        return original(*args, **kwargs)

    monkeypatch.setattr(ossification, "segment_ossifications", spy)
    phantom = generate_phantom(spacing_ijk=(1.0, 1.0, 2.0))
    volume = scene_io.volume_node_from_array(slicer_scene, phantom.image, phantom.geometry, "CT")
    HOSciaticAnalysis(slicer_scene).segment_ossifications(volume)
    assert seen == [False] and multiarray._get_madvise_hugepage() is True
