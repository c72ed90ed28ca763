"""The ``hosciatic`` command's entry point: loading the libraries takes about a second,
and a Ctrl-C meanwhile is answered in one line, as later, not with a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("\nhosciatic: interrupted; no output was written.\n")
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
