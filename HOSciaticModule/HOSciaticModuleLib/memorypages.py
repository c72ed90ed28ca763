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


@contextlib.contextmanager
def small_memory_pages():
    """Arrays created inside the block get the kernel's ordinary pages; NumPy's setting
    is restored on leaving, so a host application (Slicer) keeps its own."""
    switch = _hugepage_switch()
    if switch is None or NUMPY_SETTING in os.environ:
        yield
        return
    previous = switch(False)
    try:
        yield
    finally:
        switch(previous)


def single_threaded_blas():
    """A context in which NumPy's and SciPy's matrix products run on the calling thread
    alone (``threadpoolctl``; a context that changes nothing where it is not installed).

    The analysis's products are point arrays times 3 x 3 matrices (voxel indices to RAS
    and back, the midline's fits): milliseconds of work, which OpenBLAS splits over every
    core. With another core busy (edt's threads, the CT's compression, the surface
    models, another process) the second half waits for it: 200 000 points took 60-80 ms
    on 2 cores instead of 4-14 ms on one. Each element of a product is computed alike on
    any thread, so the results are the same to the bit."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
