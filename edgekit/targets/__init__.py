"""Targets: where a model is measured. One small protocol, one module per transport, an explicit registry.

    target = parse_target("ssh://pi@raspberrypi.local")       # or "local" (this machine), or an ssh_config alias
    with target:
        done = target.run(["uname", "-m"], timeout=30)         # Completed(rc=0, stdout="aarch64\\n", stderr="")
        target.put([Path("model.onnx")], "~/.cache/edgekit/work")
        target.get("~/.cache/edgekit/work/result.json", Path("result.json"))   # atomic on the host
        facts = target.facts()                                 # edgekit/device/facts.py, run there

Forms of a target (``--target``):

    local                                  this machine, with this Python (the default)
    ssh://[user@]host[:port][/cache/dir]   a device over the system's OpenSSH client; the path, when given, is the
                                           device's cache folder (default ~/.cache/edgekit; /~/x means ~/x)
    [user@]alias                           the same as ssh://[user@]alias: a Host of your ssh_config, or a host name

A transport is a module with a class implementing ``Target`` and one ``register_transport`` call below (adb would be
one more). Every path on a device lies in its cache folder, and a path starting with ``~/`` is the login user's home.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable
from urllib.parse import unquote, urlsplit

from ..errors import TargetError

DEFAULT_CACHE_DIR = "~/.cache/edgekit"
LOCAL = "local"
# A host name, an IPv4 address or a bracketed IPv6 one; a leading "-" would reach ssh as an option.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Completed:
    """A finished command on a target: exit status and its output as text."""

    rc: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class TargetOptions:
    """How to reach a target, beyond its address.

    ``ssh_config``: an OpenSSH config file (``ssh -F``; default: the EDGEKIT_SSH_CONFIG variable, else OpenSSH's
    own ~/.ssh/config). ``accept_new_host_key``: accept the key of a host that known_hosts does not know yet and
    remember it (OpenSSH's StrictHostKeyChecking=accept-new); a changed key is still refused."""

    ssh_config: Path | None = None
    accept_new_host_key: bool = False


@dataclass(frozen=True)
class TargetAddress:
    """A parsed ``--target``: no secret is ever part of it."""

    transport: str
    host: str = ""
    user: str | None = None
    port: int | None = None
    cache_dir: str = DEFAULT_CACHE_DIR

    @property
    def name(self) -> str:
        """The target as the user would type it, for messages and reports."""
        if self.transport == LOCAL:
            return LOCAL
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{self.transport}://{user}{self.host}{port}"

    @property
    def url(self) -> str:
        """The target as a command to type again must name it: ``name`` plus a cache folder other than the default."""
        if self.transport == LOCAL or self.cache_dir == DEFAULT_CACHE_DIR:
            return self.name
        return f"{self.name}/{self.cache_dir}" if self.cache_dir.startswith("~/") else f"{self.name}{self.cache_dir}"

    @property
    def display_host(self) -> str:
        """host[:port], what a report calls the device (never a user's credentials)."""
        return f"{self.host}:{self.port}" if self.port else self.host


@runtime_checkable
class Target(Protocol):
    """What every transport provides. Paths on the device are strings (POSIX); ``~/`` means the login home."""

    @property
    def address(self) -> TargetAddress: ...

    @property
    def name(self) -> str:
        """The target as typed, without secrets ("ssh://pi@raspberrypi.local", "local")."""

    @property
    def cache_dir(self) -> str:
        """The device's cache folder; edgekit writes nothing on the device outside it."""

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None, doing: str = "") -> Completed:
        """Run ``argv`` there (no shell; use ["sh", "-c", script] for one). A non-zero exit is returned, not raised;
        a lost connection or a timeout raises TargetError naming the target, ``doing`` and the fix."""

    def put(self, local_files: Sequence[Path], remote_dir: str, *, doing: str = "") -> None:
        """Copy files into ``remote_dir`` (created), each under its own name, each renamed into place when complete."""

    def get(self, remote_path: str, local_path: Path, *, doing: str = "") -> Path:
        """Copy one file back; written atomically on the host, so a lost connection leaves no half file."""

    def facts(self) -> dict:
        """What ``edgekit/device/facts.py`` reports there (with the cache venv's Python when it exists)."""

    def close(self) -> None:
        """Release what the transport holds (a shared ssh connection)."""

    def __enter__(self) -> "Target": ...

    def __exit__(self, *exc_info) -> None: ...


Opener = Callable[[TargetAddress, TargetOptions], Target]
_TRANSPORTS: dict[str, Opener] = {}


def register_transport(scheme: str, opener: Opener) -> None:
    """Add a transport (``scheme://...``); a second one under the same scheme is an error, never an overwrite."""
    if scheme in _TRANSPORTS:
        raise ValueError(f"transport {scheme!r} is already registered")
    _TRANSPORTS[scheme] = opener


def transports() -> list[str]:
    _ensure_loaded()
    return list(_TRANSPORTS)


def parse_address(text: str) -> TargetAddress:
    """A ``--target`` text as a TargetAddress; a malformed one (or one carrying a password) is a one-line error
    that never repeats the secret."""
    _ensure_loaded()
    text = (text or "").strip()
    if text in ("", LOCAL):
        return TargetAddress(LOCAL)
    if "://" not in text:
        return _bare_alias(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme not in _TRANSPORTS or scheme == LOCAL:
        known = ", ".join(f"{s}://" for s in _TRANSPORTS if s != LOCAL)
        raise TargetError(f"--target {scheme}://...: unknown transport {scheme!r}; use local or {known}")
    return _url_address(text, scheme)


def _bare_alias(text: str) -> TargetAddress:
    user, at, host = text.rpartition("@")
    if ":" in host or "/" in host:
        raise TargetError(f"--target {text!r} is not local, a URL or an ssh_config alias; write ssh://HOST:PORT or ssh://HOST/CACHE/DIR")
    if at and ":" in user:
        raise _password_error()
    return _checked(TargetAddress("ssh", host=host, user=user or None))


def _url_address(text: str, scheme: str) -> TargetAddress:
    parts = urlsplit(text)
    if parts.password is not None or (parts.username and ":" in unquote(parts.username)):
        raise _password_error()
    if parts.query or parts.fragment:
        raise TargetError(
            f"--target {_without_userinfo(text)} has a query or fragment (after ? or #); write {scheme}://[user@]host[:port][/cache/dir]"
        )
    try:
        port = parts.port
    except ValueError:
        raise TargetError(f"--target {_without_userinfo(text)} has a port that is not a number from 1 to 65535") from None
    host = parts.hostname or ""
    if parts.netloc.rpartition("@")[2].startswith("["):
        host = f"[{host}]"  # ssh takes an IPv6 address without brackets, but the name keeps them
    path = unquote(parts.path)
    cache_dir = DEFAULT_CACHE_DIR if path in ("", "/") else ("~" + path[2:] if path.startswith("/~/") else path.rstrip("/"))
    user = unquote(parts.username) if parts.username else None
    return _checked(TargetAddress(scheme, host=host, user=user, port=port, cache_dir=cache_dir))


def _checked(address: TargetAddress) -> TargetAddress:
    if not address.host:
        raise TargetError(f"--target {address.transport}://: no host given; write {address.transport}://[user@]host[:port]")
    if not _HOST.match(address.host):
        raise TargetError(f"--target host {address.host!r} is not a host name or address (letters, digits, '.', '-', '_')")
    if address.user is not None and not _USER.match(address.user):
        raise TargetError(f"--target user {address.user!r} is not a login name (letters, digits, '.', '-', '_')")
    if any(ch in address.cache_dir for ch in "\n\r\x00"):
        raise TargetError(f"--target {address.name}: the cache folder may not contain control characters")
    return address


def _password_error() -> TargetError:
    return TargetError(
        "--target carries a password (user:password@host); edgekit never puts a secret on a command line or into a "
        "report: log in with an ssh key (ssh-copy-id user@host) or an agent, and pass ssh://user@host"
    )


def _without_userinfo(text: str) -> str:
    scheme, _, rest = text.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def parse_target(text: str | Target | None = None, options: TargetOptions | None = None) -> Target:
    """The target ``text`` names, ready to use (nothing is contacted until a command runs)."""
    if text is not None and not isinstance(text, str):
        return text
    address = parse_address(text or LOCAL)
    return _TRANSPORTS[address.transport](address, options or TargetOptions())


def is_local(target: str | Target | None) -> bool:
    """Whether ``target`` is this machine (None and "local" are)."""
    if target is None:
        return True
    return (parse_address(target) if isinstance(target, str) else target.address).transport == LOCAL


_LOADED: list[bool] = []


def _ensure_loaded() -> None:
    # Registration is explicit and ordered here, as for runtimes: no import side effects elsewhere.
    if _LOADED:
        return
    _LOADED.append(True)
    from . import local, ssh

    register_transport(LOCAL, local.LocalTarget)
    register_transport("ssh", ssh.SshTarget)


__all__ = [
    "Completed",
    "DEFAULT_CACHE_DIR",
    "LOCAL",
    "Target",
    "TargetAddress",
    "TargetOptions",
    "is_local",
    "parse_address",
    "parse_target",
    "register_transport",
    "transports",
]
