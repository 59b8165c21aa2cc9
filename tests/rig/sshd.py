"""A real OpenSSH server on 127.0.0.1 with throwaway keys: the board that ``--target ssh://`` tests talk to.

Without ``root`` it is the host's own /usr/sbin/sshd (an x86 board). With ``root`` (a Debian root of
another architecture) the root's own sshd runs chrooted in a private mount namespace, on an overlay of
that root, so the cached root never changes, every board starts fresh, and the kernel drops the board's
mounts when its last process exits, even when the test run is killed.

Clients reach a board only through the ssh_config file it writes (``ssh -F board.config_path board.alias``):
OpenSSH reads ~/.ssh/config from the passwd home, not $HOME, so nothing may rely on ~/.ssh. Host-key
checking stays on; ``write_mismatched_config`` gives a config whose known_hosts holds another key.
"""

from __future__ import annotations

import os
import platform
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from . import procs

SSHD = "/usr/sbin/sshd"
HOST = "127.0.0.1"
BOARD_DIR = "/etc/edgekit-rig"  # where a chroot board's sshd finds its keys and config, inside the root

# Runs in the new mount namespace, so none of these mounts is ever visible on the host. No /sys: with it
# onnxruntime segfaults under qemu-user. /dev/pts lets a client ask for a tty (ssh -t).
CHROOT_SCRIPT = """set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
mount -t proc proc "$4/proc"
mount --bind /dev "$4/dev"
mount --bind /dev/pts "$4/dev/pts"
exec chroot "$4" /usr/sbin/sshd -D -e -f "$5"
"""


class BoardError(RuntimeError):
    """A board did not start or answer; the message carries the sshd log's tail."""


def generate_key(path: Path, comment: str) -> str:
    """Write a passphrase-less ed25519 key pair at ``path`` (+ .pub) and return the public key line."""
    path.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def free_port() -> int:
    """A port free on 127.0.0.1 right now (sshd may still lose it to a race: ``start`` retries)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point above it)."""
    best, kind = "", "unknown"
    for point, fstype in procs.mounts():
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def _plain_path(path: Path) -> str:
    text = str(path)
    if any(character in text for character in ' \t\n",:='):
        raise BoardError(f"{text}: the board's files need a path without spaces, quotes, ',', ':' or '='")
    return text


class LoopbackSshd:
    """One sshd on 127.0.0.1 at a free port, logged in to as the current user (root for a chroot board)."""

    def __init__(self, workdir: Path | None = None, *, root: Path | None = None, alias: str = "board", ready_timeout: float = 90.0):
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"edgekit-{alias}-")).resolve()
        self.root = Path(root).resolve() if root else None
        self.alias = alias
        self.host = HOST
        self.port = 0
        self.user = "root" if self.root else pwd.getpwuid(os.getuid()).pw_name
        self.ready_timeout = ready_timeout
        self.log_path = self.workdir / "sshd.log"
        self.config_path = self.workdir / "client" / "ssh_config"
        self.known_hosts = self.workdir / "client" / "known_hosts"
        self.identity = self.workdir / "client" / "id_ed25519"
        self._process: subprocess.Popen | None = None
        self._namespace: str | None = None
        self._record: Path | None = None

    # -- facts a test may assert on -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The ``--target`` a product test passes, e.g. ``ssh://root@127.0.0.1:40123``."""
        return f"ssh://{self.user}@{self.host}:{self.port}"

    @property
    def arch(self) -> str:
        """What ``uname -m`` says on the board (a chroot board is arm64: see arm64.py)."""
        return "aarch64" if self.root else platform.machine()

    @property
    def emulated(self) -> bool:
        """True for a chroot board run by qemu-user: timings there mean nothing."""
        return self.root is not None

    @property
    def pid(self) -> int | None:
        """The listening sshd's pid while the board runs."""
        return self._process.pid if self._process and self._process.poll() is None else None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> LoopbackSshd:
        """Start sshd and wait until ``ssh -F config alias true`` succeeds; retry on a lost port race."""
        procs.reap_orphaned_boards()
        host_key = self._write_keys()
        for _attempt in range(5):
            self.port = free_port()
            self._write_server_config()
            self._write_client_config(self.config_path, self.known_hosts, host_key)
            self._launch()
            try:
                self._wait_ready()
            except BoardError:
                if self._process.poll() is not None and "Address already in use" in self.log_tail():
                    continue
                self.stop()
                raise
            self._namespace = procs.private_namespace(procs.mount_namespace(self._process.pid)) if self.root else None
            self._record = procs.write_record(self._process.pid, self._namespace, self.workdir, self._owns_workdir)
            return self
        raise BoardError(f"sshd could not bind a free port on {HOST} in 5 tries; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the board: its sessions, its sshd, every process left in its namespace (so its mounts go)."""
        if self._process is not None:
            process, namespace = self._process, self._namespace
            procs.kill_all(lambda: procs.board_pids(process.pid, namespace, include_listener=False))
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            procs.kill_all(lambda: procs.in_namespace(namespace))
            self._process = None
        if self._record is not None:
            self._record.unlink(missing_ok=True)
            self._record = None
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_sessions(self) -> None:
        """SIGKILL every session (per-connection sshd and the commands it runs), keeping the listener:
        a client mid-command sees its connection die (ssh exits 255) and the next connection still works."""
        if self._process is not None:
            procs.kill_all(lambda: self.session_pids())

    def session_pids(self) -> list[int]:
        """The pids of the board's live sessions (not the listener)."""
        if self._process is None:
            return []
        return procs.board_pids(self._process.pid, self._namespace, include_listener=False)

    def __enter__(self) -> LoopbackSshd:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------------------
    def ssh_argv(self, command: str, config: Path | None = None) -> list[str]:
        """``ssh -F CONFIG ALIAS COMMAND`` (the remote shell parses COMMAND)."""
        return ["ssh", "-F", str(config or self.config_path), self.alias, command]

    def ssh(self, command: str, config: Path | None = None, timeout: float = 120, **run_options) -> subprocess.CompletedProcess:
        """Run ``command`` on the board and return the finished process (text, output captured)."""
        return subprocess.run(self.ssh_argv(command, config), capture_output=True, text=True, timeout=timeout, **run_options)

    def copy_to(self, local: Path, remote: str, timeout: float = 120) -> None:
        """scp a local file to ``remote`` on the board."""
        subprocess.run(["scp", "-q", "-F", str(self.config_path), str(local), f"{self.alias}:{remote}"], check=True, timeout=timeout)

    def copy_from(self, remote: str, local: Path, timeout: float = 120) -> None:
        """scp ``remote`` on the board to a local file."""
        subprocess.run(["scp", "-q", "-F", str(self.config_path), f"{self.alias}:{remote}", str(local)], check=True, timeout=timeout)

    def write_mismatched_config(self, path: Path | None = None) -> Path:
        """An ssh_config like ``config_path`` whose known_hosts holds a different key for this host and
        port, as after a re-flashed board or a man in the middle: ssh must refuse it."""
        path = Path(path or self.workdir / "client" / "ssh_config.mismatched")
        known_hosts = path.with_name(path.name + ".known_hosts")
        impostor = generate_key(self.workdir / "client" / "impostor_host_key", "not-the-board")
        self._write_client_config(path, known_hosts, impostor)
        return path

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of sshd's log (sshd -e writes it to stderr, which goes to ``log_path``)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no sshd log)"

    # -- internals ------------------------------------------------------------------------------------
    def _server_dir(self) -> tuple[Path, str]:
        """Where the server's files lie on the host, and the same folder as sshd sees it."""
        if self.root:
            return self.workdir / "upper" / BOARD_DIR.lstrip("/"), BOARD_DIR
        return self.workdir / "server", str(self.workdir / "server")

    def _write_keys(self) -> str:
        if self.root and filesystem_type(self.workdir) == "overlay":
            raise BoardError(
                f"{self.workdir} is on overlayfs, which cannot hold the board's upper layer: give the board a folder on a disk or tmpfs (TMPDIR, pytest --basetemp)"
            )
        (self.workdir / "client").mkdir(parents=True, exist_ok=True)
        on_host, _ = self._server_dir()
        on_host.mkdir(parents=True, exist_ok=True)
        os.chmod(on_host, 0o700)
        # sshd run by root chroots its unprivileged half into /run/sshd, which only sshd's service creates.
        if self.root:
            (self.workdir / "upper" / "run" / "sshd").mkdir(parents=True, exist_ok=True)
            (self.workdir / "work").mkdir(exist_ok=True)
            (self.workdir / "merged").mkdir(exist_ok=True)
        elif os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        user_key = generate_key(self.identity, f"edgekit-rig-{self.alias}")
        (on_host / "authorized_keys").write_text(user_key + "\n")
        return generate_key(on_host / "host_ed25519", f"edgekit-rig-{self.alias}-host")

    def _write_server_config(self) -> None:
        on_host, on_board = self._server_dir()
        options = {
            "Port": self.port,
            "ListenAddress": HOST,
            "HostKey": f"{on_board}/host_ed25519",
            "PidFile": f"{on_board}/sshd.pid",
            "AuthorizedKeysFile": f"{on_board}/authorized_keys",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "prohibit-password",
            "UsePAM": "no",
            "StrictModes": "no",  # the keys live in temporary folders, not in a home directory
            "Subsystem": "sftp internal-sftp",  # scp speaks SFTP since OpenSSH 9.0
            "PrintMotd": "no",
            "LogLevel": "VERBOSE",
            "MaxStartups": "50:30:100",  # parallel connections of one test
        }
        text = "".join(f"{key} {value}\n" for key, value in options.items())
        (on_host / "sshd_config").write_text(text)

    def _write_client_config(self, path: Path, known_hosts: Path, host_key: str) -> None:
        key_type, key_data = host_key.split()[:2]
        known_hosts.write_text(f"[{HOST}]:{self.port} {key_type} {key_data}\n")
        options = {
            "HostName": HOST,
            "Port": self.port,
            "User": self.user,
            "IdentityFile": _plain_path(self.identity),
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": _plain_path(known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "UpdateHostKeys": "no",  # known_hosts holds exactly the board's key, nothing learned
            "BatchMode": "yes",
            "ConnectTimeout": "30",
        }
        body = "".join(f"    {key} {value}\n" for key, value in options.items())
        # The alias and the bare address both match, so `ssh -F FILE -p PORT user@127.0.0.1` (the --target
        # URL spelled out) finds the same identity and known_hosts as `ssh -F FILE alias`.
        header = f"# edgekit test board {self.alias} ({self.arch}): ssh -F {path} {self.alias}\n"
        path.write_text(f"{header}Host {self.alias} {HOST}\n{body}")

    def _launch(self) -> None:
        on_host, on_board = self._server_dir()
        if self.root:
            layers = [_plain_path(self.root)] + [_plain_path(self.workdir / name) for name in ("upper", "work", "merged")]
            argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", CHROOT_SCRIPT, "sh", *layers]
            argv.append(f"{on_board}/sshd_config")
        else:
            argv = [SSHD, "-D", "-e", "-f", f"{on_board}/sshd_config"]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        last = "no attempt"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BoardError(f"sshd for {self.alias} exited with {self._process.returncode}; log tail:\n{self.log_tail()}")
            try:
                probe = self.ssh("true", timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
            if probe.returncode == 0:
                return
            last = f"ssh exit {probe.returncode}: {probe.stderr.strip()}"
            time.sleep(0.25)
        raise BoardError(
            f"board {self.alias} ({self.url}) did not answer `ssh -F {self.config_path} {self.alias} true` within "
            f"{self.ready_timeout:.0f} s (last: {last}); sshd log tail:\n{self.log_tail()}"
        )
