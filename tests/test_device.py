"""device: choosing CUDA/MPS/CPU, refusing an absent one clearly, CPU runtime settings."""

from __future__ import annotations

import pytest
import torch

from cnnlab import device
from cnnlab.errors import ConfigError


def _present(name: str) -> bool:
    return torch.cuda.is_available() if name == "cuda" else torch.backends.mps.is_available()


def test_auto_picks_what_is_present():
    expected = "cuda" if _present("cuda") else "mps" if _present("mps") else "cpu"
    assert device.resolve_device("auto").type == expected
    assert device.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_an_absent_accelerator_is_a_clear_error(name):
    if _present(name):
        assert device.resolve_device(name).type == name
    else:
        with pytest.raises(ConfigError, match=f"device '{name}' was asked for"):
            device.resolve_device(name)


def test_unknown_device_names_the_choices():
    with pytest.raises(ConfigError, match="auto, cpu, cuda, mps"):
        device.resolve_device("tpu")


def test_describe_and_cpu_threads():
    assert device.describe_device("cpu").startswith("CPU (")
    device.configure_cpu_threads()
    device.configure_cpu_threads()  # idempotent
    assert torch.get_num_threads() >= 1
    assert "threads" in device.describe_device(torch.device("cpu"))
