"""An emulated arm64 board: a Debian bookworm arm64 root, built once with debootstrap under qemu-user-static
(binfmt_misc) and cached, behind its own sshd (see sshd.py: chrooted, on a private overlay of the root).

The root has python3, python3-venv (ensurepip), openssh-server and ca-certificates, and deliberately no
numpy or onnxruntime: ``edgekit target setup --from-host`` installs those, as on a device that cannot
reach a package index (pip inside the root cannot verify the index's certificate anyway).

The cache is ``${EDGEKIT_RIG_CACHE:-~/.cache/edgekit-rig}/arm64-bookworm``. A build runs in a temporary
folder that is renamed into place only when complete and verified, under a lock, so a killed build never
looks cached and two pytest-xdist workers never build at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from . import procs
from .sshd import LoopbackSshd

PACKAGES = ("python3", "python3-venv", "openssh-server", "ca-certificates")
SUITE = "bookworm"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
STAMP = ".edgekit-rig.json"  # written last inside the root, before the rename: what was built and how
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Checked inside the finished root under emulation before it is cached.
VERIFY_SCRIPT = "set -e; uname -m; test -x /usr/sbin/sshd; python3 -m venv /tmp/verify-venv; /tmp/verify-venv/bin/pip --version; rm -rf /tmp/verify-venv"


class RootUnavailable(RuntimeError):
    """The arm64 root cannot be built or run here; the message says what to install or fix."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_RIG_CACHE") or Path.home() / ".cache" / "edgekit-rig")


def root_path() -> Path:
    return cache_dir() / f"arm64-{SUITE}"


def is_built(root: Path | None = None) -> bool:
    return ((root or root_path()) / STAMP).is_file()


def binfmt_problem() -> str | None:
    """Why arm64 binaries cannot run in a chroot here (None when they can), mounting binfmt_misc if needed.

    The F flag (fix binary) makes the kernel open qemu-aarch64 once at registration, so it works
    inside a chroot that does not contain the interpreter."""
    if not (BINFMT / "status").exists() and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.is_file():
        return "qemu-aarch64 is not registered in binfmt_misc: apt-get install qemu-user-static binfmt-support (then bash .ci/boards)"
    text = entry.read_text()
    flags = re.search(r"^flags: *(\S*)", text, re.MULTILINE)
    if not text.startswith("enabled"):
        return "binfmt_misc's qemu-aarch64 entry is disabled: update-binfmts --enable qemu-aarch64"
    if not flags or "F" not in flags.group(1):
        return "binfmt_misc's qemu-aarch64 entry lacks the F flag (needed in a chroot): reinstall qemu-user-static"
    return None


def prerequisite_problem() -> str | None:
    """Why an arm64 board cannot start here, as one line naming what to install; None when it can."""
    if os.geteuid() != 0:
        return "the arm64 board needs root (chroot, mount namespaces)"
    for tool, package in (("unshare", "util-linux"), ("chroot", "coreutils"), ("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install {package}"
    if not is_built() and shutil.which("debootstrap") is None:
        return f"no cached arm64 root at {root_path()} and no debootstrap: apt-get install debootstrap (then bash .ci/boards)"
    return binfmt_problem()


def debian_mirror() -> str:
    """The host's Debian mirror (deb822 sources), else deb.debian.org; EDGEKIT_RIG_MIRROR overrides."""
    if os.environ.get("EDGEKIT_RIG_MIRROR"):
        return os.environ["EDGEKIT_RIG_MIRROR"]
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "http://deb.debian.org/debian"


@contextmanager
def _build_lock():
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"arm64-{SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_root(log=print) -> Path:
    """The cached arm64 root, built first if missing (about 5 minutes on 2 cores; later calls are instant)."""
    root = root_path()
    if is_built(root):
        return root
    problem = prerequisite_problem()
    if problem:
        raise RootUnavailable(problem)
    with _build_lock():
        if is_built(root):  # another worker built it while this one waited
            return root
        for stale in root.parent.glob(f"{root.name}.build-*"):
            remove_tree(stale)
        if root.exists():  # a folder without the stamp is no root: move it aside and build afresh
            remove_tree(root)
        building = root.with_name(f"{root.name}.build-{os.getpid()}")
        started = time.monotonic()
        log(f"building the arm64 root in {building} (debootstrap {SUITE} from {debian_mirror()})")
        try:
            debootstrap(building)
            log(f"debootstrap done after {time.monotonic() - started:.0f} s")
            finish_root(building, debootstrap_seconds=time.monotonic() - started, log=log)
            building.rename(root)
        except BaseException:
            remove_tree(building)
            raise
        log(f"arm64 root cached at {root} after {time.monotonic() - started:.0f} s")
    return root


def debootstrap(target: Path) -> None:
    """Both debootstrap stages into ``target`` (the second one runs arm64 binaries through qemu)."""
    build_log = target.with_name(target.name + ".log")
    command = ["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
    if DEBIAN_KEYRING.is_file():  # an Ubuntu host's default keyring does not sign Debian's archive
        command.append(f"--keyring={DEBIAN_KEYRING}")
    command += [SUITE, str(target), debian_mirror()]
    with open(build_log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-20:])
        raise RootUnavailable(f"debootstrap exited {result.returncode} (log {build_log}):\n{tail}")
    build_log.unlink()


def finish_root(root: Path, debootstrap_seconds: float | None = None, log=print) -> None:
    """Check a debootstrapped root under emulation (arch, sshd, a venv with pip), trim it, and stamp it."""
    unmount_beneath(root)  # debootstrap's own /proc and /sys mounts, should it have left any
    shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    (root / "var" / "cache" / "apt" / "archives" / "partial").mkdir(parents=True)
    started = time.monotonic()
    result = run_in_root(root, VERIFY_SCRIPT)
    if result.returncode != 0 or not result.stdout.startswith("aarch64"):
        raise RootUnavailable(f"the arm64 root at {root} failed its check (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    log(f"checked the root under emulation in {time.monotonic() - started:.0f} s: {' | '.join(result.stdout.split(chr(10))[:3])}")
    stamp = {
        "suite": SUITE,
        "arch": "arm64",
        "packages": list(PACKAGES),
        "mirror": debian_mirror(),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if debootstrap_seconds is not None:
        stamp["debootstrap_seconds"] = round(debootstrap_seconds)
    (root / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def run_in_root(root: Path, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``script`` with sh inside ``root`` with /proc and /dev mounted in a private mount namespace."""
    mounts = 'set -e; mount -t proc proc "$1/proc"; mount --bind /dev "$1/dev"; exec chroot "$1" /bin/sh -c "$2"'
    argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", mounts, "sh", str(root), script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def unmount_beneath(path: Path) -> None:
    """Unmount everything mounted at or below ``path`` in this mount namespace, deepest first (stale mounts
    of a killed build or a manual chroot); each is made private first so no unmount propagates to the host."""
    prefix = str(path.resolve())
    for point in sorted((p for p, _ in procs.mounts() if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True):
        subprocess.run(["mount", "--make-private", point], capture_output=True)
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", point], check=True)


def remove_tree(path: Path) -> None:
    """Delete a root folder, never through a mount (a bound /dev would lose the host's device nodes)."""
    unmount_beneath(path)
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def arm64_board(workdir: Path | None = None, alias: str = "arm64-board", **options) -> LoopbackSshd:
    """A not yet started arm64 board on the cached root (building it first if needed)."""
    root = ensure_root()
    unmount_beneath(root)  # a chroot of the cached root by hand, killed without unmounting
    return LoopbackSshd(workdir, root=root, alias=alias, **options)
