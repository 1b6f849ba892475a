"""`aws-sm:NAME-OR-ARN[#field]`: secrets read from AWS Secrets Manager at the moment of use.

Nothing is cached here: the engine keeps a value for one batch and drops it. Errors carry the
reference and AWS's error code, never the value or AWS's message (which may quote the request).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from jitc.errors import SecretError
from jitc.secrets import Secret, SecretRef, pick_field

SCHEME = "aws-sm"


class SecretsManagerStore:
    def __init__(self, client: Any) -> None:
        self._client = client

    def resolve(self, ref: SecretRef) -> Secret:
        found = self._read(ref)
        if found is None:
            raise SecretError(f"secret {ref}: Secrets Manager answered ResourceNotFoundException")
        return found

    def candidates(self, ref: SecretRef) -> list[Secret]:
        """AWSCURRENT read afresh, then AWSPENDING when a rotation has one: between its
        setSecret and finishSecret (or after a rotation stopped there) the target already
        takes the pending value while AWSCURRENT still holds the old one."""
        # AWSPENDING first: finishSecret moves AWSCURRENT, then takes AWSPENDING off, so read
        # in this order one of the two reads sees the new value whenever finishSecret runs
        # (AWSCURRENT read just before it and AWSPENDING just after would both be old or gone).
        try:
            pending = self._read(ref, "AWSPENDING")
        except SecretError:  # a pending value without the field: the current one stands alone
            pending = None
        found = [self.resolve(ref)]
        if pending is not None and pending.reveal() != found[0].reveal():
            found.append(pending)
        return found

    def _read(self, ref: SecretRef, stage: str | None = None) -> Secret | None:
        if ref.scheme != SCHEME:
            raise SecretError(f"secret {ref}: not a Secrets Manager reference")
        try:
            # AWSCURRENT is the default; named, so no service-side default can differ.
            response = self._client.get_secret_value(
                SecretId=ref.location, VersionStage=stage or "AWSCURRENT"
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            if code == "ResourceNotFoundException":
                return None  # no such secret, or no version in that stage
            raise SecretError(f"secret {ref}: Secrets Manager answered {code}") from None
        except BotoCoreError as exc:
            reason = type(exc).__name__
            raise SecretError(f"secret {ref}: Secrets Manager unreachable ({reason})") from None
        raw = response.get("SecretString")
        if raw is None:
            binary = response.get("SecretBinary")
            try:
                raw = bytes(binary).decode("utf-8") if binary is not None else None
            except UnicodeDecodeError:
                raw = None
        if raw is None:
            raise SecretError(f"secret {ref}: has no text value")
        return pick_field(ref, raw)
