"""The dashboard's web app (aiohttp + Jinja2, server-rendered; htmx for live parts).

Three ways to know who the user is (docs/dashboard.md): `kubeconfig` (local: the
caller's own kubeconfig), `token` (in a cluster: the user signs in with a Kubernetes
bearer token, kept in this process's memory, and every call carries it) and `proxy`
(an authenticating proxy's X-Forwarded-User/-Groups, impersonated by the app's own
ServiceAccount). The apiserver decides every read and write.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from agentspaces.dashboard import assets, forms, security
from agentspaces.dashboard.kubeapi import ApiError, Cluster, Credentials, UserApi
from agentspaces.dashboard.views import (
    WAKE_ANNOTATION,
    human_size,
    sort_key,
    when,
    workspace_view,
)

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
MODES = ("kubeconfig", "token", "proxy")
HEARTBEAT_SECONDS = 15.0
PROXY_USER, PROXY_GROUPS = "X-Forwarded-User", "X-Forwarded-Groups"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Settings:
    mode: str
    assets: Path
    secure_cookies: bool
    default_namespace: str = "default"
    origin: str | None = None
    """The origin browsers see (https://dash.example.com) behind a TLS-terminating
    proxy; else the request's own scheme and Host."""


SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster", Cluster)
SESSIONS: web.AppKey[security.Sessions] = web.AppKey("sessions", security.Sessions)
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates", jinja2.Environment)
STATIC: web.AppKey[dict[str, str]] = web.AppKey("static", dict)
SESSION: web.RequestKey[security.Session] = web.RequestKey("session", security.Session)


def static_files(vendor: Path) -> dict[str, tuple[str, bytes, str]]:
    """The page's two files, read once and served from memory under a content-hashed
    URL: the stylesheet, and one script that is the pinned htmx, its SSE extension (as
    fetched, unchanged, in the lock's order) and our own few lines, one after the other.
    One request for all of it instead of three keeps the first load short."""
    script = b"\n;\n".join([*((vendor / a.file).read_bytes() for a in assets.pinned()),
                             (HERE / "static" / "app.js").read_bytes()])
    css = (HERE / "static" / "app.css").read_bytes()
    out = {}
    for name, body, kind, ext in (("script", script, "text/javascript", "js"),
                                  ("css", css, "text/css", "css")):
        digest = hashlib.sha256(body).hexdigest()[:16]
        out[name] = (f"/static/{name}-{digest}.{ext}", body, kind)
    return out


def templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["size"] = human_size
    env.filters["when"] = when
    return env


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    env = request.app[TEMPLATES]
    session: security.Session | None = request.get(SESSION)
    body = env.get_template(name).render(
        static=request.app[STATIC],
        csrf=session.csrf if session else "", user=session.user if session else "",
        mode=request.app[SETTINGS].mode, **context)
    return web.Response(text=body, status=status, content_type="text/html")


def _own_origin(request: web.Request) -> str:
    return request.app[SETTINGS].origin or f"{request.scheme}://{request.host}"


# -- middlewares -------------------------------------------------------------------------

@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.path.startswith("/static/"):
        # Named by their content's hash (static_files): a new version is a new URL.
        response.headers.setdefault("Cache-Control", "public, max-age=31536000, immutable")
    else:
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/static/") or request.path == "/healthz":
        return await handler(request)
    sessions = request.app[SESSIONS]
    session = sessions.get(request.cookies.get(security.COOKIE))
    fresh = session is None
    if session is None:
        session = sessions.new()
    request[SESSION] = session
    if request.method not in ("GET", "HEAD"):
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        supplied = request.headers.get(security.CSRF_HEADER)
        if supplied is None and request.content_type in (
                "application/x-www-form-urlencoded", "multipart/form-data"):
            supplied = str((await request.post()).get(security.CSRF_FIELD, ""))
        if fresh or not security.csrf_ok(session, supplied) or not security.origin_ok(
                request.headers.get("Origin"), request.headers.get("Referer"),
                _own_origin(request)):
            log.info("refused %s %s: CSRF token or origin missing or wrong",
                     request.method, request.path)
            return web.Response(status=403, text="Forbidden: missing or wrong CSRF token "
                                                 "or origin\n")
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    current: security.Session | None = request.get(SESSION)
    if current is not None and (fresh or current.id != session.id) and not response.prepared:
        response.set_cookie(security.COOKIE, current.id,
                            **security.cookie_options(request.app[SETTINGS].secure_cookies))  # type: ignore[arg-type]
    if isinstance(response, web.HTTPException) and response.status >= 300:
        raise response
    return response


def user_api(request: web.Request) -> UserApi:
    """The client for this request's user, or a redirect to sign in."""
    settings = request.app[SETTINGS]
    cluster = request.app[CLUSTER]
    session: security.Session = request[SESSION]
    if settings.mode == "kubeconfig":
        return UserApi(cluster, cluster.own())
    if settings.mode == "token":
        if not session.token:
            raise web.HTTPSeeOther("/login")
        return UserApi(cluster, Credentials.bearer(session.token))
    user = request.headers.get(PROXY_USER, "").strip()
    if not user:
        raise web.HTTPUnauthorized(text="no user from the authenticating proxy\n")
    groups = [g.strip() for g in request.headers.get(PROXY_GROUPS, "").split(",") if g.strip()]
    session.user = user
    return UserApi(cluster, cluster.own().impersonating(user, groups))


def _signed_out(request: web.Request, err: ApiError) -> None:
    """A token the apiserver no longer accepts (expired, revoked): sign in again."""
    if err.status == 401 and request.app[SETTINGS].mode == "token":
        request[SESSION].token = None
        raise web.HTTPSeeOther("/login")


def _namespace(request: web.Request) -> str | None:
    """The namespace filter: absent -> the default one; "" -> all namespaces."""
    if "namespace" not in request.query:
        return request.app[SETTINGS].default_namespace
    return request.query["namespace"].strip() or None


def _is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


# -- pages -------------------------------------------------------------------------------

async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/workspaces")


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok\n")


def _rows(objects: list[dict[str, Any]]) -> list[Any]:
    now = datetime.now(UTC)
    return sorted((workspace_view(o, now) for o in objects), key=sort_key)


async def list_page(request: web.Request) -> web.StreamResponse:
    api = user_api(request)
    namespace = _namespace(request)
    error = ""
    items: list[dict[str, Any]] = []
    try:
        items, _ = await api.list_workspaces(namespace)
    except ApiError as err:
        _signed_out(request, err)
        error = err.message
    return render(request, "list.html", namespace=namespace, rows=_rows(items), error=error,
                  stream=request.app.router["stream_list"].url_for().with_query(
                      namespace=namespace or ""))


async def detail_page(request: web.Request) -> web.StreamResponse:
    api = user_api(request)
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        obj = await api.get_workspace(namespace, name)
    except ApiError as err:
        _signed_out(request, err)
        return render(request, "error.html", status=err.status, message=err.message,
                      namespace=namespace)
    try:
        events = await api.list_events(namespace, name)
    except ApiError:
        events = []
    return render(request, "detail.html", ws=workspace_view(obj), events=events,
                  namespace=namespace)


async def events_part(request: web.Request) -> web.StreamResponse:
    """The detail page's events, polled (Events are not part of the Workspace watch)."""
    api = user_api(request)
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        events = await api.list_events(namespace, name)
    except ApiError:
        events = []
    return render(request, "_events.html", events=events)


async def new_page(request: web.Request) -> web.StreamResponse:
    api = user_api(request)
    namespace = _namespace(request) or request.app[SETTINGS].default_namespace
    form = forms.CreateForm({name: "" for name in forms.FIELDS})
    form.values["namespace"] = namespace
    return await _new_form(request, api, form)


@dataclass(frozen=True)
class ClassGroup:
    """One optgroup of the class select: its label and (value, name) options."""

    label: str
    options: list[tuple[str, str]]


async def _class_names(call: Awaitable[list[dict[str, Any]]], what: str,
                       errors: list[str]) -> list[str]:
    try:
        objects = await call
    except ApiError as err:
        errors.append(f"{what}: {err.message}")
        return []
    return sorted(str((o.get("metadata") or {}).get("name", "")) for o in objects)


async def _class_groups(api: UserApi, namespace: str) -> tuple[list[ClassGroup], list[str]]:
    """The cluster's classes and the form's namespace's own, apart (one name may be in
    both), and what could not be listed."""
    errors: list[str] = []
    cluster, own = await asyncio.gather(
        _class_names(api.list_classes(), "WorkspaceClasses", errors),
        _class_names(api.list_namespaced_classes(namespace), "NamespacedWorkspaceClasses",
                     errors))
    groups = [ClassGroup("Cluster classes",
                         [(forms.class_choice(n, False), n) for n in cluster]),
              ClassGroup(f"This namespace's classes ({namespace})",
                         [(forms.class_choice(n, True), n) for n in own])]
    return [g for g in groups if g.options], errors


async def _new_form(request: web.Request, api: UserApi, form: forms.CreateForm,
                    status: int = 200) -> web.StreamResponse:
    namespace = form.values.get("namespace", "")
    groups, classes_errors = await _class_groups(api, namespace)
    if not form.values.get("class_name") and groups:
        form.values["class_name"] = groups[0].options[0][0]
    return render(request, "new.html", status=status, form=form, class_groups=groups,
                  classes_errors=classes_errors, namespace=namespace)


async def create(request: web.Request) -> web.StreamResponse:
    api = user_api(request)
    posted = await request.post()
    body, form = forms.manifest({k: str(v) for k, v in posted.items()})
    if body is None:
        return await _new_form(request, api, form, status=422)
    namespace, name = form.values["namespace"], form.values["name"]
    try:
        await api.create_workspace(namespace, body)
    except ApiError as err:
        forms.add_api_errors(form, err.causes, err.message)
        return await _new_form(request, api, form, status=err.status)
    raise web.HTTPSeeOther(str(request.app.router["detail"].url_for(
        namespace=namespace, name=name)))


# -- actions -----------------------------------------------------------------------------

def _flash(request: web.Request, message: str, status: int = 200,
           error: bool = False) -> web.StreamResponse:
    if not _is_htmx(request) and status < 400:
        raise web.HTTPSeeOther(request.path.rsplit("/", 1)[0])
    return render(request, "_flash.html", status=status, message=message, error=error)


async def _act(request: web.Request, what: str,
               call: Callable[[UserApi, str, str], Awaitable[Any]]) -> web.StreamResponse:
    api = user_api(request)
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        await call(api, namespace, name)
    except ApiError as err:
        return _flash(request, f"{what}: {err.message}", status=err.status, error=True)
    log.info("%s %s/%s for %s", what, namespace, name, request[SESSION].user or "kubeconfig")
    return _flash(request, f"{what}: requested")


async def stop(request: web.Request) -> web.StreamResponse:
    return await _act(request, "Stop", lambda api, ns, n: api.patch_workspace(
        ns, n, {"spec": {"running": False}}))


async def start(request: web.Request) -> web.StreamResponse:
    return await _act(request, "Start", lambda api, ns, n: api.patch_workspace(
        ns, n, {"spec": {"running": True}}))


async def wake(request: web.Request) -> web.StreamResponse:
    # What `kubectl annotate ws NAME agentspaces.dev/wake=$(date +%s)` does.
    stamp = str(int(time.time()))
    return await _act(request, "Wake", lambda api, ns, n: api.patch_workspace(
        ns, n, {"metadata": {"annotations": {WAKE_ANNOTATION: stamp}}}))


async def delete(request: web.Request) -> web.StreamResponse:
    api = user_api(request)
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        await api.delete_workspace(namespace, name)
    except ApiError as err:
        return _flash(request, f"Delete: {err.message}", status=err.status, error=True)
    target = str(request.app.router["list"].url_for().with_query(namespace=namespace))
    if _is_htmx(request):
        return web.Response(status=200, headers={"HX-Redirect": target})
    raise web.HTTPSeeOther(target)


async def set_port(request: web.Request) -> web.StreamResponse:
    """The per-port private/public toggle: spec.access.ports with one visibility changed,
    conditional on the resourceVersion it was read at."""
    api = user_api(request)
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    port = int(request.match_info["port"])
    visibility = str((await request.post()).get("visibility", ""))
    if visibility not in ("private", "public"):
        return _flash(request, "visibility must be private or public", 400, error=True)
    try:
        obj = await api.get_workspace(namespace, name)
        view = workspace_view(obj)
        if view.spec is None or port not in {p.port for p in view.spec.access.ports}:
            return _flash(request, f"port {port} is not in this workspace", 404, error=True)
        ports = [{"port": p.port, "visibility": visibility if p.port == port else p.visibility}
                 for p in view.spec.access.ports]
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        await api.patch_workspace(namespace, name, {"metadata": {"resourceVersion": rv},
                                                    "spec": {"access": {"ports": ports}}})
    except ApiError as err:
        return _flash(request, f"Port {port}: {err.message}", status=err.status, error=True)
    return _flash(request, f"Port {port}: {visibility}")


async def reveal_password(request: web.Request) -> web.StreamResponse:
    """The workspace password, for this click only: a POST (never prefetched), no-store,
    and never logged."""
    api = user_api(request)
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        password = await api.read_secret_key(namespace, f"{name}-access", "password")
    except ApiError as err:
        return _flash(request, f"Password: {err.message}", status=err.status, error=True)
    return render(request, "_password.html", password=password or "")


# -- live updates ------------------------------------------------------------------------

def _sse(event: str, html: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


async def _watched(api: UserApi, namespace: str | None, name: str | None
                   ) -> AsyncIterator[dict[str, dict[str, Any]] | ApiError]:
    """The watched workspaces after every change: list, then watch from there; list
    again when the watch ends or expires (410)."""
    while True:
        try:
            items, rv = await api.list_workspaces(namespace, name)
        except ApiError as err:
            yield err
            return
        objects = {_key(o): o for o in items}
        yield objects
        try:
            async for event in api.watch_workspaces(namespace, rv, name):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    break
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    objects.pop(_key(obj), None)
                else:
                    objects[_key(obj)] = obj
                yield objects
        except ApiError as err:
            yield err
            return
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as err:
            log.info("watch ended (%s); listing again", type(err).__name__)
            await asyncio.sleep(1)


def _key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


async def _stream(request: web.Request, event: str, namespace: str | None, name: str | None,
                  draw: Callable[[dict[str, dict[str, Any]] | ApiError], str]
                  ) -> web.StreamResponse:
    api = user_api(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=16)

    async def produce() -> None:
        last = ""
        async for state in _watched(api, namespace, name):
            html = draw(state)
            if html != last:
                last = html
                if queue.full():  # a slow reader only needs the newest state
                    queue.get_nowait()
                await queue.put(html)

    producer = asyncio.create_task(produce())
    try:
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT_SECONDS):  # wait_for can lose a cancel
                    html = await queue.get()
            except TimeoutError:
                if producer.done():
                    break
                await response.write(b": keep-alive\n\n")  # fails once the page is gone
                continue
            await response.write(_sse(event, html))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
    return response


async def stream_list(request: web.Request) -> web.StreamResponse:
    namespace = request.query.get("namespace", "").strip() or None
    env = request.app[TEMPLATES]

    def draw(state: dict[str, dict[str, Any]] | ApiError) -> str:
        if isinstance(state, ApiError):
            return env.get_template("_table.html").render(rows=[], error=state.message,
                                                          namespace=namespace)
        return env.get_template("_table.html").render(rows=_rows(list(state.values())),
                                                      error="", namespace=namespace)

    return await _stream(request, "table", namespace, None, draw)


async def stream_detail(request: web.Request) -> web.StreamResponse:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    env = request.app[TEMPLATES]
    session: security.Session = request[SESSION]

    def draw(state: dict[str, dict[str, Any]] | ApiError) -> str:
        obj = None if isinstance(state, ApiError) else state.get(f"{namespace}/{name}")
        if obj is None:
            return env.get_template("_gone.html").render(namespace=namespace, name=name)
        return env.get_template("_live.html").render(ws=workspace_view(obj),
                                                     csrf=session.csrf)

    return await _stream(request, "live", namespace, name, draw)


# -- sign-in (token mode) ------------------------------------------------------------------

async def login_page(request: web.Request) -> web.StreamResponse:
    return render(request, "login.html", error="", namespace="")


async def login(request: web.Request) -> web.StreamResponse:
    if request.app[SETTINGS].mode != "token":
        raise web.HTTPNotFound()
    posted = await request.post()
    token = str(posted.get("token", "")).strip()
    namespace = str(posted.get("namespace", "")).strip()
    api = UserApi(request.app[CLUSTER], Credentials.bearer(token))
    try:
        user = await api.whoami() if token else ""
    except ApiError:
        user = ""
    if not user:
        return render(request, "login.html", status=401, namespace=namespace,
                      error="The apiserver did not accept that token.")
    session = request.app[SESSIONS].rotate(request[SESSION])
    session.token, session.user = token, user
    request[SESSION] = session
    log.info("signed in: %s", user)
    target = request.app.router["list"].url_for()
    raise web.HTTPSeeOther(str(target.with_query(namespace=namespace) if namespace
                               else target))


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].drop(request[SESSION])
    request[SESSION] = request.app[SESSIONS].new()
    raise web.HTTPSeeOther("/login" if request.app[SETTINGS].mode == "token" else "/")


# -- the app -----------------------------------------------------------------------------

def create_app(settings: Settings, cluster: Cluster) -> web.Application:
    app = web.Application(middlewares=[headers_middleware, session_middleware],
                          client_max_size=256 * 1024)
    app[SETTINGS] = settings
    app[CLUSTER] = cluster
    app[SESSIONS] = security.Sessions()
    app[TEMPLATES] = templates()
    r = app.router
    r.add_get("/", index)
    r.add_get("/healthz", healthz)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/workspaces", list_page, name="list")
    r.add_post("/workspaces", create)
    r.add_get("/workspaces/stream", stream_list, name="stream_list")
    r.add_get("/new", new_page, name="new")
    base = "/workspaces/{namespace}/{name}"
    r.add_get(base, detail_page, name="detail")
    r.add_get(base + "/stream", stream_detail, name="stream_detail")
    r.add_get(base + "/events", events_part)
    r.add_post(base + "/stop", stop)
    r.add_post(base + "/start", start)
    r.add_post(base + "/wake", wake)
    r.add_post(base + "/delete", delete)
    r.add_post(base + "/password", reveal_password)
    r.add_post(base + r"/ports/{port:\d{1,5}}", set_port)
    files = static_files(settings.assets)
    app[STATIC] = {name: url for name, (url, _, _) in files.items()}

    def serve(body: bytes, content_type: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=content_type)
        return handler

    for url, body, content_type in files.values():
        r.add_get(url, serve(body, content_type))

    async def close(_: web.Application) -> None:
        await cluster.aclose()

    app.on_cleanup.append(close)
    return app
