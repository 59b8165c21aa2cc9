"""`edgekit target setup`: a venv in the device's cache folder with numpy and the runtimes, at this machine's versions.

The same onnxruntime (openvino, executorch) version as here, because here is where exports are validated: a device
running another version runs other kernels. numpy is taken at this machine's version where the device's Python has a
wheel of it, else the newest older one (numpy only carries inputs and logits).

Two ways to get the wheels:
- the device's own pip (the default): it needs a package index it can reach;
- ``from_host``: this machine downloads the device's wheels (``pip download --platform <its manylinux tags>
  --python-version <its Python> --only-binary=:all:``) and copies them over; the device installs them with
  ``--no-index``, then deletes them. For boards without an index, or whose certificates pip cannot verify.

Nothing is written on the device outside its cache folder (pip runs with ``--no-cache-dir``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field

from ..errors import TargetError
from ..formats import all_formats
from ..progress import Bar
from ..results import Result
from . import LOCAL, Target, TargetOptions, parse_target
from .info import TargetInfo, info_from_facts

VENV = "venv"
WHEELS = "wheels"
VENV_TIMEOUT_S = 900  # ensurepip alone took 51 s on the emulated arm64 board
INSTALL_TIMEOUT_S = 3600
# What pip prints when it cannot reach an index (as opposed to an index without the wanted wheel).
_NO_INDEX = (
    "CERTIFICATE_VERIFY_FAILED",
    "SSLError",
    "Could not fetch URL",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
    "ConnectTimeoutError",
    "Read timed out",
)


@dataclass(frozen=True)
class DeviceRuntime:
    """A runtime as a device gets it: the module the runner imports, the pip distribution that installs it."""

    name: str  # bench's --runtime name
    module: str
    distribution: str
    by_default: bool = True  # in setup without --runtime, when this machine has it


DEVICE_RUNTIMES = {
    runtime.name: runtime
    for runtime in (
        DeviceRuntime("ort-cpu", "onnxruntime", "onnxruntime"),
        DeviceRuntime("openvino", "openvino", "openvino"),
        # executorch's Python runtime links against libtorch, so it brings torch to the device: only when asked for.
        DeviceRuntime("executorch", "executorch", "executorch", by_default=False),
        # LiteRT and ncnn have aarch64 wheels; set up on request (`--runtime litert,ncnn`), like ExecuTorch
        DeviceRuntime("litert", "ai_edge_litert", "ai-edge-litert", by_default=False),
        DeviceRuntime("ncnn", "ncnn", "ncnn", by_default=False),
    )
}


class SetupResult(Result):
    """What `edgekit target setup` did on a target."""

    target: str
    venv: str  # on the device
    python: str  # the device's Python version
    runtimes: list[str]
    requirements: list[str]  # what was asked of pip: "onnxruntime==1.32.0", "numpy<=2.4.6"
    installed: dict[str, str | None] = Field(default_factory=dict)  # module -> version there afterwards
    source: Literal["device-pip", "host-wheels", "none"] = "none"
    changed: bool = False
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)


def host_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_runtimes() -> list[str]:
    """The runtimes of the formats this machine can run, that a device can install: at least ort-cpu."""
    names = ["ort-cpu"]
    for fmt in all_formats():
        runtime = DEVICE_RUNTIMES.get(fmt.runtime)
        if runtime and runtime.by_default and runtime.name not in names and host_version(runtime.distribution):
            names.append(runtime.name)
    return names


def requirements(runtimes: Sequence[str]) -> list[tuple[str, str]]:
    """(module, pip requirement) for numpy and each runtime, at this machine's versions."""
    wanted = []
    for name in runtimes:
        runtime = DEVICE_RUNTIMES.get(name)
        if runtime is None:
            raise TargetError(f"--runtime {name}: a device can be set up with {', '.join(DEVICE_RUNTIMES)}")
        version = host_version(runtime.distribution)
        if version is None:
            raise TargetError(
                f"this machine has no {runtime.distribution}, so there is no validated version to install on the device; "
                f"install it here first (pip install {runtime.distribution}) or leave --runtime {name} out"
            )
        wanted.append((runtime.module, f"{runtime.distribution}=={version}"))
    numpy = host_version("numpy")
    return [("numpy", f"numpy<={numpy}" if numpy else "numpy"), *wanted]


def satisfied(info: TargetInfo, wanted: list[tuple[str, str]]) -> bool:
    """Whether the device's venv already holds every pinned version (and numpy)."""
    if not info.venv:
        return False
    for module, requirement in wanted:
        have = info.runtimes.get(module)
        if have is None or ("==" in requirement and have != requirement.split("==", 1)[1]):
            return False
    return True


def setup_target(
    target: str | Target,
    runtimes: Sequence[str] | None = None,
    from_host: bool = False,
    progress: bool = True,
    options: TargetOptions | None = None,
) -> SetupResult:
    """Make (or bring up to date) edgekit's venv on ``target`` with numpy and ``runtimes`` at this machine's versions."""
    started = time.monotonic()
    opened = parse_target(target, options)
    try:
        with Bar(progress) as bar:
            result = _setup(opened, list(runtimes) if runtimes else default_runtimes(), from_host, bar)
    finally:
        if opened is not target:
            opened.close()
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _setup(target: Target, names: list[str], from_host: bool, bar: Bar) -> SetupResult:
    wanted = requirements(names)
    bar.begin(5, f"reading the facts of {target.name}")
    info = info_from_facts(target, target.facts())
    result = SetupResult(
        target=target.name, venv=f"{info.cache_dir}/{VENV}", python=info.python, runtimes=names, requirements=[r for _, r in wanted]
    )
    if target.address.transport == LOCAL:
        result.notes.append("local runs with this Python's own packages; nothing to set up")
        return result
    if satisfied(info, wanted):
        result.installed = {module: info.runtimes.get(module) for module, _ in wanted}
        result.notes.append(f"already set up with {_listing(result.installed)} (this machine's versions); nothing to do")
        return result
    after = _install(target, info, wanted, from_host, bar)
    result.installed = {module: after.runtimes.get(module) for module, _ in wanted}
    result.source, result.changed = ("host-wheels" if from_host else "device-pip"), True
    missing = [requirement for module, requirement in wanted if not satisfied(after, [(module, requirement)])]
    if missing:
        raise TargetError(f"after setup {target.name} still lacks {', '.join(missing)} in {result.venv}; run the setup again")
    result.notes.append(
        f"installed {_listing(result.installed)} in {result.venv}: this machine's versions, so the device runs what was validated here"
    )
    return result


def missing_runtime(info: TargetInfo, runtime: str) -> str | None:
    """The one-line reason ``runtime`` cannot run on the target, naming the setup command and the pip command; None
    when its venv has it."""
    device = DEVICE_RUNTIMES.get(runtime)
    if device is None:
        return f"runtime {runtime} does not run on a target; use one of {', '.join(DEVICE_RUNTIMES)}"
    if info.venv and info.runtimes.get(device.module):
        return None
    version = host_version(device.distribution)
    pin = f"{device.distribution}=={version}" if version else device.distribution
    where = f"edgekit's venv ({info.cache_dir}/{VENV})" if info.venv else f"a venv of edgekit (no {info.cache_dir}/{VENV})"
    return (
        f"{info.target} has no {device.distribution} in {where}; run `edgekit target setup {info.url or info.target} --runtime {runtime}` "
        f"(add --from-host if its pip has no index), or there: {info.cache_dir}/{VENV}/bin/pip install {pin}"
    )


def _listing(installed: dict[str, str | None]) -> str:
    return ", ".join(f"{module} {version}" for module, version in installed.items())


def _install(target: Target, info: TargetInfo, wanted: list[tuple[str, str]], from_host: bool, bar: Bar) -> TargetInfo:
    venv = f"{info.cache_dir}/{VENV}"
    specs = [requirement for _, requirement in wanted]
    if from_host:
        with tempfile.TemporaryDirectory(prefix="edgekit-wheels-") as folder:
            bar.step(f"downloading {info.arch} wheels for Python {info.python} on this machine")
            wheels = download_wheels(info, [*specs, "pip"], Path(folder))
            bar.step(f"copying {len(wheels)} wheels ({sum(w.stat().st_size for w in wheels) / 2**20:.0f} MB) to {target.name}")
            remote_wheels = f"{info.cache_dir}/{WHEELS}"
            try:
                target.put(wheels, remote_wheels, doing=f"copying wheels to {remote_wheels}")
                bar.step(f"creating the venv {venv}")
                _make_venv(target, info, venv, with_pip=False)
                bar.step(f"installing {', '.join(specs)} on {target.name}")
                pip = next(w for w in wheels if w.name.startswith("pip-"))
                # pip runs from its own wheel, so the venv needs no ensurepip (51 s under emulation) and gets pip too.
                command = [f"{venv}/bin/python", f"{remote_wheels}/{pip.name}/pip", "install", "--no-index", "--find-links", remote_wheels]
                _pip_install(target, command, [*specs, "pip"], from_host=True)
            finally:
                with contextlib.suppress(TargetError):  # a lost connection is the error that matters; the rest is cache
                    target.run(["rm", "-rf", remote_wheels], timeout=120, doing=f"removing {remote_wheels}")
    else:
        bar.step(f"creating the venv {venv}")
        _make_venv(target, info, venv, with_pip=True)
        bar.step(f"installing {', '.join(specs)} with the pip of {target.name}")
        _pip_install(target, [f"{venv}/bin/python", "-m", "pip", "install", "--retries", "1", "--timeout", "20"], specs, from_host=False)
    bar.step(f"checking {venv}")
    return info_from_facts(target, target.facts())


def _make_venv(target: Target, info: TargetInfo, venv: str, with_pip: bool) -> None:
    python = f"{venv}/bin/python"
    if target.run(["test", "-x", python], timeout=60, doing="looking for the venv").rc == 0:
        if not with_pip or target.run([python, "-m", "pip", "--version"], timeout=300, doing="checking the venv's pip").rc == 0:
            return
    system_python = info.python_executable or "python3"
    argv = [system_python, "-m", "venv", "--clear", *([] if with_pip else ["--without-pip"]), venv]
    done = target.run(argv, timeout=VENV_TIMEOUT_S, doing=f"creating the venv {venv}")
    if done.rc != 0:
        if "ensurepip" in done.stderr or "No module named venv" in done.stderr:
            raise TargetError(
                f"python3 on {target.name} cannot make a venv ({_last(done.stderr)}); install python3-venv there "
                "(sudo apt-get install python3-venv), or re-run with --from-host"
            )
        raise TargetError(f"creating the venv {venv} failed on {target.name}: {_last(done.stderr)}")


def _pip_install(target: Target, command: list[str], specs: list[str], from_host: bool) -> None:
    # --no-compile: byte-compiling every installed file doubled the install under emulation (71 s vs 38 s); modules
    # compile on first import instead, into the venv.
    argv = [*command, "--disable-pip-version-check", "--no-input", "--no-cache-dir", "--no-compile", *specs]
    done = target.run(argv, timeout=INSTALL_TIMEOUT_S, doing=f"installing {', '.join(specs)}")
    if done.rc == 0:
        return
    output = done.stdout + done.stderr
    if not from_host and any(marker in output for marker in _NO_INDEX):
        reason = "its certificate check failed" if "CERTIFICATE_VERIFY_FAILED" in output or "SSLError" in output else "no network"
        raise TargetError(
            f"the pip of {target.name} cannot reach a package index ({reason}); re-run with --from-host: "
            f"edgekit target setup {target.address.url} --from-host"
        )
    if "No space left" in output:
        raise TargetError(
            f"the disk of {target.name} is full while installing {', '.join(specs)}; free space there (df -h) and run the setup again"
        )
    raise TargetError(f"pip on {target.name} could not install {', '.join(specs)}: {_last(output)}")


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors[-1] if errors else lines[-1] if lines else "no message")[:300]


def wheel_platforms(info: TargetInfo) -> list[str]:
    """The pip ``--platform`` tags a device takes, newest first: manylinux_2_X down to manylinux2014 for its glibc
    (and the legacy x86-64 aliases), or musllinux for a musl system."""
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(info.arch, info.arch)
    glibc = info.glibc
    if glibc is not None:
        major, minor = glibc
        tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]
        if arch in ("x86_64", "i686"):
            tags += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
        return tags
    if info.libc and info.libc.startswith("musl"):
        return [f"musllinux_1_{m}_{arch}" for m in (2, 1)]
    raise TargetError(
        f"{info.target} reports no glibc version ({info.libc or 'unknown C library'}), so edgekit cannot tell which wheels it takes; "
        "set it up without --from-host, or install numpy and the runtime in its venv by hand"
    )


def download_wheels(info: TargetInfo, specs: list[str], folder: Path) -> list[Path]:
    """``pip download`` the device's wheels on this machine (binary only, for its platform and Python)."""
    python = ".".join(info.python.split(".")[:2])
    platforms = [arg for tag in wheel_platforms(info) for arg in ("--platform", tag)]
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input", "--only-binary=:all:"]
    argv += ["--implementation", "cp", "--python-version", python, *platforms, "--dest", str(folder), *specs]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise TargetError(
            f"pip download on this machine found no {info.arch} wheels for Python {python} of {', '.join(specs)} "
            f"({_last(done.stdout + done.stderr)}); the device needs a runtime version built for it"
        )
    return sorted(folder.glob("*.whl"))
