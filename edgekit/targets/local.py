"""The ``local`` target: this machine and this Python, as bench and parity have always measured."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .. import files
from ..device import facts as device_facts
from ..errors import TargetError
from . import Completed, TargetAddress, TargetOptions


class LocalTarget:
    """This machine. Commands run as subprocesses; copies are atomic file copies."""

    def __init__(self, address: TargetAddress, options: TargetOptions | None = None):
        self._address = address

    @property
    def address(self) -> TargetAddress:
        return self._address

    @property
    def name(self) -> str:
        return self._address.name

    @property
    def cache_dir(self) -> str:
        return self._address.cache_dir

    def path(self, remote: str) -> Path:
        """A device path as a local one (``~`` expanded)."""
        return Path(os.path.expanduser(remote))

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None, doing: str = "") -> Completed:
        argv = [os.path.expanduser(arg) if arg.startswith("~/") else arg for arg in argv]
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        except FileNotFoundError as exc:
            raise TargetError(f"local: cannot run {argv[0]} ({exc.strerror}) while {doing or 'running a command'}") from exc
        except subprocess.TimeoutExpired:
            raise TargetError(f"local: {doing or argv[0]} did not finish within {timeout:.0f} s") from None
        return Completed(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))

    def put(self, local_files: Sequence[Path], remote_dir: str, *, doing: str = "") -> None:
        folder = self.path(remote_dir)
        for source in local_files:
            with files.atomic_path(folder / Path(source).name) as tmp:
                shutil.copyfile(source, tmp)

    def get(self, remote_path: str, local_path: Path, *, doing: str = "") -> Path:
        with files.atomic_path(local_path) as tmp:
            shutil.copyfile(self.path(remote_path), tmp)
        return Path(local_path)

    def facts(self) -> dict:
        found = device_facts.collect(str(self.path(self.cache_dir)))
        found["python"]["executable"] = sys.executable
        return found

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalTarget":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
