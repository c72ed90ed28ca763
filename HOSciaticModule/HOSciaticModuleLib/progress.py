"""Progress reporting and cancellation shared by the command line and the panel.

Long steps accept ``progress``: a callable ``progress(fraction, message)`` with
``fraction`` in [0, 1]. The caller cancels by raising
:class:`~HOSciaticModuleLib.errors.AnalysisCancelled` from inside that callable.
"""

from __future__ import annotations

from typing import Callable, Optional

from .errors import AnalysisCancelled

ProgressCallback = Optional[Callable[[float, str], None]]


def report(progress: ProgressCallback, fraction: float, message: str, *, final: bool = False) -> None:
    """Forward a progress report if a callback was given. A ``final`` report comes once
    the step's outputs are written: a cancellation then comes too late to leave the
    scene as it was, so the step ends as done (a step after it stops at its first report)."""
    if progress is None:
        return
    try:
        progress(min(max(float(fraction), 0.0), 1.0), message)
    except AnalysisCancelled:
        if not final:
            raise


def sub_progress(progress: ProgressCallback, start: float, stop: float) -> ProgressCallback:
    """A callback that maps a step's own 0..1 range into [start, stop] of the parent."""
    if progress is None:
        return None

    def forward(fraction: float, message: str) -> None:
        progress(start + (stop - start) * min(max(float(fraction), 0.0), 1.0), message)

    return forward
