"""Keep native libraries' own prints off the console: an fd-level stderr redirect.

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." when it builds an interpreter, ncnn its
parse errors and, on a machine whose Vulkan loader finds no driver, loader warnings. They are C-level writes to fd 2,
which ``sys.stderr`` redirection does not catch. Kept to the load calls only: an error the library raises as an
exception still reaches the caller.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send fd 2 to /dev/null for the block, then restore it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 (a daemon) or a closed stream: nothing to protect
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
