"""The CUDA code paths run for real: AMP + channels_last training, the GPU-resident uint8 cache and
its pinned-memory fallback, resume, predict and ONNX export against the CPU.

Run with `pytest -m cuda` on a machine with a CUDA GPU (benchmarks/gpu_check.sh does); skipped only
where no CUDA device exists. Bands, not exact equality: cuDNN picks its algorithms per machine
(cudnn.benchmark) and bf16 autocast rounds differently from the CPU's float32.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import epoch, export, fit_setup, runs, train
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.predict import Predictor

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ACCURACY_BAND = 0.08  # CUDA vs CPU test accuracy of the same short recipe


def _config(digits_dir: Path, device: str, epochs: int = 3) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(digits_dir), image_size=16),
        model=ModelConfig(channels=[16, 32], head_units=64),
        train=TrainConfig(epochs=epochs, device=device, patience=0, amp=True, channels_last=True),
    )


@pytest.fixture(scope="module")
def cpu_run(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: the same recipe on the CPU."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(tmp_path_factory.mktemp("cpu-home")))
        return train.fit(_config(digits_dir, "cpu"))


@pytest.fixture(scope="module")
def cuda_run(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One CUDA run (AMP + channels_last) and its workspace: (summary, home)."""
    home = tmp_path_factory.mktemp("cuda-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(home))
        yield train.fit(_config(digits_dir, "cuda")), home


def test_fit_on_cuda_with_amp_lands_in_the_cpu_band(cpu_run, cuda_run):
    summary, _ = cuda_run
    assert summary["status"] == "completed"
    assert summary["device"].startswith("CUDA")
    assert summary["epochs_run"] == 3
    assert cpu_run["test_accuracy"] >= 0.8, cpu_run
    assert abs(summary["test_accuracy"] - cpu_run["test_accuracy"]) <= ACCURACY_BAND, (
        summary["test_accuracy"],
        cpu_run["test_accuracy"],
    )
    assert np.isfinite(summary["best_val_loss"])


def test_autocast_on_cuda_computes_in_reduced_precision():
    dev = torch.device("cuda")
    layer = torch.nn.Conv2d(3, 8, 3).to(dev, memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16, device=dev).contiguous(memory_format=torch.channels_last)
    with epoch.autocast(dev, True):
        y = layer(x)
    assert y.dtype in (torch.bfloat16, torch.float16)
    with epoch.autocast(dev, False):
        assert layer(x).dtype == torch.float32


def test_the_uint8_cache_lives_on_the_gpu_when_it_fits():
    dev = torch.device("cuda")
    cache = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    placed = fit_setup._to_device_if_fits(cache, dev)
    assert placed.device.type == "cuda"


def test_a_cache_too_big_for_the_gpu_stays_pinned_and_still_trains(
    digits_dir: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch, cpu_run
):
    real = torch.cuda.mem_get_info
    # Pretend the card is nearly full: the cache must stay in pinned host memory.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1024, real(*a)[1]))
    placed = fit_setup._to_device_if_fits(
        torch.zeros(64, 3, 16, 16, dtype=torch.uint8), torch.device("cuda")
    )
    assert placed.device.type == "cpu" and placed.is_pinned()
    summary = train.fit(_config(digits_dir, "cuda"))
    assert summary["status"] == "completed"
    assert abs(summary["test_accuracy"] - cpu_run["test_accuracy"]) <= ACCURACY_BAND


def test_resume_on_cuda_continues_the_history(digits_dir: Path, workspace: Path, cpu_run):
    stop = threading.Event()

    def stop_after_two(ep: int, _row: dict) -> None:
        if ep == 2:
            stop.set()

    config = _config(digits_dir, "cuda", epochs=4)
    first = train.fit(config, stop_event=stop, epoch_hook=stop_after_two)
    assert first["status"] == "stopped" and first["epochs_run"] == 2
    done = train.resume(first["run_id"])
    assert done["status"] == "completed" and done["epochs_run"] == 4
    history = runs.read_metrics(runs.load_run(first["run_id"]))
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert done["test_accuracy"] >= cpu_run["test_accuracy"] - ACCURACY_BAND


def test_predict_on_cuda_matches_the_cpu(cuda_run, monkeypatch: pytest.MonkeyPatch, digits_dir):
    summary, home = cuda_run
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    on_gpu = Predictor.from_run(summary["run_id"], device="cuda")
    on_cpu = Predictor.from_run(summary["run_id"], device="cpu")
    assert next(on_gpu.model.parameters()).device.type == "cuda"
    files = sorted(digits_dir.rglob("*.png"))[::20]
    x = torch.stack([on_cpu.load(f) for f in files])
    p_gpu, p_cpu = on_gpu.probabilities(x), on_cpu.probabilities(x)
    # float32 on both; cuDNN may use TF32 for convolutions, hence 1e-2 rather than 1e-5
    assert torch.allclose(p_gpu, p_cpu, atol=1e-2), (p_gpu - p_cpu).abs().max()
    agree = (p_gpu.argmax(1) == p_cpu.argmax(1)).float().mean().item()
    assert agree >= 0.98


def test_onnx_export_of_a_cuda_run_matches_the_gpu_predictor(
    cuda_run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, digits_dir
):
    ort = pytest.importorskip("onnxruntime")
    summary, home = cuda_run
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    result = export.export_run(summary["run_id"], "onnx", tmp_path / "onnx")
    assert result.n_checked > 0 and result.max_abs_diff < 1e-3
    on_gpu = Predictor.from_run(summary["run_id"], device="cuda")
    files = sorted(digits_dir.rglob("*.png"))[::25]
    x = torch.stack([on_gpu.load(f) for f in files])
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    feed = on_gpu.preprocess(x).cpu().contiguous().numpy()
    logits = session.run(None, {session.get_inputs()[0].name: feed})[0]
    p_onnx = torch.from_numpy(logits).softmax(1)
    assert torch.allclose(on_gpu.probabilities(x), p_onnx, atol=1e-2)
