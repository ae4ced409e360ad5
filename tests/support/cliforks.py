"""`msgbus` commands in processes of their own, forked from one that has already imported the
command line (~0.8 s of CPU a `python -m msgbus` pays before it reads its arguments).

`CliForks(env)` starts that process with `env` (the whole environment a command would get)
in the project's folder; `run(*args, stdin=...)` then forks it once per command: the child
takes fresh pipes as its stdin, stdout and stderr, runs `msgbus` as `python -m msgbus ARGS`
does (runpy, the same argv), ends as the interpreter would (non-daemon threads joined, atexit
handlers run, streams flushed) and reports its exit code. It opens its own connections: the
forked-from process imports modules and never connects. The result is the
`subprocess.CompletedProcess` that `subprocess.run([python, -m, msgbus, *args], env=env,
text=True, capture_output=True)` returns.

    python -m tests.support.cliforks SOCKET MODULE...   (the process forked from)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import locale
import os
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from tests.support.paths import ARTIFACTS, ROOT
from tests.support.waiting import wait_for

HEADER = struct.Struct("!I")  # the length of the JSON argv that follows it


class CliForks:
    """A process with the `msgbus` CLI imported, forked once per command."""

    def __init__(
        self,
        env: dict[str, str],
        preload: tuple[str, ...] = ("msgbus.commands.messages", "msgbus.commands.deadletters"),
    ) -> None:
        self.env = env
        self.dir = Path(tempfile.mkdtemp(prefix="msgbus-cliforks-"))
        self.path = str(self.dir / "socket")
        ARTIFACTS.mkdir(exist_ok=True)
        self.log = ARTIFACTS / f"cliforks-{os.getpid()}-{self.dir.name}.log"
        # Its stdin is a pipe the test holds (as a captured command's is): at EOF it exits.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cliforks", self.path, "msgbus.cli", *preload],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log.open("wb"),
            start_new_session=True,
        )
        self.up = False  # waited for at the first command: it starts while others do

    def wait_up(self) -> None:
        if not self.up:
            wait_for(
                lambda: os.path.exists(self.path) or self.proc.poll() is not None,
                60,
                "the msgbus fork server",
            )
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            self.up = True

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        self.wait_up()
        argv = [os.fsdecode(os.fsencode(a)) for a in args]  # what a real argv can carry
        encoding = locale.getpreferredencoding(False)  # as subprocess's text mode
        data = stdin.encode(encoding) if stdin is not None else b""
        ours, theirs = [], []
        for _ in range(3):
            r, w = os.pipe()
            ours.append(r)
            theirs.append(w)
        # stdin: the child reads the pipe's read end; we write to its write end.
        ours[0], theirs[0] = theirs[0], ours[0]
        out: dict[int, bytes] = {}

        def drain(i: int) -> None:
            with os.fdopen(ours[i], "rb") as f:
                out[i] = f.read()

        def feed() -> None:
            with os.fdopen(ours[0], "wb") as f, contextlib.suppress(BrokenPipeError):
                f.write(data)

        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(timeout)
                conn.connect(self.path)
                body = json.dumps(argv).encode()
                socket.send_fds(conn, [HEADER.pack(len(body))], theirs)
                for fd in theirs:
                    os.close(fd)
                theirs = []
                conn.sendall(body)
                threads = [threading.Thread(target=feed)]
                threads += [threading.Thread(target=drain, args=(i,)) for i in (1, 2)]
                for t in threads:
                    t.start()
                status = b""
                while chunk := conn.recv(64):
                    status += chunk
                for t in threads:
                    t.join(timeout)
        finally:
            for fd in theirs:
                os.close(fd)
        assert status, f"the forked msgbus {argv[:3]} died without an exit code"

        def text(raw: bytes) -> str:
            return raw.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")

        return subprocess.CompletedProcess(
            [sys.executable, "-m", "msgbus", *argv],
            int(status),
            text(out.get(1, b"")),
            text(out.get(2, b"")),
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            self.dir.rmdir()


# -- the process forked from ---------------------------------------------------------------


def _exit_code(exc: SystemExit) -> int:
    """The interpreter's exit status for an uncaught SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _as_python_m_msgbus(argv: list[str]) -> int:
    """`python -m msgbus ARGV` in this process, to the end of its interpreter."""
    sys.argv = ["-m", *argv]  # runpy sets argv[0] to msgbus/__main__.py, as -m does
    try:
        runpy.run_module("msgbus", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - reported as the interpreter reports it
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined] - joins non-daemon threads
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - as the interpreter: a failed flush is exit 120
            code = 120
    return code


def _child(conn: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    (size,) = HEADER.unpack(header)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            os._exit(70)
        body += chunk
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    code = _as_python_m_msgbus(json.loads(body))
    conn.sendall(str(code).encode())
    conn.close()
    os._exit(code)


def serve(path: str, modules: list[str]) -> None:
    for name in modules:
        importlib.import_module(name)
    assert threading.active_count() == 1, "a preloaded module started a thread"
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # it exists only once it accepts
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is not listener:
                    return  # stdin closed: the test is done with us
                conn, _ = listener.accept()
                if os.fork() == 0:
                    try:
                        selector.close()
                        listener.close()
                        _child(conn)
                    except BaseException:  # noqa: BLE001 - never back into this loop
                        traceback.print_exc()
                    finally:
                        os._exit(70)
                conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2:])
