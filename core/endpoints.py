"""Where the connector may send a request that carries a credential or a secret: https
anywhere; plain http only to this machine, judged on the parsed host name exactly, so that
`http://localhost.evil.example` and `http://127.0.0.1:@evil.example` are refused."""

from __future__ import annotations

import urllib.parse

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def https_or_loopback(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        hostname, _ = parts.hostname, parts.port
    except ValueError:
        return False
    if not hostname or parts.username is not None or parts.password is not None:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and hostname in LOOPBACK_HOSTS)
