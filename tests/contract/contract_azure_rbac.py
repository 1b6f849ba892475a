"""The Azure RBAC template in the contract suite, on the local ARM authorization fake (HTTPS with
a certificate made by the test, tokens from the fake managed-identity endpoint), under exactly the
rights the Terraform module gives the connector: its custom role on the catalog's scope, with the
condition that limits it to the catalog's roles.

ARM stores assignments and this target judges access as Azure does for one scope: a principal
may do an action when one of its assignments at or above the scope has a role whose actions match
it. A "login" is a principal that can read the scope; RBAC has no sessions to end, so a live
connection is alive exactly as long as the principal's assignments allow the read.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azfakes
import tfazure
from azblob import AzuriteBlob, BlobProxy, admin_container
from contract_targets import RUN

from jitc.models import Outcome
from jitc.templates import azure_rbac

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
SCOPE = f"subscriptions/{SUBSCRIPTION}/resourceGroups/jitc-{RUN}"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
CUSTOM = str(uuid.uuid5(uuid.NAMESPACE_URL, f"jitc-contract-{RUN}"))
READ = "Microsoft.Resources/subscriptions/resourceGroups/read"
WRITE = "Microsoft.Resources/subscriptions/resourceGroups/write"
PRINCIPALS = [str(uuid.uuid4()) for _ in range(4)]
APP_OID = str(uuid.uuid4())
APP_CLIENT = str(uuid.uuid4())
STORAGE_ID = "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z"
LEDGER = tfazure.load().resources[("azurerm_storage_container", "rbac_ledger")]["name"]


@dataclass
class Live:
    principal: str


class AzureRbacTarget:
    kind = "azure_rbac"
    integration = f"azure-rbac-{RUN}"
    generates_secrets = False
    # Enough histories that a grant delivered after its revoke is always among them (without
    # the ledger's tombstones that history makes the grant again).
    history_examples = 60

    def __init__(self) -> None:
        self.arm: azfakes.FakeArm | None = None
        self.foreign: set[str] = set()
        self._closers: list[Any] = []

    def reach(self) -> None:
        if self.arm is not None:
            return
        folder = Path(tempfile.mkdtemp(prefix="jitc-contract-azure-"))
        tls = azfakes.make_tls(folder)
        tokens = azfakes.Tokens()
        authz = azfakes.Authz()
        identity = azfakes.IdentityEndpoint(tokens, APP_OID, APP_CLIENT)
        self.arm = azfakes.FakeArm(tokens, authz, tls, SUBSCRIPTION)
        self.arm.add_role(CUSTOM, f"jitc contract reader {RUN}", [READ])
        self._closers = [self.arm, identity]
        # The ledger (tombstones, locks): Azurite's blob service behind the judging proxy, in
        # the container the module makes, under the right the module gives.
        azurite = AzuriteBlob(tls)
        proxy = BlobProxy(azurite, authz, tls, STORAGE_ID)
        self._closers += [proxy, azurite]
        self.ledger = admin_container(azurite, tls, LEDGER)
        rendered = tfazure.render(
            {
                "name": "contract",
                "key_vault_id": "/none",
                "key_vault_secret_names": [],
                "rbac_scopes": [f"/{SCOPE}"],
                "rbac_role_ids": [READER, CUSTOM],
                "rbac_pim": False,
                "control_plane_principal_id": None,
            },
            storage_account_id=STORAGE_ID,
            principal=APP_OID,
            client_id=APP_CLIENT,
        )
        authz.assignments[:] = rendered.assignments
        from azure.identity import ManagedIdentityCredential

        # The identity endpoint's settings stay for the target's life: MSAL reads them at each
        # token request, as it does inside a Function App.
        self._environment = azfakes.environment(identity.env)
        self._environment.__enter__()
        credential = ManagedIdentityCredential(client_id=APP_CLIENT)
        azure_rbac.use(
            credential, {"connection_verify": str(tls.cert)}, f"{proxy.blob_service_uri}{LEDGER}"
        )

    def reset(self) -> None:
        assert self.arm is not None
        with self.arm.lock:
            self.arm.assignments.clear()
            self.arm.requests.clear()
        self.foreign.clear()
        for blob in self.ledger.list_blobs():
            self.ledger.delete_blob(blob.name)

    def cleanup(self) -> None:
        azure_rbac.use(None, {})
        self._environment.__exit__(None, None, None)
        for closing in self._closers:
            closing.close()

    def admin_secret(self) -> str:
        return "CANARY-azure-never-used-5e1c"  # the template's credential is the app's identity

    def renamed(self) -> dict[str, Any]:
        return {}  # a grant is a role assignment named by its grant id: no setting names it

    def connection(self, **overrides: Any) -> dict[str, Any]:
        assert self.arm is not None
        return {
            "subscription_id": SUBSCRIPTION,
            "scopes": [SCOPE],
            "allowed_principal_ids": PRINCIPALS,
            "arm_endpoint": self.arm.endpoint,
            **overrides,
        }

    def broken_connection(self) -> dict[str, Any] | None:
        return self.connection(arm_endpoint=f"https://127.0.0.1:{azfakes.free_port()}")

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"role_definition_id": READER, "resources": [SCOPE]},
            "custom": {"role_definition_id": CUSTOM, "resources": [SCOPE]},
        }

    def resource(self) -> str:
        return SCOPE

    def hostile_resources(self) -> list[str]:
        return [
            f"subscriptions/{SUBSCRIPTION}/resourceGroups/a b",
            f"subscriptions/{SUBSCRIPTION}/resourceGroups/../x",
            "subscriptions/not-a-guid",
            f"subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/x",
            "{resource}",
        ]

    def identity(self, index: int = 0) -> dict[str, Any]:
        return {"email": f"ana{index}@example.com", "object_id": PRINCIPALS[index]}

    def holder(self, outcome: Outcome, credentials: dict[str, str] | None) -> Any:
        assert credentials is None
        return str(outcome.principal).partition("/")[2]

    def made(self, outcome: Outcome) -> str:
        return azure_rbac.assignment_name(str(outcome.grant_id), SCOPE)

    def _can(self, principal: str, action: str) -> bool:
        assert self.arm is not None
        arm = self.arm
        with arm.lock:
            arm._expire()
            for a in arm.assignments.values():
                if a.principal_id != principal or not azfakes._covers(a.scope, f"/{SCOPE}"):
                    continue
                _, actions = arm.roles[a.role_definition_id.rsplit("/", 1)[1]]
                if any(azfakes._matches(p, action) for p in actions):
                    return True
        return False

    def login(self, holder: Any) -> Live:
        if not self._can(str(holder), READ):
            raise PermissionError(f"{holder} cannot read {SCOPE}")
        return Live(str(holder))

    def allowed(self, live: Live) -> None:
        assert self._can(live.principal, READ)

    def denied(self, live: Live) -> bool:
        return not self._can(live.principal, WRITE)

    def alive(self, live: Live) -> bool:
        return self._can(live.principal, READ)

    def close(self, live: Live) -> None:
        return None

    def principals(self) -> set[str]:
        """Each grant an assignment holds, by the name the grant's own assignment has, and the
        neighbours' assignments by name."""
        from jitc.labels import LabelKey, verify_label

        assert self.arm is not None
        from contract_targets import LABEL_KEY

        key = LabelKey.from_secret(LABEL_KEY)
        names: set[str] = set()
        for a in list(self.arm.assignments.values()):
            if a.name in self.foreign:
                names.add(a.name)
                continue
            bound = "\0".join([a.id.lower(), a.principal_id.lower(), a.role_definition_id.lower()])
            label = verify_label(key, "azure_rbac", bound, a.description)
            for grant_id in (label or {}).get("grants", {}):
                names.add(azure_rbac.assignment_name(grant_id, a.scope.lstrip("/")))
        return names

    def snapshot(self) -> Any:
        assert self.arm is not None
        return sorted(
            (a.name, a.principal_id, a.role_definition_id, a.description)
            for a in self.arm.assignments.values()
            if a.name in self.foreign
        )

    def make_foreign(self, name: str, description: str | None = None) -> None:
        """A neighbour's assignment at the connector's scope (another principal, same role)."""
        assert self.arm is not None
        self.arm.assign(f"/{SCOPE}", name, READER, PRINCIPALS[3], description)
        self.foreign.add(name)

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        import json

        body = json.dumps(
            {
                "v": 2,
                "integration": integration,
                "principal_type": "User",
                "grants": {grant_id: {"expires_at": "2020-01-01T00:00:00+00:00"}},
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        self.make_foreign(name, f"jitc:{'A' * 43}.{body}")

    def planned_principal(self, statements: list[str]) -> str:
        return statements[0].split(": ", 1)[0].rsplit("/", 1)[1]
