"""Whether a TCP address is free to listen on, asked before anything binds it.

Entry points ask first so that a taken port is one clear refusal at start, not a child
that loops on it or (with SO_REUSEPORT) a server that joins another one's address.
"""

from __future__ import annotations

import socket


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_refusal(host: str, port: int) -> OSError | None:
    """Why a listener could not bind `host`:`port` now, or None when it could. The probe
    sets SO_REUSEADDR as listeners do, so connections of an earlier server still in
    TIME_WAIT do not count as the port being taken."""
    with socket.socket(family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None
