"""The Dagster web UI in a real browser: `dagster dev` on a free port, one partition materialized through
it, then headless Chromium (Debian `chromium`, driven by Playwright) checks the asset graph and that each
stage's preview picture is rendered. Screenshots are kept in the test's temp dir (listed at the end of
the pytest report)."""

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from pointvid_pipeline.dagster_defs.assets import GROUP
from pointvid_pipeline.pipeline import STAGES
from pointvid_pipeline.synthetic.scenes import load_default_scenes
from pointvid_pipeline.tools.previews import STAGE_PICTURES

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PARTITION = "shard-00000"
SHARD_SIZE = 2  # clips per partition: short runs
PARTITION_COUNT = math.ceil(len(load_default_scenes()) / SHARD_SIZE)
# dagster_graphql calls gql the old way; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Using variable_values:DeprecationWarning")
ASSETS = [*STAGES, "dataset"]


def require_browser():
    """Skip, saying why, when Chromium or Playwright is absent; `.ci/run` sets POINTVID_REQUIRE_BROWSER=1 so CI fails instead."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the Playwright Python package is not installed (pip install -e '.[test]')"
    else:
        reason = None if CHROMIUM else "no Chromium on PATH (Debian: apt-get install chromium)"
    if reason and os.environ.get("POINTVID_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dagster dev exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"dagster dev did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """`dagster dev` (webserver + daemon) on a temp instance, with shard-00000 curated by a run it launched."""
    require_browser()
    from dagster_graphql import DagsterGraphQLClient

    root = tmp_path_factory.mktemp("dagster_ui")
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # Two clips per partition keeps the run short; the partitions are registered as a user would.
    env = {**os.environ, "DAGSTER_HOME": str(home), "POINTVID_DATA_DIR": str(root / "data"), "POINTVID_SHARD_SIZE": str(SHARD_SIZE)}
    subprocess.run(["pointvid", "partitions"], cwd=REPO, env=env, check=True, capture_output=True)
    port = free_port()
    log = root / "dagster_dev.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_server(f"http://127.0.0.1:{port}/server_info", process, log)
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        run_id = client.submit_job_execution("curate_shard", tags={"dagster/partition": PARTITION})
        deadline = time.monotonic() + 300
        while (status := client.get_run_status(run_id).value) not in {"SUCCESS", "FAILURE", "CANCELED"}:
            assert time.monotonic() < deadline, f"run {run_id} still {status} after 300 s"
            time.sleep(2)
        assert status == "SUCCESS", f"run {run_id} ended {status}:\n{log.read_text()[-3000:]}"
        yield f"http://127.0.0.1:{port}", root, env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def page(dagster_dev):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def open_page(page, url: str) -> None:
    """Load a UI route and close the one-time community sign-up dialog if it covers the page."""
    page.goto(url)
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except Exception:  # Playwright's TimeoutError: the dialog was already dismissed in this browser
        return
    skip.click()


def test_asset_graph_shows_every_pipeline_asset(dagster_dev, page, ui_screenshots):
    base, _, _ = dagster_dev
    open_page(page, f"{base}/locations/pointvid_pipeline/asset-groups/{GROUP}")
    for asset in ASSETS:
        page.get_by_text(asset, exact=True).first.wait_for(state="visible")
    page.screenshot(path=ui_screenshots / "asset_graph.png")


@pytest.mark.parametrize("stage", list(STAGE_PICTURES))
def test_latest_materialization_renders_the_stage_preview(dagster_dev, page, ui_screenshots, stage):
    """Each `preview_*` metadata entry of the partition's materialization opens (as a user clicks it) to a loaded picture."""
    base, _, _ = dagster_dev
    open_page(page, f"{base}/assets/{stage}?view=events&partition={PARTITION}")
    page.get_by_text(f"Partition {PARTITION} materialized").first.wait_for(state="visible")
    rows = page.locator("tr", has_text="preview_")
    rows.first.wait_for(state="visible")
    assert rows.count() >= 1
    for i in range(rows.count()):
        rows.nth(i).get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog")
        picture = dialog.locator("img[src^='data:image/png;base64,']")
        picture.wait_for(state="visible")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
        size = picture.evaluate("img => [img.naturalWidth, img.naturalHeight, img.width, img.height]")
        assert min(size) > 0, size
        if i == 0:
            page.screenshot(path=ui_screenshots / f"{stage}_preview.png")
        dialog.get_by_role("button", name="Close").click()
        dialog.wait_for(state="hidden")


def test_shard_materialization_lists_its_samples(dagster_dev, page, ui_screenshots):
    base, root, _ = dagster_dev
    open_page(page, f"{base}/assets/pointvid_shards?view=events&partition={PARTITION}")
    page.get_by_text(str(root / "data" / "shards" / f"{PARTITION}.tar")).first.wait_for(state="visible")
    assert page.locator("table th", has_text="visible fraction").count() >= 1
    page.screenshot(path=ui_screenshots / "pointvid_shards_latest_materialization.png", full_page=True)


def wait_for_backfill(root: Path, backfill: str, shards: list[str]) -> None:
    """Until the backfill's runs (launched by the `dagster dev` daemon) finish; then all must have succeeded."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.from_config(str(root / "dagster_home")) as instance:
        deadline = time.monotonic() + 300
        while True:
            runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill}))
            if len(runs) == len(shards) and all(run.is_finished for run in runs):
                break
            assert time.monotonic() < deadline, [(run.tags.get("dagster/partition"), run.status) for run in runs]
            time.sleep(2)
    assert sorted(run.tags["dagster/partition"] for run in runs) == shards
    assert all(run.status == DagsterRunStatus.SUCCESS for run in runs)
    for shard in shards:
        assert (root / "data" / "shards" / f"{shard}.tar").stat().st_size > 0


def test_backfill_of_several_shards_launched_from_the_ui(dagster_dev, page, ui_screenshots):
    """Jobs > curate_shard > Materialize all…, pick two partitions, Launch backfill: as a user would."""
    base, root, _ = dagster_dev
    shards = ["shard-00003", "shard-00004"]
    open_page(page, f"{base}/locations/pointvid_pipeline/jobs/curate_shard")
    page.get_by_role("button", name="Materialize all…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="All", exact=True).click()  # a known start: every partition
    dialog.get_by_text(f"{PARTITION_COUNT} partitions selected").click()  # opens the partition picker
    page.get_by_text(f"Select all ({PARTITION_COUNT})").click()  # clears the selection
    for shard in shards:
        page.locator("span", has_text=shard).first.click()
    page.keyboard.press("Escape")
    dialog.get_by_text("2 partitions", exact=True).wait_for(state="visible")
    page.screenshot(path=ui_screenshots / "backfill_dialog.png")
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"Created backfill \w+"))
    toast.wait_for(state="visible")
    backfill = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)
    wait_for_backfill(root, backfill, shards)


def test_command_line_backfill_of_several_shards_runs_and_shows_in_the_ui(dagster_dev, page, ui_screenshots):
    """`dagster job backfill` queues one run per shard; the `dagster dev` daemon launches them."""
    base, root, env = dagster_dev
    shards = ["shard-00001", "shard-00002"]
    command = ["dagster", "job", "backfill", "-w", "workspace.yaml", "-j", "curate_shard", "--partitions", ",".join(shards), "--noprompt"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    backfill = re.search(r"Launched backfill job `(\w+)`", done.stdout).group(1)
    wait_for_backfill(root, backfill, shards)
    open_page(page, f"{base}/runs/b/{backfill}")
    page.get_by_text(backfill).first.wait_for(state="visible")
    page.screenshot(path=ui_screenshots / "backfill.png")
