"""`pointvid run`: materialize every asset for every partition of the input through Dagster.

Runs are recorded in a persistent Dagster instance (`$DAGSTER_HOME`, default
`<data_dir>/dagster_home`), so `dagster dev` pointed at the same home shows their history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path

from pointvid_pipeline.rejections import ConfigurationError
from pointvid_pipeline.settings import STAGE_FILE_POLICIES

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}  # the progress bar tells the story, `_succeeded` the failures; the UI has the logs


def _apply_arguments_to_environment(args) -> None:
    """The CLI sets the same POINTVID_* variables the Dagster definitions read."""
    if args.data_dir:
        os.environ["POINTVID_DATA_DIR"] = str(Path(args.data_dir).resolve())
    if args.manifest is not None:
        os.environ["POINTVID_MANIFEST"] = args.manifest
    if args.scenes is not None:
        os.environ["POINTVID_SCENES"] = str(Path(args.scenes).resolve())
    if args.shard_size:
        os.environ["POINTVID_SHARD_SIZE"] = str(args.shard_size)
    if args.profile:
        os.environ["POINTVID_PROFILE"] = args.profile
    if getattr(args, "keep_stage_files", None):
        os.environ["POINTVID_KEEP_STAGE_FILES"] = args.keep_stage_files


def _settings_and_partitions(args, parser: argparse.ArgumentParser):
    """Settings from the arguments and env, and the input's partitions. Bad settings or a manifest that
    cannot be read (ManifestError) end in argparse's one-line error, before anything is written."""
    from pointvid_pipeline.pipeline import partition_rows
    from pointvid_pipeline.settings import PipelineSettings

    _apply_arguments_to_environment(args)
    try:
        settings = PipelineSettings.from_env()
        return settings, list(partition_rows(settings))
    except ConfigurationError as exc:  # a setting out of range or unknown (POINTVID_PROFILE, POINTVID_MANIFEST_ENCODING, ...)
        parser.error(exc.one_line())
    except ValueError as exc:  # ManifestError: no video column, unreadable, unparseable
        parser.error(" ".join(str(exc).splitlines()))


@contextmanager
def _dagster_instance(settings):
    """The persistent Dagster instance (never the CLI's temporary one) and its home. Its storage, or a run
    in it, finding the disk full is the `disk_full` configuration error, as the pipeline's own writes are."""
    from dagster import DagsterInstance

    from pointvid_pipeline.storage.disk_full import disk_full_as_configuration_error

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(settings.data_dir / "dagster_home"))).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    with disk_full_as_configuration_error(home, "--data-dir / POINTVID_DATA_DIR (or DAGSTER_HOME)"):
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        with DagsterInstance.get() as instance:
            yield instance, home


def register_partitions(instance, partitions: list[str]) -> list[str]:
    """Add the shard partitions the instance does not know yet, and the model pool's slots (before any
    run can race to create them); returns the new partitions."""
    from pointvid_pipeline.dagster_defs.assets import clip_shards, initialize_model_pool

    known = set(instance.get_dynamic_partitions(clip_shards.name))
    new = [p for p in partitions if p not in known]
    instance.add_dynamic_partitions(clip_shards.name, new)
    initialize_model_pool(instance)
    return new


def partitions_command(args, settings, partitions: list[str]) -> int:
    with _dagster_instance(settings) as (instance, home):
        new = register_partitions(instance, partitions)
    print(f"{len(partitions)} partitions ({len(new)} new) registered in {home}:", file=sys.stderr)
    print("\n".join(partitions))
    return 0


def _partitions_to_retry(settings, partitions: list[str], reasons: list[str]) -> list[str]:
    """Partitions whose last finished run ledgered rows with one of `reasons`; says how many on stderr."""
    from pointvid_pipeline.pipeline import retry_keys
    from pointvid_pipeline.storage.stage_store import StageStore

    store, chosen = StageStore(settings.stages_dir), []
    for partition in partitions:
        try:
            keys = retry_keys(store, partition, reasons)
        except RuntimeError:
            continue  # never finished: a plain `pointvid run` processes it whole
        if keys:
            chosen.append(partition)
            print(f"{partition}: retrying {len(keys)} rows ({', '.join(sorted(keys)[:3])}{', ...' if len(keys) > 3 else ''})", file=sys.stderr)
    print(f"{len(chosen)} of {len(partitions)} partitions have rows rejected for a transient reason ({', '.join(reasons)})", file=sys.stderr)
    return chosen


def _succeeded(result) -> bool:
    """Whether a Dagster run succeeded; a failed step's error is printed with its stack trace, but a
    ConfigurationError (a full disk, a backend that cannot load) is raised for `main` to print in one
    line: every further partition would fail the same way."""
    from tqdm import tqdm

    from pointvid_pipeline.dagster_defs.assets import configuration_error

    error = configuration_error(result)
    if error is not None:
        raise error
    for event in result.get_step_failure_events():
        tqdm.write(f"step {event.step_key} failed: {event.step_failure_data.error_display_string}", file=sys.stderr)
    return result.success


def run(args, settings, partitions: list[str]) -> int:
    from tqdm import tqdm

    from pointvid_pipeline.dagster_defs.assets import RETRY_TAG
    from pointvid_pipeline.dagster_defs.definitions import build_definitions
    from pointvid_pipeline.pipeline import check_configuration, input_rows
    from pointvid_pipeline.rejections import TRANSIENT_REASONS

    check_configuration(input_rows(settings))
    defs = build_definitions(settings)
    tags = {}
    if args.retry_transient:
        reasons = sorted(TRANSIENT_REASONS)
        partitions, tags = _partitions_to_retry(settings, partitions, reasons), {RETRY_TAG: ",".join(reasons)}
    if args.partition:
        unknown = sorted(set(args.partition) - set(partitions))
        if unknown:
            print(f"unknown partitions {unknown}; the input has {partitions[:5]}{'...' if len(partitions) > 5 else ''}", file=sys.stderr)
            return 2
        partitions = [p for p in partitions if p in args.partition]
    with _dagster_instance(settings) as (instance, home):
        register_partitions(instance, partitions)
        curate = defs.resolve_job_def("curate_shard")
        failed = []
        with tqdm(partitions, desc="shards", unit="shard") as progress:
            for partition in progress:
                progress.set_postfix_str(partition)
                if not _succeeded(curate.execute_in_process(partition_key=partition, instance=instance, run_config=QUIET, tags=tags, raise_on_error=False)):
                    failed.append(partition)
        dataset_ok = _succeeded(defs.resolve_job_def("build_dataset").execute_in_process(instance=instance, run_config=QUIET, raise_on_error=False))
    summary_path = settings.dataset_dir / "summary.json"
    print(f"shards:       {settings.shards_dir}")
    print(f"dataset card: {settings.dataset_dir / 'README.md'}")
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        unfinished = f", {summary['rows_without_shard']} in partitions without a finished shard" if summary["rows_without_shard"] else ""
        print(f"samples: {summary['accepted']} accepted, {summary['rejected']} rejected {summary['rejections_by_reason']}{unfinished} of {summary['input_rows']} input rows")
    print(f"dagster home: {home} (open with: DAGSTER_HOME={home} dagster dev -w workspace.yaml)")
    if failed or not dataset_ok:
        print(f"FAILED partitions: {failed}; dataset roll-up {'ok' if dataset_ok else 'failed'}", file=sys.stderr)
        return 1
    return 0


def inspect_command(args) -> int:
    """List a shard's samples, or write one sample's pictures; exit 2 when the shard or key is not there."""
    from tqdm import tqdm

    from pointvid_pipeline.tools.inspect_shard import find_sample, format_listing, inspect_sample, iter_samples, shard_stem, summary_row

    try:
        if args.key is None:
            rows = [summary_row(key, members) for key, members in tqdm(iter_samples(args.shard), desc="samples", unit="sample")]
            print(format_listing(rows))
            return 0
        members, keys = find_sample(args.shard, args.key)
    except (FileNotFoundError, tarfile.TarError) as exc:
        print(f"cannot read shard {args.shard}: {exc}", file=sys.stderr)
        return 2
    if members is None:
        shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
        print(f"no sample {args.key!r} in {args.shard}; it holds: {shown or 'no samples'}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("inspect") / shard_stem(args.shard) / args.key
    for name, path in inspect_sample(members, out).items():
        print(f"{name}: {path}")
    return 0


def stats_command(args) -> int:
    """Print rejection and tracking figures of a dataset folder and write stats.png beside them."""
    from pointvid_pipeline.tools.dataset_stats import collect, format_report, stats_figure

    dataset_dir = Path(args.dataset_dir)
    try:
        stats = collect(dataset_dir)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(format_report(stats))
    out = Path(args.out) if args.out else dataset_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.png").write_bytes(stats_figure(stats))
    print(f"stats.png: {out / 'stats.png'}")
    return 0


def evaluate_command(args) -> int:
    """Point-map accuracy of a dataset's synthetic samples against ground truth: print the tables, write evaluation.parquet."""
    from pointvid_pipeline.dataset import EVALUATION_FILE, write_evaluation_parquet
    from pointvid_pipeline.evaluation.point_map_accuracy import evaluate_dataset, markdown_tables, summarise

    dataset_dir = Path(args.dataset_dir)
    data_dir = dataset_dir.resolve().parent
    if not (data_dir / "shards").is_dir():
        print(f"{dataset_dir} is not the dataset/ folder of a curated data directory (no shards/ beside it)", file=sys.stderr)
        return 2
    rows, missing = evaluate_dataset(data_dir, progress=True)
    if missing:
        print(f"not evaluated, ground truth gone from {data_dir / 'stages' / 'clips'}: {', '.join(missing)}", file=sys.stderr)
    if not rows:
        print("no synthetic sample with ground truth in these shards: nothing to evaluate", file=sys.stderr)
        return 2
    print(markdown_tables(rows, summarise(rows)))
    out = Path(args.out) if args.out else dataset_dir
    out.mkdir(parents=True, exist_ok=True)
    write_evaluation_parquet(out / EVALUATION_FILE, rows)
    print(f"per-object rows: {out / EVALUATION_FILE}")
    return 0


def synth_command(args) -> int:
    """Draw scene specs (docs/synthetic_scenes.md) and write them as one JSON list, one spec a line."""
    from pointvid_pipeline.storage.stage_store import atomic_write_bytes
    from pointvid_pipeline.synthetic.generator import generate_scenes, scenes_json

    scenes = generate_scenes(args.count, args.seed, args.cameras)
    text = scenes_json(scenes)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    atomic_write_bytes(Path(args.out), text.encode(), setting="--out")
    views = f", {len(scenes) * args.cameras} views" if args.cameras > 1 else ""
    print(f"{len(scenes)} scenes{views}: {args.out} (curate with: pointvid run --scenes {args.out})", file=sys.stderr)
    return 0


def positive_int(text: str) -> int:
    """argparse type: a count of at least 1 (argparse turns the ValueError into a one-line error, exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pointvid", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="curate the input into PointVid shards (all stages, all partitions)")
    partitions_parser = commands.add_parser("partitions", help="register the input's shard partitions in $DAGSTER_HOME and list them")
    for sub in (run_parser, partitions_parser):
        sub.add_argument("--manifest", help="CSV/JSONL/Parquet or Panda-70M table; default: the embedded synthetic scenes")
        sub.add_argument("--data-dir", help="where everything is written (default ./pointvid_data or $POINTVID_DATA_DIR)")
        sub.add_argument("--scenes", help="JSON list of synthetic scene specs (e.g. from `pointvid synth`) curated when there is no --manifest; default: the 14 embedded scenes")
        sub.add_argument("--shard-size", type=positive_int, help="clips per partition (default 8 for synthetic scenes, 64 for manifests)")
        sub.add_argument("--profile", choices=("cpu", "paper"), help="backend profile (default cpu)")
    run_parser.add_argument("--partition", action="append", help="only this partition (repeatable), e.g. shard-00000")
    run_parser.add_argument("--retry-transient", action="store_true", help="process again only the rows the last run rejected for a transient reason (docs/rejections.md); all else stays untouched")
    run_parser.add_argument("--keep-stage-files", choices=STAGE_FILE_POLICIES, help="stage files kept once a shard is written (default accepted-only or $POINTVID_KEEP_STAGE_FILES; docs/rejections.md)")
    inspect_parser = commands.add_parser("inspect", help="list a shard's samples, or draw one sample's contact sheet and track preview")
    inspect_parser.add_argument("shard", help="shard tar: local path or fsspec URL (s3://, https://, ...)")
    inspect_parser.add_argument("--key", help="sample to draw; without it the shard's samples are listed")
    inspect_parser.add_argument("--out", help="folder for contact_sheet.png and preview.gif (default ./inspect/<shard>/<key>)")
    stats_parser = commands.add_parser("stats", help="rejection reasons and visibility / track-length distributions of a dataset folder")
    stats_parser.add_argument("dataset_dir", help="the `dataset/` folder (samples.parquet, rejections.parquet, summary.json)")
    stats_parser.add_argument("--out", help="folder for stats.png (default: DATASET_DIR)")
    evaluate_parser = commands.add_parser("evaluate", help="TAP-Vid / TAPVid-3D accuracy of the shipped point maps against ground truth, per object, scene and camera motion")
    evaluate_parser.add_argument("dataset_dir", help="the `dataset/` folder of a data directory (its shards/ and stages/ beside it)")
    evaluate_parser.add_argument("--out", help="folder for evaluation.parquet (default: DATASET_DIR)")
    synth_parser = commands.add_parser("synth", help="draw N synthetic scene specs over the camera taxonomy (docs/synthetic_scenes.md)")
    synth_parser.add_argument("--count", type=positive_int, required=True, help="how many scenes")
    synth_parser.add_argument("--seed", type=int, default=0, help="the same seed and count give the same specs (default 0)")
    synth_parser.add_argument("--out", help="JSON file to write (default: stdout)")
    synth_parser.add_argument("--cameras", type=positive_int, default=1, help="cameras per scene: K > 1 makes every scene a synchronized rig of K programs with different movements, one sample per view (default 1)")
    args = parser.parse_args(argv)
    manifest = getattr(args, "manifest", None)
    if manifest and "://" not in manifest and not Path(manifest).is_file():  # URLs are checked when read
        parser.error(f"--manifest {manifest}: no such file")
    scenes = getattr(args, "scenes", None)
    if scenes and not Path(scenes).is_file():
        parser.error(f"--scenes {scenes}: no such file")
    for option, folder in (("--data-dir", getattr(args, "data_dir", None)), ("--out", getattr(args, "out", None) if args.command != "synth" else None)):  # synth's --out is a file
        if folder and Path(folder).exists() and not Path(folder).is_dir():
            parser.error(f"{option} {folder}: is a file, not a folder")
    try:
        if args.command in ("run", "partitions"):
            settings, partitions = _settings_and_partitions(args, parser)
            return (run if args.command == "run" else partitions_command)(args, settings, partitions)
        return {"inspect": inspect_command, "stats": stats_command, "evaluate": evaluate_command, "synth": synth_command}[args.command](args)
    except ConfigurationError as error:  # settings or environment (a full disk included): the message names the fix
        print(error.one_line(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
