"""The HTTP predict API's route (a helper module, not a page): `POST /api/cnnlab/predict`.

Mounted through `st.App(routes=...)` by server.py (the lab) and demo_server.py (`cnnlab serve`).
This file only speaks HTTP: it reads the body under a size cap, splits multipart parts or takes the
raw bytes, and hands the images to cnnlab.predict_api, which decodes them with the safe loader and
predicts. Answers are JSON; errors are one line `{"error": ...}` with a 4xx status.
"""

from __future__ import annotations

import logging

import anyio
import streamlit as st
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cnnlab import predict_api, users
from cnnlab.errors import CnnlabError

log = logging.getLogger(__name__)

API = "api/cnnlab"
DRAIN_FACTOR = 4  # a body up to 4x the cap is read and dropped, so the caller gets its 413
RAW_TYPES = ("image/", "application/octet-stream")
# Forward passes one at a time: on a small CPU parallel ones only compete for the same cores,
# and each already uses every core through torch's own threads.
_inference = anyio.CapacityLimiter(1)
# Requests holding a body in memory at once (the rest wait): bounds memory to this x the cap.
_in_flight = anyio.CapacityLimiter(8)
NO_STORE = {"Cache-Control": "no-store"}


def _base() -> str:
    """'/' or '/<server.baseUrlPath>/' (the routes live under Streamlit's base path too)."""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}/" if base else "/"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


async def _drain(request: Request, limit: int) -> None:
    """Read and drop the rest of the body (up to limit bytes), so the reply reaches the caller."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return
    except ClientDisconnect:
        return


async def _read_body(request: Request, cap: int) -> bytes:
    """The whole body, or a 413 ApiError as soon as it passes cap bytes."""
    too_big = predict_api.ApiError(
        413, f"request larger than {cap / 1024 / 1024:.0f} MB; send smaller or fewer images"
    )
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise predict_api.ApiError(400, "Content-Length is not a number")
        if int(length) > cap:
            if int(length) <= DRAIN_FACTOR * cap:
                await _drain(request, DRAIN_FACTOR * cap)
            raise too_big
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            await _drain(request, DRAIN_FACTOR * cap)
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _images(request: Request, body: bytes) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """(name, bytes) of each image in the body, and the form's text fields (run_id, top_k)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":

        async def stream():
            yield body

        parser = MultiPartParser(
            request.headers, stream(), max_files=predict_api.MAX_FILES, max_fields=8,
            max_part_size=1024,
        )  # fmt: skip
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                raise predict_api.ApiError(
                    413, f"more than {predict_api.MAX_FILES} images in one request; send fewer"
                ) from None
            raise predict_api.ApiError(400, f"bad multipart body: {exc.message}") from None
        images, fields = [], {}
        try:
            for i, (key, value) in enumerate(form.multi_items()):
                if isinstance(value, UploadFile):
                    images.append((predict_api.safe_name(value.filename, i), await value.read()))
                else:
                    fields[key] = value
        finally:
            await form.close()
        return images, fields
    if ctype.startswith(RAW_TYPES):
        return ([("request body", body)] if body else []), {}
    raise predict_api.ApiError(
        415,
        "send images as multipart/form-data file fields, or one image's raw bytes with "
        "Content-Type image/* or application/octet-stream",
    )


def _caller(request: Request) -> users.User | None:
    """Whose runs this request may use: None (any) on a demo server or a single-user lab; the
    trusted header's user behind a proxy; OIDC sign-ins have no API access (no cookie here)."""
    if predict_api.served_run():
        return None  # `cnnlab serve`: one run, shared on purpose
    from pages import ui  # the OIDC setting lives with the pages

    if ui.oidc_configured():
        raise predict_api.ApiError(
            401, "this lab signs users in with OIDC, which the API cannot check: share the run "
            "with `cnnlab serve RUN` instead"
        )  # fmt: skip
    if users.mode() != "header":
        return None
    peer = request.client.host if request.client else None
    who = users.identify(request.headers, peer, st.get_option("server.address"))
    if who is None:
        raise predict_api.ApiError(401, "sign in first: call the API through the lab's proxy")
    return who


async def _predict(request: Request) -> Response:
    try:
        async with _in_flight:
            body = await _read_body(request, predict_api.max_body_bytes())
            images, fields = await _images(request, body)
            run_id = request.query_params.get("run_id") or fields.get("run_id")
            k = predict_api.parse_top_k(request.query_params.get("top_k") or fields.get("top_k"))
            run = predict_api.find_run(run_id, _caller(request))

            def work() -> dict:
                return predict_api.predict_images(predict_api.predictor_for(run), images, k)

            result = await anyio.to_thread.run_sync(work, limiter=_inference)
    except predict_api.ApiError as exc:
        return _error(exc.status, str(exc))
    except CnnlabError as exc:  # e.g. a served run deleted meanwhile
        log.warning("predict API: %s", exc)
        return _error(404, "the run is not available on this server")
    except ClientDisconnect:
        return Response(status_code=400)
    except Exception:  # a bug: logged here, the caller gets one line without the traceback
        log.exception("predict API failed")
        return _error(500, "internal error while predicting (the server's log has the details)")
    return JSONResponse(result, headers=NO_STORE)


def _describe(request: Request) -> Response:
    try:
        run = predict_api.find_run(request.query_params.get("run_id"), _caller(request))
        return JSONResponse(predict_api.describe(run), headers=NO_STORE)
    except predict_api.ApiError as exc:
        return _error(exc.status, str(exc))
    except CnnlabError:
        return _error(404, "the run is not available on this server")


def routes() -> list[Route]:
    """The predict API's routes, for `st.App(routes=...)`."""
    url = f"{_base()}{API}/predict"
    return [
        Route(url, _predict, methods=["POST"]),
        Route(url, _describe, methods=["GET"]),
    ]
