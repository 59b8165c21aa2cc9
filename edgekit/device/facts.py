"""What a target is, as one JSON line on stdout: run on the device as ``python3 - [CACHE_DIR] < facts.py``.

Standard library only, Python >= 3.9, nothing imported that costs time: under emulation (qemu-user) every module
import is slow, and runtimes are found with ``importlib.util.find_spec`` and their versions read from package
metadata, never imported.

The host decides with these facts (the ISA class from the cpuinfo text by ``edgekit.hardware.isa_class``, the wheel
tags from ``machine`` and ``libc``), so the device only reports what it reads; the exception is ``emulated``,
which compares two readings only the device has (``uname -m`` and the CPU /proc/cpuinfo describes).
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import sys

FACTS_VERSION = 1

# module -> the distributions that install it (the first one found names the version)
RUNTIME_PACKAGES = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "openvino": ("openvino",),
    "executorch": ("executorch",),
    "ai_edge_litert": ("ai-edge-litert",),
    "tflite_runtime": ("tflite-runtime",),
    "ncnn": ("ncnn",),
}

# (CPU implementer, CPU part) in /proc/cpuinfo -> core name: arm64 kernels print no "model name".
ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77",
    ("0x41", "0xd0e"): "Cortex-A76AE",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd42"): "Cortex-A78AE",
    ("0x41", "0xd44"): "Cortex-X1",
    ("0x41", "0xd46"): "Cortex-A510",
    ("0x41", "0xd47"): "Cortex-A710",
    ("0x41", "0xd48"): "Cortex-X2",
    ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4a"): "Neoverse-E1",
    ("0x41", "0xd4b"): "Cortex-A78C",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x41", "0xd80"): "Cortex-A520",
    ("0x41", "0xd81"): "Cortex-A720",
    ("0x41", "0xd82"): "Cortex-X4",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
ARM_MACHINES = ("aarch64", "arm64", "armv8l", "armv8b")


def read_text(path: str, limit: int = 1 << 20) -> str | None:
    """A small text file from /proc, /sys or /etc; None where it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit)
    except OSError:
        return None


def cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per processor block (key: value lines)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def cpu_model(blocks: list[dict[str, str]]) -> str | None:
    """ "AMD EPYC 9R14 ...", or the ARM cores by name and count ("4x Cortex-A55 + 4x Cortex-A76")."""
    for block in blocks:
        if block.get("model name"):
            return block["model name"]
    counts: dict[str, int] = {}
    for block in blocks:
        implementer, part = block.get("CPU implementer"), block.get("CPU part")
        if part:
            name = ARM_PARTS.get((str(implementer).lower(), part.lower()), f"implementer {implementer} part {part}")
            counts[name] = counts.get(name, 0) + 1
    if counts:
        return " + ".join(f"{count}x {name}" for name, count in counts.items())
    for block in blocks:  # 32-bit ARM kernels and some vendors
        if block.get("Hardware") or block.get("Processor"):
            return block.get("Processor") or block.get("Hardware")
    return None


def first_block_text(text: str) -> str:
    """The first processor block of /proc/cpuinfo (the host reads its flags or Features line)."""
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip() and lines:
            break
        if line.strip():
            lines.append(line)
    return "\n".join(lines)


def emulation(machine: str, blocks: list[dict[str, str]]) -> str | None:
    """Why this looks like user-mode emulation (an ARM ``uname -m`` over an x86 CPU's cpuinfo, or the reverse),
    or None. qemu-user passes the host's /proc/cpuinfo through, so the two readings contradict each other."""
    if not blocks:
        return None
    first = blocks[0]
    described = first.get("model name") or first.get("vendor_id") or "another CPU"
    x86_cpu = "flags" in first and ("vendor_id" in first or "sse2" in first.get("flags", "").split())
    arm_cpu = "Features" in first or "CPU implementer" in first
    machine = machine.lower()
    if machine in ARM_MACHINES and x86_cpu:
        return f"uname -m says {machine} but /proc/cpuinfo describes an x86 CPU ({described}): user-mode emulation such as qemu-user"
    if machine in X86_MACHINES and arm_cpu and not x86_cpu:
        return f"uname -m says {machine} but /proc/cpuinfo describes an ARM CPU: an x86 emulator on an ARM host"
    return None


def physical_cores(blocks: list[dict[str, str]]) -> int | None:
    """Cores without SMT siblings: unique (physical id, core id) on x86, unique sibling sets from /sys elsewhere."""
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    if pairs:
        return len(pairs)
    siblings = set()
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list"):
        text = read_text(path)
        if text:
            siblings.add(text.strip())
    return len(siblings) or None


def memory() -> dict[str, int | None]:
    """MemTotal and MemAvailable from /proc/meminfo, in bytes."""
    found: dict[str, int | None] = {"total": None, "available": None}
    for line in (read_text("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable") and value.split():
            found["total" if key == "MemTotal" else "available"] = int(value.split()[0]) * 1024
    return found


def os_release() -> dict[str, str]:
    """PRETTY_NAME, ID and VERSION_ID of /etc/os-release (or /usr/lib/os-release)."""
    text = read_text("/etc/os-release") or read_text("/usr/lib/os-release") or ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("PRETTY_NAME", "ID", "VERSION_ID"):
            fields[key] = value.strip().strip('"')
    return fields


def libc() -> dict[str, str | None]:
    """The C library and its version ("glibc", "2.36"), which decides the manylinux wheels the device takes."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # type: ignore[union-attr]
        return {"name": name, "version": version}
    except (AttributeError, ValueError, OSError):
        pass
    musl = glob.glob("/lib/ld-musl-*.so.1")
    return {"name": "musl" if musl else None, "version": None}


def packages() -> dict[str, str | None]:
    """Module -> installed version (None: not importable here), without importing anything."""
    import importlib.util
    from importlib import metadata

    found: dict[str, str | None] = {}
    for module, distributions in RUNTIME_PACKAGES.items():
        try:
            present = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            present = False
        version = None
        if present:
            version = "unknown"
            for distribution in distributions:
                try:
                    version = metadata.version(distribution)
                    break
                except metadata.PackageNotFoundError:
                    continue
        found[module] = version
    return found


def thermal() -> list[dict]:
    """Each thermal zone's type and temperature in degrees Celsius (/sys/class/thermal)."""
    readings = []
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = read_text(os.path.join(zone, "temp"))
        try:
            celsius = int(str(raw).strip()) / 1000.0
        except ValueError:
            continue
        kind = read_text(os.path.join(zone, "type"))
        readings.append({"zone": os.path.basename(zone), "type": kind.strip() if kind else None, "celsius": celsius})
    return readings


def _khz_to_mhz(text: str | None) -> float | None:
    try:
        return int(str(text).strip()) / 1000.0
    except ValueError:
        return None


def frequencies() -> list[dict]:
    """Each CPU's current and maximum clock (MHz) and governor (/sys/devices/system/cpu/cpu*/cpufreq)."""
    readings = []
    paths = glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq")
    for path in sorted(paths, key=lambda p: int(p.split("/")[-2][3:])):
        governor = read_text(os.path.join(path, "scaling_governor"))
        readings.append(
            {
                "cpu": int(path.split("/")[-2][3:]),
                "current_mhz": _khz_to_mhz(read_text(os.path.join(path, "scaling_cur_freq"))),
                "max_mhz": _khz_to_mhz(read_text(os.path.join(path, "cpuinfo_max_freq"))),
                "governor": governor.strip() if governor else None,
            }
        )
    return readings


def board_model() -> str | None:
    """The device-tree model ("Raspberry Pi 4 Model B Rev 1.4"), where the board has one."""
    text = read_text("/proc/device-tree/model") or read_text("/sys/firmware/devicetree/base/model")
    return (text.strip("\x00\n ") or None) if text else None


def cache_folder(path: str | None) -> dict:
    """The cache folder as an absolute path on the device, and the free space where it is (or would be)."""
    resolved = os.path.abspath(os.path.expanduser(path or "~/.cache/edgekit"))
    probe = resolved
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    return {"path": resolved, "exists": os.path.isdir(resolved), "free_bytes": free}


def collect(cache_dir: str | None = None) -> dict:
    """Every fact, as a JSON-ready dict."""
    cpuinfo = read_text("/proc/cpuinfo") or ""
    blocks = cpuinfo_blocks(cpuinfo)
    machine = platform.machine()
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "facts_version": FACTS_VERSION,
        "machine": machine,
        "system": platform.system(),
        "kernel": platform.release(),
        "hostname": platform.node(),
        "cpu_model": cpu_model(blocks),
        "cpuinfo": first_block_text(cpuinfo),
        "board": board_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(affinity(0)) if affinity else os.cpu_count(),
        "physical_cores": physical_cores(blocks),
        "memory": memory(),
        "os": os_release(),
        "libc": libc(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "in_venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
        },
        "packages": packages(),
        "thermal": thermal(),
        "frequencies": frequencies(),
        "emulated": emulation(machine, blocks),
        "cache": cache_folder(cache_dir),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(collect(argv[0] if argv else None), sort_keys=True))


if __name__ == "__main__":
    main()
