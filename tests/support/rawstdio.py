"""A raw JSON-RPC client over a stdio MCP server process, opening as Claude Code does.

Claude Code (2.1.328, measured) first probes `server/discover` with the 2026-07-28
envelope; on method-not-found it sends `initialize` at protocolVersion 2025-11-25, then
`notifications/initialized`. `RawStdio.open_like_claude_code()` does the same, and every
frame the server writes is kept (`frames`), so a test can assert on exactly what the server
said, notifications included, with no SDK in between to interpret or drop anything.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

CLIENT_INFO = {"name": "claude-code", "version": "2.1.328"}
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"


class RawStdioError(AssertionError):
    pass


class RawStdio:
    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, stderr_path: Path
    ) -> None:
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self.stderr_path = stderr_path
        self.frames: list[dict[str, Any]] = []
        self._inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._next_id = 0
        threading.Thread(target=self._read, name="raw-stdio-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                frame = json.loads(line)
            except ValueError:
                frame = {"unparsed": line.decode(errors="replace")}
            with self._lock:
                self.frames.append(frame)
            self._inbox.put(frame)

    def send(self, frame: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(frame).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30):
        """Sends a request; returns its response frame (result or error)."""
        self._next_id += 1
        request_id = self._next_id
        frame: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        self.send(frame)
        return self.wait_for(lambda f: f.get("id") == request_id, timeout, f"reply to {method}")

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        frame: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            frame["params"] = params
        self.send(frame)

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """The first frame (seen before or arriving within `timeout`) that matches."""
        with self._lock:
            for frame in self.frames:
                if match(frame):
                    return frame
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RawStdioError(
                    f"no {what} within {timeout}s; frames: {self.frames[-5:]}; "
                    f"server exit: {self.proc.poll()}; stderr: {self.stderr()[-1500:]}"
                )
            try:
                frame = self._inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if match(frame):
                return frame

    def notifications(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [f for f in self.frames if f.get("method") == method and "id" not in f]

    def call_tool(self, name: str, arguments: dict[str, Any], timeout: float = 60) -> Any:
        """A tool's structuredContent; raises with the text if it is an error result."""
        reply = self.request("tools/call", {"name": name, "arguments": arguments}, timeout)
        if "error" in reply:
            raise RawStdioError(f"{name}: JSON-RPC error {reply['error']}")
        result = reply["result"]
        if result.get("isError"):
            raise RawStdioError(f"{name}: {result['content'][0]['text']}")
        return result["structuredContent"]

    def open_like_claude_code(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The probe, then the handshake: returns (discover reply, initialize result)."""
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        probe = self.request("server/discover", {"_meta": meta})
        init = self.request(
            "initialize",
            {
                "protocolVersion": HANDSHAKE,
                "capabilities": {"roots": {}, "elicitation": {}},
                "clientInfo": CLIENT_INFO,
            },
        )
        if "error" in init:
            raise RawStdioError(f"initialize failed: {init['error']}")
        self.notify("notifications/initialized")
        return probe, init["result"]

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the server exits when stdin closes
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()

    def __enter__(self) -> RawStdio:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
