#!/usr/bin/env python3
"""Build (or find) the cached arm64 root, then start each board once and time it: what .ci/boards runs
before the tests, so the first test does not pay the build. Standard library only, so the system python3
can run it before any virtual environment exists.

    python3 tests/rig/build_arm64_board.py            build if needed, check both boards
    python3 tests/rig/build_arm64_board.py --no-check build if needed only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, where the rig package lies

from rig import arm64  # noqa: E402
from rig.sshd import LoopbackSshd  # noqa: E402


def timed_board(board: LoopbackSshd) -> str:
    """Start ``board``, ask it for ``uname -m`` and stop it; a line saying how long each part took."""
    started = time.monotonic()
    board.start()
    try:
        ready = time.monotonic() - started
        answer = board.ssh("uname -m")
        if answer.returncode != 0 or answer.stdout.strip() != board.arch:
            raise SystemExit(f"{board.alias}: `uname -m` gave exit {answer.returncode} {answer.stdout!r} {answer.stderr!r}")
        command = time.monotonic() - started - ready
    finally:
        board.stop()
    return f"{board.alias}: ready in {ready:.1f} s, `uname -m` = {board.arch} in {command:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-check", action="store_true", help="build the root only; do not start the boards")
    options = parser.parse_args(argv)
    problem = arm64.prerequisite_problem()
    if problem:
        print(f"arm64 board: {problem}", file=sys.stderr)
        return 1
    started = time.monotonic()
    cached = arm64.is_built()
    root = arm64.ensure_root()
    print(f"arm64 root {root}: {'cached' if cached else 'built'} ({time.monotonic() - started:.1f} s)")
    if not options.no_check:
        print(timed_board(LoopbackSshd(alias="x86-board")))
        print(timed_board(arm64.arm64_board()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
