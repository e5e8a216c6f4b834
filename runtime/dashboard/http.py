"""The dashboard's HTTP side (aiohttp): pages, server-sent events, ``/api/v1`` and ``/metrics``.

::

    GET /status /workers /task/<key>   plain HTML + one script (static/), no build, nothing fetched
    GET /events                        server-sent events: the snapshot every half second, with
                                       the tasks finished since the last event (the task stream)
    GET /api/v1/workers|nodes|tasks|task/<key>|stream?since=N   JSON
    GET /metrics                       Prometheus text exposition
    GET|POST /login                    asks for the cluster's secret, when it has one

Every handler reads the snapshot (``snapshot.py``), never the whole task table; bad requests
get 400 or 404 with a JSON ``error``, and a handler that fails gets a 500 and a log line,
never an exception in the scheduler.  With a shared secret configured every page asks for
it once (a cookie holds an HMAC of it, never the secret), and scripts may send
``Authorization: Bearer <secret>`` instead (Prometheus' ``authorization`` setting).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.resources
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CollectorRegistry

from runtime.dashboard import metrics
from runtime.dashboard.snapshot import task

if TYPE_CHECKING:
    from runtime.dashboard.service import Dashboard

logger = logging.getLogger("runtime.dashboard")

#: seconds between two server-sent events of one page
EVENT_INTERVAL = 0.5
#: finished tasks sent in one event at most (the newest)
STREAM_PER_EVENT = 2000
COOKIE = "runtime_dashboard"
PAGES = {"/status": "status.html", "/workers": "workers.html"}
STATIC = importlib.resources.files("runtime.dashboard") / "static"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}

DASHBOARD = web.AppKey("dashboard", object)
REGISTRY = web.AppKey("registry", CollectorRegistry)
#: [the snapshot the metrics text was made from, that text]
EXPOSITION = web.AppKey("exposition", list)


def _token(secret: bytes) -> str:
    """What the login cookie holds: an HMAC of the secret, so the secret itself is never stored."""
    return hmac.new(secret, b"runtime dashboard login", hashlib.sha256).hexdigest()


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


def _signed_in(request: web.Request, secret: bytes) -> bool:
    cookie = request.cookies.get(COOKIE, "")
    if cookie and hmac.compare_digest(cookie, _token(secret)):
        return True
    header = request.headers.get("Authorization", "")
    return header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), secret)


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Ask for the secret where there is one; turn a failing handler into a 500, logged."""
    secret = request.app[DASHBOARD].secret
    if secret is not None and request.path != "/login" and not request.path.startswith("/static/"):
        if not _signed_in(request, secret):
            if request.path in PAGES or request.path.startswith("/task/") or request.path == "/":
                raise web.HTTPFound(f"/login?next={quote(request.path_qs)}")
            return _error(401, "this cluster has a shared secret: sign in at /login, or send Authorization: Bearer")
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            return _error(e.status, f"{e.reason}: {request.path}")
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:
        logger.exception("dashboard request %s failed", request.path)
        return _error(500, f"{type(e).__name__}: {e}")


#: the package's static files, read once: name -> (bytes, content type)
_FILES: dict[str, tuple[bytes, str]] = {}


def _static(name: str) -> web.Response:
    if name not in _FILES:
        path = STATIC / name
        suffix = name[name.rfind(".") :]
        if "/" in name or suffix not in CONTENT_TYPES or not path.is_file():
            raise web.HTTPNotFound()
        _FILES[name] = (path.read_bytes(), CONTENT_TYPES[suffix])
    body, kind = _FILES[name]
    return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-cache"})


async def _page(request: web.Request) -> web.Response:
    return _static(PAGES[request.path])


async def _task_page(request: web.Request) -> web.Response:
    return _static("task.html")


async def _static_file(request: web.Request) -> web.Response:
    return _static(request.match_info["name"])


async def _login(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD]
    target = request.query.get("next", "/status")
    if not target.startswith("/") or target.startswith("//"):
        target = "/status"  # only a page of this dashboard
    failed = False
    if request.method == "POST":
        form = await request.post()
        given = str(form.get("secret", "")).encode()
        if dashboard.secret is None or hmac.compare_digest(given, dashboard.secret):
            response = web.HTTPFound(target)
            if dashboard.secret is not None:
                response.set_cookie(COOKIE, _token(dashboard.secret), httponly=True, samesite="Strict")
            raise response
        failed = True
    html = (STATIC / "login.html").read_text().replace("{{next}}", quote(target))
    html = html.replace("{{message}}", "That is not the cluster's secret." if failed else "")
    return web.Response(text=html, content_type="text/html", status=401 if failed else 200)


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"query parameter {name}={text!r} is not a whole number"}),
            content_type="application/json",
        ) from None
    if value < 0:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"query parameter {name}={value} is negative"}), content_type="application/json"
        )
    return value


async def _api_workers(request: web.Request) -> web.Response:
    return web.json_response(request.app[DASHBOARD].snapshots.get()["workers"])


async def _api_nodes(request: web.Request) -> web.Response:
    return web.json_response(request.app[DASHBOARD].snapshots.get()["nodes"])


async def _api_deaths(request: web.Request) -> web.Response:
    return web.json_response(request.app[DASHBOARD].snapshots.get()["deaths"])


async def _api_tasks(request: web.Request) -> web.Response:
    snap = request.app[DASHBOARD].snapshots.get()
    return web.json_response({**snap["tasks"], "prefixes": snap["prefixes"]})


async def _api_task(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    found = task(request.app[DASHBOARD].scheduler.state, key)
    if found is None:
        return _error(404, f"no task {key!r}: the scheduler does not know it (never submitted, or forgotten)")
    return web.json_response(found, dumps=lambda x: json.dumps(x, default=str))


async def _api_stream(request: web.Request) -> web.Response:
    since = _query_int(request, "since", 0)
    limit = min(_query_int(request, "limit", STREAM_PER_EVENT), 10 * STREAM_PER_EVENT)
    return web.json_response(request.app[DASHBOARD].recorder.since(since, limit))


async def _metrics(request: web.Request) -> web.Response:
    snapshot = request.app[DASHBOARD].snapshots.get()
    cached = request.app[EXPOSITION]
    if cached[0] is not snapshot:  # encoded once per snapshot, however often scraped
        cached[:] = [snapshot, metrics.exposition(request.app[REGISTRY])]
    body = cached[1]
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``{"snapshot": ..., "stream": [finished tasks since the last]}``."""
    dashboard = request.app[DASHBOARD]
    last = _query_int(request, "since", 0)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    while True:
        snapshot = dashboard.snapshots.json()
        stream = dashboard.recorder.since(last, STREAM_PER_EVENT)
        if stream:
            last = stream[-1][0]
        data = f'{{"snapshot": {snapshot}, "stream": {json.dumps(stream)}}}'
        await response.write(f"data: {data}\n\n".encode())
        await asyncio.sleep(EVENT_INTERVAL)


async def _root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/status")


def make_app(dashboard: Dashboard) -> web.Application:
    app = web.Application(middlewares=[_guard])
    app[DASHBOARD] = dashboard
    app[REGISTRY] = metrics.registry(dashboard.snapshots.get)
    app[EXPOSITION] = [None, b""]
    app.router.add_get("/", _root)
    for path in PAGES:
        app.router.add_get(path, _page)
    app.router.add_get("/task/{key:.+}", _task_page)
    app.router.add_get("/static/{name}", _static_file)
    app.router.add_route("*", "/login", _login)
    app.router.add_get("/events", _events)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/workers", _api_workers)
    app.router.add_get("/api/v1/nodes", _api_nodes)
    app.router.add_get("/api/v1/deaths", _api_deaths)
    app.router.add_get("/api/v1/tasks", _api_tasks)
    app.router.add_get("/api/v1/task/{key:.+}", _api_task)
    app.router.add_get("/api/v1/stream", _api_stream)
    return app
