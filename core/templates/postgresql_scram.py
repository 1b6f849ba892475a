"""SCRAM-SHA-256 verifiers computed in this process (RFC 5802, RFC 7677; PostgreSQL's format).

PBKDF2 rounds exist to slow down guessing a human password from a stolen verifier. Our
passwords are 256 random bits (or 192 without a label key), so guessing is out of reach at any
round count; one round keeps a grant's cost, on our side and in the server's own check of the
verifier at CREATE ROLE, at the server's floor. The clear password never reaches the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 1


def scram_verifier(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as PostgreSQL stores it.

    The password must already be ASCII without control characters (ours are base64url), so
    SASLprep leaves it unchanged.
    """
    if not password.isascii() or not password.isprintable():
        raise ValueError("generated passwords are printable ASCII")
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
