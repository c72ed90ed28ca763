"""Exceptions that carry a message meant for the user.

The command line prints :class:`InputError` messages as one paragraph and exits
with status 2; the Slicer panel shows them in an error dialog. Any other
exception is a defect of the program, not of the input.
"""


class InputError(ValueError):
    """The input cannot be analysed; the message says what was wrong and what to do."""


class AnalysisCancelled(RuntimeError):
    """The user cancelled a running step; no output was changed."""


def as_number(value, what: str) -> float:
    """``value`` (a setting given from the Python console, say) as a float; None, or
    text that is no number, is refused with the setting's name."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number; got {value!r}.") from None
