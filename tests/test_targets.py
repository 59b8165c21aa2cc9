"""Targets: --target parsing, the facts a device reports and the ISA class decided from them, and, through the real
sshd of the test rig (tests/rig), `edgekit target info|setup` on an x86 loopback board and an emulated arm64 one."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.device import facts as device_facts
from edgekit.errors import TargetError
from edgekit.hardware import IsaClass, flags_in_cpuinfo, isa_class
from edgekit.targets import DEFAULT_CACHE_DIR, TargetOptions, parse_address, parse_target
from edgekit.targets.info import info_from_facts, target_info
from edgekit.targets.setup import host_version, missing_runtime, requirements, setup_target, wheel_platforms

# /proc/cpuinfo of real boards (first core; the later cores repeat it).
CORTEX_A72 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
CORTEX_A76 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1
"""
NEOVERSE_N2 = """processor\t: 0
BogoMIPS\t: 100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng bti
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd49
CPU revision\t: 0
"""
EPYC_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme de pse tsc msr pae sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""


def simulated_facts(cpuinfo: str, machine: str) -> dict:
    """Facts as edgekit/device/facts.py reports them, for a device with this cpuinfo and ``uname -m``."""
    blocks = device_facts.cpuinfo_blocks(cpuinfo)
    return {
        "machine": machine,
        "cpuinfo": device_facts.first_block_text(cpuinfo),
        "cpu_model": device_facts.cpu_model(blocks),
        "emulated": device_facts.emulation(machine, blocks),
        "logical_cores": len(blocks),
        "python": {"version": "3.11.2", "executable": "/usr/bin/python3", "in_venv": False},
        "libc": {"name": "glibc", "version": "2.36"},
        "packages": {"numpy": None, "onnxruntime": None},
        "cache": {"path": "/home/pi/.cache/edgekit", "free_bytes": 20 * 2**30},
    }


def board_info(cpuinfo: str, machine: str = "aarch64"):
    return info_from_facts(parse_target("ssh://pi@raspberrypi.local"), simulated_facts(cpuinfo, machine))


# ---- the ARM ISA decision ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cpuinfo, isa, core",
    [
        (CORTEX_A72, IsaClass.ARM64, "Cortex-A72"),  # Raspberry Pi 4: NEON only, no dot product
        (CORTEX_A76, IsaClass.ARM64_DOTPROD, "Cortex-A76"),  # Raspberry Pi 5: SDOT (asimddp)
        (NEOVERSE_N2, IsaClass.ARM64_I8MM, "Neoverse-N2"),  # SMMLA (i8mm)
    ],
)
def test_the_arm_isa_class_comes_from_the_features_line(cpuinfo, isa, core):
    assert isa_class(flags_in_cpuinfo(cpuinfo), "aarch64") is isa
    info = board_info(cpuinfo)
    assert (info.isa, info.arch, info.emulated) == (isa, "aarch64", False)
    assert core in info.cpu
    assert info.fp16 == ("asimdhp" in cpuinfo)


def test_a_big_little_cpu_is_named_by_its_cores():
    little = CORTEX_A72.replace("0xd08", "0xd05").split("\n\n")[0]
    assert device_facts.cpu_model(device_facts.cpuinfo_blocks(little + "\n\n" + CORTEX_A76)) == "1x Cortex-A55 + 1x Cortex-A76"


def test_an_aarch64_machine_over_an_x86_cpuinfo_is_emulated_and_plain_arm64():
    info = board_info(EPYC_ZEN4, machine="aarch64")
    assert info.emulated and "qemu-user" in info.emulation and "AMD EPYC" in info.emulation
    assert info.isa is IsaClass.ARM64  # the host's VNNI says nothing about the emulated ARM core
    assert info.cpu_features == [] and "emulator's host" in info.cpu
    native = board_info(EPYC_ZEN4, machine="x86_64")
    assert not native.emulated and native.isa is IsaClass.X86_AVX512_VNNI


# ---- --target -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, transport, host, user, port, cache_dir",
    [
        ("local", "local", "", None, None, DEFAULT_CACHE_DIR),
        ("ssh://raspberrypi.local", "ssh", "raspberrypi.local", None, None, DEFAULT_CACHE_DIR),
        ("ssh://pi@raspberrypi.local:2222", "ssh", "raspberrypi.local", "pi", 2222, DEFAULT_CACHE_DIR),
        ("ssh://root@127.0.0.1:2223/opt/edgekit/", "ssh", "127.0.0.1", "root", 2223, "/opt/edgekit"),
        ("ssh://pi/~/edgekit-cache", "ssh", "pi", None, None, "~/edgekit-cache"),
        ("ssh://[::1]:22", "ssh", "[::1]", None, 22, DEFAULT_CACHE_DIR),
        ("pi", "ssh", "pi", None, None, DEFAULT_CACHE_DIR),  # an ssh_config Host alias
        ("pi@raspberrypi.local", "ssh", "raspberrypi.local", "pi", None, DEFAULT_CACHE_DIR),
    ],
)
def test_target_forms(text, transport, host, user, port, cache_dir):
    address = parse_address(text)
    assert (address.transport, address.host, address.user, address.port, address.cache_dir) == (transport, host, user, port, cache_dir)


def test_names_carry_no_path_and_no_password_and_urls_keep_a_cache_folder():
    assert parse_address("ssh://pi@raspberrypi.local:2222/opt/x").name == "ssh://pi@raspberrypi.local:2222"
    assert parse_address("ssh://raspberrypi.local").display_host == "raspberrypi.local"
    # what a message tells the user to type again names the same cache folder
    assert parse_address("ssh://pi@raspberrypi.local:2222/opt/x").url == "ssh://pi@raspberrypi.local:2222/opt/x"
    assert parse_address("ssh://pi/~/edgekit-cache").url == "ssh://pi/~/edgekit-cache"
    assert parse_address("pi").url == "ssh://pi" and parse_address("local").url == "local"
    assert parse_address(parse_address("ssh://pi/~/c").url).cache_dir == "~/c"


@pytest.mark.parametrize("text", ["ssh://pi:hunter2@raspberrypi.local", "ssh://pi:@raspberrypi.local", "pi:hunter2@raspberrypi.local"])
def test_a_password_in_the_target_is_refused_without_repeating_it(text):
    with pytest.raises(TargetError, match="carries a password") as raised:
        parse_address(text)
    assert "hunter2" not in str(raised.value) and "ssh-copy-id" in str(raised.value)


def test_a_password_is_refused_by_the_cli_in_one_line():
    result = CliRunner().invoke(cli, ["target", "info", "ssh://pi:hunter2@raspberrypi.local"])
    assert result.exit_code == 2 and "carries a password" in result.output
    assert "hunter2" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("ssh://-oProxyCommand=touch%20x", "is not a host name"),  # never reaches ssh as an option
        ("ssh://pi@raspberrypi.local:99999", "port that is not a number"),
        ("adb://1234", "unknown transport 'adb'"),
        ("ssh://pi?x=1", "query or fragment"),
        ("raspberrypi.local:2222", "write ssh://HOST:PORT"),
        ("ssh://", "no host given"),
        ("ssh://-l@pi", "is not a login name"),
    ],
)
def test_a_malformed_target_is_one_line_naming_the_fix(text, message):
    with pytest.raises(TargetError, match=message):
        parse_address(text)


def test_a_missing_ssh_config_is_named(tmp_path, monkeypatch):
    with pytest.raises(TargetError, match="--ssh-config .*does not exist"):
        parse_target("ssh://pi", TargetOptions(ssh_config=tmp_path / "nope"))
    monkeypatch.setenv("EDGEKIT_SSH_CONFIG", str(tmp_path / "nope"))
    with pytest.raises(TargetError, match="EDGEKIT_SSH_CONFIG .*does not exist"):
        parse_target("ssh://pi")


# ---- facts, wheels, requirements ------------------------------------------------------------------------------


def _pythons_3_9() -> list[str]:
    found = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.9*/bin/python3"))]
    return found + [p for p in [shutil.which("python3.9")] if p]  # a pyenv shim may name a Python it will not run


def test_the_facts_probe_runs_on_python_3_9_with_the_standard_library_only():
    python = next((p for p in _pythons_3_9() if subprocess.run([p, "-c", "pass"], capture_output=True).returncode == 0), None)
    if python is None:
        pytest.skip("no Python 3.9 here")
    source = Path(device_facts.__file__).read_bytes()
    done = subprocess.run([python, "-I", "-S", "-", "/nonexistent/cache"], input=source, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["python"]["version"].startswith("3.9") and facts["cache"] == {
        "path": "/nonexistent/cache",
        "exists": False,
        "free_bytes": facts["cache"]["free_bytes"],
    }


def test_local_info_matches_this_machine():
    info = target_info("local")
    assert info.target == "local" and info.isa is isa_class() and not info.emulated
    assert info.runtimes["onnxruntime"] == host_version("onnxruntime")


def test_wheel_tags_follow_the_device_glibc_and_arch():
    info = board_info(CORTEX_A76)
    tags = wheel_platforms(info)
    assert tags[0] == "manylinux_2_36_aarch64" and tags[-1] == "manylinux2014_aarch64" and "manylinux_2_28_aarch64" in tags
    musl = info.model_copy(update={"libc": "musl"})
    assert wheel_platforms(musl) == ["musllinux_1_2_aarch64", "musllinux_1_1_aarch64"]
    with pytest.raises(TargetError, match="no glibc version"):
        wheel_platforms(info.model_copy(update={"libc": None}))


def test_setup_asks_for_this_machines_runtime_versions():
    wanted = dict(requirements(["ort-cpu"]))
    assert wanted["onnxruntime"] == f"onnxruntime=={host_version('onnxruntime')}"
    assert wanted["numpy"] == f"numpy<={host_version('numpy')}"
    with pytest.raises(TargetError, match="a device can be set up with ort-cpu"):
        requirements(["tensorrt"])


def test_a_missing_runtime_names_the_setup_and_the_pip_command():
    message = missing_runtime(board_info(CORTEX_A76), "ort-cpu")
    assert "edgekit target setup ssh://pi@raspberrypi.local --runtime ort-cpu" in message
    assert f"/home/pi/.cache/edgekit/venv/bin/pip install onnxruntime=={host_version('onnxruntime')}" in message


# ---- through the real sshd of the rig -------------------------------------------------------------------------


def invoke(*args: str):
    started = time.monotonic()
    result = CliRunner().invoke(cli, list(args))
    return result, time.monotonic() - started


@pytest.mark.board
def test_info_on_the_x86_board(ssh_board):
    result, _ = invoke("target", "info", ssh_board.url, "--ssh-config", str(ssh_board.config_path), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["transport"], info["host"], info["arch"]) == ("ssh", f"127.0.0.1:{ssh_board.port}", "x86_64")
    assert info["isa"] == isa_class().value and not info["emulated"]


@pytest.mark.board
def test_info_on_the_arm64_board_is_aarch64_arm64_and_emulated(arm64_board):
    result, _ = invoke("target", "info", arm64_board.url, "--ssh-config", str(arm64_board.config_path))
    assert result.exit_code == 0, result.output
    assert "aarch64" in result.output and "emulated:" in result.output
    info = target_info(arm64_board.url, TargetOptions(ssh_config=arm64_board.config_path))
    assert (info.arch, info.isa, info.emulated) == ("aarch64", IsaClass.ARM64, True)
    assert info.os.startswith("Debian") and info.python.startswith("3.")


@pytest.mark.board
def test_a_changed_host_key_is_refused_in_one_line(ssh_board):
    mismatched = ssh_board.write_mismatched_config()
    result, _ = invoke("target", "info", ssh_board.url, "--ssh-config", str(mismatched))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "did not match known_hosts" in lines[0], result.output
    assert f"ssh-keygen -F '[127.0.0.1]:{ssh_board.port}'" in lines[0] and "ssh-keyscan" in lines[0]
    # --accept-new-host-key accepts only keys known_hosts does not hold yet: a changed key is still refused.
    again, _ = invoke("target", "info", ssh_board.url, "--ssh-config", str(mismatched), "--accept-new-host-key")
    assert again.exit_code == 2 and "did not match known_hosts" in again.output


@pytest.mark.board
def test_an_unknown_host_key_is_refused_unless_accepted(ssh_board, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(ssh_board.config_path.read_text().replace(str(ssh_board.known_hosts), str(tmp_path / "known_hosts")))
    (tmp_path / "known_hosts").write_text("")
    refused, _ = invoke("target", "info", ssh_board.url, "--ssh-config", str(config))
    assert refused.exit_code == 2 and "is not in known_hosts" in refused.output and "--accept-new-host-key" in refused.output
    accepted, _ = invoke("target", "info", ssh_board.url, "--ssh-config", str(config), "--accept-new-host-key")
    assert accepted.exit_code == 0, accepted.output
    assert f"[127.0.0.1]:{ssh_board.port}" in (tmp_path / "known_hosts").read_text()


@pytest.mark.board
def test_a_refused_login_and_a_closed_port_are_one_line(ssh_board, tmp_path):
    refused, _ = invoke("target", "info", f"ssh://nobody-here@127.0.0.1:{ssh_board.port}", "--ssh-config", str(ssh_board.config_path))
    assert refused.exit_code == 2 and "refused the login (publickey)" in refused.output and "ssh-copy-id" in refused.output
    closed, _ = invoke("target", "info", "ssh://root@127.0.0.1:1", "--ssh-config", str(ssh_board.config_path))
    assert closed.exit_code == 2 and "connection refused" in closed.output and len(closed.output.strip().splitlines()) == 1


@pytest.mark.board
def test_files_travel_both_ways_into_the_cache_and_atomically(ssh_board, tmp_path):
    target = parse_target(f"{ssh_board.url}{tmp_path}/cache", TargetOptions(ssh_config=ssh_board.config_path))
    payload = tmp_path / "model with space.onnx"
    payload.write_bytes(bytes(range(256)) * 4000)
    with target:
        target.put([payload], f"{target.cache_dir}/work")
        assert (tmp_path / "cache" / "work" / payload.name).read_bytes() == payload.read_bytes()
        assert [p.name for p in (tmp_path / "cache" / "work").iterdir()] == [payload.name]  # no .incoming folder left
        back = target.get(f"{target.cache_dir}/work/{payload.name}", tmp_path / "back" / "copy.onnx")
        assert back.read_bytes() == payload.read_bytes()
        with pytest.raises(TargetError, match="does not exist on"):
            target.get(f"{target.cache_dir}/nothing", tmp_path / "back" / "nothing")
    assert not (tmp_path / "back" / "nothing").exists()


@pytest.mark.board
def test_a_connection_killed_mid_command_is_one_line_and_writes_nothing(ssh_board, tmp_path):
    target = parse_target(f"{ssh_board.url}{tmp_path}/cache", TargetOptions(ssh_config=ssh_board.config_path))
    fifo = tmp_path / "stream"
    with target:
        # A file that streams 1 MB and then stalls: the copy back is under way when the connection dies.
        # (The writer's own output goes to /dev/null first: opening the FIFO blocks, and must not hold the session.)
        writer = f"mkfifo {fifo}; sh -c '(head -c 1000000 /dev/zero; sleep 60) > {fifo}' >/dev/null 2>&1 </dev/null &"
        assert target.run(["sh", "-c", writer], timeout=60).rc == 0
        killer = threading.Timer(2.0, ssh_board.kill_sessions)
        killer.start()
        started = time.monotonic()
        with pytest.raises(TargetError) as raised:
            target.get(str(fifo), tmp_path / "host" / "result.json", doing="copying the result back")
        killer.join()
    message = str(raised.value)
    assert message.startswith(f"lost the connection to {ssh_board.url} while copying the result back; nothing was written")
    assert "\n" not in message and time.monotonic() - started < 30
    assert not (tmp_path / "host").exists() or list((tmp_path / "host").iterdir()) == []  # not even a temporary file


@pytest.mark.slow
@pytest.mark.board
def test_setup_on_the_x86_board_with_its_own_pip(ssh_board, tmp_path):
    url = f"{ssh_board.url}{tmp_path}/cache"
    result, _ = invoke("target", "setup", url, "--ssh-config", str(ssh_board.config_path), "--runtime", "ort-cpu")
    assert result.exit_code == 0, result.output
    assert f"onnxruntime {host_version('onnxruntime')}" in result.output and "this machine's versions" in result.output
    info = target_info(url, TargetOptions(ssh_config=ssh_board.config_path))
    assert info.venv and info.runtimes["onnxruntime"] == host_version("onnxruntime") and info.runtimes["numpy"]
    assert missing_runtime(info, "ort-cpu") is None
    again, _ = invoke("target", "setup", url, "--ssh-config", str(ssh_board.config_path), "--runtime", "ort-cpu")
    assert again.exit_code == 0 and "nothing to do" in again.output


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.slow
@pytest.mark.timeout(900)  # emulated arm64: every model run takes seconds
@pytest.mark.board
def test_setup_on_the_arm64_board_from_host_wheels(arm64_board):
    cache = "/root/edgekit-setup-test"
    url, options = f"{arm64_board.url}{cache}", TargetOptions(ssh_config=arm64_board.config_path)
    upper = arm64_board.workdir / "upper"  # every file the board's processes write lands in its overlay
    before = _files_under(upper)
    info = target_info(url, options)
    assert "edgekit target setup" in missing_runtime(info, "ort-cpu")

    # Its pip cannot verify the index's certificate: the default way says to use --from-host, in one line.
    refused, _ = invoke("target", "setup", url, "--ssh-config", str(arm64_board.config_path), "--runtime", "ort-cpu")
    assert refused.exit_code == 2 and "re-run with --from-host" in refused.output and len(refused.output.strip().splitlines()) == 1

    result = setup_target(url, ["ort-cpu"], from_host=True, progress=False, options=options)
    assert result.changed and result.source == "host-wheels"
    assert result.installed == {"numpy": host_version("numpy"), "onnxruntime": host_version("onnxruntime")}
    again = setup_target(url, ["ort-cpu"], from_host=True, progress=False, options=options)
    assert not again.changed and "nothing to do" in again.notes[0]
    # Nothing outside the cache folder (sshd's own records aside). A folder of the root that something wrote in
    # and emptied again (/tmp) is copied up into the overlay: only what the root did not have counts.
    written = _files_under(upper) - before
    stray = {p for p in written if not p.startswith(cache.lstrip("/")) and not p.startswith(("var/log", "run/"))}
    assert {p for p in stray if not (arm64_board.root / p).is_dir()} == set(), sorted(stray)[:10]

    # onnxruntime imports there (its telemetry files kept inside the cache folder too).
    env = f"XDG_CACHE_HOME={cache}/xdg TMPDIR={cache}"
    check = arm64_board.ssh(f"{env} {cache}/venv/bin/python -c 'import onnxruntime, numpy; print(onnxruntime.__version__)' 2>/dev/null")
    assert check.stdout.strip() == host_version("onnxruntime"), check.stderr
    arm64_board.ssh(f"rm -rf {cache}")
