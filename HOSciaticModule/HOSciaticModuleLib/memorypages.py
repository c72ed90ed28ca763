"""Process-wide settings the analysis's steps run under for speed: the kind of memory
pages its large arrays are given, and the threads of NumPy's matrix products (see
:func:`single_threaded_blas`). Each is restored when a step ends.

On Linux, NumPy asks the kernel for 2 MB pages (transparent huge pages, through
``madvise``) for every large array. Many of the analysis's large arrays are masks and
label maps created empty and then written in a few places (the islands, the
outgrowths cut from a bone, the set-apart parts): with 2 MB pages each such write
makes the kernel clear and map 2 MB where 4 kB would do. Measured on the benchmark's
512 x 512 x 400 CT (2-core VM, six runs each way): ``hosciatic analyze`` peaked at
0.75 GB instead of 0.82 GB and its slowest HO step took 1.60 s instead of 1.85 s
(medians 1.49 and 1.52 s); the HO step called from Python on a CT read into an array
of its own took 1.49-1.57 s instead of 1.82-1.93 s.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import numpy as np

#: NumPy's own setting: when the user set it, it is left as they chose.
NUMPY_SETTING = "NUMPY_MADVISE_HUGEPAGE"


def _hugepage_switch():
    """NumPy's switch for 2 MB pages (returns the previous state), or None where this
    NumPy has none."""
    for package in ("_core", "core"):
        switch = getattr(getattr(getattr(np, package, None), "multiarray", None), "_set_madvise_hugepage", None)
        if switch is not None:
            return switch
    return None


class SharedSetting:
    """A process-wide setting, changed while any thread is inside the context and put
    back when the last one leaves. ``change()`` makes the change and returns what puts
    it back (or None when it changes nothing). Each thread putting back what it found
    on entering would, with two steps overlapping on two threads (Slicer's panel and a
    console call), restore the first one's entry state under the second and leave the
    host with the second's setting for good."""

    def __init__(self, change):
        self._change = change
        self._lock = threading.Lock()
        self._inside = 0
        self._put_back = None

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._inside == 0:
                self._put_back = self._change()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._put_back is not None:
                    self._put_back()
                    self._put_back = None


def _ordinary_pages():
    switch = _hugepage_switch()
    if switch is None or NUMPY_SETTING in os.environ:
        return None
    previous = switch(False)
    return lambda: switch(previous)


#: Arrays created inside the block get the kernel's ordinary pages; NumPy's setting is
#: restored on leaving, so a host application (Slicer) keeps its own.
small_memory_pages = SharedSetting(_ordinary_pages)


def single_threaded_blas():
    """A context in which NumPy's and SciPy's matrix products run on the calling thread
    alone (``threadpoolctl``), on the main thread; elsewhere, or where ``threadpoolctl``
    is not installed, it changes nothing.

    The analysis's products are point arrays times 3 x 3 matrices (voxel indices to RAS
    and back, the midline's fits): milliseconds of work, which OpenBLAS splits over every
    core. With another core busy (edt's threads, the CT's compression, the surface
    models, another process) the second half waits for it: 200 000 points took 60-80 ms
    on 2 cores instead of 4-14 ms on one. Each element of a product is computed alike on
    any thread, so the results are the same to the bit. Only the main thread, where the
    command line and Slicer run the steps, sets the count: OpenBLAS (0.3.31) did not take
    a count set from another thread, nor one put back from another thread (the host was
    left on one thread), so a step on a worker thread, or two overlapping, could not
    put the host's setting back."""
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    try:
        import threadpoolctl
    except ImportError:
        return contextlib.nullcontext()
    # The controller kept by threadpoolctl (made again when modules were imported since)
    # spares reading where every loaded library lies at each step: 4-20 ms with Slicer's
    # libraries loaded, up to a twentieth of a metrics recompute.
    cached_controller = getattr(threadpoolctl, "get_cached_controller", None)
    if cached_controller is None:
        return threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    return cached_controller().limit(limits=1, user_api="blas")


def running_inside(make_context):
    """Decorator: the function runs inside a fresh ``make_context()``."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with make_context():
                return function(*args, **kwargs)
        return wrapper
    return decorate


with_small_memory_pages = running_inside(small_memory_pages)
with_single_threaded_blas = running_inside(single_threaded_blas)
