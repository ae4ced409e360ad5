"""The HTTP server in several processes on one address (MESSAGE_BUS_MCP_PROCESSES, `msgbus
mcp --http --processes N`).

One process of the MCP server spends most of its CPU in the SDK, starlette and anyio, and
Python runs it on one core at a time; N processes use N cores. This process supervises
them and serves nothing itself:
- it binds N listening sockets on the address, each with SO_REUSEPORT, so the kernel spreads
  new connections over the processes (one shared socket did not: asyncio accepts every
  pending connection on a wake-up, and one process took most of them), and one private
  Unix socket per process, in a directory only this user can enter, for the sessions of
  mcp_server.affinity; it holds them all for its lifetime, so a process that dies is
  replaced on the same sockets and no connection finds the port closed meanwhile;
- it restarts a process that dies (with backoff), and stops them all when it is stopped,
  each one also dying with it, kill -9 included (PR_SET_PDEATHSIG).
What a client needs lives in Redis or travels with its request: bearer tokens are read
from the tokens file by every process, 2026-07-28 requests carry no session and their
subscriptions/listen streams are fed from Redis, long-polls wake on the same Redis events;
a handshake-era session is served by the process that opened it (mcp_server.affinity).
/metrics sums the counters and histograms of every process (mcp_server.procmetrics);
/readyz is the answering process's own check.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from bus import heap
from bus.errors import BusError, ConfigError
from bus.logs import configure
from bus.ports import bind_refusal, family
from bus.settings import Settings
from bus.tokens import TokenFile
from bus.web_origins import http_base
from mcp_server import procmetrics
from mcp_server.affinity import SessionAffinity, socket_path
from mcp_server.http import build_app
from mcp_server.identity import Identity
from mcp_server.server import build_server
from mcp_server.serving import uvicorn_settings

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
START_TIMEOUT = 60.0  # seconds a process may take to build its server and serve
STOP_TIMEOUT = 15.0  # seconds the processes get to finish (uvicorn's graceful 5 s, and more)
CHECK_EVERY = 0.25  # seconds between two looks at the processes
MAX_RESTART_DELAY = 10.0  # seconds between restarts of a process that keeps dying
STABLE_AFTER = 60.0  # seconds up after which a death starts a new series of restarts
BACKLOG = 2048


@dataclass(frozen=True)
class HttpOptions:
    host: str
    port: int
    profile: str
    tokens_path: Path
    log_level: str
    processes: int = 1
    index: int = 0  # which of the processes this is
    directory: Path | None = None  # the Unix sockets of the processes (several only)
    supervisor_pid: int = 0  # the process to die with (several only)


def processes_wanted(settings: Settings, given: int | None) -> int:
    """`--processes`, else MESSAGE_BUS_MCP_PROCESSES; 0 is one per core."""
    wanted = settings.mcp_processes if given is None else given
    if wanted < 0:
        raise ConfigError(f"--processes {wanted}: give 1 or more, or 0 for one per core")
    return wanted or (os.cpu_count() or 1)


def build_http(settings: Settings, options: HttpOptions) -> Any:
    """One process's ASGI app: the bus server behind the web checks (and, one of several,
    the session routing)."""
    tokens = TokenFile(options.tokens_path)
    base_url = http_base(options.host, options.port)
    server, events = build_server(settings, Identity.http(tokens, base_url), options.profile)
    server.bus.runtime.keyring.announce_forever("mcp")
    directory = options.directory
    affinity = None
    if options.processes > 1 and directory is not None:

        def affinity(app: Any) -> SessionAffinity:
            return SessionAffinity(app, options.index, options.processes, directory)

    app = build_app(
        server,
        events,
        settings,
        host=options.host,
        port=options.port,
        tokens=tokens,
        affinity=affinity,
    )
    heap.freeze_startup_heap()  # long-polls are not held up by full collections of it
    return app


def say_where(options: HttpOptions) -> None:
    base = http_base(options.host, options.port)
    many = f" ({options.processes} processes)" if options.processes > 1 else ""
    print(
        f"MCP streamable HTTP on {base}/mcp{many}  dashboard {base}/ui  "
        f"metrics {base}/metrics  health {base}/healthz",
        file=sys.stderr,
    )


@dataclass
class _Slot:
    """One of the N places: its sockets, the process in it now, how often it was replaced."""

    index: int
    sockets: tuple[socket.socket, socket.socket]
    proc: SpawnProcess | None = None
    ready: Event | None = None
    was_ready: bool = False
    restarts: int = 0
    next_start: float = 0.0
    started: float = field(default=0.0)


class Supervisor:
    def __init__(self, options: HttpOptions) -> None:
        self.options = options
        self.context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.stopping = threading.Event()
        self.slots: list[_Slot] = []
        self.failed: str | None = None

    def run(self) -> None:
        check_free(self.options.host, self.options.port)
        with tempfile.TemporaryDirectory(prefix="msgbus-mcp-") as private:
            directory = Path(private)  # mkdtemp: mode 0700, this user's alone
            metrics = directory / "metrics"
            metrics.mkdir()
            # Before any process starts: each imports prometheus_client with it set.
            os.environ[procmetrics.DIRECTORY_ENV] = str(metrics)
            self.options = replace(self.options, directory=directory, supervisor_pid=os.getpid())
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
            try:
                self.slots = [
                    _Slot(i, (listen_tcp(self.options), listen_unix(directory, i)))
                    for i in range(self.options.processes)
                ]
                for slot in self.slots:
                    self._start(slot)
                self._until_stopped()
            finally:
                self._stop_all()
                for slot in self.slots:
                    for sock in slot.sockets:
                        sock.close()
                os.environ.pop(procmetrics.DIRECTORY_ENV, None)
        if self.failed is not None:
            raise ConfigError(self.failed)

    def _until_stopped(self) -> None:
        announced = False
        while not self.stopping.wait(CHECK_EVERY):
            for slot in self.slots:
                self._look_after(slot)
            if not announced and all(s.was_ready for s in self.slots):
                say_where(self.options)
                announced = True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _start(self, slot: _Slot) -> None:
        slot.ready = self.context.Event()
        slot.proc = self.context.Process(
            target=process_main,
            args=(replace(self.options, index=slot.index), slot.sockets),
            kwargs={"ready": slot.ready},
            name=f"msgbus-mcp-{slot.index}",
        )
        slot.proc.start()
        slot.started = time.monotonic()
        slot.was_ready = False

    def _look_after(self, slot: _Slot) -> None:
        proc, ready = slot.proc, slot.ready
        assert proc is not None and ready is not None
        now = time.monotonic()
        slot.was_ready = slot.was_ready or ready.is_set()
        if proc.is_alive():
            if not slot.was_ready and now - slot.started > START_TIMEOUT:
                logger.warning("MCP server process %s did not start: stopping it", proc.pid)
                proc.kill()
            return
        if not slot.was_ready and slot.restarts == 0:
            # The first start failed: every other one would fail the same way.
            self.failed = (
                f"an MCP server process failed to start (exit code {proc.exitcode}); "
                "its error is above"
            )
            self.stopping.set()
            return
        if slot.next_start == 0.0:
            if slot.was_ready and now - slot.started > STABLE_AFTER:
                slot.restarts = 0  # it had run a while: not one of a series of crashes
            delay = min(MAX_RESTART_DELAY, 0.5 * 2**slot.restarts) if slot.restarts else 0.0
            slot.next_start = now + delay
            logger.warning(
                "MCP server process %s exited (code %s); another starts in %.1fs",
                proc.pid,
                proc.exitcode,
                delay,
            )
        if now >= slot.next_start:
            slot.restarts += 1
            slot.next_start = 0.0
            self._start(slot)

    def _stop_all(self) -> None:
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.is_alive()]
        for proc in procs:
            if proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def process_main(
    options: HttpOptions, sockets: tuple[socket.socket, socket.socket], ready: Event
) -> None:
    """One server process of a supervisor (spawned): build, then serve until SIGTERM."""
    _die_with(options.supervisor_pid)
    configure(options.log_level)
    # The gauges /metrics serves are this process's own (mcp_server.procmetrics), where
    # clearing their labels works; only the shared files keep old label sets, unread.
    warnings.filterwarnings("ignore", message="Clearing labels has not been implemented")
    try:
        settings = Settings()
        settings.signing_keys  # noqa: B018 - production without a secret fails here, at start
        app = build_http(settings, options)
    except (BusError, ConfigError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    ready.set()
    config = uvicorn.Config(app, **uvicorn_settings(options.log_level))
    uvicorn.Server(config).run(sockets=list(sockets))


def check_free(host: str, port: int) -> None:
    """Refuses an address something already listens on, before anything binds it (with
    SO_REUSEPORT alone, our sockets could join another server of this user there)."""
    refusal = bind_refusal(host, port)
    if refusal is not None:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({refusal.strerror}): is another server "
            "there? Stop it, or pick another port with --port",
            port=port,
        )


def listen_tcp(options: HttpOptions) -> socket.socket:
    """One process's listening socket on the shared address. A TCP socket proper (proto
    IPPROTO_TCP): asyncio sets TCP_NODELAY only on connections accepted from such a
    socket, and without it a response's two writes (head, body) met the client's delayed
    ACK, 40 ms added to a call."""
    sock = socket.socket(family(options.host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((options.host, options.port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {options.host}:{options.port} ({exc.strerror})", port=options.port
        ) from None
    return sock


def listen_unix(directory: Path, index: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(socket_path(directory, index)))
    sock.listen(BACKLOG)
    return sock


def _die_with(supervisor: int) -> None:
    """SIGTERM for this process when the supervisor dies, however it dies (kill -9 too): it
    must not go on serving with no one to restart or stop it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if supervisor and os.getppid() != supervisor:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
