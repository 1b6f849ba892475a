"""Where a connection travels: settings that relax TLS are allowed without a flag only when no
network carries the admin password."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """This machine's loopback address: no network carries the admin password."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
