"""The ``ssh://`` target: a device reached with the system's OpenSSH client.

The system client, not a Python SSH library, so everything the user set up for ssh applies as it does for rsync or
Ansible: keys and agent, ~/.ssh/config (Host aliases, ProxyJump, IdentityFile), known_hosts. edgekit adds only:

- ``BatchMode=yes``: never a prompt; a key that is refused fails at once instead of asking for a password.
- One connection per command: ``ControlMaster=auto`` with a ControlPath in a private temporary folder and a short
  ControlPersist, so the many small steps of a bench do not each pay a handshake (seconds under emulation).
- ``ServerAliveInterval``, so a link that dies without a reset is noticed within a minute.

Host-key checking stays as the user's configuration says (OpenSSH's default refuses an unknown key in batch mode);
``accept_new_host_key`` maps to ``StrictHostKeyChecking=accept-new``, which still refuses a changed key. Every ssh
failure (exit 255) becomes one line naming the target and the fix; no secret ever reaches a command line.

Files travel as a tar stream over the same connection (tar is on every Linux board, including busybox ones) and are
unpacked into a fresh folder beside their destination, then renamed into place; a file comes back through ``cat``
into an atomic temporary file on the host.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import weakref
from pathlib import Path
from typing import Sequence

from .. import files
from ..device import facts as device_facts
from ..errors import TargetError
from . import Completed, TargetAddress, TargetOptions

SSH_FAILED = 255  # what ssh exits with when the connection, the login or the host key fails
SSH_CONFIG_ENV = "EDGEKIT_SSH_CONFIG"
CONTROL_PERSIST_S = 60
FACTS_TIMEOUT_S = 180  # Python's start-up alone takes seconds under emulation

# Unpacks a tar stream from stdin into a private folder beside "$1", then renames each file into "$1": a reader never
# sees a half file under its final name, and a failed copy leaves nothing but what was already complete.
_UNPACK = (
    'set -e; mkdir -p "$1"; tmp=$(mktemp -d "$1/.incoming.XXXXXX"); trap \'rm -rf "$tmp"\' EXIT; '
    'tar -xof - -C "$tmp"; for f in "$tmp"/*; do mv -f "$f" "$1"/; done'
)
# The cache venv's Python when setup made one (its runtimes are the ones that count), else the system's.
_FACTS = (
    'v="$1/venv/bin/python"; if [ -x "$v" ]; then exec "$v" - "$1"; fi; '
    'for p in python3 python; do if command -v "$p" >/dev/null 2>&1; then exec "$p" - "$1"; fi; done; '
    'echo "no python3 on PATH" >&2; exit 127'
)


def remote_quote(arg: str) -> str:
    """Quote one argument for the device's shell, leaving a leading ``~/`` outside the quotes so it expands to the
    login home there."""
    if arg == "~":
        return "~"
    if arg.startswith("~/"):
        return "~/" + shlex.quote(arg[2:]) if arg[2:] else "~/"
    return shlex.quote(arg)


class SshTarget:
    """A device over ssh (see the module's notes)."""

    def __init__(self, address: TargetAddress, options: TargetOptions | None = None):
        options = options or TargetOptions()
        self._address = address
        self._accept_new = options.accept_new_host_key
        config = options.ssh_config or os.environ.get(SSH_CONFIG_ENV) or None
        self._config = Path(config).expanduser() if config else None
        if self._config is not None and not self._config.is_file():
            where = "--ssh-config" if options.ssh_config else SSH_CONFIG_ENV
            raise TargetError(f"{where} {self._config} does not exist; pass an OpenSSH config file (ssh -F) or leave it out")
        self._control_dir: str | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def address(self) -> TargetAddress:
        return self._address

    @property
    def name(self) -> str:
        return self._address.name

    @property
    def cache_dir(self) -> str:
        return self._address.cache_dir

    # -- the ssh command line -------------------------------------------------------------------------------------

    def ssh_argv(self, command: str | None = None) -> list[str]:
        """``ssh [-F config] -o ... [-p port] [-l user] -- host [command]``."""
        if self._control_dir is None:
            self._control_dir = tempfile.mkdtemp(prefix="edgekit-ssh-")  # 0700: only this user reaches the socket
            self._finalizer = weakref.finalize(self, _close_master, self._control_dir, [*self._base_argv(), "-O", "exit", "--", self._host])
        argv = [*self._base_argv(), "--", self._host]
        return argv if command is None else [*argv, command]

    @property
    def _host(self) -> str:
        return self._address.host.strip("[]")  # ssh takes an IPv6 address without brackets

    def _base_argv(self) -> list[str]:
        argv = ["ssh"]
        if self._config is not None:
            argv += ["-F", str(self._config)]
        options = [
            "BatchMode=yes",
            "ControlMaster=auto",
            f"ControlPath={self._control_dir}/%C",
            f"ControlPersist={CONTROL_PERSIST_S}",
            "ServerAliveInterval=15",
            "ServerAliveCountMax=4",
            "ConnectTimeout=30",
        ]
        if self._accept_new:
            options.append("StrictHostKeyChecking=accept-new")
        for option in options:
            argv += ["-o", option]
        if self._address.port:
            argv += ["-p", str(self._address.port)]
        if self._address.user:
            argv += ["-l", self._address.user]
        return argv

    # -- the protocol ---------------------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None, doing: str = "") -> Completed:
        command = " ".join(remote_quote(str(arg)) for arg in argv)
        doing = doing or f"running {argv[0]}"
        try:
            done = subprocess.run(
                self.ssh_argv(command),
                input=stdin,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise TargetError(f"{self.name} did not finish {doing} within {timeout:.0f} s; nothing was written on this machine") from None
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode == SSH_FAILED:
            raise ssh_failure(self._address, stderr, doing)
        return Completed(done.returncode, done.stdout.decode("utf-8", "replace"), stderr)

    def put(self, local_files: Sequence[Path], remote_dir: str, *, doing: str = "") -> None:
        local_files = [Path(p) for p in local_files]
        names = [p.name for p in local_files]
        if len(set(names)) != len(names):
            raise TargetError(f"cannot copy two files of the same name into {remote_dir} on {self.name}: {', '.join(names)}")
        if not local_files:
            return
        doing = doing or f"copying {', '.join(names)} to {remote_dir}"
        argv = self.ssh_argv(" ".join(remote_quote(a) for a in ("sh", "-c", _UNPACK, "sh", remote_dir)))
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=process.stdin, mode="w|", format=tarfile.GNU_FORMAT) as archive:
                for path in local_files:
                    archive.add(str(path), arcname=path.name, recursive=False)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the far end stopped reading: its exit status and message say why
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()  # type: ignore[union-attr]
        stderr = process.stderr.read().decode("utf-8", "replace")  # type: ignore[union-attr]
        process.wait()
        if process.returncode == SSH_FAILED:
            raise ssh_failure(self._address, stderr, doing)
        if process.returncode != 0:
            if self._short_of_space(remote_dir, sum(p.stat().st_size for p in local_files)):
                stderr += "\nNo space left on device"  # GNU tar says only "Wrote only N of M bytes"
            raise remote_failure(self.name, doing, stderr, remote_dir)

    def _short_of_space(self, remote_dir: str, needed: int) -> bool:
        """Whether the filesystem of ``remote_dir`` has less room than ``needed`` bytes (POSIX df, in KiB)."""
        probe = 'd="$1"; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; df -Pk "$d" | tail -1'
        try:
            fields = self.run(["sh", "-c", probe, "sh", remote_dir], timeout=60, doing="reading the free space").stdout.split()
            return int(fields[3]) * 1024 < needed
        except (TargetError, IndexError, ValueError):
            return False

    def get(self, remote_path: str, local_path: Path, *, doing: str = "") -> Path:
        doing = doing or f"copying {remote_path} back"
        with files.atomic_path(local_path) as tmp, open(tmp, "wb") as out:
            done = subprocess.run(
                self.ssh_argv(f"cat -- {remote_quote(remote_path)}"), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE
            )
            stderr = done.stderr.decode("utf-8", "replace")
            if done.returncode == SSH_FAILED:
                raise ssh_failure(self._address, stderr, doing)
            if done.returncode != 0:
                raise remote_failure(self.name, doing, stderr, remote_path)
        return Path(local_path)

    def facts(self) -> dict:
        source = Path(device_facts.__file__).read_bytes()
        done = self.run(["sh", "-c", _FACTS, "sh", self.cache_dir], stdin=source, timeout=FACTS_TIMEOUT_S, doing="reading its facts")
        return parse_facts(self.name, done)

    def close(self) -> None:
        """Stop the shared connection and remove its private folder."""
        if self._finalizer is not None:
            self._finalizer()
        self._control_dir, self._finalizer = None, None

    def __enter__(self) -> "SshTarget":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _close_master(control_dir: str, exit_argv: list[str]) -> None:
    if any(Path(control_dir).iterdir()):  # a master is listening: ask it to end now rather than after ControlPersist
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(exit_argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    shutil.rmtree(control_dir, ignore_errors=True)


def parse_facts(name: str, done: Completed) -> dict:
    """The facts JSON a device printed (its last JSON line: a login banner may come first)."""
    import json

    if done.rc == 127:
        raise TargetError(f"{name} has no python3; install it there (Debian, Raspberry Pi OS: sudo apt-get install python3 python3-venv)")
    if done.rc != 0:
        last = last_line(done.stderr) or f"exit {done.rc}"
        raise TargetError(f"edgekit's facts probe failed on {name} ({last}); it needs Python >= 3.9 there")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise TargetError(
        f"{name} printed no facts (stdout: {last_line(done.stdout) or 'empty'}); check that its shell prints nothing on login"
    )


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# -- one line per ssh failure ---------------------------------------------------------------------------------------


def _known_hosts_name(address: TargetAddress) -> str:
    host = address.host.strip("[]")
    return f"[{host}]:{address.port}" if address.port and address.port != 22 else host


def ssh_failure(address: TargetAddress, stderr: str, doing: str) -> TargetError:
    """The one-line error for an ssh exit 255, from what ssh wrote on stderr."""
    name, host = address.name, address.host.strip("[]")
    port = f" -p {address.port}" if address.port and address.port != 22 else ""
    known = _known_hosts_name(address)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested strict checking" in stderr:
        offending = re.search(r"Offending \S+ key in (\S+):(\d+)", stderr)
        where = f" ({offending.group(1)} line {offending.group(2)})" if offending else ""
        return TargetError(
            f"the host key of {known} did not match known_hosts{where}: the device was re-installed, or something is in between; "
            f"compare `ssh-keygen -F '{known}'` with `ssh-keyscan{port} {host} | ssh-keygen -lf -` (run on a trusted link), and only "
            f"if you trust the new key remove the old one with `ssh-keygen -R '{known}'`"
        )
    if re.search(r"No \S+ host key is known for|Host key verification failed", stderr):
        return TargetError(
            f"the host key of {known} is not in known_hosts, and edgekit never accepts an unknown key silently; check its fingerprint "
            f"(`ssh-keyscan{port} {host} | ssh-keygen -lf -`) and connect once with `ssh{port} {host}`, or pass --accept-new-host-key"
        )
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        methods = re.search(r"Permission denied \(([^)]*)\)", stderr)
        how = f" ({methods.group(1)})" if methods else ""
        return TargetError(
            f"{name} refused the login{how}; edgekit logs in without prompting (ssh BatchMode): put your key there with "
            f"`ssh-copy-id{port} {address.user + '@' if address.user else ''}{host}` or load it into ssh-agent"
        )
    if "Connection refused" in stderr:
        return TargetError(
            f"nothing accepts ssh connections at {address.display_host} (connection refused); check that sshd runs there and the port"
        )
    if "Could not resolve hostname" in stderr:
        return TargetError(f"cannot resolve {host}; check the name, or add a `Host {host}` entry to your ssh_config")
    if re.search(r"[Tt]imed out|No route to host|Network is unreachable", stderr):
        return TargetError(f"cannot reach {name} ({last_line(stderr)}); check that the device is on and on this network, and the port")
    if re.search(r"Bad configuration option|Can't open user config|no argument after keyword|[Uu]nsupported option|illegal option", stderr):
        return TargetError(f"ssh refused its configuration for {name}: {last_line(stderr)}")
    return TargetError(
        f"lost the connection to {name} while {doing}; nothing was written on this machine; check the link and run the command again"
    )


def remote_failure(name: str, doing: str, stderr: str, path: str) -> TargetError:
    """A command that ran on the device and failed (not ssh itself), as one line."""
    if "No space left" in stderr or "Disk quota exceeded" in stderr:
        return TargetError(f"the disk of {name} is full while {doing} (at {path}); free space there (df -h) and run the command again")
    if "No such file" in stderr:
        return TargetError(f"{path} does not exist on {name} (while {doing})")
    if "Permission denied" in stderr or "Read-only file system" in stderr:
        return TargetError(f"{name} cannot write {path} ({last_line(stderr)}); pick a writable cache folder: ssh://HOST/path/to/cache")
    return TargetError(f"{doing} failed on {name}: {last_line(stderr) or 'no message'}")
