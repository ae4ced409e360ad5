"""The bus dashboard at /ui: agents, topics, live rates, and dead letters with inspect,
replay (with progress, in chunks) and purge. One static page, no build step.

Auth is the HTTP server's: an admin agent's token, as `Authorization: Bearer`, or through
the login form, which keeps it in an HttpOnly cookie.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bus.client import MessageBus
from bus.errors import BusError
from bus.health import collect_stats
from bus.tokens import TokenFile

PAGE = Path(__file__).with_name("static") / "dashboard.html"
LOGIN = """<!doctype html><meta charset=utf-8><title>agent-message-bus</title>
<form method=post action=/ui/login style="font:16px system-ui;margin:4em auto;width:22em">
<h1>agent-message-bus</h1><p>An admin agent's token:</p>
<input name=token type=password style="width:100%" autofocus> <button>Open dashboard</button>
</form>"""
COOKIE = "msgbus_token"
REPLAY_CHUNK = 100


def dashboard_routes(bus: MessageBus, tokens: TokenFile) -> list[Route]:
    def admin_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        agent = tokens.agent_for(token) if token else None
        return agent if agent is not None and bus.guard.is_admin(agent) else None

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def guarded(
        handler: Callable[[Request, str], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            agent = admin_of(request)
            if agent is None:
                if request.url.path == "/ui":
                    return HTMLResponse(LOGIN, status_code=401)
                return JSONResponse({"error": "admin token required"}, status_code=401)
            try:
                return await handler(request, agent)
            except BusError as exc:
                return JSONResponse(exc.to_dict(), status_code=400)

        return wrapper

    async def page(request: Request, agent: str) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def login(request: Request) -> Response:
        form = await request.form()
        token = str(form.get("token", ""))
        agent = tokens.agent_for(token)
        if agent is None or not bus.guard.is_admin(agent):
            return HTMLResponse(LOGIN.replace("<p>", "<p><b>Not an admin token.</b> "), 401)
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/ui")
        return response

    async def overview(request: Request, agent: str) -> Response:
        def collect() -> dict[str, Any]:
            stats = collect_stats(bus.runtime)
            topics = bus.topics()
            return {
                "agents": [a.model_dump(mode="json") for a in bus.agents()],
                "topics": [{"topic": t, "subscribers": n} for t, n in sorted(topics.items())],
                "rates": bus.runtime.store.rates(),
                "queues": stats.queue_depths,
                "dead_letters": stats.dead_letters,
            }

        return JSONResponse(await run(collect))

    async def dead_letters(request: Request, agent: str) -> Response:
        letters = await run(bus.dead_letters, int(request.query_params.get("limit", 200)))
        return JSONResponse([d.model_dump(mode="json") for d in letters])

    async def act(request: Request, agent: str) -> Response:
        body = await request.json()
        ids = body.get("ids") or None
        everything = bool(body.get("all"))
        queue = bus.dead_letter_queue
        if request.path_params["action"] == "replay":
            bus.guard.require_admin(agent, "replay dead letters")
            done = await run(
                queue.replay,
                None if everything else list(ids or []),
                limit=REPLAY_CHUNK if everything else None,
            )
        else:
            done = await run(
                queue.purge,
                None if everything else list(ids or []),
                limit=REPLAY_CHUNK if everything else None,
            )
        for message_id in done:
            bus.guard.audit(request.path_params["action"], agent, message_id, "ok")
        remaining = await run(queue.depth)
        return JSONResponse({"done": done, "remaining": remaining})

    return [
        Route("/ui", guarded(page), methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/api/overview", guarded(overview), methods=["GET"]),
        Route("/ui/api/dead-letters", guarded(dead_letters), methods=["GET"]),
        Route("/ui/api/dead-letters/{action:str}", guarded(act), methods=["POST"]),
    ]


def main() -> None:
    """`msgbus dashboard`: the dashboard alone, on its own port."""
    import argparse

    import uvicorn
    from starlette.applications import Starlette

    from bus.logs import configure
    from bus.settings import Settings

    parser = argparse.ArgumentParser(prog="msgbus dashboard")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--tokens-file", type=Path, default=None)
    args = parser.parse_args()
    configure("WARNING")
    settings = Settings()
    tokens = TokenFile(
        args.tokens_file or settings.tokens_file or settings.state_dir / "tokens.json"
    )
    app = Starlette(routes=dashboard_routes(MessageBus(settings), tokens))
    print(f"dashboard on http://{args.host}:{args.port}/ui", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
