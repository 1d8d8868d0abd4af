"""Runs one stage for one partition: reads the upstream stage's files, processes each sample,
writes this stage's files and ledger. Plain Python (no Dagster), so the CLI, the Dagster assets,
the tests and the benchmarks all run exactly the same code.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import TypeVar

import numpy as np

from pointvid_pipeline import __version__
from pointvid_pipeline.backends.registry import StageBackends
from pointvid_pipeline.clip import Clip, SceneTruth, default_intrinsics
from pointvid_pipeline.evaluation.track_errors import mean_abs_acceleration
from pointvid_pipeline.rejections import TRANSIENT_REASONS, ConfigurationError, RejectionClass, RejectionReason, SampleRejected, rejection_class
from pointvid_pipeline.settings import GENERATED_SCENES, PipelineSettings
from pointvid_pipeline.stages.depth import RendererDepth
from pointvid_pipeline.stages.object_prompts import objects_for_caption
from pointvid_pipeline.stages.point_maps import densify_point_map
from pointvid_pipeline.stages.quality_gate import draw_disagreement, gate_signals, lost_objects, needs_redraw, object_signals, thresholds_json
from pointvid_pipeline.stages.query_points import sample_query_points, sample_seed
from pointvid_pipeline.stages.reference_masks import ReferenceSegmenter, RendererMasks, check_reference_mask
from pointvid_pipeline.stages.shards import write_partition_shard
from pointvid_pipeline.stages.smoothing import SMOOTHING_CONFIGS, smooth_tracks
from pointvid_pipeline.storage.manifest import InputRow, manifest_version, read_manifest, synthetic_rows
from pointvid_pipeline.storage.shard_assignment import LEDGER_NAME, assign_shards
from pointvid_pipeline.storage.stage_store import StageIndex, StageStore

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGES = (
    "clips",
    "object_prompts",
    "reference_masks",
    "query_points",
    "depth",
    "tracks_3d",
    "smoothed_tracks",
    "point_maps",
    "pointvid_shards",
)
MIN_VISIBLE_FRACTION = 0.5  # a foreground track counts as visible if seen in at least half the frames


@dataclass
class Sample:
    """One sample as seen by a stage: cumulative metadata plus lazy access to upstream arrays."""

    store: StageStore
    partition: str
    key: str
    meta: dict
    _arrays: dict = field(default_factory=dict)

    def arrays(self, stage: str) -> dict[str, np.ndarray]:
        if stage not in self._arrays:
            self._arrays[stage] = self.store.read_arrays(stage, self.partition, self.key)
        return self._arrays[stage]

    @cached_property
    def clip(self) -> Clip:
        data = self.arrays("clips")
        truth = None
        if self.meta["synthetic"]:
            truth = SceneTruth(
                depth=data["truth_depth"],
                instance_masks=data["truth_instance_masks"],
                object_names=list(self.meta["truth_object_names"]),
                extrinsics=data["truth_extrinsics"],
                track_uvd=data["truth_track_uvd"],
                track_visible=data["truth_track_visible"],
                intrinsics=data["frame_intrinsics"],
                object_poses=data.get("truth_object_poses"),
            )
        return Clip(self.key, data["frames"], self.meta["caption"], data["intrinsics"], self.meta["source"], truth)


@dataclass
class StageReport:
    """What a stage did to one partition; becomes Dagster metadata and CLI output.

    row_seconds: key -> wall clock from asking the stage for the row's outcome to getting it, tries and
    backoff included: the row's own time in per-sample stages; in the batched stages (object_prompts,
    reference_masks) the first row carries the batch calls. Kept out of the stage files and shards,
    which stay byte-identical across reruns.
    """

    stage: str
    partition: str
    accepted: int
    rejected_here: dict[str, int]
    rejected_total: int
    seconds: float
    seconds_per_sample: float
    stats: dict[str, float]
    backends: dict[str, str]
    extra: dict = field(default_factory=dict)
    row_seconds: dict[str, float] = field(default_factory=dict)


Outcome = tuple[dict, dict]  # (arrays to store, metadata to add); a SampleRejected instead = ledger row


def _backend_tag(backend) -> str:
    return f"{backend.name}@{backend.version}"


def _with_stats(meta: dict, stage: str, stats: dict) -> dict:
    meta.setdefault("stats", {})[stage] = stats
    return meta


# ---------------------------------------------------------------- stage functions (per sample)


def _clips(sample: Sample, settings: PipelineSettings, backends: StageBackends) -> Outcome:
    row = InputRow.from_json(sample.meta["input"])
    if row.error:
        raise SampleRejected(RejectionReason.invalid_manifest_row, row.error)
    if not row.caption.strip():
        raise SampleRejected(RejectionReason.missing_caption, "caption is empty")
    if row.is_synthetic:
        from pointvid_pipeline.synthetic.scenes import scene_view

        clip = scene_view(settings.scenes, row.scene, row.view)
        backend = f"pybullet-tinyrenderer@{clip.source.get('pybullet_version', '')}"
    else:
        from pointvid_pipeline.stages.clips import decode_clip

        frames, info = decode_clip(row.video, row.start, row.end, stride=settings.frame_stride, budget=settings.budget)
        clip = Clip(row.key, frames, row.caption, default_intrinsics(), {"kind": "video", **info, "intrinsics": "assumed 60 deg horizontal FOV"})
        backend = f"pyav@{info.get('av_version', '')}"
    arrays = {"frames": clip.frames, "intrinsics": clip.intrinsics, "frame_intrinsics": clip.frame_intrinsics}
    meta = {"caption": clip.caption, "source": clip.source, "synthetic": clip.is_synthetic, "intrinsics": clip.intrinsics.tolist()}
    if clip.truth is not None:
        truth = clip.truth
        arrays.update(
            truth_depth=truth.depth,
            truth_instance_masks=truth.instance_masks.astype(np.int16),
            truth_extrinsics=truth.extrinsics,
            truth_track_uvd=truth.track_uvd,
            truth_track_visible=truth.track_visible,
        )
        arrays["truth_object_poses"] = truth.object_poses
        meta.update(truth_object_names=truth.object_names, scene_id=row.scene, camera_id=row.view)
    meta["backends"] = {"clips": backend}
    return arrays, meta


def _object_prompts(samples: list[Sample], settings: PipelineSettings, backends: StageBackends) -> Iterator[Outcome | SampleRejected]:
    """Batched: one extractor call for the whole partition (an LLM serves batches far better)."""

    def extract():
        extractor = backends.object_extractor()
        return extractor, extractor.extract([s.meta["caption"] for s in samples]) if samples else []

    try:
        extractor, extractions = _with_retries("object_prompts", "(batch)", extract, settings)
    except SampleRejected as failure:
        yield from [failure] * len(samples)
        return
    for extraction in extractions:
        try:
            objects = objects_for_caption(extraction.names)
        except SampleRejected as rejection:
            yield rejection
            continue
        tag = _backend_tag(extractor) + (f" -> {extraction.source}" if extraction.source else "")
        yield {}, {"objects": objects, "backends": {"object_prompts": tag}}


def _reference_masks(samples: list[Sample], settings: PipelineSettings, backends: StageBackends) -> Iterator[Outcome | SampleRejected]:
    """Batched: chunks of `batch_size` real clips go to the segmenter together (one encoder pass)."""
    outcomes: dict[str, Outcome | SampleRejected] = {}
    synthetic = [s for s in samples if s.meta["synthetic"]]
    real = [s for s in samples if not s.meta["synthetic"]]
    groups = [(RendererMasks(), synthetic[i : i + settings.batch_size]) for i in range(0, len(synthetic), settings.batch_size)]
    groups += [(None, real[i : i + settings.batch_size]) for i in range(0, len(real), settings.batch_size)]
    for renderer, chunk in groups:

        def segment(renderer=renderer, chunk=chunk):
            segmenter = renderer or backends.segmenter()
            return segmenter, segmenter.segment([s.clip for s in chunk], [s.meta["objects"] for s in chunk])

        try:
            segmenter, label_maps = _with_retries("reference_masks", ", ".join(s.key for s in chunk), segment, settings)
        except SampleRejected as failure:
            outcomes.update({s.key: failure for s in chunk})
            continue
        for sample, labels in zip(chunk, label_maps):
            outcomes[sample.key] = _reference_mask_outcome(labels, segmenter)
    for sample in samples:
        yield outcomes[sample.key]


def _reference_mask_outcome(labels: np.ndarray, segmenter: ReferenceSegmenter) -> Outcome | SampleRejected:
    try:
        labels = check_reference_mask(labels)
    except SampleRejected as rejection:
        return rejection
    fg = labels > 0
    stats = {"foreground_fraction": float(fg.mean()), "instances": int(len(np.unique(labels[fg])))}
    return {"labels": labels.astype(np.int32)}, _with_stats({"backends": {"reference_masks": _backend_tag(segmenter)}}, "reference_masks", stats)


def _query_points(sample: Sample, settings: PipelineSettings, backends: StageBackends) -> Outcome:
    labels = sample.arrays("reference_masks")["labels"]
    queries = sample_query_points(labels, settings.grid_size, settings.background_fraction, sample_seed(sample.key))
    on_fg = labels[queries[:, 1], queries[:, 0]] > 0
    stats = {"query_points": int(len(queries)), "foreground_query_points": int(on_fg.sum())}
    meta = {
        "query_sampling": {"grid_size": settings.grid_size, "background_fraction": settings.background_fraction},
        "backends": {"query_points": f"grid-foreground-first@{__version__}"},
    }
    return {"queries": queries}, _with_stats(meta, "query_points", stats)


def _depth(sample: Sample, settings: PipelineSettings, backends: StageBackends) -> Outcome:
    clip = sample.clip
    estimator = RendererDepth() if clip.is_synthetic else backends.depth_estimator()
    depth = estimator.estimate(clip).astype(np.float32)
    stats = {"median_depth_m": float(np.median(depth[0])), "min_depth_m": float(depth.min())}
    return {"depth": depth}, _with_stats({"backends": {"depth": _backend_tag(estimator)}}, "depth", stats)


def _tracks_3d(sample: Sample, settings: PipelineSettings, backends: StageBackends) -> Outcome:
    tracker = backends.point_tracker()
    queries = sample.arrays("query_points")["queries"]
    labels = sample.arrays("reference_masks")["labels"]
    inputs = (sample.clip.frames, sample.arrays("depth")["depth"], queries.astype(np.float32))
    redraws = settings.gate_redraw and hasattr(tracker, "redrawn")
    if redraws:  # the draw's poses let a second draw re-fit only the objects the gate doubts
        first = tracker.draw(*inputs, labels=labels, intrinsics=sample.clip.frame_intrinsics)
        tracks, visibility = first.tracks, first.visibility
    else:
        tracks, visibility = tracker.track(*inputs, labels=labels, intrinsics=sample.clip.frame_intrinsics)
    query_labels = labels[queries[:, 1], queries[:, 0]]
    on_fg = query_labels > 0
    fg_visible = visibility[:, on_fg].mean(axis=0) >= MIN_VISIBLE_FRACTION
    if not fg_visible.any():
        raise SampleRejected(RejectionReason.no_visible_track, f"none of {int(on_fg.sum())} foreground tracks is visible in half the frames")
    stats = {"visible_fraction": float(visibility.mean()), "foreground_tracks_visible": float(fg_visible.mean())}
    meta = _with_stats({"backends": {"tracks_3d": _backend_tag(tracker)}}, "tracks_3d", stats)
    if redraws:
        meta["redraw_disagreement_px"] = _redraw_disagreement(tracker, inputs, first, queries, labels, query_labels, sample.clip.frame_intrinsics)
    return {"tracks": tracks.astype(np.float32), "visibility": visibility}, meta


def _redraw_disagreement(
    tracker, inputs: tuple, first, queries: np.ndarray, labels: np.ndarray, query_labels: np.ndarray, intrinsics: np.ndarray
) -> dict[str, list[float]]:
    """The quality gate's second opinion: object id -> how far apart, per frame 1..T-1, the tracker's other draws
    leave each object a second draw can judge (`quality_gate.needs_redraw`, on `first`'s raw tracks). Only those
    objects are tracked again, every other body held where `first` put it (`RigidObjectTracker.draw`).
    `inputs`: the (frames, depth, float32 queries) `first` was drawn from."""
    frames, depth, _ = inputs
    doubted = needs_redraw(object_signals(frames, depth, first.tracks, first.visibility, query_labels, queries))
    if not doubted:
        return {}
    second = tracker.redrawn().draw(*inputs, labels=labels, intrinsics=intrinsics, first=first, objects=doubted)
    return {str(k): v for k, v in draw_disagreement(first.tracks, second.tracks, query_labels, doubted).items()}


def _smoothed_tracks(sample: Sample, settings: PipelineSettings, backends: StageBackends) -> Outcome:
    tracks = sample.arrays("tracks_3d")
    preset = settings.effective_smoothing
    config = replace(SMOOTHING_CONFIGS[preset], rts_smoothing=settings.kalman_rts)
    smoothed = smooth_tracks(tracks["tracks"], tracks["visibility"], sample.clip.frame_intrinsics, config)
    stats = {"jitter_raw_px": mean_abs_acceleration(tracks["tracks"]), "jitter_smoothed_px": mean_abs_acceleration(smoothed)}
    kalman = {**config.__dict__, "preset": preset}
    if kalman["occluded_measurement_scale"] == math.inf:
        kalman["occluded_measurement_scale"] = None  # JSON has no infinity: null = occluded frames are predict-only
    meta = {"kalman": kalman, "backends": {"smoothed_tracks": f"kalman-cv3d-{preset}@{__version__}"}}
    return {"tracks": smoothed}, _with_stats(meta, "smoothed_tracks", stats)


def _point_maps(sample: Sample, settings: PipelineSettings, backends: StageBackends) -> Outcome:
    labels = sample.arrays("reference_masks")["labels"]
    queries = sample.arrays("query_points")["queries"]
    smoothed = sample.arrays("smoothed_tracks")["tracks"]
    visibility = sample.arrays("tracks_3d")["visibility"]
    depth = sample.arrays("depth")["depth"]
    try:
        point_map = densify_point_map(smoothed, visibility, queries, labels, depth, sample.clip.frame_intrinsics, settings.densification)
    except ValueError as exc:
        raise SampleRejected(RejectionReason.no_visible_track, str(exc)) from exc
    uvd, valid = point_map.uvd, point_map.valid
    signals = gate_signals(sample.clip.frames, depth, smoothed, visibility, labels[queries[:, 1], queries[:, 0]], queries, sample.meta.get("redraw_disagreement_px", {}))
    lost = lost_objects(signals)
    objects = sample.meta["objects"]
    removed = [{"object_id": object_id, "object": objects[object_id - 1] if object_id <= len(objects) else "", "reasons": reasons, "pixels": int((valid & (labels == object_id)).sum())} for object_id, reasons in lost.items()]
    for object_id in lost:
        valid &= labels != object_id
    if not valid.any():
        raise SampleRejected(RejectionReason.track_failure, "every object's tracks were judged lost: " + "; ".join(f"{r['object']} ({', '.join(r['reasons'])})" for r in removed))
    height, width = valid.shape
    # What ships: float16, exactly 0 off `valid`, and tracks that leave the frame held at its border (and marked not
    # visible): the schema promises in-frame (u, v). Only the valid pixels are touched (a third of the frame or less).
    points = uvd[:, valid]
    np.clip(points[..., 0], 0, width - 1, out=points[..., 0])
    np.clip(points[..., 1], 0, height - 1, out=points[..., 1])
    shipped = np.zeros(uvd.shape, np.float16)
    shipped[:, valid] = points
    point_map.visible &= valid  # (a masked assignment of False costs ~6 ms more per clip)
    stats = {
        "foreground_pixels": int(valid.sum()),
        "tracked_pixel_fraction": float(point_map.tracked[valid].mean()),
        "visible_fraction": float(point_map.visible[:, valid].mean()),
        "objects_removed": len(removed),
    }
    gate = {"thresholds": thresholds_json(), "signals": {str(k): v for k, v in signals.items()}, "removed": removed}
    meta = {"densification": settings.densification, "gate": gate, "backends": {"point_maps": f"{settings.densification}-kdtree-gate@{__version__}"}}
    arrays = {"uvd": shipped, "valid": valid, "tracked": point_map.tracked & valid, "visible": point_map.visible}
    return arrays, _with_stats(meta, "point_maps", stats)


def _backend_failure(stage: str, key: str, exc: Exception) -> SampleRejected:
    """A backend raising on one sample must not sink the partition: ledger it as retryable."""
    log.warning("stage %s failed on %s:\n%s", stage, key, traceback.format_exc())
    return SampleRejected(RejectionReason.backend_error, f"{type(exc).__name__}: {exc}")


def _with_retries(stage: str, key: str, call: Callable[[], T], settings: PipelineSettings) -> T:
    """`call()`, tried again after a transient failure, up to `settings.retry_attempts` tries in all with
    exponential backoff (retry_backoff_s, twice that, ...). Raises SampleRejected carrying the tries made;
    a ConfigurationError passes through (it stops the run)."""
    attempt = 1
    while True:
        try:
            return call()
        except ConfigurationError:
            raise
        except SampleRejected as rejection:
            failure = rejection
        except Exception as exc:
            failure = _backend_failure(stage, key, exc)
        if rejection_class(failure.reason) is not RejectionClass.transient or attempt >= settings.retry_attempts:
            failure.attempts = attempt
            raise failure
        delay = settings.retry_backoff_s * 2 ** (attempt - 1)
        log.warning("stage %s, %s: %s (try %d of %d); trying again in %.2f s", stage, key, failure, attempt, settings.retry_attempts, delay)
        time.sleep(delay)
        attempt += 1


def _per_sample(stage: str, function) -> Callable[[list[Sample], PipelineSettings, StageBackends], Iterator[Outcome | SampleRejected]]:
    def run(samples, settings, backends):
        for sample in samples:
            try:
                yield _with_retries(stage, sample.key, lambda sample=sample: function(sample, settings, backends), settings)
            except SampleRejected as rejection:
                yield rejection

    return run


STAGE_FUNCTIONS = {
    "clips": _per_sample("clips", _clips),
    "object_prompts": _object_prompts,
    "reference_masks": _reference_masks,
    "query_points": _per_sample("query_points", _query_points),
    "depth": _per_sample("depth", _depth),
    "tracks_3d": _per_sample("tracks_3d", _tracks_3d),
    "smoothed_tracks": _per_sample("smoothed_tracks", _smoothed_tracks),
    "point_maps": _per_sample("point_maps", _point_maps),
}


# ---------------------------------------------------------------- inputs and partitions


@lru_cache(maxsize=4)
def _manifest_rows(uri: str, version: str, fallback_encoding: str) -> tuple[InputRow, ...]:
    return tuple(read_manifest(uri, fallback_encoding))


def input_rows(settings: PipelineSettings) -> list[InputRow]:
    """The rows of the configured manifest, or of the synthetic scenes (`settings.scenes` or the embedded ones):
    one row per camera of a scene, all the views of a scene in a row.

    A manifest is parsed once per process and version (every stage and sensor tick asks again;
    a 70K-row manifest takes seconds to parse).
    """
    if settings.manifest:
        return list(_manifest_rows(settings.manifest, manifest_version(settings.manifest), settings.manifest_encoding))
    from pointvid_pipeline.synthetic.scenes import read_scenes, scene_caption

    if settings.curates_generated_scenes and not settings.generated_scenes_path.exists():
        raise ConfigurationError(f"POINTVID_SCENES={GENERATED_SCENES}: no scene specs at {settings.generated_scenes_path} yet; materialize the Dagster asset synthetic_scene_specs first")
    views = []
    for name, spec in read_scenes(settings.scenes):
        if isinstance(spec, str):
            views.append((name, name, 0, spec, ""))
        else:
            views += [(key, name, camera, None, scene_caption(spec, camera)) for camera, key in enumerate(spec.view_keys)]
    return synthetic_rows(views)


def partition_rows(settings: PipelineSettings) -> dict[str, list[InputRow]]:
    """Shard -> rows; shards keep their clips across manifest edits (see shard_assignment)."""
    return assign_shards(input_rows(settings), settings.effective_shard_size, settings.data_dir / LEDGER_NAME)


def check_configuration(rows: Iterable[InputRow]) -> None:
    """Raise ConfigurationError for what would fail every row of its kind (a video URL protocol fsspec cannot
    open), before any row is processed. Settings are checked when PipelineSettings is built."""
    from pointvid_pipeline.stages.clips import check_video_protocols

    check_video_protocols(row.video for row in rows if row.video and not row.error)


def _first_samples(store: StageStore, partition: str, settings: PipelineSettings) -> tuple[list[Sample], list[dict]]:
    """Samples for the `clips` stage from the partition's input rows; repeated keys are ledgered."""
    rows = partition_rows(settings).get(partition)
    if rows is None:
        raise KeyError(f"partition {partition!r} does not exist for the configured input ({settings.manifest or settings.scenes or 'default synthetic scenes'})")
    check_configuration(rows)
    samples, rejected, seen = [], [], set()
    for row in rows:
        if row.key in seen:
            rejected.append(_ledger_row(row.key, row.row, "clips", SampleRejected(RejectionReason.duplicate_row, "same video, start and end as an earlier row")))
            continue
        seen.add(row.key)
        samples.append(Sample(store, partition, row.key, {"row": row.row, "input": row.to_json()}))
    return samples, rejected


def _ledger_row(key: str, row: int, stage: str, rejection: SampleRejected) -> dict:
    kind = rejection_class(rejection.reason)
    if kind is RejectionClass.configuration:  # no row can succeed until the configuration changes: stop, never ledger
        raise ConfigurationError(rejection.detail, rejection.reason)
    return {"key": key, "row": row, "stage": stage, "reason": rejection.reason.value, "class": kind.value, "detail": rejection.detail, "attempts": rejection.attempts}


def load_samples(store: StageStore, stage: str, partition: str, settings: PipelineSettings) -> tuple[list[Sample], list[dict]]:
    """The samples a stage works on (upstream accepted) and the ledger it inherits."""
    position = STAGES.index(stage)
    if position == 0:
        return _first_samples(store, partition, settings)
    upstream = store.read_index(STAGES[position - 1], partition)
    return [Sample(store, partition, key, meta) for key, meta in upstream.accepted.items()], list(upstream.rejected)


def _merge_meta(meta: dict, added: dict) -> dict:
    merged = {**meta, **{k: v for k, v in added.items() if k not in ("stats", "backends")}}
    merged["stats"] = {**meta.get("stats", {}), **added.get("stats", {})}
    merged["backends"] = {**meta.get("backends", {}), **added.get("backends", {})}
    return merged


def mean_stage_stats(metas: Iterable[dict], stage: str) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for meta in metas:
        for name, value in meta.get("stats", {}).get(stage, {}).items():
            values.setdefault(name, []).append(value)
    return {f"mean_{name}": float(np.mean(v)) for name, v in values.items()}


def retry_keys(store: StageStore, partition: str, reasons: Iterable[str]) -> set[str]:
    """Keys the last finished run of the partition ledgered with one of `reasons`."""
    try:
        ledger = store.read_index(STAGES[-2], partition).rejected
    except FileNotFoundError as exc:
        raise RuntimeError(f"partition {partition!r} has no finished run to retry; materialize it first") from exc
    return {row["key"] for row in ledger if row["reason"] in set(reasons)}


def run_stage(
    stage: str, partition: str, settings: PipelineSettings, backends: StageBackends, retry: Iterable[str] = (), storage_options: dict | None = None
) -> StageReport:
    """Materialize `stage` for `partition`. Bad samples become ledger rows; the run itself succeeds.

    With `retry` (rejection reasons, e.g. TRANSIENT_REASONS) only the samples the last run ledgered
    with those reasons are processed again; every other sample keeps its files, metadata and
    ledger row untouched. `storage_options`: fsspec options for publishing to `settings.output_uri`
    (the shard stage only); None reads POINTVID_STORAGE_OPTIONS.
    """
    if stage == "pointvid_shards":
        return _run_shard_stage(partition, settings, storage_options)
    store = StageStore(settings.stages_dir)
    samples, rejected = load_samples(store, stage, partition, settings)
    order = [s.key for s in samples]  # manifest order, kept in the index however samples are (re)processed
    kept: dict[str, dict] = {}
    here: list[dict] = []
    previous = store.read_index_if_present(stage, partition) if retry else None
    if previous is not None:  # (no index: an earlier retry died in this stage, so it runs whole)
        keys = retry_keys(store, partition, retry)
        kept = {s.key: previous.accepted[s.key] for s in samples if s.key in previous.accepted}
        samples = [s for s in samples if s.key in keys and s.key not in previous.accepted]
        rerun = {s.key for s in samples}
        here = [row for row in previous.rejected if row["stage"] == stage and row["key"] not in rerun and row not in rejected]
    store.forget_index(stage, partition)  # from here until the new index, the stage does not count as done
    index = StageIndex(stage=stage, partition=partition)
    rejected_here: Counter[str] = Counter()
    row_seconds: dict[str, float] = {}
    started = time.perf_counter()
    outcomes = STAGE_FUNCTIONS[stage](samples, settings, backends)
    for sample in samples:
        asked = time.perf_counter()
        outcome = next(outcomes)
        row_seconds[sample.key] = time.perf_counter() - asked
        if isinstance(outcome, SampleRejected):
            here.append(_ledger_row(sample.key, sample.meta["row"], stage, outcome))
            rejected_here[outcome.reason.value] += 1
            continue
        arrays, added = outcome
        if arrays:
            store.write_arrays(stage, partition, sample.key, arrays)
        kept[sample.key] = _merge_meta(sample.meta, added)
    seconds = time.perf_counter() - started
    index.accepted = {key: kept[key] for key in order if key in kept}
    index.rejected = rejected + sorted(here, key=lambda row: row["row"])
    store.remove_stale_samples(stage, partition, set(index.accepted))
    store.write_index(index)
    backend_names = sorted({m["backends"].get(stage, "") for m in index.accepted.values()} - {""})
    return StageReport(
        stage=stage,
        partition=partition,
        accepted=len(index.accepted),
        rejected_here=dict(rejected_here),
        rejected_total=len(index.rejected),
        seconds=seconds,
        seconds_per_sample=seconds / max(len(samples), 1),
        stats=mean_stage_stats(index.accepted.values(), stage),
        backends={stage: ", ".join(backend_names)},
        row_seconds=row_seconds,
    )


def retained_keys(store: StageStore, partition: str, policy: str) -> set[str] | None:
    """The samples whose stage files `policy` keeps once the partition's shard is written; None = all.

    Always kept while a row awaits `--retry-transient`: its files (the retry resumes from them) and the
    shipped samples' (the retry rewrites the shard from them). `accepted-only` also keeps the shipped
    samples' (`pointvid evaluate` and the dataset card read their ground truth and tracks) and the synthetic
    samples that reached the smoothed tracks (the card's tracking figures include objects the gate removed).
    `none` keeps nothing else. The `_index.json` files (metadata and ledger) always stay.
    """
    if policy == "keep":
        return None
    ledger = store.read_index(STAGES[-2], partition)
    awaiting_retry = {row["key"] for row in ledger.rejected if row["reason"] in TRANSIENT_REASONS}
    if policy == "none" and not awaiting_retry:
        return set()
    smoothed = store.read_index_if_present("smoothed_tracks", partition)
    gated_synthetic = {key for key, meta in smoothed.accepted.items() if meta["synthetic"]} if smoothed and policy == "accepted-only" else set()
    return awaiting_retry | set(ledger.accepted) | gated_synthetic


def _run_shard_stage(partition: str, settings: PipelineSettings, storage_options: dict | None) -> StageReport:
    result = write_partition_shard(partition, settings, storage_options)
    store = StageStore(settings.stages_dir)
    keep = retained_keys(store, partition, settings.keep_stage_files)
    if keep is not None:
        store.remove_samples_except(partition, keep)
    accepted = len(result.accepted_meta)
    return StageReport(
        stage="pointvid_shards",
        partition=partition,
        accepted=accepted,
        rejected_here={},
        rejected_total=len(result.rejected),
        seconds=result.seconds,
        seconds_per_sample=result.seconds / max(accepted, 1),
        stats=mean_stage_stats(result.accepted_meta.values(), "point_maps"),
        backends={},
        extra=result.extra,
    )
