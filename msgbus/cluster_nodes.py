"""The servers of the local multi-node stack, one class each: a RabbitMQ cluster node, a
Redis server and a Sentinel. Each knows its ports, files and pid, starts itself bound to
127.0.0.1, and can be stopped, killed (-9) or paused (SIGSTOP, a node cut off without its
sockets closing) by the failure-injection tests.

A server's config file is written once, when it first starts; afterwards it is the server's
own: Sentinel rewrites the Redis configs (who replicates whom) after a failover, and its own
(the current primary), so a stack brought down and up again keeps the roles it had.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from bus.errors import ServicesError
from msgbus.services import (
    answers,
    live_pid,
    rabbit_base,
    rabbit_env,
    rabbitmqctl,
    run_command,
    wait_exit,
    wait_until,
)

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class Server:
    """What every server of the stack has: a port, a pid file, signals."""

    kind = "server"
    port: int

    @property
    def pidfile(self) -> Path:
        raise NotImplementedError

    def pid(self) -> int | None:
        return live_pid(self.pidfile)

    def answers(self) -> bool:
        return answers(LOOPBACK, self.port)

    def signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is None:
            raise ServicesError(f"{self} is not running")
        os.kill(pid, sig)

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no flush; what the disk has is what survives."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 30)

    def pause(self) -> None:
        """SIGSTOP: the process stops answering while its sockets stay open, as a host cut
        off by the network looks to its peers."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    home: Path  # the server's own directory: data, config, logs

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None and not self.shut_down(pid):
            os.kill(pid, signal.SIGTERM)
            wait_exit(pid, 30)

    def shut_down(self, pid: int) -> bool:
        """The server's own orderly stop; False leaves it to SIGTERM."""
        return False

    def purge(self) -> None:
        """Deletes the server's files (only when stopped)."""
        shutil.rmtree(self.home, ignore_errors=True)


class RabbitNode(Server):
    """One node of the cluster: node name ``msgbus-<layout><i>@localhost``, AMQP on `port`,
    Erlang distribution on port + 20000, management (when on) on port + 10000."""

    kind = "rabbitmq"

    def __init__(self, state_dir: Path, name: str, port: int, *, management: bool) -> None:
        self.name = name
        self.port = port
        self.management = management
        self.base = self.home = rabbit_base(state_dir, name, subdir=name.split("@")[0])
        self.env = rabbit_env(port, name, self.base)
        self.proc: subprocess.Popen[bytes] | None = None

    def __str__(self) -> str:
        return f"RabbitMQ node {self.name} (127.0.0.1:{self.port})"

    @property
    def pidfile(self) -> Path:
        return self.base / "mnesia" / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.base / "log" / "server.out"

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost or '/'}"

    def write_config(self, memory: str) -> None:
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        conf = self.base / "rabbitmq.conf"
        if not conf.exists():
            lines = [
                f"listeners.tcp.default = 127.0.0.1:{self.port}",
                # A node cut off from the other two stops serving until it is back,
                # instead of going on as a second cluster (RabbitMQ's advice for 3+ nodes).
                "cluster_partition_handling = pause_minority",
                # Quorum queue leaders spread over the nodes instead of all landing on the
                # node the first worker happened to connect to.
                "queue_leader_locator = balanced",
                f"vm_memory_high_watermark.absolute = {memory}",
            ]
            if self.management:
                lines += [
                    "management.tcp.ip = 127.0.0.1",
                    f"management.tcp.port = {self.port + 10000}",
                ]
            conf.write_text("\n".join(lines) + "\n")
        plugins = "[rabbitmq_management]." if self.management else "[]."
        (self.base / "enabled_plugins").write_text(plugins + "\n")
        if os.geteuid() == 0:  # the Debian wrapper runs the node as the rabbitmq user
            for path in (self.base, *self.base.rglob("*")):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    def start(self) -> None:
        """Starts the node (returns at once; `wait_ready` waits for it)."""
        plain = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        exe = str(plain) if os.geteuid() != 0 and plain.exists() else "rabbitmq-server"
        with self.log.open("ab") as out:
            # fmt: off
            self.proc = subprocess.Popen(
                [exe], env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.base,
            )
            # fmt: on

    def wait_ready(self, timeout: float) -> None:
        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServicesError(f"{self} exited while starting; see {self.log}")
            return self.answers()

        wait_until(listening, timeout, str(self), str(self.log))
        self.ctl("await_startup", timeout=timeout)

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        """rabbitmqctl against this node; its output (stdout, then stderr)."""
        result = run_command(rabbitmqctl(), "-n", self.name, *args, env=self.env, timeout=timeout)
        output = (result.stdout + result.stderr).strip()
        if check and result.returncode != 0:
            raise ServicesError(f"rabbitmqctl -n {self.name} {' '.join(args)} failed: {output}")
        return output

    def cluster_status(self) -> dict[str, Any]:
        """`rabbitmqctl cluster_status` as JSON; {} when the node does not answer."""
        result = run_command(
            rabbitmqctl(), "-n", self.name, "cluster_status", "--formatter", "json",
            env=self.env, timeout=30,
        )  # fmt: skip
        if result.returncode != 0:
            return {}
        try:
            status: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            return {}
        return status

    def join(self, seed: str) -> None:
        """Makes this (fresh or stray) node a member of `seed`'s cluster."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", seed)
        self.ctl("start_app", timeout=120)

    def shut_down(self, pid: int) -> bool:
        result = run_command(rabbitmqctl(), "-n", self.name, "stop", env=self.env, timeout=90)
        if result.returncode == 0 and wait_exit(pid, 60):
            return True
        logger.warning("rabbitmqctl stop %s: %s", self.name, result.stderr.strip())
        return False


class RedisServer(Server):
    """A Redis server (primary or replica) with its own directory, AOF on."""

    kind = "redis"

    def __init__(self, state_dir: Path, port: int) -> None:
        self.port = port
        self.dir = self.home = state_dir / f"redis-{port}"

    def __str__(self) -> str:
        return f"Redis 127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def conf(self) -> Path:
        return self.dir / "redis.conf"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def daemon_lines(self) -> list[str]:
        """What every server of the stack is told first: loopback, its port and files."""
        return [
            "bind 127.0.0.1",
            f"port {self.port}",
            "daemonize yes",
            f"dir {self.dir}",
            f"pidfile {self.pidfile}",
            f"logfile {self.log}",
        ]

    def write_config(self, primary_port: int, memory: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.conf.exists():
            return
        lines = [
            *self.daemon_lines(),
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {memory}",
            "maxmemory-policy noeviction",  # an evicted inbox would be a lost message
        ]
        if self.port != primary_port:
            lines.append(f"replicaof 127.0.0.1 {primary_port}")
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        result = run_command("redis-server", str(self.conf))
        if result.returncode != 0:
            raise ServicesError(f"{self} failed to start: {result.stderr or result.stdout}")

    def command(self, *args: str, timeout: float = 5) -> str:
        result = run_command(
            "redis-cli", "-h", LOOPBACK, "-p", str(self.port), *args, timeout=timeout
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    def info(self, section: str = "replication") -> dict[str, str]:
        pairs = (line.partition(":") for line in self.command("info", section).splitlines())
        return {k: v.strip() for k, sep, v in pairs if sep}

    # stop(): SIGTERM is Redis's SHUTDOWN, which flushes the AOF


class Sentinel(RedisServer):
    """A Sentinel watching the primary under the layout's service name."""

    kind = "sentinel"

    def __str__(self) -> str:
        return f"Sentinel 127.0.0.1:{self.port}"

    def __init__(self, state_dir: Path, port: int) -> None:
        super().__init__(state_dir, port)
        self.dir = self.home = state_dir / f"sentinel-{port}"

    @property
    def conf(self) -> Path:
        return self.dir / "sentinel.conf"

    def write_sentinel_config(
        self, service: str, primary_port: int, quorum: int, down_after_ms: int, failover_ms: int
    ) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.conf.exists():
            return
        self.conf.write_text(
            "\n".join(
                [
                    *self.daemon_lines(),
                    f"sentinel monitor {service} 127.0.0.1 {primary_port} {quorum}",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} {failover_ms}",
                    f"sentinel parallel-syncs {service} 1",
                ]
            )
            + "\n"
        )

    def start(self) -> None:
        result = run_command("redis-server", str(self.conf), "--sentinel")
        if result.returncode != 0:
            raise ServicesError(f"{self} failed to start: {result.stderr or result.stdout}")

    def master(self, service: str) -> dict[str, str]:
        """SENTINEL MASTER as a dict ({} when this Sentinel does not answer)."""
        flat = self.command("sentinel", "master", service).splitlines()
        return dict(zip(flat[::2], flat[1::2], strict=False))
