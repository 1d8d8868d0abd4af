"""Entry point for Dagster: `dagster dev -w workspace.yaml` or `dagster ... -m pointvid_pipeline.definitions`."""

from pointvid_pipeline.dagster_defs.definitions import build_definitions

defs = build_definitions()
