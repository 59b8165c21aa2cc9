"""Session fixtures for tests that need a board (mark them ``@pytest.mark.board``):

    def test_bench_on_the_board(arm64_board):
        result = run_edgekit("bench", "--target", arm64_board.url, "--ssh-config", arm64_board.config_path)

``ssh_board`` is the host's sshd on loopback (x86, real speed); ``arm64_board`` is an emulated arm64
Debian with python3 and no numpy or onnxruntime. Both are ``LoopbackSshd`` objects (see sshd.py).
``x86_target`` and ``arm64_target`` are those boards with edgekit's venv set up for ONNX Runtime from this
machine's wheels, as ``(url, TargetOptions)``; a test that needs another runtime sets up a cache folder of its own
rather than changing theirs.

A board whose tools are missing skips its tests with a line naming what to install, except where
EDGEKIT_REQUIRE_BOARDS=1 (CI): there it fails them, so the ARM tests can never be skipped silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from . import arm64
from .sshd import SSHD, LoopbackSshd

REQUIRE_BOARDS = "EDGEKIT_REQUIRE_BOARDS"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for lack of a board, or fail it where boards are required."""
    if os.environ.get(REQUIRE_BOARDS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_BOARDS}=1: board tests may not be skipped)", pytrace=False)
    pytest.skip(reason)


def loopback_problem() -> str | None:
    """Why the host's own sshd cannot serve as a board here, as one line; None when it can."""
    if not Path(SSHD).is_file():
        return f"no {SSHD}: apt-get install openssh-server"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"no {tool}: apt-get install openssh-client"
    return None


@pytest.fixture(scope="session")
def ssh_board(tmp_path_factory):
    """The host's sshd on 127.0.0.1 at a free port, logged in to as the current user."""
    problem = loopback_problem()
    if problem:
        unavailable(problem)
    board = LoopbackSshd(tmp_path_factory.mktemp("ssh-board"), alias="x86-board")
    board.start()
    yield board
    board.stop()


@pytest.fixture(scope="session")
def arm64_board(tmp_path_factory):
    """An emulated arm64 Debian board as root on 127.0.0.1 (its root is built once and cached)."""
    problem = loopback_problem() or arm64.prerequisite_problem()
    if problem:
        unavailable(problem)
    try:
        board = arm64.arm64_board(tmp_path_factory.mktemp("arm64-board"))
    except arm64.RootUnavailable as error:
        unavailable(f"no arm64 root: {error}")
    board.start()
    yield board
    board.stop()


@pytest.fixture(scope="session")
def x86_target(ssh_board, tmp_path_factory):
    """The x86 board with edgekit's venv (ONNX Runtime) in a private cache folder, never the home of the user
    running the tests."""
    from edgekit.targets import TargetOptions
    from edgekit.targets.setup import setup_target

    url = f"{ssh_board.url}{tmp_path_factory.mktemp('x86-cache')}/cache"
    options = TargetOptions(ssh_config=ssh_board.config_path)
    setup_target(url, ["ort-cpu"], from_host=True, progress=False, options=options)
    return url, options


@pytest.fixture(scope="session")
def arm64_target(arm64_board):
    """The emulated arm64 board with edgekit's venv (ONNX Runtime) in its default cache folder."""
    from edgekit.targets import TargetOptions
    from edgekit.targets.setup import setup_target

    options = TargetOptions(ssh_config=arm64_board.config_path)
    setup_target(arm64_board.url, ["ort-cpu"], from_host=True, progress=False, options=options)
    return arm64_board.url, options
