"""Progress reporting and cancellation shared by the command line and the panel.

Long steps accept ``progress``: a callable ``progress(fraction, message)`` with
``fraction`` in [0, 1]. The caller cancels by raising
:class:`~HOSciaticModuleLib.errors.AnalysisCancelled` from inside that callable.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Optional[Callable[[float, str], None]]


def report(progress: ProgressCallback, fraction: float, message: str) -> None:
    """Forward a progress report if a callback was given."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def sub_progress(progress: ProgressCallback, start: float, stop: float) -> ProgressCallback:
    """A callback that maps a step's own 0..1 range into [start, stop] of the parent."""
    if progress is None:
        return None

    def forward(fraction: float, message: str) -> None:
        progress(start + (stop - start) * min(max(float(fraction), 0.0), 1.0), message)

    return forward
