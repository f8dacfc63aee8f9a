"""weights: downloads through torch hub from a real HTTP server on 127.0.0.1, the cache, the mirror,
tampered / truncated / stalled / foreign files, offline, and what the CLI prints for them."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cnnlab import cli, models, weights, weights_download
from cnnlab.config import ModelConfig
from cnnlab.errors import WeightsError
from cnnlab.registry import MODELS, ModelSpec


class Tiny(nn.Module):
    """A two-layer stand-in for an ImageNet backbone: same loading path, bytes instead of MBs."""

    def __init__(self, n: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _hub_name(stem: str, payload: bytes) -> str:
    """torch hub's naming: <stem>-<first 8 hex digits of the sha256>.pth"""
    return f"{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


class Server:
    """http.server in a thread serving `files` (path -> bytes); `mode` breaks responses on purpose."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.slow: set[str] = set()  # paths whose body trickles out (a byte every 0.1 s)
        self.sent = 0  # bytes of streamed bodies sent so far
        # ok | truncate (close halfway) | stall (send half, then wait 30 s)
        # | zeros (zeros without Content-Length, for ever)
        self.mode = "ok"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.requests.append(self.path)
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.end_headers()
                    return
                if outer.mode == "zeros":
                    self.send_response(200)
                    self.end_headers()
                    try:
                        for _ in range(10_000):
                            self.wfile.write(bytes(64 * 1024))
                            outer.sent += 64 * 1024
                    except OSError:  # the client hung up: what the test wants
                        pass
                    self.close_connection = True
                    return
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in outer.slow:
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(0.1)
                    except OSError:
                        pass
                    return
                if outer.mode == "ok":
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                if outer.mode == "stall":
                    time.sleep(30)  # far beyond the client timeout, even on a busy machine
                self.close_connection = True

            def log_message(self, *_args) -> None:  # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub under tmp_path via TORCH_HOME (torch.hub.get_dir honours it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any earlier torch.hub.set_dir
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def tiny_spec():
    """A registered transfer model whose ImageNet file has a torch hub name on the public host."""
    source = Tiny(10)
    payload = _state_bytes(source.state_dict())
    url = f"https://download.pytorch.org/models/{_hub_name('tiny', payload)}"

    def build(cfg: ModelConfig, n: int, size: int) -> nn.Module:
        return Tiny(n)

    spec = ModelSpec("test_tiny", build, transfer=True, weights=SimpleNamespace(url=url), head="fc")
    MODELS[spec.name] = spec
    yield spec, source, payload
    MODELS.pop(spec.name)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def _leftovers(folder: Path) -> list[str]:
    """Files left in the cache (relative paths), the per-file lock folder aside."""
    if not folder.exists():
        return []
    files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
    return sorted(str(p) for p in files if p.parts[0] != ".locks")


def test_url_downloads_once_then_the_cache_needs_no_server(server: Server, hub: Path) -> None:
    source = Tiny(10)
    payload = _state_bytes(source.state_dict())
    name = _hub_name("mine", payload)
    server.files[f"/w/{name}"] = payload
    url = f"{server.base}/w/{name}"
    seen: list[tuple[int, int, str]] = []

    spec = ModelSpec("t", lambda c, n, s: Tiny(n), head="fc")
    target = Tiny(5)
    weights.load_weights(target, url, spec, ("fc.",), lambda d, t, w: seen.append((d, t, w)))
    assert torch.equal(target.conv.weight, source.conv.weight)
    # the file and nothing else (no .partial, no temp), in the folder of its URL
    assert _leftovers(hub) == [str(weights.cached_path(url).relative_to(hub))]
    assert weights.cached_path(url).parent.parent.name == "by-url"
    assert seen[-1] == (len(payload), len(payload), f"downloading {name}")
    assert len(server.requests) == 1

    server.stop()
    again = Tiny(5)
    weights.load_weights(again, url, spec, ("fc.",))  # from the cache: the server is gone
    assert torch.equal(again.conv.weight, source.conv.weight)
    assert len(server.requests) == 1


def test_imagenet_through_the_mirror(server: Server, hub: Path, tiny_spec, monkeypatch) -> None:
    spec, source, payload = tiny_spec
    name = Path(spec.weights.url).name
    server.files[f"/models/{name}"] = payload
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server.base}/models/")
    assert weights.needs_download("imagenet", spec)
    model = models.create_model(ModelConfig(name="test_tiny", weights="imagenet"), 3, 16)
    assert torch.equal(model.conv.weight, source.conv.weight)
    assert model.fc.out_features == 3  # its own 3-class head, not the file's 10-class one
    assert server.requests == [f"/models/{name}"]
    assert not weights.needs_download("imagenet", spec)
    # cached: a second model needs no server
    server.stop()
    models.create_model(ModelConfig(name="test_tiny", weights="imagenet"), 4, 16)


def test_tampered_file_is_refused_and_not_cached(server: Server, hub: Path) -> None:
    good = _state_bytes(Tiny(10).state_dict())
    name = _hub_name("tiny", good)
    server.files[f"/{name}"] = _state_bytes(Tiny(10).state_dict())  # other bytes, same name
    with pytest.raises(WeightsError) as info:
        weights.fetch(f"{server.base}/{name}")
    message = str(info.value)
    assert name in message and name.split("-")[1][:8] in message and "sha256" in message
    assert "\n" not in message
    assert _leftovers(hub) == []


def test_offline_fails_fast_with_one_line(hub: Path, tiny_spec, monkeypatch) -> None:
    spec, _, _ = tiny_spec
    monkeypatch.setenv(weights.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}/models")
    with pytest.raises(WeightsError) as info:
        models.create_model(ModelConfig(name="test_tiny", weights="imagenet"), 3, 16)
    message = str(info.value)
    name = Path(spec.weights.url).name
    assert "\n" not in message
    for part in (name, f"/models/{name}", str(hub), "random", ".pth file"):
        assert part in message, part
    assert "refused" in message.lower()  # the connection was refused: no retry loop, no wait
    assert _leftovers(hub) == []


def test_cli_offline_and_bad_scheme_are_one_line_exit_2(
    hub: Path, tiny_spec, monkeypatch, capsys, workspace: Path, colour_classes: Path
) -> None:
    monkeypatch.setenv(weights.MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")
    data = colour_classes  # valid data, so the pre-flight check passes and the weights fail
    for argv, expected in (
        (["--model", "test_tiny", "--weights", "imagenet"], "cannot download"),
        (["--model", "resnet18", "--weights", "ftp://example.org/w.pth"], "not http(s)"),
        (["--model", "resnet18", "--weights", "file:///tmp/w.pth"], "not http(s)"),
    ):
        assert cli.main(["train", str(data), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err


def test_a_file_that_is_not_a_state_dict_is_refused(server: Server, hub: Path) -> None:
    payload = _state_bytes({"note": "hello"})
    name = _hub_name("note", payload)
    server.files[f"/{name}"] = payload
    with pytest.raises(WeightsError, match="holds no state dict"):
        weights.fetch(f"{server.base}/{name}")
    assert _leftovers(hub) == []
    server.files["/text.pth"] = b"this is not a torch file"
    with pytest.raises(WeightsError, match="weights-only state dict"):
        weights.fetch(f"{server.base}/text.pth")
    assert _leftovers(hub) == []


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_downloaded_pickle_never_runs(server: Server, hub: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    server.files["/evil.pth"] = _state_bytes({"w": _Payload(marker)})
    with pytest.raises(WeightsError, match="weights-only"):
        weights.fetch(f"{server.base}/evil.pth")
    assert not marker.exists() and _leftovers(hub) == []


@pytest.mark.parametrize("hashed", [True, False])
def test_interrupted_download_leaves_no_file(server: Server, hub: Path, hashed: bool) -> None:
    payload = _state_bytes(Tiny(10).state_dict())
    name = _hub_name("cut", payload) if hashed else "cut.pth"
    server.files[f"/{name}"] = payload
    server.mode = "truncate"
    with pytest.raises(WeightsError) as info:
        weights.fetch(f"{server.base}/{name}")
    assert name in str(info.value)
    assert _leftovers(hub) == []


def test_stalled_download_times_out(server: Server, hub: Path, monkeypatch) -> None:
    monkeypatch.setenv(weights_download.TIMEOUT_ENV, "1")
    payload = _state_bytes(Tiny(10).state_dict())
    server.files["/slow.pth"] = payload
    server.mode = "stall"
    # "timed out", not a truncated download: our 1 s timeout fired before the server's stall ended
    with pytest.raises(WeightsError, match="timed out"):
        weights.fetch(f"{server.base}/slow.pth")
    assert _leftovers(hub) == []
    assert socket.getdefaulttimeout() is None  # no process-wide timeout was set


def test_http_error_names_the_status(server: Server, hub: Path) -> None:
    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.fetch(f"{server.base}/missing-0123abcd.pth")


def test_imagenet_default_url_and_cache_folder(hub: Path) -> None:
    spec = models.get_spec("resnet18")
    assert weights.imagenet_url(spec) == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert weights.cached_path(weights.imagenet_url(spec)) == hub / "resnet18-f37072fd.pth"
    assert weights.hash_prefix("resnet18-f37072fd.pth") == "f37072fd"
    assert weights.hash_prefix("model.pth") is None


def test_a_dead_proxy_is_an_offline_error(hub: Path, monkeypatch) -> None:
    import urllib.request

    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen reads proxies once, then caches
    with pytest.raises(WeightsError, match="cannot download w-0123abcd.pth .*Connection refused"):
        weights.fetch("http://weights.example/w-0123abcd.pth")
    assert _leftovers(hub) == []


def test_temporaries_of_a_killed_download_are_cleaned(server: Server, hub: Path) -> None:
    import fcntl
    import os

    payload = _state_bytes(Tiny(10).state_dict())
    name = _hub_name("tiny", payload)
    server.files[f"/{name}"] = payload
    hub.mkdir(parents=True)
    url = f"{server.base}/{name}"
    folder = weights.cached_path(url).parent
    folder.mkdir(parents=True)
    old = folder / f".{name}.abc123.download.0f0f.partial"  # what a kill -9 mid-download leaves
    live = folder / f".{name}.def456.download"  # another process downloading right now
    old.write_bytes(b"half")
    live.write_bytes(b"")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a live download holds its temporary
    try:
        weights.fetch(url)
    finally:
        os.close(fd)
    rel = folder.relative_to(hub)
    assert _leftovers(hub) == sorted([str(rel / name), str(rel / live.name)])


# ------------------------------------------------------------------ issue 27: safe downloads


def _fresh_state() -> tuple[Tiny, bytes]:
    model = Tiny(10)
    return model, _state_bytes(model.state_dict())


def test_two_urls_with_one_file_name_never_share_a_cached_file(hub: Path) -> None:
    a, b = Server(), Server()
    try:
        model_a, bytes_a = _fresh_state()
        model_b, bytes_b = _fresh_state()
        a.files["/model.pth"], b.files["/model.pth"] = bytes_a, bytes_b
        spec = ModelSpec("t", lambda c, n, s: Tiny(n), head="fc")
        first, second = Tiny(5), Tiny(5)
        weights.load_weights(first, f"{a.base}/model.pth", spec, ("fc.",))
        weights.load_weights(second, f"{b.base}/model.pth", spec, ("fc.",))
        assert b.requests == ["/model.pth"]  # b was asked, not answered from a's file
        assert torch.equal(second.conv.weight, model_b.conv.weight)
        assert not torch.equal(second.conv.weight, model_a.conv.weight)
        assert weights.cached_path(f"{a.base}/model.pth") != weights.cached_path(
            f"{b.base}/model.pth"
        )
    finally:
        a.stop()
        b.stop()


def test_a_body_without_length_stops_at_the_size_cap(server: Server, hub: Path, monkeypatch):
    monkeypatch.setenv(weights_download.MAX_MB_ENV, "1")
    server.mode = "zeros"
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match="over the 1 MB cap"):
        weights.fetch(f"{server.base}/big.pth")
    assert time.monotonic() - t0 < 10
    assert _leftovers(hub) == []  # the partial file went with the failure
    assert server.sent < 50 * 1024 * 1024  # the server was cut off, not drained


def test_a_trickle_cannot_outlast_the_deadline(server: Server, hub: Path, monkeypatch) -> None:
    monkeypatch.setenv(
        weights_download.TIMEOUT_ENV, "5"
    )  # every byte comes well within the stall timeout
    monkeypatch.setenv(weights_download.DEADLINE_ENV, "1.5")
    server.files["/drip.pth"] = bytes(1000)
    server.slow.add("/drip.pth")
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match="deadline"):
        weights.fetch(f"{server.base}/drip.pth")
    assert time.monotonic() - t0 < 8
    assert _leftovers(hub) == []


def test_a_slow_download_does_not_hold_up_another_file(server: Server, hub: Path, monkeypatch):
    monkeypatch.setenv(weights_download.DEADLINE_ENV, "20")
    server.files["/slow.pth"] = bytes(60)  # 6 s at a byte every 0.1 s
    server.slow.add("/slow.pth")
    _, payload = _fresh_state()
    server.files["/fast.pth"] = payload
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            weights.fetch(f"{server.base}/slow.pth")
        except WeightsError as exc:  # not a state dict: expected once it finishes
            errors.append(exc)

    thread = threading.Thread(target=slow, daemon=True)
    thread.start()
    while "/slow.pth" not in server.requests:
        time.sleep(0.02)
    t0 = time.monotonic()
    assert weights.fetch(f"{server.base}/fast.pth").is_file()
    assert time.monotonic() - t0 < 3 and thread.is_alive()  # fast finished while slow still runs
    thread.join(20)


def test_a_redirect_to_another_scheme_is_not_followed(server: Server, hub: Path) -> None:
    with socket.socket() as listener:  # an FTP-like listener: it must see no connection
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        server.redirects["/w.pth"] = f"ftp://user@127.0.0.1:{port}/w.pth"
        with pytest.raises(WeightsError, match="redirect to ftp: refused"):
            weights.fetch(f"{server.base}/w.pth")
        with pytest.raises(TimeoutError):
            listener.accept()
    assert _leftovers(hub) == []


def test_visitor_rules_allow_only_listed_hosts_and_redirects(
    server: Server, hub: Path, monkeypatch
) -> None:
    from cnnlab import reach

    other = Server()
    try:
        _, payload = _fresh_state()
        other.files["/w.pth"] = payload
        monkeypatch.setenv(reach.DASHBOARD_ENV, "1")
        monkeypatch.setenv(reach.HOSTS_ENV, "127.0.0.1")
        # another host (the same machine by another name) is not on the list: never contacted
        with pytest.raises(WeightsError, match="not on this server's list"):
            weights.fetch(other.base.replace("127.0.0.1", "localhost") + "/w.pth")
        assert other.requests == []
        # nor reached through a redirect from an allowed host
        server.redirects["/r.pth"] = other.base.replace("127.0.0.1", "localhost") + "/w.pth"
        with pytest.raises(WeightsError, match="not on the weights hosts list"):
            weights.fetch(f"{server.base}/r.pth")
        assert other.requests == []
        # the CLI (no visitor rules) is not restricted
        monkeypatch.delenv(reach.DASHBOARD_ENV)
        assert weights.fetch(f"{server.base}/r.pth").is_file()
        assert other.requests == ["/w.pth"]
    finally:
        other.stop()


def test_visitor_errors_do_not_tell_closed_ports_from_missing_files(
    server: Server, hub: Path, monkeypatch
) -> None:
    from cnnlab import reach

    monkeypatch.setenv(reach.DASHBOARD_ENV, "1")
    monkeypatch.setenv(reach.HOSTS_ENV, "127.0.0.1")
    texts = []
    for url in (f"{server.base}/missing.pth", f"http://127.0.0.1:{_closed_port()}/missing.pth"):
        with pytest.raises(WeightsError) as info:
            weights.fetch(url)
        texts.append(str(info.value).replace(url, "URL"))
    assert texts[0] == texts[1]
    assert "404" not in texts[0] and "refused" not in texts[0].lower()


def test_secrets_in_urls_are_redacted_in_errors(server: Server, hub: Path) -> None:
    from cnnlab import reach

    url = f"http://alice:hunter2@{server.base[7:]}/missing.pth?X-Amz-Signature=s3cr3t&v=1"
    with pytest.raises(WeightsError) as info:
        weights.fetch(url)
    text = str(info.value)
    assert "hunter2" not in text and "s3cr3t" not in text
    assert "X-Amz-Signature=***" in text and "alice:***@" in text
    assert reach.redact_url("https://h/x.pth") == "https://h/x.pth"


@pytest.mark.slow
def test_sigterm_mid_download_leaves_no_partial(server: Server, hub: Path, tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys

    server.files["/slow.pth"] = bytes(600)
    server.slow.add("/slow.pth")
    code = "import sys; from cnnlab import weights; weights.fetch(sys.argv[1])"
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.Popen([sys.executable, "-c", code, f"{server.base}/slow.pth"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(".download" in p for p in _leftovers(hub)):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) != 0
    finally:
        proc.kill()
    assert _leftovers(hub) == []


def test_a_failed_download_keeps_start_off_until_the_file_is_there(
    server: Server, hub: Path, tiny_spec, monkeypatch, colour_classes: Path, workspace: Path
) -> None:
    """Issue 28 item 10: after 'Download the weights now' failed, the pre-flight (Train's Start)
    lists it instead of letting a run fail 20 s later; a later success clears it."""
    from cnnlab import preflight
    from cnnlab.config import DataConfig, RunConfig, TrainConfig

    spec, _, payload = tiny_spec
    monkeypatch.setenv(weights.MIRROR_ENV, f"{server.base}/models/")  # not there yet: 404
    cfg = RunConfig(data=DataConfig(path=str(colour_classes), image_size=16),
                    model=ModelConfig(name="test_tiny", weights="imagenet"),
                    train=TrainConfig(device="cpu"))  # fmt: skip
    assert [p.where for p in preflight.check(cfg)] == []
    with pytest.raises(WeightsError):
        models.fetch_weights(cfg.model)
    (problem,) = preflight.check(cfg)
    assert problem.where == "model.weights" and "cannot download" in problem.message
    assert "Random (train from scratch)" in problem.message  # the option as the page names it
    server.files[f"/models/{Path(spec.weights.url).name}"] = payload
    models.fetch_weights(cfg.model)
    assert preflight.check(cfg) == []


def test_a_frozen_random_backbone_is_said(
    workspace: Path, colour_classes: Path, capsys, monkeypatch
) -> None:
    """Item 10: feature_extraction / fine_tune's head-only epochs with random weights freeze a
    random backbone: the pre-flight says so (CLI, Train page), the Model page too."""
    from cnnlab import cli, preflight
    from cnnlab.config import DataConfig, RunConfig

    def notes(**model) -> list[str]:
        cfg = RunConfig(data=DataConfig(path=str(colour_classes)),
                        model=ModelConfig(name="resnet18", weights="random", **model))  # fmt: skip
        return [n for n in preflight.run_warnings(cfg) if "frozen" in n]

    assert "only the head learns" in notes(strategy="feature_extraction")[0]
    assert "--freeze-epochs" in notes(strategy="fine_tune", freeze_epochs=1)[0]
    assert notes(strategy="fine_tune", freeze_epochs=0) == []
    code = cli.main(["train", str(colour_classes), "--model", "resnet18", "--weights", "random",
                     "--strategy", "feature_extraction", "--epochs", "1", "--image-size", "32",
                     "--batch-size", "16", "--device", "cpu", "--json"])  # fmt: skip
    assert code == 0 and "warning: weights 'random'" in capsys.readouterr().err
