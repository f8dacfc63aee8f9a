"""What a training job's progress reads as, for any front end: one line of text and a fraction,
durations in words, and curves thinned to a bounded number of points.

Pure functions of a job_state.JobSnapshot (or plain rows), so the dashboard only renders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_POINTS = 300  # epochs drawn at most: the page re-sends a changed figure whole


def format_seconds(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min': a duration as people read it."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def plural(n: int, word: str) -> str:
    """'1 epoch', '2 epochs'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def progress_line(snap: Any) -> tuple[float, str]:
    """(fraction done 0-1, text) of a job snapshot: data preparation first, then epoch and batch
    of the whole run (a resumed run continues at its own epoch), speed and time left."""
    if snap.run_info is None:
        p = snap.preparing
        if not p:
            return 0.0, "Starting…"
        frac = p["done"] / max(p["total"], 1)
        if p["stage"].startswith("downloading"):  # weights, before the data (bytes)
            return min(frac, 1.0), f"{p['stage']}: {p['done'] / 1e6:.1f}/{p['total'] / 1e6:.1f} MB"
        return min(frac, 1.0), f"Preparing data: {p['stage']} {p['done']:,}/{p['total']:,}"
    planned = snap.epochs_planned or 1
    done = len(snap.epochs)
    p = snap.progress
    if p and p["epoch"] == done + 1:
        frac = (done + p["batch"] / max(p["n_batches"], 1)) / planned
        text = f"Epoch {p['epoch']}/{planned} · batch {p['batch']}/{p['n_batches']}"
        text += f" · {p['images_per_s']:,.0f} images/s"
    elif done < planned and snap.active:
        frac, text = done / planned, f"Epoch {done + 1}/{planned} starting…"
    else:
        frac, text = done / planned, f"Epoch {done}/{planned} done"
    if snap.eta_s is not None:
        text += f" · about {format_seconds(snap.eta_s)} left"
    return min(frac, 1.0), text


def queued_line(snap: Any) -> str | None:
    """Where a queued job waits ('Queued, position 2: ...'), None when it is not queued."""
    if snap.status != "queued":
        return None
    return (
        f"Queued, position {snap.queue_position}: starts when a running job ends (Stop cancels it)."
    )


def thin(rows: Sequence[dict[str, Any]], max_points: int = MAX_POINTS) -> list[dict[str, Any]]:
    """At most ~max_points evenly spaced rows, always keeping the last one."""
    step = max(1, -(-len(rows) // max_points))
    kept = list(rows[::step])
    if rows and (len(rows) - 1) % step:
        kept.append(rows[-1])
    return kept
