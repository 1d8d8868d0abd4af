"""`training.fit` on two processes (torchrun, gloo on the CPU) against one, and resume after SIGKILL.

Two processes with batch_size 1 see the same global batch as one process with batch_size 1 and two
accumulated micro-batches: the same samples, and the same noise (the generator of a micro-batch comes
from (seed, step, micro-batch x processes + rank)). One process with batch_size 2 would draw its noise
for both samples from one generator, so its loss differs by more than rounding. What may differ is
rounding: the gradient mean is an fp32 all-reduce over processes instead of a sum of halves in one
process, which moves later losses by ~1e-7 relative; TOLERANCE leaves two decades of margin.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from training.config import load_config
from training.data import make_loader
from training.fit import fit

ROOT = Path(__file__).resolve().parents[1]
TINY = "training/configs/tiny.yaml"
STEPS = 6
TOLERANCE = 1e-5  # relative, on each logged loss
RUN = ["--steps", str(STEPS), "--set", "batch_size=1", "--set", "checkpoint_every=2", "--set", "ema_decay=0.9"]


def losses(out_dir: Path) -> list[float]:
    return [float(row["loss"]) for row in csv.DictReader((out_dir / "metrics.csv").open())]


def torchrun(shard_dir: Path, out_dir: Path, *extra: str) -> list[str]:
    shards = f"{shard_dir}/shard-{{00000..00001}}.tar"
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "training.fit",
            "--config", TINY, "--shards", shards, "--out-dir", str(out_dir), *RUN, *extra]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def two_processes(shard_dir, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("two") / "run"
    started = time.perf_counter()
    result = subprocess.run(torchrun(shard_dir, out), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"2 processes, {STEPS} steps: {time.perf_counter() - started:.1f} s wall")
    return out, result.stdout


def test_two_processes_match_one_process_with_the_same_global_batch(shard_dir, tmp_path, two_processes):
    out, stdout = two_processes
    assert "processes=2" in stdout and "global_batch=2" in stdout, stdout[:500]
    assert stdout.count("device=") == 1  # only the main process logs
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json", "loss_curve.png", "metrics.csv"]
    one = fit(load_config(TINY, shards=f"{shard_dir}/shard-{{00000..00001}}.tar", out_dir=str(tmp_path / "one"), steps=STEPS,
                          batch_size=1, gradient_accumulation_steps=2, checkpoint_every=2, ema_decay=0.9))
    two_losses, one_losses = losses(out), losses(one)
    assert len(two_losses) == len(one_losses) == STEPS
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(two_losses, one_losses))
    print(f"max relative loss difference, 2 processes vs 1 process x 2 micro-batches: {worst:.2e}")
    assert worst <= TOLERANCE, (two_losses, one_losses)
    assert len(set(one_losses)) == STEPS  # the steps saw different samples and noise


def test_resume_after_sigkill_continues_the_loss_sequence(shard_dir, tmp_path, two_processes):
    straight, _ = two_processes
    out = tmp_path / "killed"
    process = subprocess.Popen(torchrun(shard_dir, out), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint" / "state.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)  # torchrun starts them in their own sessions
    for victim in (*workers, psutil.Process(process.pid)):
        victim.send_signal(signal.SIGKILL)  # mid-run, no clean-up
    psutil.wait_procs(workers, timeout=30)
    process.wait()
    killed_at = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    assert killed_at < STEPS, f"the run finished before the kill (checkpoint at step {killed_at}): nothing was resumed"
    result = subprocess.run(torchrun(shard_dir, out, "--resume"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"step={killed_at} consumed={2 * killed_at}" in result.stdout, result.stdout[:500]
    print(f"killed after the checkpoint of step {killed_at}; resumed losses equal the uninterrupted run's: {losses(out) == losses(straight)}")
    assert losses(out) == losses(straight)  # bit for bit: same processes, same reduction order
    for name in ("trainable", "ema", "optimizer"):
        resumed, reference = load_file(out / "checkpoint" / f"{name}.safetensors"), load_file(straight / "checkpoint" / f"{name}.safetensors")
        assert resumed.keys() == reference.keys() and all((resumed[k] == reference[k]).all() for k in reference), name


def test_processes_share_the_one_process_stream_in_batch_chunks(shard_dir):
    shards = f"{shard_dir}/shard-{{00000..00001}}.tar"

    def keys(rank: int, processes: int, count: int, skip: int = 0) -> list[str]:
        loader = make_loader(shards, 2, 16, 28, 1, 10.0, None, seed=3, skip=skip, rank=rank, processes=processes)
        return [batch["key"][0] for batch, _ in zip(loader, range(count))]

    single = keys(0, 1, 8)
    rank0, rank1 = keys(0, 2, 4), keys(1, 2, 4)
    assert [key for pair in zip(rank0, rank1) for key in pair] == single
    assert keys(1, 2, 2, skip=4) == single[5::2][:2]  # resume: skip counts samples of the whole stream
