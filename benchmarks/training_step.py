"""Step time of the tiny training config (augment and regularize), against a forward-only pass.

Both measured in the same run on the same batch, one core: the ratio says what a training step
costs relative to inference of the same model. Shards: `--shards PATTERN`, or the default scenes
are curated into a temporary folder first (as in training_data.py).
Run: python benchmarks/training_step.py
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from training_data import curate_default_shards  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import make_loader  # noqa: E402
from training.fit import STAGE_LOSSES, build_model, encode_batch, step_generator  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml"


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(shards: str | list[str], repeats: int = 5) -> dict:
    torch.set_num_threads(1)
    config = load_config(TINY, shards=shards, out_dir=tempfile.mkdtemp())
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.learning_rate)
    batch = next(iter(make_loader(shards, config.frames, config.height, config.width, config.batch_size, config.depth_max, None, seed=0)))

    def forward_only():
        with torch.no_grad():
            generator = step_generator(config, 0)
            latents, conditions = encode_batch(model, batch, config, generator)
            model(latents, torch.zeros(latents.shape[0], dtype=torch.long), conditions)

    def training_step(stage: str):
        def run():
            loss, _ = STAGE_LOSSES[stage](model, batch, config, step_generator(config, 0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    reference = best_of(repeats, forward_only)
    results = {"forward_only_s": reference}
    for stage in STAGE_LOSSES:
        seconds = best_of(repeats, training_step(stage))
        results[f"{stage}_step_s"] = seconds
        results[f"{stage}_step_over_forward"] = seconds / reference
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard paths or URLs (default: curate the default scenes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or curate_default_shards(Path(tmp))
        results = measure(shards)
    config = load_config(TINY, shards="-", out_dir="-")
    print(f"tiny config: batch {config.batch_size}, {config.frames} frames at {config.height}x{config.width}, one core")
    print(f"  forward only          {results['forward_only_s'] * 1000:8.1f} ms")
    for stage in STAGE_LOSSES:
        print(f"  {stage:<10} step      {results[f'{stage}_step_s'] * 1000:8.1f} ms  ({results[f'{stage}_step_over_forward']:.1f}x forward)")


if __name__ == "__main__":
    main()
