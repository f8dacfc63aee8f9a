"""The dashboard as people use it, in a real browser (issue 17): a resumed run's progress, a click
on a confusion-matrix cell, a reload that keeps the session, and a loss curve that moves within
the first epoch.

This module serves the app from its own workspace (`home`), so the tests can make runs there
with the core first (a stopped run to resume) and then look at them in the browser.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import SHAPES, _image, button, open_page, set_number, wait_idle

from cnnlab import runs, train
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from tests.servers import CHART, PROGRESS, serve_dashboard

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

TRAIN_TIMEOUT_MS = 120_000
# the x values of one trace (by name) of the first Plotly chart on the page, read from Plotly
TRACE_X = f"""name => {{
    const plot = document.querySelector("{CHART} .js-plotly-plot");
    const trace = plot && plot.data ? plot.data.find(t => t.name === name) : null;
    return trace ? Array.from(trace.x) : null;
}}"""
# how many times the page ran its script (a rerun or a fragment's) within `ms` milliseconds
SCRIPT_RUNS = """ms => new Promise(done => {
    const app = document.querySelector("[data-testid='stApp']");
    let runs = 0;
    const seen = new MutationObserver(() => { if (app.dataset.testScriptState === "running") runs++; });
    seen.observe(app, {attributes: true, attributeFilter: ["data-test-script-state"]});
    setTimeout(() => { seen.disconnect(); done(runs); }, ms);
})"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The workspace the server uses; this test process writes runs into it too."""
    path = tmp_path_factory.mktemp("flows-home")
    before = os.environ.get("CNNLAB_HOME")
    os.environ["CNNLAB_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("CNNLAB_HOME", None)
    else:
        os.environ["CNNLAB_HOME"] = before


@pytest.fixture(scope="module")
def server(home: Path, chromium: Path) -> Iterator[str]:
    """`streamlit run server.py` on a free port over `home` (overrides conftest's server)."""
    with serve_dashboard(home, ARTIFACTS) as url:
        yield url


RESUME_EPOCHS = 400


@pytest.fixture(scope="module")
def shapes_dir(home: Path) -> Path:
    """3 classes x 40 pictures of coloured shapes, in the workspace."""
    import random

    rng = random.Random(1)
    root = home / "datasets" / "shapes"
    for kind, colour in SHAPES.items():
        (root / kind).mkdir(parents=True)
        for i in range(40):
            _image(kind, colour, rng).save(root / kind / f"{kind}_picture_number_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def stopped_run(shapes_dir: Path) -> str:
    """A long run (RESUME_EPOCHS, so resuming cannot finish it before the test stops it) stopped
    by its user after epoch 2 (so resumable, with best.pt). 96 px at batch 2: an epoch lasts over
    a second, so the progress line has batches to show (Progress is sent every 0.5 s)."""
    stop = threading.Event()
    cfg = RunConfig(
        data=DataConfig(path=str(shapes_dir), image_size=96),
        model=ModelConfig(channels=[8, 16], head_units=0),
        train=TrainConfig(
            epochs=RESUME_EPOCHS, batch_size=2, device="cpu", patience=0, recipe="fixed"
        ),  # fmt: skip
        name="to resume",
    )

    def stop_after_two(event) -> None:
        if type(event).__name__ == "EpochEnd" and event.epoch == 2:
            stop.set()

    summary = train.fit(cfg, callbacks=(stop_after_two,), stop_event=stop)
    assert summary["status"] == "stopped" and summary["epochs_run"] == 2
    return summary["run_id"]


def _progress_text(page) -> str:
    bar = page.locator(PROGRESS)
    return bar.first.inner_text() if bar.count() else ""


def test_resume_continues_at_the_runs_own_epoch_with_its_history(
    page, shot, stopped_run: str
) -> None:
    wait_idle(page)
    open_page(page, "Runs")
    button(page, "Resume training").click()
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=60_000)
    seen: list[str] = []
    end = time.monotonic() + 60
    while not any(re.match(rf"Epoch \d+/{RESUME_EPOCHS} · batch", t) for t in seen):
        assert time.monotonic() < end, seen
        text = _progress_text(page)
        if text:
            seen.append(text)
        page.wait_for_timeout(100)
    assert not [t for t in seen if t.startswith(("Epoch 1/", "Epoch 2/"))], seen
    assert all(re.match(rf"(Epoch (\d+)/{RESUME_EPOCHS}|Starting|Preparing)", t) for t in seen), (
        seen
    )
    main = page.get_by_test_id("stMain")
    captions = ":is([data-testid='stCaptionContainer'], [data-testid='cnnlab-live-caption'])"
    caption = main.locator(captions, has_text=stopped_run)
    assert "96 px" in caption.first.inner_text()  # the run's own settings
    # the whole history: the validation points start at epoch 1
    page.wait_for_function(f"() => ({TRACE_X})('validation') !== null", timeout=60_000)
    val_x = page.evaluate(TRACE_X, "validation")
    assert val_x[:2] == [1, 2], val_x
    shot(page, "20-resumed")
    button(page, "Stop").click()
    page.get_by_text("Stopped by you").first.wait_for(timeout=30_000)
    wait_idle(page)
    total = runs.read_summary(runs.load_run(stopped_run))["seconds"]
    per_epoch = sum(r["seconds"] for r in runs.read_metrics(runs.load_run(stopped_run)))
    assert total >= per_epoch  # the time adds up over both sessions


def test_clicking_a_confusion_cell_opens_its_images(page, shot, stopped_run: str) -> None:
    wait_idle(page)
    open_page(page, "Evaluate")
    chart = page.get_by_test_id("stPlotlyChart").first
    chart.wait_for(timeout=60_000)
    wait_idle(page)
    # the Confusion tab's gallery (the other tabs hold images too)
    captions = page.get_by_role("tabpanel").first.locator("[data-testid='stImageCaption']")
    captions.first.wait_for()

    def shown_classes() -> set[str]:
        """The classes of the gallery's images: file names start with the class (shortened)."""
        return {c.split(" · ")[-1][:7] for c in captions.all_inner_texts()}

    classes = sorted(SHAPES)
    # a diagonal cell other than the preselected cell's images
    target = next(c for c in classes if {c[:7]} != shown_classes())
    k = classes.index(target) * len(classes) + classes.index(target)  # row-major cell order
    cell = chart.locator(".scatterlayer .trace").last.locator(".point").nth(k)
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(300)  # let plotly finish its resize after the scroll
    box = cell.bounding_box()
    assert box is not None, "the cell markers are not drawn"
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    end = time.monotonic() + 30
    while shown_classes() != {target[:7]}:
        assert time.monotonic() < end, (target, captions.all_inner_texts())
        page.wait_for_timeout(200)
    wait_idle(page)
    assert all("…" in c or len(c) < 40 for c in captions.all_inner_texts())
    shot(page, "21-confusion-click", focus=chart)


def _choose_shapes(page, shapes_dir: Path) -> None:
    """Data page -> 'Path on this server' -> the small shapes folder, then the Train page (a
    small set: this machine may be shared, and the demo digits take minutes under load)."""
    wait_idle(page)
    open_page(page, "Data")
    page.get_by_text("Path on this server", exact=True).click()
    wait_idle(page)
    box = page.get_by_label("Folder or .zip on this server")
    box.fill(str(shapes_dir))
    box.press("Enter")
    wait_idle(page)
    button(page, "Use this path").click()
    page.get_by_test_id("stPlotlyChart").first.wait_for(timeout=60_000)  # images per class
    wait_idle(page)
    open_page(page, "Train")
    # recipe fixed: these flows drive the page on the plain small net (the small-data recipe's
    # deeper net would make every step here several times slower on a shared 2-core machine)
    page.get_by_test_id("stSelectbox").filter(has_text="Recipe").click()
    page.get_by_role("option", name="Fixed: exactly these").click()
    wait_idle(page)


def test_reload_keeps_the_sessions_choices(page, shot, shapes_dir: Path) -> None:
    _choose_shapes(page, shapes_dir)
    set_number(page, "Epochs", 1)
    button(page, "Start").click()
    page.get_by_text("Test accuracy").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
    wait_idle(page)
    assert "job=" in page.url and "s=" in page.url
    page.reload()
    page.get_by_text("Test accuracy").first.wait_for(timeout=60_000)  # the same result
    wait_idle(page)
    sidebar = page.get_by_test_id("stSidebar").inner_text()
    assert "shapes" in sidebar and "none chosen" not in sidebar, sidebar
    page.get_by_text("Hyperparameters").first.wait_for()
    assert page.get_by_label("Epochs", exact=True).input_value() == "1"
    assert page.get_by_role("button", name="Start").is_enabled()
    shot(page, "22-after-reload")
    open_page(page, "Model")  # the other pages kept the choices too
    assert "none chosen" not in page.get_by_test_id("stSidebar").inner_text()


def test_the_loss_curve_moves_within_the_first_epoch(page, shot, shapes_dir: Path) -> None:
    _choose_shapes(page, shapes_dir)
    set_number(page, "Batch size", 1)  # one image a step: the first epoch lasts a while
    set_number(page, "Epochs", 1000)  # still running when Stop is pressed below
    set_number(page, "Patience (0 = off)", 0)
    started = time.monotonic()
    button(page, "Start").click()
    page.wait_for_function(f"() => ({TRACE_X})('train (running)') !== null", timeout=60_000)
    first_s = time.monotonic() - started
    print(f"first point of the live curve {first_s:.1f} s after Start")  # pytest -rP shows it
    first = page.evaluate(TRACE_X, "train (running)")
    page.wait_for_function(
        f"n => {{ const x = ({TRACE_X})('train (running)'); return x && x.length > n; }}",
        arg=len(first),
        timeout=60_000,
    )
    later = page.evaluate(TRACE_X, "train (running)")
    progress = _progress_text(page)
    if progress.startswith("Epoch 1/"):  # still in the first epoch: the points are fractions
        assert all(0 < x < 1 for x in later), later
    assert later[-1] > first[-1]
    # issue 17 item 10: the live view moves without the page re-running its script (each run
    # re-rendered the page in the browser, CPU that a 2-core machine took from training)
    assert page.locator("[data-testid='cnnlab-live-chart'] .js-plotly-plot").count() >= 1
    assert page.evaluate(SCRIPT_RUNS, 4000) == 0
    assert _progress_text(page) != progress or "batch" not in progress  # still moving
    shot(page, "23-moving-curve")
    button(page, "Stop").click()
    page.get_by_text("Stopped by you").first.wait_for(timeout=30_000)


def test_without_its_feed_the_live_view_falls_back_to_rerunning(page, shapes_dir: Path) -> None:
    """A proxy that forwards only Streamlit's own paths: the live view cannot poll its feed, says
    so, and the page goes back to re-running a fragment every second instead of freezing."""
    page.route("**/api/cnnlab/jobs/**", lambda route: route.abort())
    _choose_shapes(page, shapes_dir)
    set_number(page, "Batch size", 1)
    set_number(page, "Epochs", 1000)  # still running when Stop is pressed
    set_number(page, "Patience (0 = off)", 0)
    button(page, "Start").click()
    page.get_by_text("The live view cannot reach the server").first.wait_for(timeout=30_000)
    bar = page.get_by_test_id("stProgress")  # the fragment's own progress bar
    bar.first.wait_for(timeout=60_000)
    page.wait_for_function(
        "() => /Epoch \\d+\\/1000/.test(document.querySelector(\"[data-testid='stProgress']\")"
        "?.innerText || '')",
        timeout=60_000,
    )
    assert page.locator("[data-testid='cnnlab-live-progress']").count() == 0
    assert page.evaluate(SCRIPT_RUNS, 3000) >= 2  # the fragment's ticks (what the live view spares)
    button(page, "Stop").click()
    page.get_by_text("Stopped by you").first.wait_for(timeout=30_000)
    page.unroute("**/api/cnnlab/jobs/**")
