"""The boards the ssh-target tests run on (tests/rig) behave like real boards: commands run, files arrive
intact, the arm64 one is aarch64, a wrong host key is refused and a killed connection fails the client."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from rig import procs
from rig.fixtures import REQUIRE_BOARDS, loopback_problem, unavailable
from rig.sshd import LoopbackSshd

SSH_LOST = 255  # what ssh exits with when the connection fails or the host key is refused


@pytest.fixture(params=["ssh_board", "arm64_board"])
def board(request) -> LoopbackSshd:
    return request.getfixturevalue(request.param)


@pytest.fixture
def loopback_ready():
    problem = loopback_problem()
    if problem:
        unavailable(problem)


@pytest.mark.board
def test_a_command_runs_by_alias_and_by_the_target_url(board):
    by_alias = board.ssh("echo hello; id -un")
    assert by_alias.returncode == 0, by_alias.stderr
    assert by_alias.stdout.split() == ["hello", board.user]
    # The --target URL spelled out (ssh -p PORT user@host) finds the same identity and known_hosts.
    assert board.url == f"ssh://{board.user}@127.0.0.1:{board.port}"
    argv = ["ssh", "-F", str(board.config_path), "-p", str(board.port), f"{board.user}@{board.host}", "uname -m"]
    by_url = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert (by_url.returncode, by_url.stdout.strip()) == (0, board.arch), by_url.stderr


@pytest.mark.board
def test_a_copied_file_comes_back_byte_identical(board, tmp_path):
    payload = os.urandom(200_000) + bytes(range(256)) * 4
    sent, returned = tmp_path / "sent.bin", tmp_path / "returned.bin"
    sent.write_bytes(payload)
    remote = f"/tmp/edgekit-rig-{uuid.uuid4().hex}.bin"
    board.copy_to(sent, remote)
    assert board.ssh(f"sha256sum {remote}").stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    board.copy_from(remote, returned)
    assert returned.read_bytes() == payload
    # The same bytes through a pipe (how tar over ssh moves a folder).
    piped = subprocess.run(
        board.ssh_argv(f"cat > {remote}.pipe && cat {remote}.pipe && rm {remote} {remote}.pipe"),
        input=payload,
        capture_output=True,
        timeout=120,
    )
    assert piped.returncode == 0 and piped.stdout == payload


@pytest.mark.board
def test_the_arm64_board_is_aarch64_without_numpy_or_onnxruntime(arm64_board):
    probe = "uname -m; python3 -c 'import platform; print(platform.machine())'; python3 -c 'import numpy' 2>/dev/null || echo no-numpy"
    result = arm64_board.ssh(probe + "; python3 -c 'import onnxruntime' 2>/dev/null || echo no-onnxruntime")
    assert result.stdout.split() == ["aarch64", "aarch64", "no-numpy", "no-onnxruntime"], result.stderr
    assert arm64_board.emulated and arm64_board.arch == "aarch64"


@pytest.mark.board
def test_the_arm64_board_writes_to_its_overlay_not_to_the_cached_root(arm64_board):
    marker = f"edgekit-rig-{uuid.uuid4().hex}"
    assert arm64_board.ssh(f"touch /root/{marker}").returncode == 0
    assert (arm64_board.workdir / "upper" / "root" / marker).exists()
    assert not (arm64_board.root / "root" / marker).exists()
    # The board's mounts live in its own mount namespace: the host never sees them.
    with open("/proc/self/mountinfo") as mounts:
        host_mounts = mounts.read()
    assert str(arm64_board.root) not in host_mounts and str(arm64_board.workdir) not in host_mounts


@pytest.mark.board
def test_a_different_host_key_is_refused(board):
    refused = board.ssh("true", config=board.write_mismatched_config())
    assert refused.returncode == SSH_LOST
    assert "Host key verification failed" in refused.stderr


@pytest.mark.board
def test_killing_the_sessions_mid_command_fails_the_client(board):
    client = subprocess.Popen(board.ssh_argv("echo started; exec sleep 120"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline() == "started\n"
        assert board.session_pids()
        board.kill_sessions()
        assert client.wait(timeout=60) == SSH_LOST
    finally:
        client.kill()
        client.communicate()
    assert board.session_pids() == []
    assert board.ssh("echo again").stdout == "again\n"  # the listener survived: later tests still connect


@pytest.mark.board
def test_stop_leaves_no_process_behind(loopback_ready, tmp_path):
    board = LoopbackSshd(tmp_path / "board", alias="short-lived").start()
    listener = board.pid
    client = subprocess.Popen(board.ssh_argv("echo started; exec sleep 120"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert client.stdout.readline() == "started\n"
    sessions = board.session_pids()
    board.stop()
    assert client.wait(timeout=60) == SSH_LOST
    assert [pid for pid in [listener, *sessions] if procs.start_time(pid) is not None] == []


@pytest.mark.board
def test_a_board_whose_test_run_was_killed_is_reaped_by_the_next_start(loopback_ready, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_RIG_CACHE", str(tmp_path / "cache"))  # its own records folder
    owner_code = "from rig.sshd import LoopbackSshd; b = LoopbackSshd(alias='orphan').start(); print(b.pid, flush=True); input()"
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    listener = int(owner.stdout.readline())
    owner.send_signal(signal.SIGKILL)  # the test run dies without stopping its board
    owner.wait()
    assert procs.start_time(listener) is not None
    assert procs.reap_orphaned_boards() == [listener]
    deadline = time.monotonic() + 10
    while procs.start_time(listener) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # killed, waiting for init to collect it
    assert procs.start_time(listener) is None
    assert list((tmp_path / "cache" / "boards").iterdir()) == []


def test_a_missing_board_skips_unless_boards_are_required(monkeypatch):
    monkeypatch.delenv(REQUIRE_BOARDS, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install openssh-server"):
        unavailable("no /usr/sbin/sshd: apt-get install openssh-server")
    monkeypatch.setenv(REQUIRE_BOARDS, "1")
    with pytest.raises(pytest.fail.Exception, match="may not be skipped"):
        unavailable("no /usr/sbin/sshd: apt-get install openssh-server")
