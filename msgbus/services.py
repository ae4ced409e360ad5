"""Local development Redis and RabbitMQ: `msgbus services up|down|status`.

Reuses whatever already answers on the configured URLs; otherwise starts servers bound to
127.0.0.1 (installing the Debian packages first when missing and running as root) and
keeps their data, logs and pid files in the state dir. `down` stops only what `up` started.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import amqp.exceptions
import redis
from kombu.connection import Connection
from kombu.exceptions import OperationalError

from bus.errors import ServicesError
from bus.redis_conn import connect
from bus.settings import Settings
from msgbus import management

logger = logging.getLogger(__name__)

RABBIT_NODE = "msgbus@localhost"
LOCAL = ("127.0.0.1", "localhost")
GET_THEM = (
    "install them with `sudo apt-get install redis-server rabbitmq-server`, or run "
    "`docker compose up -d redis rabbitmq`"
)


@dataclass
class ServiceStatus:
    name: str
    url: str
    running: bool
    managed: bool
    detail: str = ""


def default_state_dir() -> Path:
    return Settings().state_dir


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def safe_url(url: str) -> str:
    password = urlparse(url).password
    return url.replace(f":{password}@", ":***@") if password else url


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_command(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def live_pid(pidfile: Path) -> int | None:
    """The pid in pidfile if that process is alive."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def wait_until(ready: Callable[[], bool], timeout: float, what: str, logs: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise ServicesError(f"{what} did not answer within {timeout:.0f}s; see {logs}")
        time.sleep(0.25)


@contextmanager
def _no_autostart() -> Iterator[None]:
    """Keeps apt's maintainer scripts from starting the packaged services (on 0.0.0.0)."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def ensure_installed(exe: str) -> None:
    """exe is also the Debian package's name (redis-server, rabbitmq-server)."""
    if shutil.which(exe) or Path("/usr/sbin", exe).exists():
        return
    if os.geteuid() != 0:
        raise ServicesError(f"{exe} is not installed; {GET_THEM}")
    logger.warning("%s is not installed: installing it with apt-get", exe)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    with _no_autostart():
        run_command("apt-get", "update", "-qq", env=env, timeout=600)
        result = run_command("apt-get", "install", "-y", "-qq", exe, env=env, timeout=900)
    if result.returncode != 0:
        raise ServicesError(f"apt-get install {exe} failed: {result.stderr[-500:]}; {GET_THEM}")


def multi_host(url: str) -> bool:
    """A `;`-separated broker list or a Sentinel URL: servers on several hosts, which
    `services up` checks but never starts (`msgbus services cluster up` starts local ones)."""
    return ";" in url or url.startswith("redis+sentinel://")


def _redis_ready(url: str) -> bool:
    try:
        connect(url, socket_timeout=2).ping()
    except (redis.ConnectionError, redis.TimeoutError):  # incl. still loading the AOF
        return False
    except redis.RedisError as exc:  # it answered (e.g. wrong password): the server is up
        logger.warning("Redis at %s answers with an error: %s", safe_url(url), exc)
    return True


def _amqp_ready(url: str) -> bool:
    if not any(answers(*_host_port(one, 5672)) for one in url.split(";")):
        return False
    try:
        # A list fails over along itself (kombu), as the bus's own connections do.
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5)
    except (OperationalError, OSError):
        return False
    except amqp.exceptions.AMQPError as exc:  # it answered (bad vhost/login): the server is up
        logger.warning("RabbitMQ at %s answers with an error: %s", safe_url(url), exc)
    return True


def _start_redis(url: str, port: int, state: Path, timeout: float) -> None:
    ensure_installed("redis-server")
    data = state / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log = data / "redis.log"
    # fmt: off
    result = run_command(
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "yes",
        "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        "--pidfile", str(data / "redis.pid"), "--logfile", str(log),
        "--maxmemory-policy", "noeviction",
    )
    # fmt: on
    if result.returncode != 0:
        raise ServicesError(f"redis-server failed to start: {result.stderr or result.stdout}")
    (data / "port").write_text(str(port))
    wait_until(partial(_redis_ready, url), timeout, "Redis", str(log))


def _rabbit_node(port: int) -> str:
    return RABBIT_NODE if port == 5672 else f"msgbus{port}@localhost"


def rabbit_base(state: Path, node: str, subdir: str = "rabbitmq") -> Path:
    """Where the node keeps its files (state/subdir). Debian's rabbitmq-server switches root
    to the rabbitmq user, which cannot enter /root (or a 0700 home): use /var/lib/rabbitmq
    then."""
    if os.geteuid() != 0:
        return state / subdir
    existing = [p for p in (state, *state.parents) if p.exists()]
    if all(p.stat().st_mode & 0o001 for p in existing):
        return state / subdir
    return Path("/var/lib/rabbitmq") / node.split("@")[0]


def rabbit_env(port: int, node: str, base: Path) -> dict[str, str]:
    return os.environ | {
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        # Erlang distribution (rabbitmqctl's channel) on loopback too.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def rabbitmqctl() -> str:
    """As root the Debian wrapper (runs as rabbitmq, with its Erlang cookie); otherwise the
    plain script (the wrapper refuses other users), using $HOME/.erlang.cookie."""
    plain = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
    return str(plain) if os.geteuid() != 0 and plain.exists() else "rabbitmqctl"


def _start_rabbitmq(url: str, port: int, state: Path, timeout: float) -> None:
    ensure_installed("rabbitmq-server")
    node = _rabbit_node(port)
    base = rabbit_base(state, node)
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    mp = management.management_port(port)
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {mp}\n"
    )
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    if os.geteuid() == 0:
        for path in (base, *base.rglob("*")):
            shutil.chown(path, "rabbitmq", "rabbitmq")
    env = rabbit_env(port, node, base)
    out_log = base / "log" / "server.out"
    logs = f"{base / 'log' / (node + '.log')} and {out_log}"
    plain = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    exe = str(plain) if os.geteuid() != 0 and plain.exists() else "rabbitmq-server"
    with out_log.open("ab") as out:
        # fmt: off
        proc = subprocess.Popen(
            [exe], env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=base,
        )
        # fmt: on
    marker = state / "rabbitmq"
    marker.mkdir(parents=True, exist_ok=True)
    (marker / "node").write_text(f"{node}\n{base}\n")
    (marker / "port").write_text(str(port))

    def listening() -> bool:
        if proc.poll() is not None:
            raise ServicesError(f"rabbitmq-server exited while starting; see {logs}")
        return answers("127.0.0.1", port)

    wait_until(listening, timeout, "RabbitMQ", logs)
    run_command(rabbitmqctl(), "-n", node, "await_startup", env=env, timeout=timeout)
    wait_until(partial(_amqp_ready, url), timeout, "RabbitMQ", logs)


def _rabbit_started(state: Path) -> tuple[int, str, Path] | None:
    """(port, node, base) of the node `up` started from this state dir, if any."""
    marker = state / "rabbitmq"
    try:
        port = int((marker / "port").read_text())
    except (OSError, ValueError):
        return None
    try:
        node, base = (marker / "node").read_text().split("\n")[:2]
    except (OSError, ValueError):  # written by an older version
        node = _rabbit_node(port)
        base = str(rabbit_base(state, node))
    return port, node, Path(base)


def _managed(state: Path, name: str, port: int) -> int | None:
    """The pid of the server `up` started on this port from this state dir, if alive."""
    if name == "redis":
        data = state / "redis"
        marker = data / "port"
        ok = marker.exists() and marker.read_text().strip() == str(port)
        return live_pid(data / "redis.pid") if ok else None
    started = _rabbit_started(state)
    if not started or started[0] != port:
        return None
    return live_pid(started[2] / "mnesia" / f"{started[1]}.pid")


def _status(name: str, url: str, state: Path, ready: Callable[[str], bool]) -> ServiceStatus:
    if multi_host(url):
        return ServiceStatus(name, safe_url(url), ready(url), False, "several hosts")
    port = _host_port(url, 6379 if name == "redis" else 5672)[1]
    pid = _managed(state, name, port)
    detail = f"pid {pid}" if pid else "not started by msgbus"
    return ServiceStatus(name, safe_url(url), ready(url), pid is not None, detail)


def services_up(
    redis_url: str, broker_url: str, state_dir: Path | None = None, timeout: float = 90
) -> list[ServiceStatus]:
    """Makes Redis and RabbitMQ answer on these URLs, starting local ones where nothing does."""
    state = state_dir or default_state_dir()
    out = []
    services = [
        ("redis", redis_url, 6379, _redis_ready, _start_redis),
        ("rabbitmq", broker_url, 5672, _amqp_ready, _start_rabbitmq),
    ]
    for name, url, default_port, ready, start in services:
        if multi_host(url):
            status = _status(name, url, state, ready)
            if not status.running:
                raise ServicesError(
                    f"{name} at {safe_url(url)} does not answer on any of its hosts (several "
                    "hosts: not started here; `msgbus services cluster up` starts a local stack)"
                )
            status.detail = "already running; " + status.detail
            out.append(status)
            continue
        host, port = _host_port(url, default_port)
        if answers(host, port):
            wait_until(partial(ready, url), timeout, name, f"the server on {host}:{port}")
            status = _status(name, url, state, ready)
            status.detail = "already running; " + status.detail
        elif host not in LOCAL:
            raise ServicesError(f"{name} at {host}:{port} does not answer (not local: not started)")
        else:
            logger.info("starting %s on 127.0.0.1:%d", name, port)
            started = time.monotonic()
            start(url, port, state, timeout)
            status = _status(name, url, state, ready)
            status.detail = f"started in {time.monotonic() - started:.1f}s; " + status.detail
        out.append(status)
    return out


def services_status(
    redis_url: str, broker_url: str, state_dir: Path | None = None
) -> list[ServiceStatus]:
    state = state_dir or default_state_dir()
    return [
        _status("redis", redis_url, state, _redis_ready),
        _status("rabbitmq", broker_url, state, _amqp_ready),
    ]


def wait_exit(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not Path(f"/proc/{pid}").exists()


def services_down(state_dir: Path | None = None) -> list[ServiceStatus]:
    """Stops the servers `services_up` started from this state dir; never any other."""
    state = state_dir or default_state_dir()
    out = []
    marker = state / "redis" / "port"
    if marker.exists():
        port = int(marker.read_text().strip())
        pid = _managed(state, "redis", port)
        if pid:  # SIGTERM = SHUTDOWN: flushes the AOF; no RDB (save "")
            os.kill(pid, signal.SIGTERM)
            wait_exit(pid)
        marker.unlink()
        detail = "stopped" if pid else "was not running"
        out.append(ServiceStatus("redis", f"redis://127.0.0.1:{port}", False, True, detail))
    started = _rabbit_started(state)
    if started:
        port, node, base = started
        pid = _managed(state, "rabbitmq", port)
        if pid:
            result = run_command(
                rabbitmqctl(), "-n", node, "stop", env=rabbit_env(port, node, base)
            )
            if result.returncode != 0 or not wait_exit(pid):
                logger.warning("rabbitmqctl stop: %s", (result.stderr or result.stdout).strip())
                os.kill(pid, signal.SIGTERM)
        (state / "rabbitmq" / "port").unlink()
        detail = "stopped" if pid else "was not running"
        out.append(ServiceStatus("rabbitmq", f"amqp://127.0.0.1:{port}", False, True, detail))
    return out


def node_args(state_dir: Path | None = None, port: int | None = None) -> list[str]:
    """rabbitmqctl's node arguments: our node if `up` started one (on port), else none."""
    started = _rabbit_started(state_dir or default_state_dir())
    if started and (port is None or started[0] == port):
        return ["-n", started[1]]
    return []


def run_rabbitmqctl(broker_url: str, state_dir: Path | None, *args: str) -> tuple[bool, str]:
    node = node_args(state_dir, _host_port(broker_url, 5672)[1])
    result = run_command(rabbitmqctl(), *node, *args, timeout=60)
    return result.returncode == 0, (result.stderr + result.stdout).strip()


def ensure_vhost(broker_url: str, vhost: str, state_dir: Path | None = None) -> None:
    """Creates a vhost with full permissions for the URL's user (tests isolate with these)."""
    user = urlparse(broker_url).username or "guest"
    if management.add_vhost(broker_url, vhost, user):
        return
    ok, output = run_rabbitmqctl(broker_url, state_dir, "add_vhost", vhost)
    if not ok and "already exists" not in output:
        raise ServicesError(f"rabbitmqctl add_vhost {vhost} failed: {output}")
    ok, output = run_rabbitmqctl(
        broker_url, state_dir, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"
    )
    if not ok:
        raise ServicesError(f"rabbitmqctl set_permissions -p {vhost} {user} failed: {output}")


def delete_vhost(broker_url: str, vhost: str, state_dir: Path | None = None) -> None:
    """Deletes a vhost and everything in it; a vhost that does not exist is fine."""
    if management.delete_vhost(broker_url, vhost):
        return
    ok, output = run_rabbitmqctl(broker_url, state_dir, "delete_vhost", vhost)
    if not ok and "does not exist" not in output and "not found" not in output:
        logger.warning("rabbitmqctl delete_vhost %s failed: %s", vhost, output)
