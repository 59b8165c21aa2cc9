"""CLI for `edgekit target info` and `edgekit target setup`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .output import console, styled

TARGET_HELP = "local, ssh://[user@]host[:port][/cache/dir], or an ssh_config Host alias."


def connection_options(function):
    """--ssh-config and --accept-new-host-key, shared by every command that takes a target."""
    function = click.option(
        "--accept-new-host-key",
        is_flag=True,
        default=False,
        help="Accept and remember the host key of a device known_hosts does not know yet (OpenSSH's accept-new); a changed key is still refused.",
    )(function)
    return click.option(
        "--ssh-config",
        type=click.Path(path_type=Path),
        default=None,
        help="OpenSSH config file to use (ssh -F) instead of ~/.ssh/config [env: EDGEKIT_SSH_CONFIG].",
    )(function)


def target_options(ssh_config: Path | None, accept_new_host_key: bool):
    from ..targets import TargetOptions

    return TargetOptions(ssh_config=ssh_config, accept_new_host_key=accept_new_host_key)


@click.group("target")
def target_group():
    """Devices to measure on: this machine (local) or a board over ssh.

    A target is reached with your own OpenSSH setup (keys, agent, ~/.ssh/config, known_hosts). On the device
    edgekit needs only python3 (>= 3.9); `setup` gives it a venv with numpy and the runtimes at this machine's
    versions, in a cache folder (~/.cache/edgekit there) outside which nothing is written.

    \b
    edgekit target setup ssh://pi@raspberrypi.local                 # onnxruntime etc. at this machine's versions
    edgekit target setup ssh://pi@raspberrypi.local --from-host     # when the Pi's pip cannot reach an index
    edgekit target info ssh://pi@raspberrypi.local                  # arch, ISA class, cores, runtimes, temperature
    edgekit target info pi --json                                   # a Host alias of ~/.ssh/config, as JSON
    """


@target_group.command("info")
@click.argument("target", metavar="TARGET")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON (a TargetInfo) instead of a table.")
def info_command(target, ssh_config, accept_new_host_key, as_json):
    """What edgekit knows of TARGET: arch, CPU, ISA class, cores, memory, OS, Python, runtimes, thermal readings.

    TARGET is local, ssh://[user@]host[:port][/cache/dir] or an ssh_config Host alias.

    \b
    edgekit target info ssh://pi@raspberrypi.local
    edgekit target info ssh://root@127.0.0.1:2223 --ssh-config board.config --json
    """
    from ..targets.info import target_info

    info = target_info(target, target_options(ssh_config, accept_new_host_key))
    if as_json:
        click.echo(info.to_json())
        return
    show_info(info)


def show_info(info) -> None:
    """The facts as a two-column table, then the emulation warning if any."""
    table = Table("", "", show_header=False, box=None, pad_edge=False)
    frequencies = [f for f in info.frequencies if f.current_mhz]
    rows = [
        ("target", info.target),
        ("arch", info.arch),
        ("ISA class", info.isa.value),
        ("CPU", info.cpu or "unknown"),
        ("board", info.board),
        ("features", " ".join(info.cpu_features) or None),
        ("cores", _cores(info)),
        ("memory", f"{info.memory_gb} GiB ({info.memory_available_gb} GiB available)" if info.memory_gb else None),
        ("OS", " / ".join(part for part in (info.os, info.kernel, info.libc) if part)),
        ("Python", f"{info.python} ({info.python_executable})"),
        ("runtimes", ", ".join(f"{m} {v}" for m, v in info.runtimes.items() if v) or "none (run `edgekit target setup`)"),
        ("cache", f"{info.cache_dir} ({info.cache_free_gb} GiB free)" + ("" if info.venv else ", no venv yet")),
        ("thermal", ", ".join(f"{t.type or t.zone} {t.celsius:.1f} C" for t in info.thermal) or None),
        ("frequency", ", ".join(f"cpu{f.cpu} {f.current_mhz:.0f}/{f.max_mhz or 0:.0f} MHz" for f in frequencies[:8]) or None),
    ]
    for key, value in rows:
        if value:
            table.add_row(styled((key, "bold")), str(value))  # printed literally (edgekit.display)
    console.print(table)
    if info.emulated:
        console.print(styled(("emulated:", "bold yellow"), f" {info.emulation}; timings there are not evidence of a device's speed"))


def _cores(info) -> str | None:
    if not info.logical_cores:
        return None
    physical = f", {info.physical_cores} physical" if info.physical_cores else ""
    usable = f", {info.usable_cores} usable" if info.usable_cores and info.usable_cores != info.logical_cores else ""
    return f"{info.logical_cores} logical{physical}{usable}"


@target_group.command("setup")
@click.argument("target", metavar="TARGET")
@click.option(
    "--runtime",
    "runtimes",
    help="Runtimes to install, comma-separated: ort-cpu, openvino, executorch, litert, ncnn [default: those this machine has, at least ort-cpu; executorch, litert and ncnn only when named].",
)
@click.option(
    "--from-host",
    is_flag=True,
    default=False,
    help="Download the device's wheels on this machine and copy them over (for a device whose pip cannot reach an index).",
)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON (a SetupResult).")
def setup_command(target, runtimes, from_host, ssh_config, accept_new_host_key, as_json):
    """Give TARGET a venv (in its cache folder) with numpy and the runtimes at this machine's versions.

    The same onnxruntime version as here, because exports are validated here. A second setup with the same
    versions changes nothing.

    \b
    edgekit target setup ssh://pi@raspberrypi.local
    edgekit target setup ssh://pi@raspberrypi.local --runtime ort-cpu,openvino --from-host
    edgekit target setup ssh://me@board:2222/opt/edgekit-cache        # another cache folder on the device
    """
    from ..targets.setup import setup_target

    names = [part.strip() for part in runtimes.split(",") if part.strip()] if runtimes else None
    result = setup_target(target, names, from_host=from_host, progress=not as_json, options=target_options(ssh_config, accept_new_host_key))
    if as_json:
        click.echo(result.to_json())
        return
    how = {"host-wheels": "wheels downloaded on this machine", "device-pip": "the device's pip", "none": "nothing installed"}[result.source]
    console.print(styled((result.target, "bold"), f": Python {result.python}, venv {result.venv} ({how}, {result.seconds:.0f} s)"))
    for note in result.notes:
        console.print(note)


COMMANDS = [target_group]
