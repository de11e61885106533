"""The dashboard's web side: a Starlette app over a :class:`~stream.serve.state.Dashboard`.

    GET /                            the page (HTML, CSS and JS inline; it fetches nothing elsewhere)
    GET /stream/{id}.mjpg[?fps=N]    the annotated frames of a source as MJPEG (multipart/x-mixed-replace)
    GET /frame/{id}.jpg              the newest annotated frame
    GET /api/sources                 labels, and every source with its health
    GET /api/sources/{id}/status     one source's health
    GET /api/events[?since=SEQ&source=ID&limit=N]   recent per-frame events (the event-log records + seq)
    GET /api/events/stream[?since=SEQ]              the same as Server-Sent Events, plus health every second
    GET /metrics                     Prometheus metrics (:mod:`stream.sinks.metrics`)
    POST /api/sources                {"source": ..., "name": ..., "paced": ...}: add a source (201, its id and name)
    DELETE /api/sources/{id}         remove a source: its outputs are finalised (200)
    POST /api/sources/reload         re-read the --sources file: add and remove sources by name (200)

Changes answer one line of JSON on failure: 400 bad input (a missing file, a bad URL, a
bad body or a bad sources file: nothing changed), 404 no such source, 409 the source has
ended already, a running source has that name, or there is no sources file to reload.

With a token, every request needs ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``
(an ``<img>`` or an ``EventSource`` cannot send headers). Without one (bound to
loopback) the ``Host`` header must name a loopback host, so a web page on another
origin cannot reach the dashboard through DNS rebinding.
A change (``POST``, ``DELETE``) sent by a browser from another origin is refused
(its ``Origin`` must match ``Host``), and ``POST /api/sources`` takes only
``application/json``, which another site's page cannot send without asking first.

Each stream client takes the newest frame when it is ready for one: a slow client
skips frames, it never makes them queue, and the pipeline never waits for it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import AsyncIterator
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stream.control import NameInUse, NoSourcesFile, NotRunning, SourceControl, UnknownSource, spec_from_json
from stream.errors import StreamError
from stream.serve.hosts import is_loopback
from stream.serve.state import Dashboard
from stream.sinks.metrics import PipelineMetrics

__all__ = ["DEFAULT_STREAM_FPS", "MAX_BODY_BYTES", "MAX_SEQ", "MAX_STREAM_FPS", "build_app"]

#: Frames per second an MJPEG client gets unless it asks (``?fps=``) for more, up to MAX_STREAM_FPS.
DEFAULT_STREAM_FPS = 10.0
MAX_STREAM_FPS = 30.0
_POLL_S = 0.02
_SSE_PERIOD_S = 0.1
#: The largest ``since`` sequence number asked for: finite, and exact as a float.
MAX_SEQ = 2**53
#: The largest body of ``POST /api/sources``.
MAX_BODY_BYTES = 64 << 10
_SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; img-src 'self'; connect-src 'self'; script-src 'unsafe-inline'; "
     b"style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class _Guard:
    """Pure ASGI middleware (it never buffers the streams): the token, or a loopback Host, on every request."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, message = refusal
            response = JSONResponse({"error": message}, status_code=status,
                                    headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = dict(scope.get("headers", []))
        if scope.get("method", "GET") not in ("GET", "HEAD") and b"origin" in headers:
            origin = headers[b"origin"].decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if urlsplit(origin).netloc.lower() != host.lower():
                return 403, "a change from another origin is refused"
        if self.token is None:
            host = headers.get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if not is_loopback(name):  # any of 127.0.0.0/8, as serve --host accepts
                return 403, "this dashboard answers only requests to a loopback host name"
            return None
        given = ""
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0]
        if not given:
            return 401, "token required: 'Authorization: Bearer TOKEN' or ?token=TOKEN (printed at start)"
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode("utf-8")):
            return 403, "wrong token"
        return None


def build_app(dashboard: Dashboard, *, token: str | None = None, closing: threading.Event | None = None,
              metrics: PipelineMetrics | None = None, control: SourceControl | None = None) -> ASGIApp:
    """The dashboard's ASGI app.

    Args:
        dashboard: The sink of the running pipeline.
        token: Required on every request when given (see the module docstring).
        closing: Set when the server shuts down: the endless responses (streams, events) end.
        metrics: The sink behind ``GET /metrics`` (no such route without it).
        control: What adds and removes sources (no ``POST``/``DELETE`` routes without it).

    Returns:
        The app, wrapped in the token/Host guard.
    """
    closing = closing or threading.Event()
    page = resources.files("stream.serve").joinpath("page.html").read_text(encoding="utf-8")

    def parse_sid(text: str) -> int:
        try:
            sid = int(text)
        except ValueError:
            sid = -1
        if not 0 <= sid < len(dashboard.sources):
            raise _NotFound(f"no source {text[:40]!r} (sources: 0 to {len(dashboard.sources) - 1})")
        return sid

    def source_id(request: Request) -> int:
        return parse_sid(request.path_params["sid"])

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def sources(request: Request) -> Response:
        return JSONResponse({"labels": list(dashboard.labels),
                             "sources": [{**dashboard.source_info(s), "health": dashboard.status(s.source_id)}
                                         for s in dashboard.sources],
                             "changes": {"add": control is not None, "paced": control is not None and control.paced,
                                         "reload": control is not None and control.sources_file is not None}})

    async def add_source(request: Request) -> Response:
        assert control is not None
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise _BadQuery('expected a JSON body (Content-Type: application/json): {"source": "..."}')
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise _BadQuery(f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body)
        except ValueError:
            raise _BadQuery('the body is not JSON: expected {"source": "...", "name": "...", "paced": true}') from None
        spec = spec_from_json(data, paced=control.paced)
        info = await to_thread.run_sync(control.add, spec)
        return JSONResponse({**info, "stream": f"/stream/{info['id']}.mjpg",
                             "status": f"/api/sources/{info['id']}/status"}, status_code=201)

    async def remove_source(request: Request) -> Response:
        assert control is not None
        sid = source_id(request)
        return JSONResponse(await to_thread.run_sync(control.remove, sid))

    async def reload_sources(request: Request) -> Response:
        assert control is not None
        result = await to_thread.run_sync(control.reload)
        return JSONResponse({"added": result.added, "removed": result.removed, "unchanged": result.unchanged})

    async def status(request: Request) -> Response:
        return JSONResponse(dashboard.status(source_id(request)))

    async def frame(request: Request) -> Response:
        seq, jpeg = await to_thread.run_sync(dashboard.jpeg, source_id(request))
        if not jpeg:
            return JSONResponse({"error": "no frame yet"}, status_code=503)
        return Response(jpeg, media_type="image/jpeg", headers={"X-Frame-Seq": str(seq)})

    async def mjpeg(request: Request) -> Response:
        sid = source_id(request)
        fps = _query_number(request, "fps", DEFAULT_STREAM_FPS, 0.1, MAX_STREAM_FPS)

        async def parts() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            sent, due = -1, 0.0
            while not closing.is_set():
                wait = due - loop.time()
                if wait > 0 or dashboard.frame_seq(sid) == sent:
                    await asyncio.sleep(max(wait, _POLL_S))
                    continue
                # The newest frame, encoded when this client is ready for it: frames in between are skipped.
                seq, jpeg = await to_thread.run_sync(dashboard.jpeg, sid)
                if seq == sent or not jpeg:
                    continue
                sent, due = seq, loop.time() + 1.0 / fps
                yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                       + b"\r\nX-Frame-Seq: " + str(seq).encode() + b"\r\n\r\n" + jpeg + b"\r\n")

        return StreamingResponse(parts(), media_type="multipart/x-mixed-replace; boundary=frame")

    async def events(request: Request) -> Response:
        since = int(_query_number(request, "since", 0, 0, MAX_SEQ))
        limit = int(_query_number(request, "limit", 500, 1, 5000))
        sid = source_id_or_all(request)
        found = dashboard.events_since(since, sid, limit)
        return JSONResponse({"events": found, "next": found[-1]["seq"] if found else max(since, 0),
                             "latest": dashboard.seq})

    def source_id_or_all(request: Request) -> int | None:
        text = request.query_params.get("source")
        return None if text is None else parse_sid(text)

    async def event_stream(request: Request) -> Response:
        since = int(_query_number(request, "since", 0, 0, MAX_SEQ))

        async def messages() -> AsyncIterator[str]:
            nonlocal since
            loop = asyncio.get_running_loop()
            next_status = 0.0
            yield f"retry: 1000\nevent: hello\ndata: {json.dumps({'labels': list(dashboard.labels)})}\n\n"
            while not closing.is_set():
                found = dashboard.events_since(since, None, 500)
                if found:
                    since = found[-1]["seq"]
                    yield f"id: {since}\nevent: events\ndata: {json.dumps(found, separators=(',', ':'))}\n\n"
                if loop.time() >= next_status:
                    next_status = loop.time() + 1.0
                    health = [dashboard.status(s.source_id) for s in dashboard.sources]
                    yield f"event: status\ndata: {json.dumps(health, separators=(',', ':'))}\n\n"
                await asyncio.sleep(_SSE_PERIOD_S)

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    changes = [
        Route("/api/sources", add_source, methods=["POST"]),
        Route("/api/sources/reload", reload_sources, methods=["POST"]),
        Route("/api/sources/{sid}", remove_source, methods=["DELETE"]),
    ] if control is not None else []
    app = Starlette(routes=[
        Route("/", index),
        Route("/api/sources", sources, methods=["GET"]),
        *changes,
        Route("/api/sources/{sid}/status", status),
        Route("/api/events", events),
        Route("/api/events/stream", event_stream),
        Route("/stream/{sid}.mjpg", mjpeg),
        Route("/frame/{sid}.jpg", frame),
        *([Route("/metrics", _metrics_endpoint(metrics))] if metrics is not None else []),
    ], exception_handlers={_NotFound: _not_found, _BadQuery: _bad_query, StreamError: _refused})
    return _Guard(app, token)


class _NotFound(Exception):
    pass


class _BadQuery(Exception):
    pass


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=404)


async def _bad_query(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=400)


async def _refused(request: Request, exc: Exception) -> Response:
    """A change that could not be made: one line, and the status code that says why."""
    if isinstance(exc, UnknownSource):
        code = 404
    elif isinstance(exc, NotRunning | NameInUse | NoSourcesFile):
        code = 409
    else:
        code = 400
    return JSONResponse({"error": str(exc)}, status_code=code)


def _query_number(request: Request, key: str, default: float, low: float, high: float) -> float:
    text = request.query_params.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise _BadQuery(f"{key}: expected a number from {low:g} to {high:g}, got {text[:40]!r}")
    return value


def _metrics_endpoint(metrics: PipelineMetrics):  # type: ignore[no-untyped-def]
    """The Starlette endpoint of ``GET /metrics``."""
    from prometheus_client import CONTENT_TYPE_LATEST

    async def endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return endpoint
