"""Downloading one weights file: streamed into a flock'ed temporary beside its target, capped at
CNNLAB_WEIGHTS_MAX_MB, within CNNLAB_WEIGHTS_TIMEOUT per stall and CNNLAB_WEIGHTS_DEADLINE overall,
checked by the caller, then renamed into place (cnnlab.weights says where and what to check).

Only http(s) redirects are followed; under the dashboard's visitor rules (cnnlab.reach) only to
allowed hosts. A failure, Ctrl-C or SIGTERM removes the temporary.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from . import reach

log = logging.getLogger(__name__)

TIMEOUT_ENV = "CNNLAB_WEIGHTS_TIMEOUT"  # seconds a connect or a read may stall (default 20)
DEADLINE_ENV = "CNNLAB_WEIGHTS_DEADLINE"  # seconds a whole download may take (default 3600)
MAX_MB_ENV = "CNNLAB_WEIGHTS_MAX_MB"  # the largest file accepted, in MB (default 4096)
DEFAULT_TIMEOUT_S = 20.0
DEFAULT_DEADLINE_S = 3600.0
DEFAULT_MAX_MB = 4096.0  # the zoo's largest file is a few hundred MB
CHUNK = 1 << 20
MAX_REDIRECTS = 5
PROGRESS_EVERY_S = 0.2  # at most this often a progress callback is called while downloading

_Progress = Callable[[int, int, str], None]  # (bytes done, bytes total or 0, what)
Check = Callable[[Path, str], None]  # (the downloaded temporary, its sha256 hex): raise to refuse


def env_seconds(env: str, default: float) -> float:
    """A positive number of seconds (or MB) from the environment, else `default`."""
    try:
        value = float(os.environ.get(env) or default)
    except ValueError:
        log.warning("%s=%r is not a number: using %s", env, os.environ.get(env), default)
        return default
    return value if value > 0 else default


class Refused(OSError):
    """A download stopped on purpose (redirect, size cap, deadline): the reason is the text."""


class Redirects(urllib.request.HTTPRedirectHandler):
    """Follows http(s) redirects only; under the visitor rules only to allowed hosts."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, visitor: bool) -> None:
        self.visitor = visitor

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        scheme = urlparse(newurl).scheme
        if scheme not in ("http", "https"):
            fp.close()
            raise Refused(f"a redirect to {scheme}: refused (only http and https are followed)")
        if self.visitor and not reach.host_allowed(newurl):
            fp.close()
            raise Refused("a redirect to a host that is not on the weights hosts list")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@contextlib.contextmanager
def _terminate_as_exit():
    """In the main thread, SIGTERM raises SystemExit for the block, so cleanups run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class Failed(Exception):
    """The transfer failed: `cause` is the network or file error, `seconds` how long it ran."""

    def __init__(self, cause: BaseException, seconds: float) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.seconds = seconds


def download(url: str, target: Path, progress: _Progress | None, check: Check) -> None:
    """Stream url into a temporary beside target, `check` it, rename it into place; network and
    file errors raise Failed, whatever `check` raises goes through, and no temporary is left."""
    name = target.name
    shown = reach.redact_url(url)
    _remove_stale(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".download", dir=target.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # tells _remove_stale in other processes it is in use
    tmp = Path(tmp_name)
    log.info("downloading %s from %s into %s", name, shown, target.parent)
    t0 = time.perf_counter()
    try:
        with _terminate_as_exit(), os.fdopen(fd, "wb", closefd=False) as out:
            digest = _stream(url, out, progress, f"downloading {name}")
        check(tmp, digest)
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise Failed(exc, time.perf_counter() - t0) from None
    finally:
        tmp.unlink(missing_ok=True)  # gone already when it was renamed into place
        os.close(fd)
    log.info("saved %s (%.1f MB)", target, target.stat().st_size / 1e6)


def _stream(url: str, out, progress: _Progress | None, what: str) -> str:
    """Copy url's body into out within the size cap, stall timeout and deadline; its sha256."""
    stall = env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    deadline_s = env_seconds(DEADLINE_ENV, DEFAULT_DEADLINE_S)
    cap = int(env_seconds(MAX_MB_ENV, DEFAULT_MAX_MB) * 1e6)
    opener = urllib.request.build_opener(Redirects(reach.visitor_rules()))
    request = urllib.request.Request(url, headers={"User-Agent": "cnnlab"})
    end = time.monotonic() + deadline_s
    digest = hashlib.sha256()
    with opener.open(request, timeout=stall) as response:
        total = int(response.headers.get("Content-Length") or 0)
        if total > cap:
            raise Refused(f"the file is {total / 1e6:.0f} MB, over the {cap / 1e6:.0f} MB cap")
        done, last = 0, 0.0
        if progress is not None:
            progress(0, total, what)
        while True:
            if time.monotonic() > end:
                raise Refused(f"not finished within the {deadline_s:.0f} s deadline")
            chunk = response.read1(CHUNK)  # returns after one read: the deadline is checked often
            if not chunk:
                break
            done += len(chunk)
            if done > cap:
                raise Refused(f"the file grew over the {cap / 1e6:.0f} MB cap")
            digest.update(chunk)
            out.write(chunk)
            now = time.monotonic()
            if progress is not None and now - last >= PROGRESS_EVERY_S:
                last = now
                progress(done, total, what)
        if total and done < total:
            raise Refused(f"the connection closed after {done:,} of {total:,} bytes")
        out.flush()
        if progress is not None:
            progress(done, total or done, what)
    return digest.hexdigest()


def _remove_stale(target: Path) -> None:
    """Delete temporaries of `target` that no live download holds (a killed process's): a live
    download in any process keeps its temporary flock'ed."""
    for tmp in target.parent.glob(f".{target.name}.*.download*"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:  # gone already (another process cleaned it)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tmp.unlink()
            log.info("removed %s, left by an interrupted download", tmp)
        except OSError:  # a live download holds it, or it vanished meanwhile
            pass
        finally:
            os.close(fd)
