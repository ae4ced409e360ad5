"""The bus dashboard at /ui: agents, topics, live rates, and dead letters with inspect,
replay (with progress, in chunks) and purge. One static page, no build step.

Auth is the HTTP server's: an admin agent's token, as `Authorization: Bearer`, or through
the login form, which keeps it in an HttpOnly cookie. Every handler acts through that
admin's handle (bus.handle). Writes take JSON only, and when the cookie is what
authenticates them, only with the dashboard's own Origin: a page elsewhere (another
localhost port included) cannot post a purge with an admin's cookie.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bus.client import MessageBus
from bus.deadletters import MAX_LISTED
from bus.errors import BusError
from bus.handle import AgentHandle
from bus.schema import DeadLetterChoice
from bus.settings import Settings
from bus.tokens import TokenFile
from bus.validation import parse
from mcp_server.serving import uvicorn_settings
from mcp_server.websecurity import HostOriginGuard, WebOrigins, web_origins

PAGE = Path(__file__).with_name("static") / "dashboard.html"
LOGIN = """<!doctype html><meta charset=utf-8><title>agent-message-bus</title>
<form method=post action=/ui/login style="font:16px system-ui;margin:4em auto;width:22em">
<h1>agent-message-bus</h1><p>An admin agent's token:</p>
<input name=token type=password style="width:100%" autofocus> <button>Open dashboard</button>
</form>"""
COOKIE = "msgbus_token"
REPLAY_CHUNK = 100


def dashboard_routes(bus: MessageBus, tokens: TokenFile, origins: WebOrigins) -> list[Route]:
    def admin_of(request: Request) -> tuple[AgentHandle | None, bool]:
        """The admin's handle, and whether a cookie (not a bearer header) says who it is."""
        auth = request.headers.get("authorization", "")
        by_cookie = not auth.lower().startswith("bearer ")
        token = request.cookies.get(COOKIE) if by_cookie else auth[7:]
        agent = tokens.agent_for(token) if token else None
        handle = bus.as_agent(agent) if agent is not None else None
        return (handle if handle is not None and handle.is_admin else None), by_cookie

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def guarded(
        handler: Callable[[Request, AgentHandle], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            admin, by_cookie = admin_of(request)
            if admin is None:
                if request.url.path == "/ui":
                    return HTMLResponse(LOGIN, status_code=401)
                return JSONResponse({"error": "admin token required"}, status_code=401)
            if request.method == "POST":
                refused = _refuse_write(request, by_cookie, origins)
                if refused is not None:
                    return refused
            try:
                return await handler(request, admin)
            except BusError as exc:
                return JSONResponse(exc.to_dict(), status_code=400)

        return wrapper

    async def page(request: Request, admin: AgentHandle) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def login(request: Request) -> Response:
        if request.headers.get("origin") is None:
            return HTMLResponse("the login form posts from the dashboard page", 403)
        form = await request.form()
        token = str(form.get("token", ""))
        agent = tokens.agent_for(token)
        if agent is None or not bus.as_agent(agent).is_admin:
            return HTMLResponse(LOGIN.replace("<p>", "<p><b>Not an admin token.</b> "), 401)
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/ui")
        return response

    async def overview(request: Request, admin: AgentHandle) -> Response:
        def collect() -> dict[str, Any]:
            stats = admin.stats()
            return {
                "agents": [a.model_dump(mode="json") for a in admin.agents()],
                "topics": [
                    {"topic": t, "subscribers": n} for t, n in sorted(admin.topics().items())
                ],
                "rates": admin.rates(),
                "queues": stats.queue_depths,
                "dead_letters": stats.dead_letters,
            }

        return JSONResponse(await run(collect))

    async def dead_letters(request: Request, admin: AgentHandle) -> Response:
        try:
            limit = int(request.query_params.get("limit", 200))
        except ValueError:
            return JSONResponse({"error": "limit must be a number"}, status_code=400)
        letters = await run(admin.dead_letters, max(1, min(limit, MAX_LISTED)))
        return JSONResponse([d.model_dump(mode="json") for d in letters])

    async def act(request: Request, admin: AgentHandle) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        # Read by the bus's own schema (a BusError, 400, names the field): ids a list of
        # strings, all a boolean; nothing coerced ("false" was once taken as true).
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        choice = parse(DeadLetterChoice, body, what="request body")
        ids, everything = choice.ids, choice.all
        chunk = REPLAY_CHUNK if everything else None
        action = request.path_params["action"]
        if action == "replay":
            done = await run(admin.replay_dead_letters, ids, all=everything, limit=chunk)
        elif action == "purge":
            done = await run(admin.purge_dead_letters, ids, all=everything, limit=chunk)
        else:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=404)
        return JSONResponse({"done": done, "remaining": await run(admin.dead_letter_depth)})

    return [
        Route("/ui", guarded(page), methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/api/overview", guarded(overview), methods=["GET"]),
        Route("/ui/api/dead-letters", guarded(dead_letters), methods=["GET"]),
        Route("/ui/api/dead-letters/{action:str}", guarded(act), methods=["POST"]),
    ]


def _refuse_write(request: Request, by_cookie: bool, origins: WebOrigins) -> Response | None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        return JSONResponse(
            {"error": "writes take Content-Type: application/json only"}, status_code=415
        )
    origin = request.headers.get("origin")
    if by_cookie and (origin is None or not origins.origin_ok(origin)):
        return JSONResponse(
            {"error": "a cookie-authenticated write must come from the dashboard's own page"},
            status_code=403,
        )
    return None


def serve(settings: Settings, host: str, port: int, tokens_path: Path | None = None) -> None:
    """The dashboard alone, on its own port (`msgbus dashboard`), until stopped."""
    tokens = TokenFile(tokens_path or settings.tokens_path)
    origins = web_origins(host, port, settings)
    app = Starlette(routes=dashboard_routes(MessageBus(settings), tokens, origins))
    print(f"dashboard on http://{host}:{port}/ui", flush=True)
    uvicorn.run(HostOriginGuard(app, origins), host=host, port=port, **uvicorn_settings("warning"))
