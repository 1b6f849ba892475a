"""Audit events and outcomes on a Pub/Sub topic (optional): buffered per message and published
with `flush()` before the worker answers, so a failed publish fails the task, which is then
delivered again (events at least once; each carries ids for the receiver to deduplicate).

Published through Google's discovery client for Pub/Sub (REST), like the IAM target's calls.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from jitc.endpoints import https_or_loopback
from jitc.errors import ConfigError
from jitc.google_credentials import service_account
from jitc.models import AuditEvent, Outcome

MAX_PER_CALL = 1000  # Pub/Sub's limit of messages per publish request


def pubsub_service() -> Any:
    from jitc.templates import discovery

    endpoint = os.environ.get("JITC_GCP_ENDPOINT_PUBSUB")
    # A Private Service Connect endpoint, or a local server in tests: the bearer token goes
    # there, so never in clear text off this machine.
    if endpoint and not https_or_loopback(endpoint):
        raise ConfigError("JITC_GCP_ENDPOINT_PUBSUB: https only")
    # The function's one set of credentials (cloud-platform covers Pub/Sub): no token of its own.
    credentials = service_account()
    return discovery.build(
        "pubsub", "v1", credentials, {"api_endpoint": endpoint} if endpoint else None
    )


class PubSubSink:
    def __init__(self, service: Any, topic: str) -> None:
        self._service = service
        self.topic = topic
        self._messages: list[dict[str, Any]] = []

    def _add(self, kind: str, doc: dict[str, Any]) -> None:
        attributes = {"type": kind}
        for key in ("request_id", "grant_id", "integration"):
            if doc.get(key):
                attributes[key] = str(doc[key])
        data = json.dumps(doc, separators=(",", ":")).encode()
        self._messages.append({"data": base64.b64encode(data).decode(), "attributes": attributes})

    def audit(self, event: AuditEvent) -> None:
        self._add("jitc.audit", event.model_dump(mode="json", exclude_none=True))

    def outcome(self, outcome: Outcome) -> None:
        # The sealed box only: plain credentials never leave the engine (it drops them too).
        doc = outcome.model_dump(mode="json", exclude_none=True, exclude={"credentials"})
        self._add("jitc.outcome", doc)

    def discard(self) -> None:
        self._messages.clear()

    def flush(self) -> None:
        while self._messages:
            chunk = self._messages[:MAX_PER_CALL]
            topics = self._service.projects().topics()
            topics.publish(topic=self.topic, body={"messages": chunk}).execute(num_retries=2)
            del self._messages[:MAX_PER_CALL]
