"""The admin listener: a twisted.web site with the console's pages (Jinja2, rendered on the
server), its JSON API (``/api/...``, described by ``/api/openapi.json``) and the observability
resources (``engine.web.observability``, when present) mounted beside them.

Every request but the login, setup, OpenAPI, health and metrics ones needs a session; a page
without one redirects to the login, an API call gets 401. A role that may not see a page gets
403 (and no link to it). A POST needs the session's CSRF token (a form's ``csrf`` field or the
``X-CSRF-Token`` header). Store reads run on the console's own threads; writes go through the
store's executor (the engine's writer thread).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web import resource, server

from engine.listing import iso
from engine.web.auth import COOKIE, Principal, Session, Sessions

log = Logger(namespace="wharf.console")

#: The pages in the navigation bar: (path, title, permission).
NAV = (
    ("/integration", "Integration", "integration"),
    ("/messages", "Messages", "messages"),
    ("/work-items", "Work items", "work_items"),
    ("/supply", "Supply chain", "supply"),
    ("/finance", "Finance", "finance"),
    ("/revenue", "Revenue cycle", "revenue"),
    ("/utilization", "Utilization", "utilization"),
    ("/mappings", "Mappings", "mappings"),
    ("/audit", "Audit", "audit"),
    ("/users", "Users", "users"),
)
#: Paths that observability resources may serve without a login.
OPEN_PATHS = ("healthz", "readyz", "metrics")


@dataclass
class Response:
    code: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(value: Any, code: int = 200) -> Response:
    body = json.dumps(value, ensure_ascii=False, default=str, indent=1).encode()
    return Response(code, body, "application/json")


def redirect(to: str, code: int = 303) -> Response:
    return Response(code, b"", "text/plain", {"Location": to})


@dataclass
class Ctx:
    """One request as a handler sees it."""

    request: Any
    console: Console
    session: Session | None
    args: dict[str, str]
    form: dict[str, str]
    api: bool

    @property
    def principal(self) -> Principal:
        assert self.session is not None
        return self.session.principal

    @property
    def address(self) -> str:
        peer = self.request.getClientAddress()
        return str(getattr(peer, "host", "?"))

    def page(self, template: str, code: int = 200, **values: Any) -> Response:
        return self.console.render(self, template, code, **values)


Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    permission: str | None  # None: any logged-in person; "public": no login
    api: bool


class Console:
    """The console of one running engine: its routes, sessions, templates and threads."""

    def __init__(self, engine: Any, config: Any, *, reactor: Any = None) -> None:
        self.engine = engine
        self.config = config
        self.reactor = reactor or engine.reactor
        self.store = engine.store
        self.sessions = Sessions.of_config(config, self.store, self.reactor.seconds)
        self.templates = Environment(
            loader=PackageLoader("engine.web", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["iso"] = iso
        self.templates.filters["age"] = age_text
        self.templates.globals["quote"] = quote
        self.pool = ThreadPool(1, 2, name="wharf-console")
        self.routes: list[Route] = []
        self.mounted: dict[str, resource.Resource] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        self.pool.stop()

    # -- store access --------------------------------------------------------------------------
    def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run a store read on the console's threads (each has its own connection)."""
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args, **kwargs)

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Run a store write through the store's executor (its writer thread)."""
        return self.engine.executor.submit(fn, *args, **kwargs)

    async def session_of(self, request: Any) -> Session | None:
        """The request's live session (read from the store), its last use written when due;
        None at once without a cookie."""
        cookie = _cookie(request)
        if cookie is None:
            return None
        session = await self.read(self.sessions.get, cookie)
        if session is not None and self.sessions.stale(session):
            await self.write(self.sessions.touch, session)
        return session

    # -- routing -------------------------------------------------------------------------------
    def route(
        self, method: str, path: str, permission: str | None, *, api: bool = False
    ) -> Callable[[Handler], Handler]:
        """Register a handler for ``method`` and ``path`` (``{name}`` matches one segment)."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")

        def add(handler: Handler) -> Handler:
            self.routes.append(Route(method, regex, handler, permission, api))
            return handler

        return add

    def mount(self, path: str, child: resource.Resource) -> None:
        self.mounted[path.strip("/")] = child

    def site(self) -> server.Site:
        site = server.Site(Root(self))
        site.displayTracebacks = False
        site.sessionFactory = _NoSession  # ours are the console's, not twisted.web's
        return site

    def nav(self, principal: Principal | None) -> list[tuple[str, str]]:
        if principal is None:
            return []
        return [(p, t) for p, t, perm in NAV if principal.may(perm)]

    def render(self, ctx: Ctx, template: str, code: int = 200, **values: Any) -> Response:
        session = ctx.session
        body = self.templates.get_template(template).render(
            nav=self.nav(session.principal if session else None),
            me=session.principal if session else None,
            csrf=session.csrf if session else "",
            path=ctx.request.path.decode("utf-8", "replace"),
            args=ctx.args,
            svg=Markup,
            **values,
        )
        return Response(code, body.encode())

    async def handle(self, request: Any) -> Response:
        path = request.path.decode("utf-8", "replace").rstrip("/") or "/"
        method = request.method.decode()
        is_api = path.startswith("/api/")
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items()}
        session = await self.session_of(request)
        match, allowed = None, False
        for r in self.routes:
            m = r.pattern.match(path)
            if m:
                allowed = True
                if r.method == method:
                    match = (r, m)
                    break
        if match is None:
            if allowed:
                return _error(is_api, 405, f"{method} is not allowed on {path}")
            return _error(is_api, 404, f"no such page {path}")
        route, m = match
        form = args if method == "POST" else {}
        ctx = Ctx(request, self, session, args, form, route.api)
        if route.permission != "public":
            if session is None:
                if route.api:
                    return json_response({"error": "not logged in: POST /login first"}, 401)
                return redirect("/login?" + urlencode({"next": path}))
            if route.permission is not None and not session.principal.may(route.permission):
                return self._refused(ctx, route.permission)
            if method == "POST":
                given = form.get("csrf") or _header(request, b"x-csrf-token")
                if not self.sessions.csrf_ok(session, given):
                    return _error(route.api, 403, "expected the session's CSRF token")
        return await route.handler(ctx, **m.groupdict())

    def _refused(self, ctx: Ctx, permission: str) -> Response:
        text = f"your roles ({', '.join(ctx.principal.roles)}) may not {permission}"
        if ctx.api:
            return json_response({"error": text}, 403)
        return ctx.page("refused.html", 403, text=text)


def _error(api: bool, code: int, text: str) -> Response:
    if api:
        return json_response({"error": text}, code)
    return Response(code, f"<!doctype html><title>{code}</title><p>{_esc(text)}</p>".encode())


def _esc(text: str) -> str:
    from html import escape

    return escape(text)


def _cookie(request: Any) -> str | None:
    value = request.getCookie(COOKIE.encode())
    return value.decode("ascii", "replace") if value else None


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value if isinstance(value, str) or value is None else value.decode()


def age_text(seconds: float | None) -> str:
    """``3d 4h``, ``12m``, ``40s``: how long, as a person reads it."""
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    for unit, size, smaller, small_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if s >= size:
            rest = (s % size) // small_size
            return f"{s // size}{unit}" + (f" {rest}{smaller}" if rest else "")
    return f"{s}s"


class _NoSession:
    def __init__(self, *a: Any, **kw: Any) -> None:
        raise RuntimeError("the console keeps its own sessions")


class Root(resource.Resource):
    """The site's root: a mounted resource for its own paths, the console for every other."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.dispatch = Dispatch(console)

    def getChild(self, name: bytes, request: Any) -> resource.Resource:
        parts = [name.decode("utf-8", "replace"), *(p.decode() for p in request.postpath)]
        for path, child in sorted(self.console.mounted.items(), key=lambda kv: -len(kv[0])):
            want = path.split("/")
            if parts[: len(want)] == want:
                for _ in want[1:]:  # the mounted resource sees the path below its own
                    request.prepath.append(request.postpath.pop(0))
                if path in OPEN_PATHS:
                    return child
                return Guarded(self.console, child)
        return self.dispatch

    def render(self, request: Any) -> Any:
        return self.dispatch.render(request)


class Guarded(resource.Resource):
    """A mounted resource behind the console's login (401 without a session)."""

    isLeaf = True

    def __init__(self, console: Console, child: resource.Resource) -> None:
        super().__init__()
        self.console = console
        self.child = child

    def render(self, request: Any) -> Any:
        if _cookie(request) is None:  # no cookie: refused without a store read
            return self._refused(request)
        d = defer.ensureDeferred(self.console.session_of(request))

        def answer(session: Session | None) -> None:
            if session is None:
                request.write(self._refused(request))
                request.finish()
                return
            target = resource.getChildForRequest(self.child, request)
            body = target.render(request)
            if body is not server.NOT_DONE_YET:
                request.write(body)
                request.finish()

        def failed(f: Any) -> None:
            log.failure("console: {path} failed", f, path=request.path)
            request.setResponseCode(500)
            request.finish()

        d.addCallback(answer).addErrback(failed)
        return server.NOT_DONE_YET

    @staticmethod
    def _refused(request: Any) -> bytes:
        request.setResponseCode(401)
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "not logged in: POST /login first"}'


class Dispatch(resource.Resource):
    isLeaf = True

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def render(self, request: Any) -> Any:
        d = defer.ensureDeferred(self.console.handle(request))
        gone = [False]
        request.notifyFinish().addBoth(lambda _: gone.__setitem__(0, True))

        def send(resp: Response) -> None:
            if gone[0]:
                return
            request.setResponseCode(resp.code)
            request.setHeader(b"content-type", resp.content_type.encode())
            request.setHeader(b"x-content-type-options", b"nosniff")
            request.setHeader(b"x-frame-options", b"DENY")
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"referrer-policy", b"no-referrer")  # setup tokens stay here
            request.setHeader(
                b"content-security-policy",
                b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
            )
            for k, v in resp.headers.items():
                request.setHeader(k.encode(), v.encode())
            request.write(resp.body)
            request.finish()

        def failed(f: Any) -> None:
            log.failure(
                "console: {method} {path} failed", f, method=request.method, path=request.path
            )
            if not gone[0]:
                api = request.path.startswith(b"/api/")
                send(_error(api, 500, "the console failed; see the engine's log"))

        d.addCallback(send).addErrback(failed)
        return server.NOT_DONE_YET
