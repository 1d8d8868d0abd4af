"""Training loader throughput against reading the raw tar bytes of the same shards, in one run.

The loader (training.data.make_loader) at the tiny config's resolution, 8 x 64 x 112, batch 2,
num_workers 0, one core (thread pools pinned to 1, as in one DataLoader worker), against a plain
`tarfile` pass that reads every member's bytes. The ratio is the cost of decoding (H.264, zipped
float16 point map), subsampling, resizing and normalising per sample read. Default input: every
partition of the default synthetic scenes, curated into a temporary folder first.
Run: python benchmarks/training_data.py [--shards PATTERN] [--samples N]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from pointvid_pipeline.backends.registry import lazy_backends  # noqa: E402
from pointvid_pipeline.pipeline import STAGES, partition_rows, run_stage  # noqa: E402
from pointvid_pipeline.settings import PipelineSettings  # noqa: E402
from training.data import expand_shards, make_loader  # noqa: E402

FRAMES, HEIGHT, WIDTH, BATCH = 8, 64, 112, 2
DEPTH_MAX = 10.0
MIN_SECONDS = 1.0


def curate_default_shards(data_dir: Path) -> list[str]:
    settings = PipelineSettings(data_dir=data_dir)
    backends = lazy_backends(settings.profile)
    partitions = list(partition_rows(settings))
    for partition, stage in itertools.product(partitions, STAGES):
        run_stage(stage, partition, settings, backends)
    return [str(settings.shards_dir / f"{partition}.tar") for partition in partitions]


def raw_tar_samples_per_second(paths: list[str]) -> tuple[float, int]:
    """Whole passes over the shards, reading every member, for at least MIN_SECONDS."""
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < MIN_SECONDS:
        for path in paths:
            keys = set()
            with tarfile.open(path, "r") as tar:
                for info in tar:
                    tar.extractfile(info).read()
                    keys.add(info.name.partition(".")[0])
            samples += len(keys)
    return samples / (time.perf_counter() - started), samples


def loader_samples_per_second(shards: str | list[str], samples: int) -> float:
    batches = iter(make_loader(shards, FRAMES, HEIGHT, WIDTH, BATCH, DEPTH_MAX, synthetic_mix=None, seed=0))
    next(batches)  # first batch: imports, codec set-up
    started = time.perf_counter()
    for _ in range(samples // BATCH):
        next(batches)
    return (samples // BATCH) * BATCH / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard paths or URLs, brace patterns allowed (default: curate the default scenes)")
    parser.add_argument("--samples", type=int, default=64, help="samples the loader is timed over")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or curate_default_shards(Path(tmp))
        paths = expand_shards(shards)
        loader_rate = loader_samples_per_second(shards, args.samples)
        raw_rate, raw_samples = raw_tar_samples_per_second(paths)
    print(f"Shards: {args.shards or 'default synthetic scenes'} ({len(paths)} files)")
    print(f"Loader, {FRAMES}x{HEIGHT}x{WIDTH}, batch {BATCH}, num_workers 0, one core: {loader_rate:8.1f} samples/s ({args.samples} samples)")
    print(f"Raw tar bytes (tarfile iteration), same shards:      {raw_rate:8.1f} samples/s ({raw_samples} samples)")
    print(f"Loader / raw read: {loader_rate / raw_rate:.4f} ({raw_rate / loader_rate:.0f}x slower than reading the bytes)")


if __name__ == "__main__":
    main()
