"""Local development Redis and RabbitMQ: `msgbus services up|down|status`.

Reuses whatever already answers on the configured URLs; otherwise starts servers bound to
127.0.0.1 (installing the Debian packages first when missing and running as root) and
keeps their data, logs and pid files in the state dir. `down` stops only what `up` started.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bus.errors import BusError

logger = logging.getLogger(__name__)

RABBIT_NODE = "msgbus@localhost"
GET_THEM = (
    "install them with `sudo apt-get install redis-server rabbitmq-server`, or run "
    "`docker compose up -d redis rabbitmq`"
)


class ServicesError(BusError):
    code = "services"
    exit_code = 10


@dataclass
class ServiceStatus:
    name: str
    url: str
    running: bool
    managed: bool
    detail: str = ""


def default_state_dir() -> Path:
    return Path(os.environ.get("MESSAGE_BUS_STATE_DIR") or Path.home() / ".local/state/msgbus")


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def _answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _ensure_installed(binaries: dict[str, str]) -> None:
    """binaries: executable -> Debian package."""
    missing = {
        exe: pkg
        for exe, pkg in binaries.items()
        if not shutil.which(exe) and not Path(f"/usr/sbin/{exe}").exists()
    }
    if not missing:
        return
    if os.geteuid() != 0:
        raise ServicesError(f"{', '.join(missing)} not installed; {GET_THEM}")
    logger.warning("installing %s", " ".join(missing.values()))
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-qq", env=env, timeout=600)
    result = _run("apt-get", "install", "-y", "-qq", *missing.values(), env=env, timeout=900)
    if result.returncode != 0:
        raise ServicesError(f"apt-get install failed: {result.stderr[-500:]}; {GET_THEM}")


def _wait(check: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise ServicesError(f"{what} did not answer within {timeout:.0f}s; see {log}")


def _start_redis(port: int, state: Path, timeout: float) -> None:
    _ensure_installed({"redis-server": "redis-server"})
    data = state / "redis"
    data.mkdir(parents=True, exist_ok=True)
    log = data / "redis.log"
    result = _run(
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--daemonize",
        "yes",
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--pidfile",
        str(data / "redis.pid"),
        "--logfile",
        str(log),
        "--maxmemory-policy",
        "noeviction",
    )
    if result.returncode != 0:
        raise ServicesError(f"redis-server failed to start: {result.stderr or result.stdout}")
    (data / "port").write_text(str(port))
    _wait(lambda: _answers("127.0.0.1", port), timeout, "Redis", log)


def _rabbit_base(state: Path) -> Path:
    # rabbitmq-server drops root privileges to the rabbitmq user, which cannot enter
    # /root: as root keep the node's files where that user can write.
    if os.geteuid() == 0 and str(state).startswith("/root"):
        return Path("/var/lib/rabbitmq/msgbus")
    return state / "rabbitmq"


def _rabbit_env(port: int, state: Path) -> dict[str, str]:
    base = _rabbit_base(state)
    return os.environ | {
        "RABBITMQ_NODENAME": RABBIT_NODE,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        # Keep Erlang distribution on loopback too.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def _start_rabbitmq(port: int, state: Path, timeout: float) -> None:
    _ensure_installed({"rabbitmq-server": "rabbitmq-server"})
    base = _rabbit_base(state)
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = 15672\n"
    )
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    if os.geteuid() == 0:
        shutil.chown(base, "rabbitmq", "rabbitmq")
        for path in base.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
    env = _rabbit_env(port, state)
    log = base / "log" / "server.out"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["rabbitmq-server"],
            env=env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=base,
        )

    def up_or_dead() -> bool:
        if proc.poll() is not None:
            raise ServicesError(f"rabbitmq-server exited at start; see {log}")
        return _answers("127.0.0.1", port)

    _wait(up_or_dead, timeout, "RabbitMQ", log)
    _run("rabbitmqctl", "-n", RABBIT_NODE, "await_startup", env=env, timeout=timeout)
    marker = state / "rabbitmq" / "port"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(port))


def services_up(
    redis_url: str, broker_url: str, state_dir: Path | None = None, timeout: float = 90
) -> list[ServiceStatus]:
    state = state_dir or default_state_dir()
    statuses = []
    rhost, rport = _host_port(redis_url, 6379)
    if _answers(rhost, rport):
        statuses.append(ServiceStatus("redis", redis_url, True, _managed(state, "redis", rport)))
    elif rhost not in ("127.0.0.1", "localhost"):
        raise ServicesError(f"Redis at {rhost}:{rport} does not answer (not local: not started)")
    else:
        _start_redis(rport, state, timeout)
        statuses.append(ServiceStatus("redis", redis_url, True, True, "started"))
    bhost, bport = _host_port(broker_url, 5672)
    if _answers(bhost, bport):
        statuses.append(
            ServiceStatus("rabbitmq", _safe(broker_url), True, _managed(state, "rabbitmq", bport))
        )
    elif bhost not in ("127.0.0.1", "localhost"):
        raise ServicesError(f"RabbitMQ at {bhost}:{bport} does not answer (not local: not started)")
    else:
        _start_rabbitmq(bport, state, timeout)
        statuses.append(ServiceStatus("rabbitmq", _safe(broker_url), True, True, "started"))
    return statuses


def _managed(state: Path, name: str, port: int) -> bool:
    marker = state / name / "port"
    return marker.exists() and marker.read_text().strip() == str(port)


def _safe(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def services_status(
    redis_url: str, broker_url: str, state_dir: Path | None = None
) -> list[ServiceStatus]:
    state = state_dir or default_state_dir()
    rhost, rport = _host_port(redis_url, 6379)
    bhost, bport = _host_port(broker_url, 5672)
    return [
        ServiceStatus("redis", redis_url, _answers(rhost, rport), _managed(state, "redis", rport)),
        ServiceStatus(
            "rabbitmq",
            _safe(broker_url),
            _answers(bhost, bport),
            _managed(state, "rabbitmq", bport),
        ),
    ]


def services_down(state_dir: Path | None = None) -> list[ServiceStatus]:
    state = state_dir or default_state_dir()
    out = []
    marker = state / "redis" / "port"
    if marker.exists():
        port = marker.read_text().strip()
        _run("redis-cli", "-h", "127.0.0.1", "-p", port, "shutdown")
        marker.unlink()
        out.append(ServiceStatus("redis", f"redis://127.0.0.1:{port}", False, True, "stopped"))
    marker = state / "rabbitmq" / "port"
    if marker.exists():
        port = int(marker.read_text().strip())
        _run("rabbitmqctl", "-n", RABBIT_NODE, "stop", env=_rabbit_env(port, state))
        marker.unlink()
        out.append(ServiceStatus("rabbitmq", f"amqp://127.0.0.1:{port}", False, True, "stopped"))
    return out


def _node_for(state_dir: Path | None = None) -> list[str]:
    state = state_dir or default_state_dir()
    return ["-n", RABBIT_NODE] if (state / "rabbitmq" / "port").exists() else []


def ensure_vhost(broker_url: str, vhost: str, state_dir: Path | None = None) -> None:
    """Creates a vhost with full permissions for the URL's user (tests isolate with these)."""
    user = urlparse(broker_url).username or "guest"
    node = _node_for(state_dir)
    result = _run("rabbitmqctl", *node, "add_vhost", vhost)
    if result.returncode != 0 and "already exists" not in result.stderr + result.stdout:
        raise ServicesError(f"rabbitmqctl add_vhost {vhost} failed: {result.stderr.strip()}")
    result = _run("rabbitmqctl", *node, "set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    if result.returncode != 0:
        raise ServicesError(f"rabbitmqctl set_permissions failed: {result.stderr.strip()}")


def delete_vhost(broker_url: str, vhost: str, state_dir: Path | None = None) -> None:
    _run("rabbitmqctl", *_node_for(state_dir), "delete_vhost", vhost)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bus.services")
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    redis_url = os.environ.get("MESSAGE_BUS_REDIS_URL", "redis://127.0.0.1:6379/0")
    broker_url = os.environ.get("MESSAGE_BUS_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    try:
        if args.action == "up":
            statuses = services_up(redis_url, broker_url)
        elif args.action == "down":
            statuses = services_down()
        else:
            statuses = services_status(redis_url, broker_url)
    except BusError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    for s in statuses:
        print(
            f"{s.name}: {'running' if s.running else 'stopped'} {s.url}"
            + (" (managed)" if s.managed else "")
            + (f" {s.detail}" if s.detail else "")
        )
    return 0 if args.action != "status" or all(s.running for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
