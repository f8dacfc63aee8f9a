"""Pre-flight check: every problem known to make a run fail, found before a run is created.

`check(config)` lists them all (a bad field, a missing data folder, a class too small to split, a
model that does not fit the image size, a weights file or run that is not there...), so the
CLI refuses with the whole list before it makes a run folder and the Train and Tune pages disable
Start and show the list. `ensure(config)` raises them as one PreflightError.

The memory guard rail is one of them: `estimate_memory` sums what training holds at its peak
(parameters, gradients and optimizer state, activations at the batch and input size, the decoded
image cache) and a config over what the machine can give a job (cnnlab.memory.
available_memory) is refused with the numbers and what to change, unless forced.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from . import data, memory, models, recipe, splits, weights
from .config import RunConfig
from .errors import CnnlabError
from .scan_result import ScanResult

RUNTIME_BYTES = 400 * 2**20  # what a job process holds before any tensor: torch, Python, buffers
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1, "rmsprop": 1}  # tensors kept per parameter
BIG_INPUT = 512  # px: a custom CNN past this is rarely worth its memory and time


class PreflightError(CnnlabError):
    """A run would fail: the message lists every blocking problem."""


@dataclass(frozen=True)
class Problem:
    where: str  # what is at fault: "data", "model", "model.weights", "config"
    message: str  # what is wrong and what to do

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _weights_problems(config: RunConfig) -> list[Problem]:
    """A weights file or run that is not there. ImageNet weights and URLs are not checked: a
    missing file is downloaded when the run starts (and that error names what to do)."""
    m = config.model
    try:
        spec = models.get_spec(m.name)
    except CnnlabError as exc:
        return [Problem("model", str(exc))]
    problems = []
    if config.data.image_size < spec.min_size:
        problems.append(
            Problem("data.image_size", f"{m.name} needs images of at least {spec.min_size} px, "
                    f"got {config.data.image_size}: choose a larger image size on the Data page")
        )  # fmt: skip
    if m.weights == "random":
        return problems
    if m.weights == "imagenet" or weights.is_url(m.weights):
        failure = weights.last_failure(m.weights, spec)
        if failure:  # this process tried already: a run would fail the same way
            problems.append(Problem("model.weights", f"{failure}; then try again with "
                                    "'Download the weights now' on the Model page"))  # fmt: skip
        return problems
    if m.weights.startswith("run:"):
        from . import runs  # lazy: runs imports models

        try:
            runs.checkpoint_path(m.weights.removeprefix("run:"))
        except CnnlabError as exc:
            problems.append(Problem("model.weights", str(exc)))
    elif not Path(m.weights).expanduser().is_file():
        problems.append(
            Problem("model.weights", f"weights file {m.weights} does not exist: choose another "
                    "file, or 'Random (train from scratch)' on the Model page")
        )  # fmt: skip
    return problems


def _data_problems(
    config: RunConfig, scan: ScanResult | None
) -> tuple[list[Problem], ScanResult | None]:
    """The data set as the run will see it: scanned with the CSV options, then filtered (excluded
    classes, dropped copies) before the size rule. `scan` is the unfiltered scan, if at hand."""
    d = config.data
    try:
        if scan is None:
            if not d.path:
                return [Problem("data", "no data set chosen: give an image folder or a .zip")], None
            scan = data.scan(d.path, path_column=d.path_column, label_column=d.label_column,
                             images=d.images)  # fmt: skip
        scan = data.filter_scan(scan, d.exclude_classes, d.drop_duplicates, d.drop_conflicts)
    except CnnlabError as exc:
        return [Problem("data", str(exc))], None
    ready = splits.readiness(scan, d.val_fraction, d.test_fraction)
    return [Problem("data", message) for message in ready.problems], scan


def _meta_model(config: RunConfig, n_classes: int) -> torch.nn.Module:
    """The config's model on the meta device: shapes and parameter counts, no memory."""
    with torch.device("meta"):
        return models.create_model(
            dataclasses.replace(config.model, weights="random"), n_classes, config.data.image_size
        )


def _model_problems(config: RunConfig, n_classes: int) -> list[Problem]:
    """Build a custom CNN once (on the meta device: free) to catch one too deep for the size."""
    try:
        if models.is_transfer(config.model.name) or n_classes < 2:
            return []
        _meta_model(config, n_classes)
    except CnnlabError as exc:
        return [Problem("model", str(exc))]
    except RuntimeError as exc:  # torch's shape errors: a model too deep for small images
        return [Problem("model", f"{config.model.name} does not fit {config.data.image_size} px "
                        f"images ({exc}); use a larger image size or fewer blocks")]  # fmt: skip
    return []


@dataclass(frozen=True)
class MemoryEstimate:
    """What a training job holds at its peak, in bytes, and what it may have."""

    parameters: int  # parameter count
    model: int  # weights, gradients and optimizer state
    activations: int  # a training batch's activations and their gradients
    cache: int  # the decoded image cache (uint8)
    runtime: int  # the process before any tensor
    available: int  # what the machine can give a job now (or CNNLAB_JOB_MEMORY)
    device: str  # "cpu" or "cuda": where model and activations live

    @property
    def total(self) -> int:
        """The estimated peak of the job process."""
        return self.model + self.activations + self.cache + self.runtime

    @property
    def fits(self) -> bool:
        """True when the estimate is within what is available."""
        return self.total <= self.available


def gb(n: float) -> str:
    """Bytes as '1.2 GB'."""
    return f"{n / 2**30:.1f} GB"


def _activation_elements(model: torch.nn.Module, batch: int, size: int) -> int:
    """Elements of every leaf module's output for one training batch (a meta forward pass)."""
    total = 0

    def hook(_module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model.train()
        model(torch.empty(batch, 3, size, size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total


def _job_device(config: RunConfig) -> str:
    want = config.train.device
    return "cuda" if want in ("cuda", "auto") and torch.cuda.is_available() else "cpu"


def estimate_memory(config: RunConfig, n_classes: int, n_images: int) -> MemoryEstimate | None:
    """Training's peak memory for this config on n_images of n_classes; None when the model
    cannot be built on the meta device (then only the job's hard limit guards)."""
    try:
        model = _meta_model(config, max(n_classes, 2))
        size, batch = config.data.image_size, config.train.batch_size
        n_params = sum(p.numel() for p in model.parameters())
        acts = _activation_elements(model, min(batch, max(n_images, 1)), size)
    except (CnnlabError, RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    states = OPTIMIZER_STATES.get(config.train.optimizer, 2)
    device = _job_device(config)
    available = memory.available_memory()
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        available = free
    return MemoryEstimate(
        parameters=n_params,
        model=4 * n_params * (2 + states),
        activations=4 * acts * 2,  # kept for backward, plus their gradients at the peak
        cache=0 if device == "cuda" else n_images * 3 * size * size,
        runtime=0 if device == "cuda" else RUNTIME_BYTES,
        available=available,
        device=device,
    )


def _memory_problems(config: RunConfig, scan: ScanResult) -> list[Problem]:
    config = recipe.resolve(config, training_images(config, scan))[0]  # what fit() will train
    est = estimate_memory(config, len(scan.classes), scan.n_images)
    if est is None or est.fits:
        return []
    where = "GPU memory free" if est.device == "cuda" else "memory available to a job"
    spec = models.get_spec(config.model.name)
    smaller = max(spec.min_size, config.data.image_size // 2)
    return [
        Problem(
            "memory",
            f"this run would need about {gb(est.total)} ({est.parameters / 1e6:,.0f} M "
            f"parameters: {gb(est.model)} with gradients and optimizer state; activations "
            f"{gb(est.activations)} at batch {config.train.batch_size} and "
            f"{config.data.image_size} px; image cache {gb(est.cache)}) but {gb(est.available)} "
            f"is {where}: lower the image size (e.g. {smaller} px) or the batch size (e.g. "
            f"{max(1, config.train.batch_size // 4)}); the CLI's --force starts it anyway",
        )
    ]


def _size_warnings(config: RunConfig) -> list[str]:
    """An input larger than the model needs."""
    try:
        spec = models.get_spec(config.model.name)
    except CnnlabError:
        return []
    size = config.data.image_size
    if spec.input_size and size > spec.input_size:
        return [f"{config.model.name} was trained on {spec.input_size} px images: {size} px costs "
                f"{(size / spec.input_size) ** 2:.1f}x the memory and time for little gain"]  # fmt: skip
    if not spec.input_size and size > BIG_INPUT:
        return [f"{size} px images make every step slow and memory-hungry; most data sets train "
                f"as well at 64-{BIG_INPUT // 2} px"]  # fmt: skip
    return []


def check(config: RunConfig, scan: ScanResult | None = None, force: bool = False) -> list[Problem]:
    """Every blocking problem of this config (empty when a run can start). `scan` (the config's
    data set, already scanned, not yet filtered) saves scanning it again; `force` leaves out the
    memory check."""
    try:
        config.validate()
    except CnnlabError as exc:
        return [Problem("config", str(exc))]  # later checks would trip over the same field
    problems = _weights_problems(config)
    data_problems, scan = _data_problems(config, scan)
    problems += data_problems
    if scan is not None and not data_problems:
        model_problems = _model_problems(config, len(scan.classes))
        problems += model_problems
        if not model_problems and not force:
            problems += _memory_problems(config, scan)
    return problems


def ensure(config: RunConfig, scan: ScanResult | None = None, force: bool = False) -> None:
    """Raise PreflightError listing every problem check() finds; return quietly otherwise."""
    problems = check(config, scan, force)
    if problems:
        raise PreflightError(
            f"cannot start the run ({len(problems)} problem(s)): "
            + "; ".join(str(p) for p in problems)
        )


def batch_warning(batch_size: int, n_train: int) -> str | None:
    """What a batch larger than the training split does (one step per epoch, of every image)."""
    if n_train < 1 or batch_size <= n_train:
        return None
    return (
        f"batch size {batch_size} is larger than the {n_train} training images: each epoch is "
        f"one step and the effective batch is {n_train}; lower the batch size (e.g. "
        f"{max(1, n_train // 8)}) for more steps per epoch"
    )


def run_warnings(config: RunConfig, scan: ScanResult | None = None) -> list[str]:
    """What does not block a run but changes what it does: a batch larger than the training
    split, a frozen random backbone, an input larger than the model needs. `scan` as for
    check()."""
    out = _size_warnings(config)
    try:
        note = models.random_backbone_warning(config.model)
    except CnnlabError:  # an unknown model: check() says so
        note = None
    if note:
        out.append(note)
    problems, scan = _data_problems(config, scan)
    if problems or scan is None:
        return out
    n_train = training_images(config, scan)
    note = batch_warning(config.train.batch_size, n_train) if n_train is not None else None
    return out + ([note] if note else [])


def training_images(config: RunConfig, scan: ScanResult | None) -> int | None:
    """Images in the training split the config's split gives this scan (None when it cannot
    split): what the recipe and the batch check read before any image is decoded."""
    if scan is None:
        return None
    d = config.data
    try:
        return len(splits.split(scan, d.val_fraction, d.test_fraction, d.seed).train)
    except CnnlabError:
        return None


def run_notes(
    config: RunConfig, scan: ScanResult | None = None, pretrained: bool = True
) -> list[str]:
    """What the run will do that the settings do not say: the small-data recipe's line, and (with
    `pretrained`) for a small set trained from scratch whether the pretrained route is open.
    `scan` as for check()."""
    problems, scan = _data_problems(config, scan)
    n_train = None if problems else training_images(config, scan)
    plan = recipe.plan(config, n_train)
    auto = dataclasses.replace(config, train=dataclasses.replace(config.train, recipe="auto"))
    # the line only where the recipe is in play: applied, or fixed where auto would apply
    notes = [plan.line()] if plan.applies or recipe.plan(auto, n_train).applies else []
    advice = recipe.pretrained_advice(config, n_train) if pretrained else None
    return notes + ([advice.line] if advice else [])
