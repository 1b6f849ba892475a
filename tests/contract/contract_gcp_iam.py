"""The GCP IAM template in the contract suite, on the loopback GCP of tests/gcp (in-process, so
google-api-python-client's real HTTP path is used, and every request is checked against the
discovery documents and the connector's own IAM bindings).

IAM has no sessions: a "login" is the grantee's member holding the allowed permission on the
bucket now, judged from the bucket's and project's policies as Google would, with the
`request.time` conditions evaluated. A "principal" is a binding, named by its condition title
(`jitc <grant_id>` for the connector's), since the member itself always exists.

`GcpIamDatasetTarget` runs the same contract on a BigQuery dataset, whose bindings are its
`access[]` entries (read back through `gcp_bigquery`, as the template reads them). Both targets
share one loopback GCP and one worker account: the Google clients take their credentials from
the process environment.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from contract_targets import LABEL_KEY, RUN, forged_label

from jitc.labels import LabelKey
from jitc.models import Outcome
from jitc.templates import gcp_bigquery
from jitc.templates.gcp_iam import read_label

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gcp"))

from gcpfake import FakeGcp

KEY = LabelKey.from_secret(LABEL_KEY)
PROJECT = f"jitc-contract-{RUN}"
BUCKET = f"jitc-contract-{RUN}-data"
TOMBSTONES = f"jitc-contract-{RUN}-tombstones"
ALLOWED = "storage.objects.get"
DENIED = "storage.objects.delete"
_ENV = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "JITC_GCP_ENDPOINT_STORAGE",
    "JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER",
    "JITC_GCP_ENDPOINT_SECRETMANAGER",
    "JITC_STORAGE_ENDPOINT",
    "JITC_GCP_TOMBSTONE_BUCKET",
    "JITC_GCP_ENDPOINT_BIGQUERY",
)
DATASET = f"projects/{PROJECT}/datasets/jitc_contract_{RUN}"


class _Shared:
    """The loopback GCP both targets use, its worker's key file, and the environment saved."""

    fake: FakeGcp | None = None
    email = ""
    key_file = ""
    saved: ClassVar[dict[str, str | None]] = {}
    users = 0

    @classmethod
    def open(cls) -> tuple[FakeGcp, str]:
        if cls.fake is None:
            fake = FakeGcp(PROJECT)
            cls.email, info = fake.service_account("jitc-worker")
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
                json.dump(info, handle)
            os.chmod(handle.name, 0o600)
            cls.key_file = handle.name
            cls.saved = {name: os.environ.get(name) for name in _ENV}
            os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = handle.name
            os.environ["JITC_GCP_ENDPOINT_STORAGE"] = f"{fake.url}/storage/v1/"
            os.environ["JITC_GCP_ENDPOINT_CLOUDRESOURCEMANAGER"] = f"{fake.url}/"
            os.environ["JITC_GCP_ENDPOINT_SECRETMANAGER"] = f"{fake.url}/"
            os.environ["JITC_GCP_ENDPOINT_BIGQUERY"] = f"{fake.url}/bigquery/v2/"
            os.environ["JITC_STORAGE_ENDPOINT"] = fake.url
            os.environ["JITC_GCP_TOMBSTONE_BUCKET"] = TOMBSTONES
            cls.fake = fake
        cls.users += 1
        return cls.fake, cls.email

    @classmethod
    def close(cls) -> None:
        cls.users -= 1
        if cls.users > 0 or cls.fake is None:
            return
        cls.fake.close()
        cls.fake = None
        for name, value in cls.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.unlink(cls.key_file)


def _tombstones(fake: FakeGcp, email: str) -> None:
    """The module's tombstone bucket, and its tombstone role there for the worker."""
    fake.buckets.add(TOMBSTONES)
    fake.custom_roles[f"projects/{PROJECT}/roles/jitc_tombstones"] = frozenset(
        {"storage.objects.create", "storage.objects.get"}
    )
    fake.bind(
        f"buckets/{TOMBSTONES}", f"projects/{PROJECT}/roles/jitc_tombstones",
        f"serviceAccount:{email}",
    )  # fmt: skip


class GcpIamTarget:
    kind = "gcp_iam"
    integration = f"gcpiam-{RUN}"
    generates_secrets = False

    def __init__(self) -> None:
        self.fake: FakeGcp | None = None

    # -- reaching the (fake) service ------------------------------------------------------

    def reach(self) -> None:
        fake, email = _Shared.open()
        # What the Terraform module binds: its IAM-target role on the catalog's resource only.
        fake.custom_roles[f"projects/{PROJECT}/roles/jitc_iam_target"] = frozenset(
            {"storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy"}
        )
        fake.bind(
            self.resource(), f"projects/{PROJECT}/roles/jitc_iam_target", f"serviceAccount:{email}"
        )
        _tombstones(fake, email)
        self.connector = f"serviceAccount:{email}"
        self.fake = fake

    def _fake(self) -> FakeGcp:
        assert self.fake is not None
        return self.fake

    def _bindings(self) -> list[dict[str, Any]]:
        return list(self._fake().policies.get(self.resource(), {}).get("bindings", []))

    def reset(self) -> None:
        fake = self._fake()
        with fake.lock:
            policy = fake.policies[self.resource()]
            policy["bindings"] = [
                b
                for b in policy["bindings"]
                if "condition" not in b and self.connector in b["members"]
            ]
            for key in [k for k in fake.objects if k[0] == TOMBSTONES]:
                del fake.objects[key]
        assert fake.violations == [], fake.violations

    def cleanup(self) -> None:
        if self.fake is not None:
            _Shared.close()
            self.fake = None

    # -- the catalog ----------------------------------------------------------------------

    def identity(self, index: int = 0) -> dict[str, Any]:
        return {"email": f"dev{index}-{RUN}@example.com"}

    def renamed(self) -> dict[str, Any]:
        return {}  # a grant is a binding of its member: no setting names it

    def connection(self, **overrides: Any) -> dict[str, Any]:
        return {
            "resources": [self.resource()],
            "allowed_members": [f"user:*-{RUN}@example.com"],
            **overrides,
        }

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"role": "roles/storage.objectViewer", "resources": [self.resource()]},
            "custom": {
                "role": "roles/storage.objectViewer",
                "member_type": "user",
                "resources": [self.resource()],
            },
        }

    def resource(self) -> str:
        return f"buckets/{BUCKET}"

    def hostile_resources(self) -> list[str]:
        return [
            f"buckets/{BUCKET}/../other", "buckets/*", "organizations/1234", f"projects/{PROJECT}/x",
            "buckets/UPPER", "buckets/a'b",
        ]  # fmt: skip

    def admin_secret(self) -> str:
        return f"gcp-canary-{RUN}-never-printed"

    def broken_connection(self) -> dict[str, Any] | None:
        return None  # the endpoint is the platform's, not a catalog setting

    # -- access, as Google would judge it ---------------------------------------------------

    def holder(self, outcome: Outcome, credentials: dict[str, str] | None) -> Any:
        return outcome.principal

    def made(self, outcome: Outcome) -> str:
        return f"jitc {outcome.grant_id}"

    def planned_principal(self, statements: list[str]) -> str:
        text = statements[0]
        return "jitc " + text.split("(title jitc ", 1)[1].split(")", 1)[0]

    def login(self, holder: Any) -> Any:
        if not self._fake().allowed(str(holder), ALLOWED, self.resource()):
            raise PermissionError(f"{holder} holds no {ALLOWED} on {self.resource()}")
        return holder

    def allowed(self, live: Any) -> None:
        self.login(live)

    def denied(self, live: Any) -> bool:
        return not self._fake().allowed(str(live), DENIED, self.resource())

    def alive(self, live: Any) -> bool:
        return self._fake().allowed(str(live), ALLOWED, self.resource())

    def close(self, live: Any) -> None:
        return None

    def principals(self) -> set[str]:
        """The titles of conditional bindings (tombstones are objects, never bindings)."""
        names = set()
        for binding in self._bindings():
            condition = binding.get("condition") or {}
            if condition.get("title"):
                names.add(condition["title"])
        return names

    def snapshot(self) -> Any:
        foreign = [
            b for b in self._bindings()
            if not any(read_label(KEY, self.resource(), b, m) for m in b["members"])
            and not any(m.endswith(f"-{RUN}@example.com") and m.startswith("user:dev") for m in b["members"])
        ]  # fmt: skip
        return sorted(json.dumps(b, sort_keys=True) for b in copy.deepcopy(foreign))

    def make_foreign(self, name: str) -> None:
        self._fake().bind(
            self.resource(), "roles/storage.objectViewer", f"user:foreign-{RUN}@example.com",
            {"title": name, "expression": 'request.time < timestamp("2999-01-01T00:00:00Z")'},
        )  # fmt: skip

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        fake = self._fake()
        with fake.lock:
            for binding in fake.policies[self.resource()]["bindings"]:
                condition = binding.get("condition") or {}
                if condition.get("title") == name:
                    condition["description"] = forged_label(grant_id, integration)[:256]


class GcpIamDatasetTarget(GcpIamTarget):
    """The same contract on a BigQuery dataset: the grant is a conditional access entry."""

    integration = f"gcpbq-{RUN}"
    ALLOWED = "bigquery.tables.getData"
    DENIED = "bigquery.tables.updateData"

    def reach(self) -> None:
        fake, email = _Shared.open()
        fake.add_dataset(DATASET)
        # What the Terraform module binds on a catalog dataset (tests/gcp checks the module).
        role = f"projects/{PROJECT}/roles/jitc_bigquery_target"
        fake.custom_roles[role] = frozenset(
            {
                "bigquery.datasets.get", "bigquery.datasets.getIamPolicy",
                "bigquery.datasets.update", "bigquery.datasets.setIamPolicy",
            }
        )  # fmt: skip
        fake.bind(DATASET, role, f"serviceAccount:{email}")
        _tombstones(fake, email)
        self.connector = f"serviceAccount:{email}"
        self.fake = fake

    def _bindings(self) -> list[dict[str, Any]]:
        fake = self._fake()
        with fake.lock:
            dataset = copy.deepcopy(fake.datasets[DATASET])
        bindings: list[dict[str, Any]] = gcp_bigquery.to_policy(DATASET, dataset)["bindings"]
        return bindings

    def reset(self) -> None:
        fake = self._fake()
        with fake.lock:
            stored = fake.datasets[DATASET]
            stored["access"] = [e for e in stored["access"] if "condition" not in e and (
                e.get("specialGroup") or e.get("userByEmail") == self.connector.partition(":")[2]
            )]  # fmt: skip
            for key in [k for k in fake.objects if k[0] == TOMBSTONES]:
                del fake.objects[key]
        assert fake.violations == [], fake.violations

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"role": "roles/bigquery.dataViewer", "resources": [self.resource()]},
            "custom": {
                "role": "roles/bigquery.dataViewer",
                "member_type": "user",
                "resources": [self.resource()],
            },
        }

    def resource(self) -> str:
        return DATASET

    def hostile_resources(self) -> list[str]:
        return [
            f"{DATASET}/../other", f"projects/{PROJECT}/datasets/*", f"{DATASET}/tables/t",
            f"projects/{PROJECT}/datasets/a-b", f"projects/{PROJECT}/datasets/a'b",
            f"{PROJECT}:jitc_contract_{RUN}",
        ]  # fmt: skip

    def login(self, holder: Any) -> Any:
        if not self._fake().allowed(str(holder), self.ALLOWED, DATASET):
            raise PermissionError(f"{holder} holds no {self.ALLOWED} on {DATASET}")
        return holder

    def denied(self, live: Any) -> bool:
        return not self._fake().allowed(str(live), self.DENIED, DATASET)

    def alive(self, live: Any) -> bool:
        return self._fake().allowed(str(live), self.ALLOWED, DATASET)

    def make_foreign(self, name: str) -> None:
        self._fake().bind(
            DATASET, "roles/bigquery.dataViewer", f"user:foreign-{RUN}@example.com",
            {"title": name, "expression": 'request.time < timestamp("2999-01-01T00:00:00Z")'},
        )  # fmt: skip

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        fake = self._fake()
        with fake.lock:
            for entry in fake.datasets[DATASET]["access"]:
                condition = entry.get("condition") or {}
                if condition.get("title") == name:
                    condition["description"] = forged_label(grant_id, integration)[:256]
