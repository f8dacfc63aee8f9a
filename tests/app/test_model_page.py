"""AppTest of the Model page: controls drive the live summary; SimpleCNN in one click."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from cnnlab.config import RunConfig

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def model_page(workspace: Path, fresh_app) -> AppTest:
    """The dashboard switched to the Model page, with fresh caches."""
    at = fresh_app("pages/model.py")
    assert not at.exception
    return at


def metrics(at: AppTest) -> dict[str, int]:
    return {m.label: int(m.value.replace(",", "")) for m in at.metric}


def test_controls_change_the_summary(model_page: AppTest) -> None:
    at = model_page
    rows = at.dataframe[0].value
    assert list(rows.columns) == ["layer", "type", "output", "params", "trainable"]
    before = metrics(at)
    assert before["Parameters"] == rows["params"].sum() == before["Trainable"]

    at.number_input(key="m_blocks").set_value(2).run()
    at.number_input(key="m_ch_1").set_value(24).run()
    assert not at.exception
    after = metrics(at)
    assert after["Parameters"] != before["Parameters"]
    assert at.session_state["run_config"].model.channels == [32, 24]
    assert "24x8x8" in set(at.dataframe[0].value["output"])  # 32 px input, two 2x poolings

    at.checkbox(key="m_bn").uncheck().run()
    assert "BatchNorm2d" not in set(at.dataframe[0].value["type"])
    assert at.session_state["run_config"].model.batch_norm is False


def test_input_size_is_written_back_to_the_data_config(model_page: AppTest) -> None:
    at = model_page
    at.number_input(key="m_image_size").set_value(48).run()
    assert at.session_state["data_config"].image_size == 48
    assert at.session_state["run_config"].data.image_size == 48


def test_simple_cnn_button(model_page: AppTest) -> None:
    at = model_page
    next(b for b in at.button if "SimpleCNN" in b.label).click().run()
    assert not at.exception
    cfg: RunConfig = at.session_state["run_config"]
    assert cfg.model.name == "simple_cnn" and cfg.data.image_size == 64
    rows = at.dataframe[0].value
    assert list(rows["layer"]) == ["conv1", "pool", "conv2", "pool", "fc1", "dropout", "fc2"]
    assert rows.loc[rows["layer"] == "fc1", "params"].item() == 64 * 16 * 16 * 128 + 128


def test_transfer_weights_not_downloaded_yet(
    model_page: AppTest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # an empty torch hub and a mirror nobody listens on: the file is missing and cannot download
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("CNNLAB_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    at = model_page
    at.radio(key="m_family").set_value("Transfer learning").run()
    at.selectbox(key="m_backbone").set_value("resnet18").run()
    at.radio(key="m_strategy").set_value("feature_extraction").run()
    assert not at.exception
    assert any("not downloaded yet" in i.value for i in at.info)
    m = metrics(at)
    assert m["Frozen"] > 0 and m["Trainable"] == 512 * 10 + 10  # only the new head trains
    cfg: RunConfig = at.session_state["run_config"]
    assert cfg.model.name == "resnet18" and cfg.model.strategy == "feature_extraction"
    phases = at.dataframe[0].value
    assert list(phases["trainable"]) == [512 * 10 + 10]

    at.button(key="m_download").click().run()  # offline: one line saying where to put the file
    assert not at.exception
    (failure,) = [e.value for e in at.error if "cannot download resnet18-f37072fd.pth" in e.value]
    # the option as this page names it (issue 28 polish), not the CLI's weights 'random'
    assert "'Random (train from scratch)'" in failure and "weights 'random'" not in failure

    at.radio(key="m_strategy").set_value("fine_tune").run()
    phases = at.dataframe[0].value
    assert list(phases["phase"]) == ["head only", "whole model"]
    assert phases["trainable"].iloc[1] == m["Parameters"]

    at.radio(key="m_weights_kind").set_value("random").run()
    assert not any("not downloaded" in i.value for i in at.info)
    # fine_tune's head-only epoch would freeze a random backbone: said (issue 28 item 10)
    assert [w.value for w in at.warning] and all("frozen" in w.value for w in at.warning)
    assert at.session_state["run_config"].model.weights == "random"


def test_download_button_fetches_url_weights(
    model_page: AppTest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import functools
    import hashlib
    import http.server
    import threading

    import torchvision.models as tvm

    served = tmp_path / "served"
    served.mkdir()
    raw = served / "raw.pth"
    torch.save(tvm.mobilenet_v3_small(weights=None).state_dict(), raw)
    name = f"mnv3s-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(served / name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("CNNLAB_WEIGHTS_HOSTS", "127.0.0.1")  # the operator allows this host
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    try:
        at = model_page
        at.radio(key="m_family").set_value("Transfer learning").run()
        at.selectbox(key="m_backbone").set_value("mobilenet_v3_small").run()
        at.radio(key="m_weights_kind").set_value("url").run()
        at.text_input(key="m_weights_url").set_value(url).run()
        assert any("not downloaded yet" in i.value for i in at.info), [e.value for e in at.error]
        at.button(key="m_download").click().run()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert not at.exception and not at.error and not at.warning
    assert not any("not downloaded yet" in i.value for i in at.info)
    from cnnlab import weights

    assert weights.cached_path(url).is_file() and weights.cached_path(url).name == name
    assert at.session_state["run_config"].model.weights == url


def test_a_weights_url_off_the_hosts_list_is_refused_on_the_page(model_page: AppTest) -> None:
    """Issue 27: the weights URL field was a port scanner (any host:port, told apart by errors)."""
    at = model_page
    at.radio(key="m_family").set_value("Transfer learning").run()
    at.selectbox(key="m_backbone").set_value("mobilenet_v3_small").run()
    at.radio(key="m_weights_kind").set_value("url").run()
    at.text_input(key="m_weights_url").set_value("http://10.0.0.7:22/x.pth").run()
    assert not at.exception
    assert any("not on this server's list of weights hosts" in e.value for e in at.error)
    assert at.session_state["run_config"].model.weights == "random"


def test_a_small_set_is_offered_the_pretrained_route_first(
    workspace: Path, fresh_app, colours_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 29 item 3: the weights cached here -> 'Use resnet18' switches to it in one click."""
    from cnnlab import models, weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    cached = weights.cached_path(weights.imagenet_url(models.get_spec("resnet18")))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"stand-in: only its presence is read here")
    at = fresh_app("pages/model.py", dataset_path=str(colours_dir))
    assert not at.exception
    (advice,) = [i.value for i in at.info if "pretrained resnet18" in i.value]
    assert "cached here" in advice
    # the default custom net shown here is not what trains on so few images: said once
    assert [c.value for c in at.caption if c.value.startswith("At training, the small-data")]
    next(b for b in at.button if b.label == "Use resnet18").click().run()
    assert not at.exception
    cfg: RunConfig = at.session_state["run_config"]
    assert cfg.model.name == "resnet18" and cfg.data.image_size == 112
    assert not [i for i in at.info if "pretrained resnet18" in i.value]  # offered no more


def test_offline_a_small_set_hears_why_in_one_line(
    workspace: Path, fresh_app, colours_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cnnlab import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(weights, "_PROBED", {})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        monkeypatch.setenv("CNNLAB_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
        at = fresh_app("pages/model.py", dataset_path=str(colours_dir))
    assert not at.exception
    (line,) = [i.value for i in at.info if "cannot be downloaded here" in i.value]
    assert line.startswith("Pretrained weights cannot be downloaded here")
    assert line.endswith("training from scratch with the small-data recipe")
    assert not [b for b in at.button if b.label == "Use resnet18"]
