"""What a template supplies to join the contract suite, and the engine the suite drives.

A target is a small class: how to reach its server, which catalog integration to use, how to log
in as a granted principal, one allowed and one denied operation, how to tell whether a live
connection still works, and how to make a principal the connector did not create. Everything
else (the engine, the clock, the requests, the sealed credentials) is shared here.

To add a template: write `contract_<kind>.py` with a class implementing `Target`, and list it in
`TARGETS` in this folder's conftest.py.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from jitc.catalog import Catalog, parse_catalog
from jitc.engine import Engine
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.models import AccessRequest, Outcome
from jitc.ports import ExpiryScheduler
from jitc.sealing import box_keypair, unseal
from jitc.secrets import EnvSecretStore, SecretStores

BOX_PRIVATE, BOX_PUBLIC = box_keypair()
# One per run: concurrent runs on one server keep apart by it.
RUN = secrets.token_hex(3)
LABEL_KEY = f"label-key-{secrets.token_hex(16)}"


class Target(Protocol):
    """One template on its real server, as the contract suite sees it."""

    kind: str
    integration: str
    # Whether a grant generates credentials (a password, a key) that reach the requester.
    generates_secrets: bool

    def identity(self, index: int = 0) -> dict[str, Any]:
        """The `identity` of the suite's grant requests; `index` tells apart grantees of one
        test (where a grant goes to an existing principal, each index names another one)."""

    def holder(self, outcome: Outcome, credentials: dict[str, str] | None) -> Any:
        """What the grantee holds after a grant, for `login`: its unsealed credentials, or
        (where a grant generates none) the principal it was given access to."""

    def made(self, outcome: Outcome) -> str:
        """The name, as `principals` lists it, of what a grant made in the target."""

    def broken_connection(self) -> dict[str, Any] | None:
        """Connection settings under which every operation fails (nothing listens there), or
        None where no setting can point the template at a dead server."""

    def reach(self) -> None:
        """Check the server answers and create what the grants need (databases, tables...);
        raise with a message naming the server and the variable that points at it."""

    def reset(self) -> None:
        """After each test: remove the principals this run made (the server's data stays)."""

    def cleanup(self) -> None:
        """At the end: remove everything this run made, and nothing else."""

    def permissions(self) -> dict[str, dict[str, Any]]:
        """Catalog permissions: `allowed` (the default grant) and `custom` (catalog-defined
        statements or rules with the same effect), both on `resource()`."""

    def admin_secret(self) -> str:
        """The admin credential the catalog's reference resolves to: a canary that must never
        appear in any output (a server that ignores it, such as trust auth, still gets it)."""

    def connection(self, **overrides: Any) -> dict[str, Any]:
        """The integration's catalog `connection` settings."""

    def renamed(self) -> dict[str, Any]:
        """Overrides of `connection` under which a new grant's principal would get another
        name (another prefix), within this run's namespace; {} where no setting names
        principals."""

    def resource(self) -> str:
        """The resource every grant of the suite asks for."""

    def hostile_resources(self) -> list[str]:
        """Resource names a catalog must refuse to offer (injection, system objects)."""

    def login(self, holder: Any) -> Any:
        """A live connection as the granted principal; raises when the login is refused."""

    def allowed(self, live: Any) -> None:
        """The operation the permission allows; raises if it is refused."""

    def denied(self, live: Any) -> bool:
        """Try the operation the permission does not allow; True when the target refused it."""

    def alive(self, live: Any) -> bool:
        """Whether a live connection still works (False once the target ended it)."""

    def close(self, live: Any) -> None: ...

    def principals(self) -> set[str]:
        """Principals with this run's prefix that exist in the target now."""

    def snapshot(self) -> Any:
        """Everything about principals the connector did not make, comparable with `==`."""

    def make_foreign(self, name: str) -> None:
        """Create a principal `name` as the company would, outside the connector."""

    def planned_principal(self, statements: list[str]) -> str:
        """The principal name a plan would create."""

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        """As a neighbour would: write, where this target keeps its labels, a label that claims
        principal `name` is the connector's grant `grant_id`, active and long expired, without
        the connector's key."""


def forged_label(grant_id: str, integration: str) -> str:
    """A label as the connector writes them, with a MAC made up by someone without its key."""
    body = json.dumps(
        {
            "v": 2,
            "kind": "grant",
            "grant_id": grant_id,
            "integration": integration,
            "permission": "allowed",
            "mode": "ephemeral",
            "expires_at": "2020-01-01T00:00:00+00:00",
            "state": "active",
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"jitc:{'A' * 43}.{body}"


@dataclass
class ContractEnv:
    """An engine on a target's real server, with a clock the test moves."""

    target: Target
    catalog: Catalog
    engine: Engine
    sink: MemorySink
    now: list[datetime]

    def request(self, action: str = "grant", **fields: Any) -> AccessRequest:
        doc: dict[str, Any] = {
            "request_id": fields.pop("request_id", f"r-{secrets.token_hex(4)}"),
            "action": action,
            "integration": self.target.integration,
        }
        if action == "grant":
            doc.update(
                permission="allowed",
                resources=[self.target.resource()],
                identity=self.target.identity(),
                duration="15m",
            )
        doc.update(fields)
        return parse_request(json.dumps(doc))

    def credentials(self, sealed: str | None) -> dict[str, str]:
        assert sealed is not None
        return unseal(sealed, BOX_PRIVATE)

    def holder(self, outcome: Outcome) -> Any:
        """What the grantee of this outcome holds (see `Target.holder`)."""
        if self.target.generates_secrets:
            return self.target.holder(outcome, self.credentials(outcome.sealed_credentials))
        assert outcome.sealed_credentials is None and outcome.credentials is None
        return self.target.holder(outcome, None)

    def can_login(self, holder: Any) -> bool:
        try:
            live = self.target.login(holder)
        except Exception:
            return False
        self.target.close(live)
        return True

    def usable(self, holder: Any) -> bool:
        """Log in and do the allowed operation: access as the grantee would have it."""
        try:
            live = self.target.login(holder)
        except Exception:
            return False
        try:
            self.target.allowed(live)
        except Exception:
            return False
        finally:
            self.target.close(live)
        return True

    def advance(self, delta: timedelta) -> None:
        self.now[0] += delta


def catalog_doc(
    target: Target,
    permissions: dict[str, dict[str, Any]] | None = None,
    connection: dict[str, Any] | None = None,
    label_key: bool = True,
) -> dict[str, Any]:
    return {
        "connector": {"label_key": "mem:label"} if label_key else {},
        "integrations": {
            target.integration: {
                "kind": target.kind,
                "connection": connection or target.connection(),
                "credentials": "mem:admin",
                "max_duration": "8h",
                "permissions": target.permissions() if permissions is None else permissions,
            }
        },
    }


def make_env(
    target: Target,
    doc: dict[str, Any] | None = None,
    secret: str | None = None,
    scheduler: ExpiryScheduler | None = None,
) -> ContractEnv:
    catalog = parse_catalog(doc or catalog_doc(target))
    secret = target.admin_secret() if secret is None else secret
    sink = MemorySink()
    now = [datetime.now(UTC)]
    engine = Engine(
        catalog,
        SecretStores({"mem": EnvSecretStore({"admin": secret, "label": LABEL_KEY})}),
        scheduler or NullScheduler(),
        sink,
        clock=lambda: now[0],
    )
    return ContractEnv(target, catalog, engine, sink, now)
