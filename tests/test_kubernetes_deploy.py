"""deploy/kubernetes (Helm values, image build file, run config) and the `POINTVID_EXECUTOR` switch,
checked as far as a machine without Docker, Helm or a cluster allows: the files parse, the pod
specs dagster-k8s would submit are built from them with dagster-k8s's own code (which rejects
unknown Kubernetes fields), and the definitions load with the k8s executor.

Tests that need dagster-k8s skip without it, unless POINTVID_REQUIRE_K8S=1 (CI), which fails them.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import validate_run_config

from pointvid_pipeline.dagster_defs.assets import MODEL_STAGES
from pointvid_pipeline.dagster_defs.definitions import build_definitions
from pointvid_pipeline.dagster_defs.kubernetes import EXECUTORS, GPU_RUN_TAG, K8S_CONFIG_TAG, executor_kind
from pointvid_pipeline.pipeline import STAGES
from pointvid_pipeline.settings import PROFILES, PipelineSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kubernetes"
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
DEPLOYMENT = VALUES["dagster-user-deployments"]["deployments"][0]
LAUNCHER = VALUES["runLauncher"]["config"]["k8sRunLauncher"]
IMAGE = "pointvid-pipeline:test"
GPU = "nvidia.com/gpu"


@pytest.fixture
def dagster_k8s():
    try:
        import dagster_k8s
    except ImportError:
        reason = "dagster-k8s is not installed (pip install 'dagster-k8s==0.29.*')"
        if os.environ.get("POINTVID_REQUIRE_K8S") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return dagster_k8s


def curate_shard(monkeypatch, executor: str | None, profile: str):
    if executor is None:
        monkeypatch.delenv("POINTVID_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("POINTVID_EXECUTOR", executor)
    return build_definitions(PipelineSettings(data_dir=Path("/data/pointvid"), profile=profile)).resolve_job_def("curate_shard")


def launched_context(extra_k8s_config: dict | None = None):
    """The container context of a run or step pod, merged as dagster-k8s does: run launcher, then the code
    location's config (includeConfigInLaunchedRuns), then the step's (or, for a run pod, the run tags')."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    # The chart renders runK8sConfig's top-level keys as run_k8s_config's snake_case ones.
    run_k8s_config = {re.sub("([A-Z])", r"_\1", key).lower(): value for key, value in LAUNCHER["runK8sConfig"].items()}
    launcher = K8sContainerContext(
        image_pull_policy=LAUNCHER["imagePullPolicy"],
        env_secrets=[secret["name"] for secret in LAUNCHER["envSecrets"]],
        volumes=LAUNCHER["volumes"],
        volume_mounts=LAUNCHER["volumeMounts"],
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(run_k8s_config),
    )
    location = K8sContainerContext.create_from_config(
        {"k8s": {"env_secrets": [s["name"] for s in DEPLOYMENT["envSecrets"]], "volumes": DEPLOYMENT["volumes"], "volume_mounts": DEPLOYMENT["volumeMounts"]}}
    )
    extra = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(extra_k8s_config or {}))
    return launcher.merge(location).merge(extra)


def pod_container(context, name: str):
    """The container of the Kubernetes Job dagster-k8s would create for this context, and its pod spec."""
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job

    job_config = DagsterK8sJobConfig(
        job_image=IMAGE, dagster_home="/opt/dagster/dagster_home", instance_config_map="pointvid-dagster-instance",
        postgres_password_secret=VALUES["global"]["postgresqlSecretName"],
    )
    job = construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], f"dagster-step-{name}", user_defined_k8s_config=context.run_k8s_config)
    spec = job.spec.template.spec
    return spec.containers[0], spec


def step_configs(job) -> dict:
    """`per_step_k8s_config` as the k8s executor receives it for a run launched with no run config."""
    return job.executor_def.apply_config_mapping({"config": {}}).value["config"]["per_step_k8s_config"]


def test_values_deploy_the_code_location_with_the_k8s_run_launcher():
    module = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]["module_name"]
    assert DEPLOYMENT["dagsterApiGrpcArgs"] == ["-m", module] and DEPLOYMENT["port"] == 3030
    assert DEPLOYMENT["image"]["repository"].endswith("pointvid-pipeline") and DEPLOYMENT["includeConfigInLaunchedRuns"]["enabled"]
    env = DEPLOYMENT["env"]
    assert env["POINTVID_PROFILE"] in PROFILES and env["POINTVID_EXECUTOR"] in EXECUTORS
    assert all(isinstance(value, str) for value in env.values())  # a ConfigMap holds strings only
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    # The data volume is the same everywhere and POINTVID_DATA_DIR / the manifest live on it.
    assert DEPLOYMENT["volumes"] == LAUNCHER["volumes"] and DEPLOYMENT["volumeMounts"] == LAUNCHER["volumeMounts"]
    (mount,) = LAUNCHER["volumeMounts"]
    assert Path(env["POINTVID_DATA_DIR"]).is_relative_to(mount["mountPath"]) and Path(env["POINTVID_MANIFEST"]).is_relative_to(mount["mountPath"])
    pvc = yaml.safe_load((DEPLOY / "pvc.yaml").read_text())
    (volume,) = LAUNCHER["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"] and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_values_hold_no_secret_values():
    """Secrets come only from Kubernetes Secrets named in the values, never literal values."""
    assert VALUES["generatePostgresqlPasswordSecret"] is False and VALUES["global"]["postgresqlSecretName"]
    assert DEPLOYMENT["envSecrets"] == LAUNCHER["envSecrets"] and all(set(s) == {"name"} for s in LAUNCHER["envSecrets"])
    secret_word = re.compile("password|secret|token|api_?key|credential", re.IGNORECASE)

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                literal = isinstance(value, (str, int)) and not isinstance(value, bool)
                if literal and secret_word.search(str(key)) and not str(key).endswith("SecretName"):
                    pytest.fail(f"{'.'.join(path + [str(key)])} holds a value; name a Kubernetes Secret instead")
                walk(value, path + [str(key)])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, path + [str(i)])

    walk(VALUES, [])


def test_values_limit_gpu_runs_and_gpu_steps():
    concurrency = VALUES["concurrency"]
    assert concurrency["enabled"] and concurrency["pools"]["defaultLimit"] >= 1 and concurrency["pools"]["granularity"] == "op"
    assert {"key": GPU_RUN_TAG, "limit": 1} in concurrency["runs"]["tagConcurrencyLimits"]
    # The chart refuses run limits set both here and on the run coordinator.
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(VALUES["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"])


def test_run_pods_from_the_values_mount_the_data_volume_once_and_read_the_secrets(dagster_k8s):
    container, spec = pod_container(launched_context(), "run")
    assert [v.name for v in spec.volumes] == ["pointvid-data"] and spec.volumes[0].persistent_volume_claim.claim_name == "pointvid-data"
    assert [(m.name, m.mount_path) for m in container.volume_mounts] == [("pointvid-data", "/data")]
    assert {ref.secret_ref.name for ref in container.env_from if ref.secret_ref} == {"pointvid-secrets"}
    assert container.resources.requests == LAUNCHER["runK8sConfig"]["containerConfig"]["resources"]["requests"] and not container.resources.limits


def test_k8s_executor_on_the_paper_profile_gives_each_model_stage_pod_a_gpu(dagster_k8s, monkeypatch):
    job = curate_shard(monkeypatch, "k8s", "paper")
    assert job.executor_def.executor_creation_fn is dagster_k8s.k8s_job_executor.executor_creation_fn
    assert K8S_CONFIG_TAG not in job.tags and GPU_RUN_TAG not in job.tags  # the run pod only orchestrates
    steps = step_configs(job)
    assert set(steps) == MODEL_STAGES
    for stage in STAGES:
        container, spec = pod_container(launched_context(steps.get(stage)), stage)
        assert [v.name for v in spec.volumes] == ["pointvid-data"]
        if stage in MODEL_STAGES:
            assert container.resources.limits[GPU] == "1" and container.resources.requests["cpu"] == "4"
            assert any(t.key == GPU and t.effect == "NoSchedule" for t in spec.tolerations)
        else:
            assert GPU not in (container.resources.limits or {}) and not spec.tolerations


def test_k8s_executor_on_the_cpu_profile_requests_no_gpu(dagster_k8s, monkeypatch):
    job = curate_shard(monkeypatch, "k8s", "cpu")
    assert job.executor_def is dagster_k8s.k8s_job_executor and not job.tags


def test_in_process_executor_is_the_default_and_holds_a_gpu_per_run_on_the_paper_profile(monkeypatch):
    cpu = curate_shard(monkeypatch, None, "cpu")
    assert cpu.executor_def.name == "in_process" and K8S_CONFIG_TAG not in cpu.tags and GPU_RUN_TAG not in cpu.tags
    paper = curate_shard(monkeypatch, "in_process", "paper")
    assert paper.executor_def.name == "in_process" and paper.tags[GPU_RUN_TAG] == "1"
    assert json.loads(paper.tags[K8S_CONFIG_TAG])["container_config"]["resources"]["limits"][GPU] == "1"


def test_the_run_pod_of_an_in_process_paper_run_gets_the_gpu(dagster_k8s, monkeypatch):
    from dagster_k8s.job import get_user_defined_k8s_config

    job = curate_shard(monkeypatch, "in_process", "paper")
    container, spec = pod_container(launched_context(get_user_defined_k8s_config(job.tags).to_dict()), "run")
    assert container.resources.limits[GPU] == "1" and any(t.key == GPU for t in spec.tolerations)


def test_example_run_config_is_valid_and_keeps_the_gpu(dagster_k8s, monkeypatch):
    job = curate_shard(monkeypatch, "k8s", "paper")
    run_config = yaml.safe_load((DEPLOY / "curate_shard_run_config.yaml").read_text())
    validate_run_config(job, run_config)
    config = job.executor_def.apply_config_mapping({"config": run_config["execution"]["config"]}).value["config"]
    assert config["max_concurrent"] == 4
    container, spec = pod_container(launched_context(config["per_step_k8s_config"]["tracks_3d"]), "tracks_3d")
    assert container.resources.limits == {"memory": "64Gi", GPU: "1"} and spec.node_selector and spec.tolerations


def test_missing_dagster_k8s_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # makes `import dagster_k8s` raise ImportError
    with pytest.raises(ImportError, match="POINTVID_EXECUTOR=k8s needs dagster-k8s"):
        curate_shard(monkeypatch, "k8s", "cpu")


def test_unknown_executor_is_rejected():
    assert executor_kind({}) == "in_process"
    with pytest.raises(ValueError, match="POINTVID_EXECUTOR"):
        executor_kind({"POINTVID_EXECUTOR": "celery"})


def test_definitions_validate_with_the_k8s_executor(dagster_k8s, tmp_path):
    env = {**os.environ, "POINTVID_EXECUTOR": "k8s", "POINTVID_PROFILE": "paper", "POINTVID_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "pointvid_pipeline.definitions"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_dockerfile_copies_files_that_exist_and_pins_one_dagster_release():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    sources = [part for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE) for part in line.split()[:-1]]
    assert sources and all((REPO / source).exists() for source in sources), sources
    kept = {line[1:] for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")}
    assert {source.rstrip("/") for source in sources} <= {pattern.removesuffix("/**") for pattern in kept}
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    major, minor, patch = args["DAGSTER_VERSION"].split(".")
    assert args["DAGSTER_LIBS_VERSION"] == f"0.{int(minor) + 16}.{patch}"  # dagster's integration versioning
    for path in (DEPLOY / "values.yaml", REPO / "docs" / "running_on_kubernetes.md"):
        assert set(re.findall(r"--version (\S+)", path.read_text())) == {args["DAGSTER_VERSION"]}, path
    assert 'pip install -e ".[paper]"' in dockerfile and "dagster-k8s==" in dockerfile and "dagster-postgres==" in dockerfile


def helm_merge(defaults, overrides):
    """Helm's values merge: maps merge key by key, anything else replaces, null removes."""
    if not (isinstance(defaults, dict) and isinstance(overrides, dict)):
        return overrides
    merged = dict(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(merged.get(key), value)
    return merged


def without_remote_refs(schema):
    """The chart's schema points Kubernetes objects at kubernetesjsonschema.dev; offline they are only checked as objects."""
    if isinstance(schema, dict):
        return {k: without_remote_refs(v) for k, v in schema.items() if not (k == "$ref" and str(v).startswith("http"))}
    if isinstance(schema, list):
        return [without_remote_refs(v) for v in schema]
    return schema


def test_values_validate_against_the_chart_schema():
    """Needs the chart itself (no Helm repository is reachable here):
    helm pull dagster/dagster --version <DAGSTER_VERSION> --untar -d /tmp/chart && POINTVID_DAGSTER_CHART_DIR=/tmp/chart/dagster pytest ..."""
    chart = os.environ.get("POINTVID_DAGSTER_CHART_DIR")
    if not chart:
        pytest.skip("POINTVID_DAGSTER_CHART_DIR is not set to an unpacked dagster chart (helm pull dagster/dagster --untar)")
    jsonschema = pytest.importorskip("jsonschema")
    schema = without_remote_refs(json.loads((Path(chart) / "values.schema.json").read_text()))
    merged = helm_merge(yaml.safe_load((Path(chart) / "values.yaml").read_text()) or {}, VALUES)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(merged), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
