"""benchmarks/gpu_smoke.py's CPU path and the helpers it shares with benchmarks/training_memory.py.

The GPU figures themselves cannot be produced here (no CUDA); what runs here: the no-CUDA exit,
the exact parameter counts of the paper model on the meta device, the widened model's behaviour on a
tiny I2VGenXLUNet, block checkpointing, the smoke run's training loop on the CPU, and a missing
`paper` backend being reported as a skipped stage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_smoke
import training_memory

TINY_UNET = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "cross_attention_dim": 8,
    "attention_head_dim": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
}
TINY_LATENTS = {"frames": 3, "height": 8, "width": 8}


def tiny_inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return training_memory.unet_inputs(2, TINY_LATENTS["frames"], TINY_LATENTS["height"], TINY_LATENTS["width"], generator=generator, cross_attention_dim=8)


def test_without_cuda_the_script_prints_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py")], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_smoke: skipped: no CUDA device"), done.stdout


def test_paper_model_parameter_counts_are_exact():
    counts = training_memory.parameter_counts()
    assert counts["i2vgen_xl_unet"] == 1_420_469_224
    # conv_in gains 8 input channels (noisy points, cond again), conv_out 4 output channels (+ bias), 3x3 kernels
    assert counts["widened_unet"] - counts["i2vgen_xl_unet"] == 8 * 320 * 9 + 4 * 320 * 9 + 4
    assert counts["trainable"] == counts["widened_unet"] + counts["entry_attention"]
    assert counts["entry_attention"] < 10_000
    assert counts["frozen"] == counts["vae"] + counts["text_encoder"] + counts["image_encoder"]


def test_widened_model_starts_as_the_rgb_model_and_reads_the_point_latents():
    torch.manual_seed(0)
    rgb_unet = training_memory.I2VGenXLUNet(**TINY_UNET).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = rgb_unet(inputs["noisy"][:, :4], inputs["timestep"], inputs["fps"], inputs["image_latents"], inputs["image_embeddings"], inputs["text"]).sample
        model = training_memory.PaperVideoPointUNet(rgb_unet).eval()
        output = model(**inputs)
    assert output.shape == inputs["noisy"].shape
    assert torch.equal(output[:, :4], expected)
    assert torch.all(output[:, 4:] == 0)

    with torch.no_grad():
        model.unet.conv_in.points.weight.normal_()
        changed_points = {**inputs, "noisy": torch.cat([inputs["noisy"][:, :4], torch.randn_like(inputs["noisy"][:, 4:])], dim=1)}
        assert not torch.allclose(model(**inputs)[:, :4], model(**changed_points)[:, :4])


def test_block_checkpointing_keeps_gradients_and_saves_less():
    torch.manual_seed(0)
    model = training_memory.PaperVideoPointUNet.from_config(TINY_UNET).train()
    with torch.no_grad():
        model.unet.conv_out.points.weight.normal_(0, 0.1)
    inputs, target = tiny_inputs(), torch.randn(2, 8, TINY_LATENTS["frames"], TINY_LATENTS["height"], TINY_LATENTS["width"])

    def gradients():
        torch.manual_seed(1)  # the temporal convolutions have dropout: same draws in both runs
        model.zero_grad()
        training_memory.v_prediction_loss(model, inputs, target).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    plain_saved = training_memory.measure_saved_bytes(model, inputs, None)
    blocks = training_memory.checkpoint_unet_blocks(model.unet)
    checkpointed = gradients()
    checkpointed_saved = training_memory.measure_saved_bytes(model, inputs, blocks)
    assert plain.keys() == checkpointed.keys() and len(plain) > 50
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    assert checkpointed_saved.activations < plain_saved.activations / 2
    assert 0 < plain_saved.largest_block < plain_saved.activations


def test_linear_fit_recovers_known_coefficients():
    coefficients = [5e6, 2e5, 3e4, 700.0]
    values = [sum(c * f for c, f in zip(coefficients, training_memory.features(*size))) for size in training_memory.MEASURE_SIZES]
    fitted, residual = training_memory.fit_linear(training_memory.MEASURE_SIZES, values)
    assert residual < 1e-9
    torch.testing.assert_close(torch.tensor(fitted), torch.tensor(coefficients, dtype=torch.float64), rtol=1e-6, atol=1e-3)


def test_training_stages_run_on_the_cpu_with_a_random_init(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(gpu_smoke, "I2VGEN_XL", "pointvid-test/not-a-cached-model")
    build, train = gpu_smoke.training_stages(torch.device("cpu"), steps=2, config=TINY_UNET, latents=TINY_LATENTS)
    assert build.note.startswith("random init from the published config (pointvid-test/not-a-cached-model not cached")
    assert train.seconds > 0 and train.peak_bytes is None  # peak memory is a CUDA figure
    assert "2 steps" in train.stage and "loss" in train.note
    assert "skipped" not in build.line() + train.line()


def test_pipeline_reports_a_missing_paper_backend_as_skipped(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-qwen"
    for name, value in {"HF_HUB_OFFLINE": "1", "POINTVID_DEVICE": "cpu", "POINTVID_LLM_LOCAL_MODEL": str(missing)}.items():
        monkeypatch.setenv(name, value)
    manifest = gpu_smoke.write_synthetic_manifest(tmp_path, 1)
    results = gpu_smoke.pipeline_stages(torch.device("cpu"), tmp_path / "data", manifest, 1)
    by_stage = {r.stage: r for r in results}
    assert by_stage["clips"].seconds is not None and by_stage["clips"].note.startswith("1 accepted")
    assert by_stage["object_prompts"].seconds is None and str(missing) in by_stage["object_prompts"].note
    assert by_stage["object_prompts"].line().strip().startswith("object_prompts") and "skipped:" in by_stage["object_prompts"].line()
    later = results[[r.stage for r in results].index("object_prompts") + 1 :]
    assert later and all(r.seconds is None and r.note == "needs the object_prompts stage's output" for r in later)
