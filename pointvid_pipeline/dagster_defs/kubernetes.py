"""How `curate_shard` executes, chosen by `POINTVID_EXECUTOR`: `in_process` (default) or `k8s`.

`in_process` runs every stage of a shard in one process, so each model loads once per run; under
the K8sRunLauncher that process is the run's pod. `k8s` runs each stage in its own pod
(dagster-k8s `k8s_job_executor`). On the `paper` profile the pods that run models ask Kubernetes
for a GPU: with `k8s` the model stages' step pods, with `in_process` the run pod (via the job's
`dagster-k8s/config` tag, which only a Kubernetes run launcher reads). dagster-k8s is imported only
for `k8s`, so the default install does not need it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from dagster import ExecutorDefinition, in_process_executor

from pointvid_pipeline.dagster_defs.assets import MODEL_STAGES
from pointvid_pipeline.settings import PipelineSettings

EXECUTORS = ("in_process", "k8s")
K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RUN_TAG = "pointvid/gpu"  # on runs that hold a GPU for their whole life; the Helm values limit them

# One GPU per model pod; the toleration lets it land on GPU nodes tainted the usual way
# (nvidia.com/gpu:NoSchedule) and is inert elsewhere. CPU and memory cover decoding a shard's clips.
GPU_K8S_CONFIG = {
    "container_config": {
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
        }
    },
    "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}


def executor_kind(environ: Mapping[str, str] | None = None) -> str:
    kind = (os.environ if environ is None else environ).get("POINTVID_EXECUTOR", "in_process")
    if kind not in EXECUTORS:
        raise ValueError(f"POINTVID_EXECUTOR must be one of {EXECUTORS}, got {kind!r}")
    return kind


def gpu_step_configs(settings: PipelineSettings) -> dict[str, dict]:
    """`per_step_k8s_config` of the k8s executor: a GPU for each model stage, on the `paper` profile only."""
    return {stage: GPU_K8S_CONFIG for stage in sorted(MODEL_STAGES)} if settings.profile == "paper" else {}


def curate_shard_execution(settings: PipelineSettings, kind: str) -> tuple[ExecutorDefinition, dict[str, str]]:
    """The executor and run tags of `curate_shard`."""
    if kind == "in_process":
        tags = {K8S_CONFIG_TAG: json.dumps(GPU_K8S_CONFIG), GPU_RUN_TAG: "1"} if settings.profile == "paper" else {}
        return in_process_executor, tags
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as error:
        raise ImportError(
            "POINTVID_EXECUTOR=k8s needs dagster-k8s, matching the installed dagster "
            "(dagster 1.13.x pairs with dagster-k8s 0.29.x): pip install 'dagster-k8s==0.29.*'"
        ) from error
    gpu = gpu_step_configs(settings)
    if not gpu:
        return k8s_job_executor, {}

    def with_gpu_steps(config: dict) -> dict:
        """Run config may still set any executor field; its per-step entries merge over the GPU ones."""
        user = config.get("per_step_k8s_config", {})
        steps = {step: _merge(gpu.get(step, {}), user.get(step, {})) for step in {*gpu, *user}}
        return {**config, "per_step_k8s_config": steps}

    return k8s_job_executor.configured(with_gpu_steps, config_schema=k8s_job_executor.config_schema.as_field().config_type), {}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged
