"""RabbitMQ's management HTTP API, for the vhost chores of `msgbus services` (tests and the
benchmark make a vhost each): a call takes milliseconds where `rabbitmqctl` boots an Erlang
VM each time (~1 s, three of them per vhost). Where the API does not answer, or refuses,
the caller falls back on `rabbitmqctl`.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlparse

logger = logging.getLogger(__name__)

TIMEOUT = 10.0


def management_port(amqp_port: int) -> int:
    """Where `msgbus services up` puts the management listener for a node on this port."""
    return 15672 if amqp_port == 5672 else amqp_port + 10000


def call(broker_url: str, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    """The HTTP status of one API call for the URL's node and user; 0 when it does not answer."""
    url = urlparse(broker_url)
    host = url.hostname or "127.0.0.1"
    port = management_port(url.port or 5672)
    credentials = f"{url.username or 'guest'}:{url.password or 'guest'}".encode()
    request = urllib.request.Request(
        f"http://{host}:{port}/api/{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": "Basic " + base64.b64encode(credentials).decode(),
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError) as exc:  # refused, timed out, not HTTP
        logger.debug("management API on %s:%d did not answer: %s", host, port, exc)
        return 0


def add_vhost(broker_url: str, vhost: str, user: str) -> bool:
    """Creates the vhost (fine if it exists) with full permissions for `user`; False when
    the API could not do it."""
    name = quote(vhost, safe="")
    if call(broker_url, "PUT", f"vhosts/{name}") not in (201, 204):
        return False
    grant = {"configure": ".*", "write": ".*", "read": ".*"}
    return call(broker_url, "PUT", f"permissions/{name}/{quote(user, safe='')}", grant) in (
        201,
        204,
    )


def delete_vhost(broker_url: str, vhost: str) -> bool:
    """Deletes the vhost (fine if it does not exist); False when the API could not say."""
    return call(broker_url, "DELETE", f"vhosts/{quote(vhost, safe='')}") in (204, 404)
