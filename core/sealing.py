"""Credentials travel sealed to the requester's X25519 key (libsodium sealed boxes, via PyNaCl).

Only the holder of the private key can open them: not the control plane, the queue or the logs.
"""

from __future__ import annotations

import base64
import functools
import json

from nacl.public import PrivateKey, PublicKey, SealedBox


def seal(credentials: dict[str, str], public_key_b64: str) -> str:
    box = _box(public_key_b64)
    return base64.b64encode(box.encrypt(json.dumps(credentials).encode())).decode()


@functools.lru_cache(maxsize=256)
def _box(public_key_b64: str) -> SealedBox[PublicKey]:
    # A requester's public key, parsed once: a sealed box holds no state between messages
    # (each encryption makes its own ephemeral key pair).
    return SealedBox(PublicKey(base64.b64decode(public_key_b64)))


def unseal(sealed_b64: str, private_key_b64: str) -> dict[str, str]:
    box = SealedBox(PrivateKey(base64.b64decode(private_key_b64)))
    opened: dict[str, str] = json.loads(box.decrypt(base64.b64decode(sealed_b64)))
    return opened


def box_keypair() -> tuple[str, str]:
    """(private, public), base64."""
    key = PrivateKey.generate()
    return (
        base64.b64encode(bytes(key)).decode(),
        base64.b64encode(bytes(key.public_key)).decode(),
    )
