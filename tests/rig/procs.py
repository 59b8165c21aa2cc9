"""Process and mount bookkeeping for the boards, read from /proc (Linux only, like sshd and chroot).

A board must leave nothing behind, even when the test process is killed: each running board leaves a
record (listener pid, owner pid, their start times); the next board start reaps boards whose owner is gone.
Start times make the checks immune to pid reuse.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it is gone (or a zombie: dead,
    waiting for a parent to collect it, which no signal changes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for candidate in _all_pids():
        parent = _parent(candidate)
        if parent is not None:
            children.setdefault(parent, []).append(candidate)
    found, frontier = [], [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.extend(below)
        frontier.extend(below)
    return [pid for pid in found if start_time(pid) is not None]


def mount_namespace(pid: int) -> str | None:
    """The mount namespace of ``pid`` (e.g. 'mnt:[4026532201]'), or None when it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def private_namespace(namespace: str | None) -> str | None:
    """``namespace`` unless it is this process's or init's: killing "everything in the board's namespace"
    must never mean everything on the host (e.g. when read before ``unshare`` took effect)."""
    if namespace in (mount_namespace(os.getpid()), mount_namespace(1)):
        return None
    return namespace


def in_namespace(namespace: str | None) -> list[int]:
    """Every live process in the private mount namespace ``namespace`` (none for the host's own)."""
    namespace = private_namespace(namespace)
    if namespace is None:
        return []
    return [pid for pid in _all_pids() if mount_namespace(pid) == namespace and start_time(pid) is not None]


def kill_all(find_pids, timeout: float = 10.0) -> None:
    """SIGKILL what ``find_pids()`` returns until it returns nothing: a dying shell may fork once more."""
    deadline = time.monotonic() + timeout
    while pids := find_pids():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} survived SIGKILL for {timeout:.0f} s")
        time.sleep(0.05)


def mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount in this process's mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        # mountinfo escapes space, tab, newline and backslash in paths as octal
        point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), fields[4])
        found.append((point, fields[fields.index("-") + 1]))
    return found


def records_dir() -> Path:
    from .arm64 import cache_dir

    return cache_dir() / "boards"


def write_record(listener: int, namespace: str | None, workdir: Path, owns_workdir: bool) -> Path:
    """Note a running board, so a later start can stop it if this process dies without stopping it."""
    record = {
        "listener": listener,
        "listener_start": start_time(listener),
        "owner": os.getpid(),
        "owner_start": start_time(os.getpid()),
        "namespace": private_namespace(namespace),
        "workdir": str(workdir) if owns_workdir else None,
    }
    path = records_dir() / f"{listener}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def reap_orphaned_boards() -> list[int]:
    """Stop every board whose owner died (killed test run) and return their listener pids."""
    reaped = []
    for path in sorted(records_dir().glob("*.json")) if records_dir().is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if start_time(record["owner"]) == record["owner_start"]:
            continue  # its owner still runs it
        listener = record["listener"]
        if start_time(listener) == record["listener_start"]:
            namespace = record.get("namespace")
            kill_all(lambda listener=listener, namespace=namespace: board_pids(listener, namespace))
            reaped.append(listener)
        if record.get("workdir"):
            shutil.rmtree(record["workdir"], ignore_errors=True)
        path.unlink(missing_ok=True)
    return reaped


def board_pids(listener: int, namespace: str | None, include_listener: bool = True) -> list[int]:
    """The sshd ``listener``'s sessions (its process tree and, for a chroot board, everything in its mount
    namespace, which also catches a command that daemonized), plus the listener itself if asked."""
    pids = descendants(listener) + [pid for pid in in_namespace(namespace) if pid != listener]
    if include_listener and start_time(listener) is not None:
        pids.append(listener)
    return sorted(set(pids))
