"""The analysis steps switch NumPy's 2 MB pages off, and its matrix products to one
thread, while they run, and only then."""

import threading

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


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_matrix_products_on_one_thread_give_the_same_bits_and_the_setting_comes_back():
    rng = np.random.default_rng(9)
    points = rng.normal(size=(300_000, 3)) * 100.0
    matrix = np.array([[0.0, -0.8, 0.1], [0.8, 0.0, 0.0], [0.0, 0.1, 1.5]])
    before = _blas_threads()
    expected = points @ matrix.T
    with memorypages.single_threaded_blas():
        assert all(threads == 1 for threads in _blas_threads())
        np.testing.assert_array_equal(points @ matrix.T, expected)
    assert _blas_threads() == before


def test_steps_overlapping_on_two_threads_give_the_host_its_setting_back(numpy_pages, monkeypatch):
    # The first step leaves while the second runs: the second keeps ordinary pages, and
    # the host gets its own setting back when the second leaves (each step putting back
    # what it found left the host without 2 MB pages for good).
    monkeypatch.delenv(memorypages.NUMPY_SETTING, raising=False)
    multiarray._set_madvise_hugepage(True)
    first_inside, second_inside, first_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with memorypages.small_memory_pages():
            first_inside.set()
            second_inside.wait(10)
        first_left.set()

    def second():
        first_inside.wait(10)
        with memorypages.small_memory_pages():
            second_inside.set()
            first_left.wait(10)
            seen["after the first left"] = multiarray._get_madvise_hugepage()
        seen["after both left"] = multiarray._get_madvise_hugepage()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert seen == {"after the first left": False, "after both left": True}


def test_matrix_products_are_set_to_one_thread_by_the_main_thread_alone():
    # A count set or put back from another thread did not take in OpenBLAS: a step
    # there, overlapping one on the main thread, could leave the host on one thread.
    before = _blas_threads()
    seen = []

    def worker():
        with memorypages.single_threaded_blas():
            seen.append(_blas_threads())

    with memorypages.single_threaded_blas():
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(20)
        with memorypages.single_threaded_blas():
            assert all(threads == 1 for threads in _blas_threads())
        assert all(threads == 1 for threads in _blas_threads())
    assert _blas_threads() == before and len(seen) == 1
    worker_alone = threading.Thread(target=worker)
    worker_alone.start()
    worker_alone.join(20)
    assert seen[1] == before and _blas_threads() == before
