"""Every ``python -m swinssl.<program>`` piped into a reader that stops early (``| head -1``) ends quietly, as
other command-line tools do. A leaf module, so the programs that write shards can use it without importing the
training CLI (which imports them back for the demo data)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """A closed stdout ends the program with exit code 1 and no traceback."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would fail again
        raise SystemExit(1) from None
