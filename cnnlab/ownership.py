"""Who the work the core does now belongs to: the owner recorded on the runs it makes.

A job's thread says so with `acting_as`, a job's child process through CNNLAB_RUN_OWNER; without
either, it is the single user's. Below `runs` and `users`: both ask it, neither is needed here.
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager

from . import per_thread

OWNER_ENV = "CNNLAB_RUN_OWNER"  # the owner of a job's child process's runs
SINGLE_USER = "local"  # the one implicit user when the dashboard does not tell users apart

_acting = threading.local()


def acting_as(owner: str) -> AbstractContextManager[None]:
    """Record `owner` as the owner of the runs made in this thread during the block."""
    return per_thread.bound(_acting, "owner", owner)


def current_owner() -> str:
    """Who the runs made now belong to: acting_as, else CNNLAB_RUN_OWNER, else the single user."""
    return getattr(_acting, "owner", None) or os.environ.get(OWNER_ENV) or SINGLE_USER
