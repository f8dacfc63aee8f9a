"""Model summary: per-layer output shapes and parameter counts (trainable / frozen)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str  # dotted module path, e.g. "features.0.body.0"
    kind: str  # class name, e.g. "Conv2d"
    output_shape: tuple[int, ...]  # without the batch dimension
    params: int  # parameters owned by this layer (0 on a repeated call of the same module)
    trainable: int  # of which requires_grad


@dataclass
class ModelSummary:
    rows: list[LayerRow] = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    frozen_params: int = 0

    def as_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (a table for the dashboard or JSON)."""
        return [
            {
                "layer": r.name,
                "type": r.kind,
                "output": "x".join(map(str, r.output_shape)),
                "params": r.params,
                "trainable": r.trainable,
            }
            for r in self.rows
        ]


def summarize(model: nn.Module, image_size: int, blocks: Collection[int] = ()) -> ModelSummary:
    """Per-layer output shapes and parameter counts from one dummy (1, 3, S, S) forward pass.

    Leaf layers get a row each, and so do the modules whose id() is in `blocks` (e.g. a model's
    backbone stages from its registry spec) as a whole.
    """
    rows: list[LayerRow] = []
    seen: set[int] = set()

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, _inp: Any, out: Any) -> None:
            own = list(module.parameters(recurse=False)) if id(module) not in seen else []
            seen.add(id(module))
            shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
            rows.append(
                LayerRow(
                    name,
                    type(module).__name__,
                    shape,
                    sum(p.numel() for p in own),
                    sum(p.numel() for p in own if p.requires_grad),
                )
            )

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if n and (not list(m.children()) or id(m) in blocks or list(m.parameters(recurse=False)))
    ]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    try:
        model.eval()  # BatchNorm cannot run in train mode on a batch of one 1x1 map
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelSummary(rows, total, trainable, total - trainable)
