"""What the CLI does when the user presses Ctrl-C or its reader goes away.

Ctrl-C ends the command with exit status 130 and one line, no traceback; a command that
was following work it submitted says that the work goes on and how to see or stop it.
A closed output pipe (`ccaa sessions | head -1`) ends it quietly with status 141, as a
process killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import os
import sys

from services.cli.exits import BROKEN_PIPE, INTERRUPTED
from typing import Callable


_going_on: list[str] = []


def going_on(text: str) -> None:
    """What goes on without the CLI if it is interrupted from now on (said on Ctrl-C)."""
    _going_on[:] = [text]


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt:
        print("\nccaa: interrupted" + (f"; {_going_on[0]}" if _going_on else ""),
              file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # nothing more can be written, and Python would complain at exit while flushing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
