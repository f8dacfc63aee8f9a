"""`cnnlab serve RUN` in a real browser: the model card, an upload whose top-k equals
`cnnlab predict --json`, and nothing else of the lab reachable (no sidebar, deep links land on the
demo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ARTIFACTS, CHROMIUM_ARGS, SCREENSHOTS
from tests.servers import PAGE_IDLE, serve_run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_url(trained, chromium: Path):
    with serve_run(trained[1], trained[0]["run_id"], ARTIFACTS) as url:
        yield url


# Chromium's fake camera (a test pattern) stands in for a webcam; 127.0.0.1 counts as secure
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@pytest.fixture(scope="module")
def demo_browser(chromium: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS + FAKE_CAMERA, headless=True
        )
        yield b
        b.close()


@pytest.fixture
def demo_page(demo_browser, demo_url: str):
    context = demo_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(120_000)
    pg = context.new_page()
    yield pg
    context.close()


def _idle(page) -> None:
    page.wait_for_timeout(300)
    page.locator(PAGE_IDLE).wait_for(timeout=180_000)
    assert page.get_by_test_id("stException").count() == 0, page.inner_text("body")


def test_upload_shows_the_clis_top_k(demo_page, demo_url: str, trained, digits_dir: Path) -> None:
    page, run_id = demo_page, trained[0]["run_id"]
    page.goto(demo_url)
    page.get_by_role("heading", name=run_id).first.wait_for()
    page.get_by_test_id("stMetric").first.wait_for()
    _idle(page)
    metrics = page.get_by_test_id("stMetric").all_inner_texts()
    assert any(m.startswith("Test accuracy") for m in metrics), metrics
    assert page.get_by_test_id("stSidebarNav").count() == 0  # one page, no lab around it

    image = sorted((digits_dir / "2").iterdir())[5]
    env = {**os.environ, "CNNLAB_HOME": str(trained[1])}
    cli = subprocess.run(
        [sys.executable, "-m", "cnnlab", "predict", run_id, str(image), "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    (row,) = json.loads(cli.stdout)
    page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(str(image))
    top1 = row["top"][0]
    heading = page.get_by_role("heading", name=f"{image.name}: {top1['class']} "
                                               f"({top1['probability']:.1%})")  # fmt: skip
    heading.first.wait_for()
    _idle(page)
    # the bars hold the CLI's top-3 (best on top, so listed last) with its percentages
    chart = page.locator("[data-testid='stPlotlyChart'] .js-plotly-plot").first
    chart.scroll_into_view_if_needed()
    chart.wait_for()
    bars = chart.evaluate(
        "el => ({y: Array.from(el.data[0].y), text: Array.from(el.data[0].text)})"
    )
    assert bars["y"][::-1] == [t["class"] for t in row["top"]]
    assert bars["text"][::-1] == [f"{t['probability']:.1%}" for t in row["top"]]
    grad_cam = page.get_by_test_id("stImage").filter(has_text="Grad-CAM for")
    assert grad_cam.count() == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "serve-demo.png"), full_page=True)


def test_deep_links_land_on_the_demo(demo_page, demo_url: str, trained) -> None:
    page = demo_page
    for path in ("data", "train", "runs"):
        page.goto(f"{demo_url}/{path}")
        page.get_by_role("heading", name=trained[0]["run_id"]).first.wait_for()
        _idle(page)
        for lab_heading in ("Data", "Train", "Runs"):
            assert page.get_by_role("heading", name=lab_heading, exact=True).count() == 0


def _take_photo(page) -> None:
    """Click Take Photo once the camera's video plays (earlier, the snapshot would be empty)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('video')].some(v => v.readyState >= 2)"
    )
    page.get_by_role("button", name="Take Photo").click()


def test_camera_snapshots_are_predicted(demo_browser, demo_url: str, trained) -> None:
    context = demo_browser.new_context(
        viewport={"width": 1280, "height": 900}, permissions=["camera"]
    )
    context.set_default_timeout(120_000)
    page = context.new_page()
    try:
        page.goto(demo_url)
        page.get_by_role("heading", name=trained[0]["run_id"]).first.wait_for()
        _idle(page)
        page.get_by_text("Use the camera", exact=True).click()
        _idle(page)
        _take_photo(page)
        page.get_by_role("heading", name=re.compile(r"^camera photo: ")).first.wait_for()
        _idle(page)
        assert page.get_by_test_id("stImage").filter(has_text="Grad-CAM for").count() == 1
        # keep predicting: the photo on screen is kept as the first snapshot, then each new one is
        # predicted and the camera is live again at once
        page.get_by_text("Keep predicting", exact=True).click()
        page.get_by_role("heading", name=re.compile(r"^snapshot 1: ")).first.wait_for()
        _idle(page)
        for n in (2, 3):
            _take_photo(page)
            page.get_by_role("heading", name=re.compile(rf"^snapshot {n}: ")).first.wait_for()
            _idle(page)
        headings = page.get_by_role("heading", name=re.compile(r"^snapshot \d: ")).all_inner_texts()
        assert [h.split(":")[0] for h in headings] == ["snapshot 3", "snapshot 2", "snapshot 1"]
        page.screenshot(path=str(SCREENSHOTS / "serve-camera.png"), full_page=True)
    finally:
        context.close()
