"""`cnnlab serve RUN` and the dashboard's predict API, over real HTTP on 127.0.0.1.

Good images (multipart, raw bytes, a batch) get the numbers `cnnlab predict --json` prints; a
20 MB body, a text file, a truncated PNG and bad parameters get one-line 4xx JSON without a path
or traceback; 50 requests at once are all answered and the server stays up.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.servers import healthy, serve_dashboard, serve_run

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def cli_predict(home: Path, run_id: str, files: list[Path]) -> list[dict]:
    """What `cnnlab predict RUN FILES --json` prints (a real subprocess)."""
    env = {**os.environ, "CNNLAB_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", "predict", run_id, *map(str, files), "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


def assert_same(api_top: list[dict], cli_top: list[dict]) -> None:
    assert [t["label"] for t in api_top] == [t["class"] for t in cli_top]
    assert [t["probability"] for t in api_top] == pytest.approx(
        [t["probability"] for t in cli_top], abs=1e-6
    )


def assert_clean_error(reply: requests.Response, status: int, *secrets: str) -> str:
    """A one-line JSON error with this status that names no server path."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert list(body) == ["error"]
    message = body["error"]
    assert message and "\n" not in message and "Traceback" not in message
    for secret in secrets:
        assert secret not in reply.text
    return message


@pytest.fixture(scope="module")
def served(trained) -> str:
    with serve_run(trained[1], trained[0]["run_id"], ARTIFACTS) as url:
        yield url


@pytest.fixture(scope="module")
def digit_files(digits_dir: Path) -> list[Path]:
    return [sorted((digits_dir / d).iterdir())[2] for d in ("0", "3", "5", "8")]


def test_good_images_equal_the_cli(served: str, trained, digit_files: list[Path]) -> None:
    home, run_id = trained[1], trained[0]["run_id"]
    api = f"{served}/api/cnnlab/predict"
    one = digit_files[0]
    # one file, multipart
    reply = requests.post(api, files={"image": (one.name, one.read_bytes(), "image/png")},
                          timeout=120)  # fmt: skip
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert set(answer) >= {"run_id", "top_k", "seconds"} and answer["run_id"] == run_id
    assert len(answer["top_k"]) == 3 and 0 < answer["seconds"] < 60
    (cli_row,) = cli_predict(home, run_id, [one])
    assert_same(answer["top_k"], cli_row["top"])
    # the raw bytes, with top_k
    reply = requests.post(f"{api}?top_k=5", data=one.read_bytes(),
                          headers={"Content-Type": "image/png"}, timeout=120)  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["top_k"]) == 5
    assert_same(reply.json()["top_k"][:3], cli_row["top"])
    # a batch of several files in one request: one prediction per file, in order
    files = [("images", (f.name, f.read_bytes(), "image/png")) for f in digit_files]
    reply = requests.post(api, files=files, data={"top_k": "2"}, timeout=120)
    assert reply.status_code == 200, reply.text
    batch = reply.json()["predictions"]
    cli_rows = cli_predict(home, run_id, digit_files)
    assert [p["file"] for p in batch] == [f.name for f in digit_files]
    for got, want in zip(batch, cli_rows, strict=True):
        assert_same(got["top_k"], want["top"][:2])
    # the run is described on GET
    info = requests.get(api, timeout=30).json()
    assert info["run_id"] == run_id and info["classes"] == [str(d) for d in range(10)]


def test_bad_requests_get_one_line_4xx(served: str, trained, digit_files: list[Path]) -> None:
    home = str(trained[1])
    api = f"{served}/api/cnnlab/predict"
    # 20 MB of body: refused for its size, read to its end so the caller sees the answer
    big = requests.post(api, data=b"\x89PNG" + bytes(20 * 1024 * 1024),
                        headers={"Content-Type": "image/png"}, timeout=120)  # fmt: skip
    assert "larger than 16 MB" in assert_clean_error(big, 413, home)
    # the same without a Content-Length (chunked): cut off at the cap
    chunks = (bytes(1024 * 1024) for _ in range(20))
    big = requests.post(api, data=chunks, headers={"Content-Type": "image/png"}, timeout=120)
    assert "larger than 16 MB" in assert_clean_error(big, 413, home)
    text = requests.post(api, files={"image": ("notes.txt", b"hello\n", "text/plain")},
                         timeout=60)  # fmt: skip
    assert "notes.txt: not a readable image" in assert_clean_error(text, 400, home)
    png = io.BytesIO()
    Image.new("RGB", (80, 80), (10, 200, 10)).save(png, "PNG")
    half = png.getvalue()[: len(png.getvalue()) // 2]
    cut = requests.post(api, files={"image": ("cut.png", half, "image/png")}, timeout=60)
    assert "cut.png: corrupt image data" in assert_clean_error(cut, 400, home)
    raw_text = requests.post(api, data=b"hello", headers={"Content-Type": "text/plain"},
                             timeout=60)  # fmt: skip
    assert_clean_error(raw_text, 415, home)
    empty = requests.post(api, data=b"", headers={"Content-Type": "image/png"}, timeout=60)
    assert "no image" in assert_clean_error(empty, 400, home)
    good = digit_files[0].read_bytes()
    other = requests.post(f"{api}?run_id=someone-elses-run", data=good,
                          headers={"Content-Type": "image/png"}, timeout=60)  # fmt: skip
    assert "serves run" in assert_clean_error(other, 404, home)
    bad_k = requests.post(f"{api}?top_k=zero", data=good,
                          headers={"Content-Type": "image/png"}, timeout=60)  # fmt: skip
    assert "top_k" in assert_clean_error(bad_k, 400, home)
    garbled = requests.post(api, data=b"--x\r\nnot really multipart",
                            headers={"Content-Type": "multipart/form-data"}, timeout=60)  # fmt: skip
    assert_clean_error(garbled, 400, home)
    many = [("images", (f"{i}.png", good, "image/png")) for i in range(40)]
    too_many = requests.post(api, files=many, timeout=60)
    assert "more than 32 images" in assert_clean_error(too_many, 413, home)
    assert healthy(int(served.rsplit(":", 1)[1]))


def test_fifty_requests_at_once_are_all_answered(served: str, digit_files: list[Path]) -> None:
    api = f"{served}/api/cnnlab/predict"
    payloads = [f.read_bytes() for f in digit_files]

    def post(i: int) -> tuple[int, str]:
        reply = requests.post(api, files={"image": (f"{i}.png", payloads[i % 4], "image/png")},
                              timeout=300)  # fmt: skip
        return reply.status_code, reply.json()["top_k"][0]["label"]

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(post, range(50)))
    assert [status for status, _ in answers] == [200] * 50
    # the same image always gets the same answer, whatever else runs beside it
    for i in range(4):
        assert len({label for j, (_, label) in enumerate(answers) if j % 4 == i}) == 1
    assert healthy(int(served.rsplit(":", 1)[1]))


def test_the_lab_server_answers_for_a_run_id(trained, digit_files: list[Path]) -> None:
    home, run_id = trained[1], trained[0]["run_id"]
    one = digit_files[1]
    with serve_dashboard(home, ARTIFACTS) as url:
        api = f"{url}/api/cnnlab/predict"
        reply = requests.post(api, params={"run_id": run_id},
                              files={"image": (one.name, one.read_bytes(), "image/png")},
                              timeout=120)  # fmt: skip
        assert reply.status_code == 200, reply.text
        (cli_row,) = cli_predict(home, run_id, [one])
        assert_same(reply.json()["top_k"], cli_row["top"])
        form = requests.post(api, data={"run_id": run_id},
                             files={"image": (one.name, one.read_bytes(), "image/png")},
                             timeout=120)  # fmt: skip
        assert form.status_code == 200 and form.json()["run_id"] == run_id
        missing = requests.post(api, files={"image": ("a.png", one.read_bytes())}, timeout=60)
        assert "run_id" in assert_clean_error(missing, 400, str(home))
        for bad in (f"../runs/{run_id}", str(home / "runs" / run_id)):
            sneaky = requests.post(api, params={"run_id": bad}, data=one.read_bytes(),
                                   headers={"Content-Type": "image/png"}, timeout=60)  # fmt: skip
            assert_clean_error(sneaky, 400, str(home))
        unknown = requests.post(api, params={"run_id": "20990101-000000000-beef"},
                                data=one.read_bytes(), headers={"Content-Type": "image/png"},
                                timeout=60)  # fmt: skip
        assert_clean_error(unknown, 404, str(home))
