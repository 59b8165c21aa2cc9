"""torchrun scale-out: 2 CPU processes with gloo on 127.0.0.1 train one model (DDP), rank 0 alone writes
the run directory, a killed rank leaves only complete files and the run resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_photo_folder

from edgekit import files

REPO = Path(__file__).resolve().parents[1]

# Runs `edgekit <args>` as one torchrun worker. With EDGEKIT_TEST_DUMP_RANK_STATE=DIR each rank writes its
# pid at start and, after training, the sha256 of its model's state_dict and its train losses;
# EDGEKIT_TEST_EPOCH_PAUSE=S sleeps after each epoch (room for a kill).
DRIVER = r"""
import hashlib, json, os, sys, time
import torch
torch.set_num_threads(1)
import edgekit.finetuning as module
dump = os.environ.get("EDGEKIT_TEST_DUMP_RANK_STATE")
pause = float(os.environ.get("EDGEKIT_TEST_EPOCH_PAUSE", "0"))
rank = os.environ.get("RANK", "0")
if dump:
    with open(os.path.join(dump, f"pid{rank}"), "w") as handle:
        handle.write(str(os.getpid()))
real_run, real_report = module._Trainer.run, module._Trainer._report
def run(self):
    history, stopped = real_run(self)
    if dump:
        digest = hashlib.sha256()
        for key, value in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        with open(os.path.join(dump, f"rank{rank}.json"), "w") as handle:
            json.dump({"state": digest.hexdigest(), "train_losses": [m.train_loss for m in history]}, handle)
    return history, stopped
def report(self, *args, **kwargs):
    real_report(self, *args, **kwargs)
    time.sleep(pause)
module._Trainer.run, module._Trainer._report = run, report
from edgekit.cli import cli
cli.main(args=sys.argv[1:], prog_name="edgekit")
"""

FINETUNE = [
    "--model",
    "resnet18",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--val-split",
    "0.25",
    "--warmup-epochs",
    "0",
    "--no-augment",
    "--seed",
    "3",
    "--patience",
    "10",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_data(module_tmp):
    return write_photo_folder(module_tmp.mktemp("ddp") / "data", 6, seed=3, size=40)


def torchrun(tmp_path: Path, *args, env_extra=None, nproc: int = 2) -> subprocess.Popen:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "GLOO_SOCKET_IFNAME": "lo",
        "EDGEKIT_CACHE_DIR": str(tmp_path / "feature-cache"),
        **(env_extra or {}),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(driver),
        "finetune",
        *map(str, args),
    ]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return process.returncode, stdout + stderr


def _complete_files(directory: Path) -> list[str]:
    """Every file under a final (non-hidden) name parses completely; returns their names."""
    names = []
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        names.append(path.name)
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".pt":
            files.load_torch(path)
    return names


def _rank_states(dump: Path) -> list[dict]:
    return [json.loads((dump / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.slow
def test_two_gloo_ranks_train_one_model(tiny_data, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    out = tmp_path / "run"
    code, output = finish(
        torchrun(
            tmp_path,
            "--data",
            tiny_data,
            "--out",
            out,
            "--strategy",
            "full",
            "--epochs",
            "3",
            env_extra={"EDGEKIT_TEST_DUMP_RANK_STATE": str(dump)},
        )
    )
    assert code == 0, output[-3000:]
    rank0, rank1 = _rank_states(dump)
    assert rank0["state"] == rank1["state"]  # weights and BatchNorm statistics alike
    assert rank0["train_losses"] == rank1["train_losses"]  # reduced across ranks: one number for the job
    assert rank0["train_losses"][-1] < rank0["train_losses"][0]
    metrics = json.loads((out / "metrics.json").read_text())
    card = json.loads((out / "edgekit.json").read_text())
    assert metrics["world_size"] == 2 and card["world_size"] == 2 and card["device"] == "cpu x2 (DDP)"
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert _complete_files(out) == ["edgekit.json", "metrics.json", "model.pt"]  # checkpoint removed; no stray files
    assert output.count("run written to") == 2  # every rank reports the same reduced result


@pytest.mark.slow
def test_a_killed_rank_leaves_complete_files_and_the_run_resumes(tiny_data, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    out = tmp_path / "run"
    args = ["--data", tiny_data, "--out", out, "--strategy", "partial", "--epochs", "4"]
    process = torchrun(tmp_path, *args, env_extra={"EDGEKIT_TEST_DUMP_RANK_STATE": str(dump), "EDGEKIT_TEST_EPOCH_PAUSE": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None and not (out / "metrics.json").exists():
        time.sleep(0.05)
    assert process.poll() is None, finish(process)[1][-3000:]
    os.kill(int((dump / "pid1").read_text()), signal.SIGKILL)
    code, output = finish(process)
    assert code != 0
    left = _complete_files(out)
    assert "checkpoint.pt" in left, left
    resumed = torchrun(tmp_path, *args, "--resume", env_extra={"EDGEKIT_TEST_DUMP_RANK_STATE": str(dump)})
    code, output = finish(resumed)
    assert code == 0, output[-3000:]
    rank0, rank1 = _rank_states(dump)
    assert rank0["state"] == rank1["state"]
    assert [e["epoch"] for e in json.loads((out / "metrics.json").read_text())["epochs"]] == [1, 2, 3, 4]
    assert _complete_files(out) == ["edgekit.json", "metrics.json", "model.pt"]


@pytest.mark.slow
def test_head_solve_under_torchrun_runs_once_on_rank_0(tiny_data, tmp_path):
    out = tmp_path / "run"
    code, output = finish(torchrun(tmp_path, "--data", tiny_data, "--out", out, "--strategy", "head", "--l2", "0.01"))
    assert code == 0, output[-3000:]
    assert "needs no scale-out" in output and output.count("run written to") == 1
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 1
