"""Keeping a native library's chatter out of edgekit's output: some runtimes print straight to file descriptor 2 from
C++ (ExecuTorch's cpuinfo probe on x86: "Failed to open midr file ..."; ncnn's Vulkan loader), which no Python-level
redirect catches."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Send fd 2 to a scratch file for the block; the file is dropped afterwards (errors still raise normally)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedded interpreter): nothing to quiet
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
