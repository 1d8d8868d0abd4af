"""`python -m training.sample` from a checkpoint of the tiny config, with and without SimDrop."""

import io
import subprocess
import sys
from pathlib import Path

import av
import torch
from PIL import Image
from tiny_i2vgen_xl import save_tiny_i2vgen_xl

from pointvid_pipeline.storage.shard_format import read_samples
from training.config import load_config
from training.fit import fit
from training.fit import main as fit_main
from training.sample import load_model, main

TINY = "training/configs/tiny.yaml"
REPO = Path(__file__).resolve().parents[1]


def first_frame_png(shard: Path, path: Path) -> Path:
    members = next(iter(read_samples(shard).values()))
    frame = next(av.open(io.BytesIO(members["mp4"])).decode(video=0)).to_ndarray(format="rgb24")
    Image.fromarray(frame).save(path)
    return path


def decoded_frames(path: Path) -> list:
    return [f.to_ndarray(format="rgb24") for f in av.open(str(path)).decode(video=0)]


def test_sample_writes_video_and_tracks_and_simdrop_changes_the_result(shard_dir, tmp_path):
    shards = f"{shard_dir}/shard-00000.tar"
    fit(load_config(TINY, shards=shards, out_dir=str(tmp_path / "main"), steps=2))
    fit(load_config(TINY, shards=shards, out_dir=str(tmp_path / "reference"), steps=2, seed=1))
    image = first_frame_png(shard_dir / "shard-00000.tar", tmp_path / "first.png")
    common = ["--checkpoint", str(tmp_path / "main" / "checkpoint"), "--image", str(image), "--prompt", "a duck falls", "--steps", "3"]

    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "simdrop"), "--reference-checkpoint", str(tmp_path / "reference" / "checkpoint"), "--simdrop-scale", "2.0"]) == 0

    cfg = load_config(TINY)
    plain = decoded_frames(tmp_path / "plain" / "video.mp4")
    assert len(plain) == cfg.frames and plain[0].shape == (cfg.height, cfg.width, 3)
    assert (tmp_path / "plain" / "tracks.png").stat().st_size > 1000
    simdrop = decoded_frames(tmp_path / "simdrop" / "video.mp4")
    assert any((a != b).any() for a, b in zip(plain, simdrop))


def test_fit_widens_a_saved_i2vgen_xl_pipeline_and_sampling_uses_guidance(shard_dir, tmp_path):
    """Done-when of the training issue: `training.fit --pretrained DIR` on the default shards, DIR a tiny
    I2VGen-XL pipeline folder, then `training.sample` with classifier-free guidance from that checkpoint."""
    save_tiny_i2vgen_xl(tmp_path / "i2vgen-xl")
    out = tmp_path / "run"
    shards = f"{shard_dir}/shard-{{00000..00001}}.tar"
    assert fit_main(["--config", TINY, "--pretrained", str(tmp_path / "i2vgen-xl"), "--shards", shards, "--steps", "2", "--out-dir", str(out)]) == 0
    losses = [float(row.split(",")[1]) for row in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(0 < loss < 100 for loss in losses)
    image = first_frame_png(shard_dir / "shard-00000.tar", tmp_path / "first.png")
    common = ["--checkpoint", str(out / "checkpoint"), "--image", str(image), "--prompt", "a duck falls", "--steps", "3"]
    assert main([*common, "--out", str(tmp_path / "guided")]) == 0
    assert main([*common, "--out", str(tmp_path / "unguided"), "--guidance-scale", "1"]) == 0
    guided, unguided = decoded_frames(tmp_path / "guided" / "video.mp4"), decoded_frames(tmp_path / "unguided" / "video.mp4")
    assert len(guided) == load_config(TINY).frames and (tmp_path / "guided" / "tracks.png").stat().st_size > 1000
    assert any((a != b).any() for a, b in zip(guided, unguided)), "guidance scale 9 and 1 must differ"


def test_sampling_uses_the_ema_weights_when_the_run_kept_them(shard_dir, tmp_path):
    from safetensors.torch import load_file

    fit(load_config(TINY, shards=f"{shard_dir}/shard-00000.tar", out_dir=str(tmp_path / "ema"), steps=2, ema_decay=0.5))
    ema = load_file(tmp_path / "ema" / "checkpoint" / "ema.safetensors")
    trained = load_file(tmp_path / "ema" / "checkpoint" / "trainable.safetensors")
    model, _ = load_model(tmp_path / "ema" / "checkpoint")
    weights = model.state_dict()
    assert any(not torch.equal(ema[key], trained[key]) for key in ema)
    assert all(torch.equal(weights[key], ema[key]) for key in ema)


def test_training_imports_without_dagster():
    code = "import sys, training.fit, training.sample; bad = [m for m in sys.modules if m.startswith('dagster')]; assert not bad, bad"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
