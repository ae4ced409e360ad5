"""Installing and running the real Claude Code CLI for end-to-end tests.

`install()` puts `@anthropic-ai/claude-code@CLAUDE_CODE_VERSION` into a cache folder with
npm once (idempotent: a working binary of that version is reused in milliseconds) and
returns the path of the `claude` binary. `run()` runs `claude -p` against a stand-in
model (tests/support/anthropic_stub.py) with a scratch HOME and a clean environment: no
credential or setting of the machine reaches it, and it talks to nothing but the stub
and the MCP servers its config names.

`python3 -m tests.support.claude_code` installs and prints the binary's path (used by
scripts/test.sh).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CLAUDE_CODE_VERSION = "2.1.328"
PACKAGE = "@anthropic-ai/claude-code"
CACHE_ENV = "MSGBUS_CLAUDE_CODE_DIR"
INSTALL_TIMEOUT = 600.0
RUN_TIMEOUT = 120.0
STARTUP_WAIT = 60.0  # MCP servers of plugins: Claude Code waits this long at most for them


class ClaudeCodeError(RuntimeError):
    """Claude Code could not be installed, or a run did not finish."""


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "msgbus-test" / f"claude-code-{CLAUDE_CODE_VERSION}"


def install(prefix: Path | None = None) -> Path:
    """The `claude` binary of CLAUDE_CODE_VERSION, installed into `prefix` if missing."""
    prefix = prefix or cache_dir()
    found = _working_binary(prefix)
    if found is not None:
        return found
    prefix.mkdir(parents=True, exist_ok=True)
    with (prefix / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes install once between them
        found = _working_binary(prefix)
        if found is not None:
            return found
        command = [
            "npm",
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            "--loglevel=error",  # the package asks for Node 22; its native binary needs none
            f"{PACKAGE}@{CLAUDE_CODE_VERSION}",
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClaudeCodeError(f"`{' '.join(command)}` failed: {exc}") from exc
        if done.returncode != 0:
            raise ClaudeCodeError(
                f"`{' '.join(command)}` exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
    found = _working_binary(prefix)
    if found is None:
        raise ClaudeCodeError(f"npm installed {PACKAGE} into {prefix} but no `claude` runs")
    return found


def installed() -> Path:
    """`install()` for a test: the binary, or the test fails saying why it could not be had."""
    try:
        return install()
    except ClaudeCodeError as exc:
        pytest.fail(f"Claude Code is needed for these tests and could not be installed: {exc}")


def _working_binary(prefix: Path) -> Path | None:
    """The npm shim if its postinstall put the native binary in place, else the platform
    package's binary itself (npm may skip install scripts)."""
    modules = prefix / "node_modules"
    candidates = [modules / ".bin" / "claude", *sorted(modules.glob(f"{PACKAGE}-*/claude"))]
    for binary in candidates:
        if binary.is_file() and _version_of(binary) == CLAUDE_CODE_VERSION:
            return binary
    return None


def _version_of(binary: Path) -> str | None:
    try:
        done = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    return words[0] if done.returncode == 0 and words else None


def bus_mcp_config(path: Path, agent: str, env: Mapping[str, str], name: str = "bus") -> Path:
    """An MCP config file that runs the bus's stdio server as `agent` (tools mcp__<name>__*)."""
    server = {
        "type": "stdio",
        "command": sys.executable,
        "args": ["-m", "msgbus", "mcp", "--agent", agent],
        "env": dict(env),
    }
    path.write_text(json.dumps({"mcpServers": {name: server}}, indent=2))
    return path


@dataclass
class ClaudeRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def result(self) -> dict[str, Any]:
        """The `--output-format json` result object (empty if stdout is not one)."""
        try:
            parsed = json.loads(self.stdout)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}

    def describe(self) -> str:
        return (
            f"claude exited {self.returncode} after {self.seconds:.1f}s\n"
            f"stdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"
        )


def cli(
    claude: Path, args: Sequence[str], home: Path, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """A non-model `claude` command (`plugin validate`, `plugin install`...) with the same
    clean environment, stdin closed."""
    home.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(
            [str(claude), *args],
            cwd=cwd,
            env=claude_env("http://127.0.0.1:9", home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClaudeCodeError(f"claude {' '.join(args)} ran past {timeout}s") from exc


def claude_env(base_url: str, home: Path) -> dict[str, str]:
    """A clean environment: the stub as the API, a scratch HOME, no outside traffic."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-ant-stub-not-a-real-key",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
    }


def run(
    claude: Path,
    prompt: str,
    *,
    base_url: str,
    mcp_config: Path | None,
    allowed_tools: Sequence[str],
    workdir: Path,
    timeout: float = RUN_TIMEOUT,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> ClaudeRun:
    """`claude -p PROMPT` with only the MCP servers of `mcp_config`, in `workdir` (its HOME
    is `workdir/home`). A run past `timeout` is killed with its MCP servers. `extra_env`
    adds to its clean environment (a plugin's servers inherit it). `mcp_config=None`: the
    servers of the installed or `--plugin-dir` plugins (a strict MCP config leaves them
    out), waited for before the first turn as an explicit config is."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    servers = ["--mcp-config", str(mcp_config), "--strict-mcp-config"] if mcp_config else []
    env = claude_env(base_url, home)
    if mcp_config is None:
        env["CLAUDE_CODE_MCP_STARTUP_WAIT_MS"] = str(int(STARTUP_WAIT * 1000))
    args = [
        str(claude),
        "-p",
        prompt,
        *servers,
        "--allowedTools",
        ",".join(allowed_tools),
        "--output-format",
        "json",
        *extra_args,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        args,
        cwd=workdir,
        env=env | dict(extra_env or {}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its MCP server children share the group, for the kill
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=30)
        ran = ClaudeRun(args, -9, stdout, stderr, time.monotonic() - started)
        raise ClaudeCodeError(
            f"claude ran past {timeout}s and was killed\n{ran.describe()}"
        ) from None
    with contextlib.suppress(ProcessLookupError):  # an MCP server it left behind
        os.killpg(proc.pid, signal.SIGTERM)
    return ClaudeRun(args, proc.returncode, stdout, stderr, time.monotonic() - started)


if __name__ == "__main__":
    print(install())
