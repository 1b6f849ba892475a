"""The request queue on SQS. On a FIFO queue the group is the grant id, so every message about
one grant (grant, revoke, expiry) is delivered in the order it was sent; see docs/aws.md."""

from __future__ import annotations

import hashlib
from typing import Any


class SqsQueue:
    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")

    def enqueue(self, message: str, group: str) -> None:
        params: dict[str, Any] = {"QueueUrl": self.queue_url, "MessageBody": message}
        if self.fifo:
            params["MessageGroupId"] = group
            # The same signed message sent twice within SQS's five minutes is delivered once.
            params["MessageDeduplicationId"] = hashlib.sha256(message.encode()).hexdigest()
        self._client.send_message(**params)
