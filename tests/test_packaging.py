"""The wheel is the product: build it, install it into a fresh venv, serve every page from elsewhere.

The venv reuses this interpreter's installed dependencies through a .pth line (no download), and
pip installs the wheel with --no-index, so its dependency metadata must be satisfiable here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import plotly
import pytest

import cnnlab
from tests.servers import free_port, streamlit_pids, wait_gone, wait_healthy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PAGE_RE = re.compile(r'st\.Page\("(pages/[a-z_]+\.py)", title="([^"]+)"')
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", "test-artifacts", "tests",
)  # fmt: skip


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnnlab-*.whl built from a copy of the source tree (the build never touches the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(tmp / "dist"), str(src)])  # fmt: skip
    (built,) = (tmp / "dist").glob("cnnlab-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the installed wheel; dependencies come from this interpreter."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # A plain path line: the dependencies become importable, but .pth files there (such as an
    # editable install of cnnlab itself) are not run, so only the wheel provides `cnnlab`.
    Path(site.stdout.strip(), "reuse-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([python, "-m", "pip", "install", "--no-index", "-q", str(wheel)])
    return root


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a command run from an unrelated folder with its own workspace."""
    env = {**os.environ, "CNNLAB_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)  # nothing from the checkout
    env.pop("CNNLAB_DATA_ROOTS", None)
    return env


def test_wheel_carries_the_dashboard_unchanged(wheel: Path) -> None:
    pages = PAGE_RE.findall((ROOT / "app.py").read_text())
    assert len(pages) >= 9, pages
    expected = ["server.py", "app.py", ".streamlit/config.toml", "pages/ui.py", "pages/live.py",
                "pages/live_chart.js", "pages/predict_api.py", "pages/predict_view.py",
                "demo_server.py", "demo_app/app.py", *[p for p, _ in pages]]  # fmt: skip
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in expected:
            member = f"cnnlab/dashboard/{rel}"
            assert member in names, sorted(n for n in names if "dashboard" in n)
            assert zf.read(member) == (ROOT / rel).read_bytes(), f"{member} differs from {rel}"
        assert not [n for n in names if n.startswith(("tests/", "pages/", "app.py", "server.py",
                                                      "demo_app/", "demo_server.py"))]  # fmt: skip
    # pyproject lists the packages by name: a new sub-package must be added there too
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "cnnlab").rglob("*.py")}
    assert sources - names == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_installed_version_and_package_come_from_the_venv(
    venv: Path, tmp_path: Path, elsewhere: dict
) -> None:
    out = _run([venv / "bin" / "cnnlab", "--version"], cwd=tmp_path, env=elsewhere).stdout
    assert out.strip() == f"cnnlab {cnnlab.__version__}"
    where = _run(
        [venv / "bin" / "python", "-c",
         "from cnnlab import app_launcher; print(app_launcher.dashboard_dir())"],
        cwd=tmp_path, env=elsewhere,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(venv.resolve()) and Path(where, "app.py").is_file(), where


PAGES_SCRIPT = """
import json, re, sys
from streamlit.testing.v1 import AppTest
from cnnlab import app_launcher

app = app_launcher.dashboard_dir() / "app.py"
pages = re.findall(r'st\\.Page\\("(pages/[a-z_]+\\.py)", title="([^"]+)"', app.read_text())
at = AppTest.from_file(str(app), default_timeout=120)
at.run()
seen = {}
for path, title in pages:
    at.switch_page(path).run()
    seen[title] = {
        "exceptions": [e.value for e in at.exception],
        "titles": [t.value for t in at.title],
    }
print(json.dumps(seen))
"""


def test_every_page_of_the_installed_dashboard_loads(
    venv: Path, tmp_path: Path, elsewhere: dict
) -> None:
    out = _run([venv / "bin" / "python", "-c", PAGES_SCRIPT], cwd=tmp_path, env=elsewhere)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    titles = [t for _, t in PAGE_RE.findall((ROOT / "app.py").read_text())]
    assert list(seen) == titles
    for title, page in seen.items():
        assert page["exceptions"] == [], (title, page)
        assert page["titles"], (title, page)  # each page draws its heading
    assert seen["Data"]["titles"][0] == "Data"


def test_installed_app_serves_from_another_folder_with_its_config(
    venv: Path, tmp_path: Path, elsewhere: dict
) -> None:
    port = free_port()
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [venv / "bin" / "cnnlab", "app", "--port", str(port)],
            cwd=tmp_path, env=elsewhere, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            body = wait_healthy(proc, port, log)
            assert "<title>" in body  # the dashboard's index page
            # .streamlit/config.toml sets browser.serverAddress = "localhost": Streamlit then
            # announces localhost rather than the bound 127.0.0.1, so the packaged file was read.
            text = log.read_text()
            assert f"URL: http://localhost:{port}" in text, text
            # server.py's live feed is served too (st.App imports pages/live.py from the wheel)
            feed = f"http://127.0.0.1:{port}/api/cnnlab/jobs/no-such-job/live"
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(feed, timeout=30)
            assert missing.value.code == 404
            assert json.load(missing.value) == {"error": "no job 'no-such-job' in this server"}
            # and the predict API (pages/predict_api.py from the wheel)
            predict = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/cnnlab/predict?run_id=nope",
                data=b"\x89PNG", headers={"Content-Type": "image/png"}, method="POST",
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as no_run:
                urllib.request.urlopen(predict, timeout=30)
            assert no_run.value.code == 404
            assert json.load(no_run.value) == {"error": "no run 'nope' on this server"}
            js = f"http://127.0.0.1:{port}/api/cnnlab/plotly-{plotly.__version__}.min.js"
            with urllib.request.urlopen(js, timeout=30) as reply:
                assert reply.read(4096).lstrip().startswith(b"/**")  # plotly.js's licence header
                assert "max-age" in reply.headers["Cache-Control"]
            pids = streamlit_pids(port)
            assert pids, "no process serving the port was found"
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    wait_gone(pids, port)
    assert code in (0, -signal.SIGTERM), log.read_text()
