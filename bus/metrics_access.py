"""Who may scrape `/metrics` (the HTTP server's and the worker exporter's).

The series name agents and their inbox depths, which are not for anyone on the network.
With `METRICS_TOKEN` set, a scrape carries `Authorization: Bearer <token>`. Without it,
only a scrape from this machine (a loopback peer) is answered: a server bound to
0.0.0.0 for its MCP clients does not hand its agents' names to every host that can reach
it.
"""

from __future__ import annotations

import hmac
import ipaddress

from pydantic import SecretStr

NEEDS_TOKEN = "metrics need 'Authorization: Bearer <MESSAGE_BUS_METRICS_TOKEN>'"
LOCAL_ONLY = (
    "metrics without MESSAGE_BUS_METRICS_TOKEN are served to this machine only: set it, "
    "then scrape with 'Authorization: Bearer <token>'"
)


def is_loopback(peer: str | None) -> bool:
    """Whether a peer address (IPv4, IPv6 or IPv4-mapped IPv6) is this machine's loopback."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def metrics_refusal(
    token: SecretStr | None, authorization: str | None, peer: str | None
) -> tuple[int, str] | None:
    """(HTTP status, why) when this scrape is refused; None when it may have the series."""
    if token is not None:
        expected = f"Bearer {token.get_secret_value()}".encode()
        if not hmac.compare_digest((authorization or "").encode(), expected):
            return 401, NEEDS_TOKEN
        return None
    if not is_loopback(peer):
        return 403, LOCAL_ONLY
    return None
