"""Exceptions that carry a message meant for the user.

The command line prints :class:`InputError` messages as one paragraph and exits
with status 2; the Slicer panel shows them in an error dialog. Any other
exception is a defect of the program, not of the input.
"""

import math


class InputError(ValueError):
    """The input cannot be analysed; the message says what was wrong and what to do."""


class AnalysisCancelled(RuntimeError):
    """The user cancelled a running step; no output was changed."""


def as_number(value, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` (a setting given from the Python console, say) as a float between
    ``low`` and ``high``; None, True/False, text that is no number, NaN, infinity or a
    number out of that range is refused with the setting's name."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"{what} must be a number; got {value!r}.")
    if not low <= number <= high:
        raise InputError(f"{what} must be between {low:g} and {high:g}; got {value!r}.")
    return number
