"""`python -m training.fit` on shards written by the curation pipeline, with the tiny config."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from training.config import load_config
from training.data import make_loader
from training.fit import STAGE_LOSSES, build_model, fit, load_checkpoint, main, step_generator

TINY = "training/configs/tiny.yaml"


def losses(out_dir) -> list[float]:
    return [float(row["loss"]) for row in csv.DictReader((out_dir / "metrics.csv").open())]


def config(shard_dir, out_dir, **overrides):
    return load_config(TINY, shards=f"{shard_dir}/shard-{{00000..00001}}.tar", out_dir=str(out_dir), **overrides)


def test_training_lowers_the_loss_on_a_fixed_evaluation_batch(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "run", steps=30)
    batch = next(iter(make_loader(cfg.shards, cfg.frames, cfg.height, cfg.width, 2, cfg.depth_max, None, seed=99)))

    def evaluation_loss(model) -> float:
        with torch.no_grad():
            return float(STAGE_LOSSES["augment"](model, batch, cfg, torch.Generator().manual_seed(7))[0])

    torch.manual_seed(cfg.seed)
    before = evaluation_loss(build_model(cfg))
    fit(cfg)
    trained = build_model(cfg)
    load_checkpoint(tmp_path / "run" / "checkpoint", trained, optimizer=None)
    after = evaluation_loss(trained)
    assert after < 0.9 * before, (before, after)  # same batch, noise and timesteps: a real decrease
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert len(losses(tmp_path / "run")) == 30


def test_resume_repeats_the_uninterrupted_loss_sequence(shard_dir, tmp_path):
    fit(config(shard_dir, tmp_path / "straight", steps=6))
    fit(config(shard_dir, tmp_path / "resumed", steps=3))
    fit(config(shard_dir, tmp_path / "resumed", steps=6), resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6 and state["consumed"] == 12


def test_regularize_stage_adds_finite_point_losses_from_the_command_line(shard_dir, tmp_path):
    out = tmp_path / "regularize"
    assert main(["--config", TINY, "--shards", f"{shard_dir}/shard-00000.tar", "--stage", "regularize", "--steps", "2", "--out-dir", str(out)]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2
    for row in rows:
        terms = {name: float(row[name]) for name in ("l_ddim", "l_recon", "l_rigid")}
        assert all(torch.isfinite(torch.tensor(v)) and v > 0 for v in terms.values()), terms
        cfg = load_config(TINY)
        total = cfg.lambda_ddim * terms["l_ddim"] + cfg.lambda_recon * terms["l_recon"] + cfg.lambda_rigid * terms["l_rigid"]
        assert abs(float(row["loss"]) - total) < 1e-4 * max(1.0, total)


def test_step_randomness_depends_only_on_seed_and_step(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path)
    a, b = step_generator(cfg, 5), step_generator(cfg, 5)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))


def test_gradient_checkpointing_recomputes_the_unet_blocks_and_keeps_the_loss(shard_dir, tmp_path):
    plain = fit(config(shard_dir, tmp_path / "plain", steps=2))
    checkpointed = fit(config(shard_dir, tmp_path / "checkpointed", steps=2, gradient_checkpointing=True))
    assert losses(checkpointed) == losses(plain)  # RNG state preserved, same arithmetic

    cfg = config(shard_dir, tmp_path)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).train()
    model.enable_gradient_checkpointing()
    calls = []
    model.unet.down_blocks[0].resnets[0].register_forward_hook(lambda *args: calls.append(1))
    batch = next(iter(make_loader(cfg.shards, cfg.frames, cfg.height, cfg.width, 1, cfg.depth_max, None, seed=0)))
    STAGE_LOSSES["augment"](model, batch, cfg, torch.Generator().manual_seed(0))[0].backward()
    assert len(calls) == 2  # forward, then again in the backward pass


def test_ema_is_the_decayed_average_of_the_trainable_weights(shard_dir, tmp_path):
    cfg = config(shard_dir, tmp_path / "ema", steps=1, ema_decay=0.75)
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg).trainable_state_dict()
    fit(cfg)
    trained = load_file(tmp_path / "ema" / "checkpoint" / "trainable.safetensors")
    ema = load_file(tmp_path / "ema" / "checkpoint" / "ema.safetensors")
    assert ema.keys() == trained.keys()
    changed = [k for k in ema if not torch.equal(trained[k], initial[k])]
    assert changed
    for key in ema:
        torch.testing.assert_close(ema[key], 0.75 * initial[key] + 0.25 * trained[key])


def test_bf16_mixed_precision_trains_fp32_weights(shard_dir, tmp_path):
    """In a subprocess: accelerate fixes the precision once per process, and this one already runs in fp32."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bf16"
    command = [sys.executable, "-m", "training.fit", "--config", TINY, "--shards", f"{shard_dir}/shard-00000.tar", "--steps", "2",
               "--out-dir", str(out), "--set", "mixed_precision=bf16"]
    result = subprocess.run(command, cwd=root, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision=bf16 processes=1" in result.stdout, result.stdout[:500]
    assert all(0 < loss < 10 for loss in losses(out)) and len(losses(out)) == 2
    assert {value.dtype for value in load_file(out / "checkpoint" / "trainable.safetensors").values()} == {torch.float32}
