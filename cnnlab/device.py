"""Pick the compute device: CUDA when present, then Apple MPS, else the CPU."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn 'auto'/'cpu'/'cuda'/'mps' into an available torch.device, or say why not."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA GPU is visible; use 'auto' or 'cpu'."
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'."
        )
    return torch.device(name)


def describe_device(device: torch.device | str = "auto") -> str:
    """A human label such as 'CUDA: NVIDIA H100', 'Apple MPS' or 'CPU (2 threads)'."""
    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(dev)}"
    if dev.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def configure_cpu_threads() -> None:
    """Use one intra-op thread per core: on small CPUs oversubscription costs more than it gives."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
