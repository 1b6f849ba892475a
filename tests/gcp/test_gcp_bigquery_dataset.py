"""The gcp_iam template on a BigQuery dataset, through the real discovery client against the
loopback BigQuery: grants are conditional `access[]` entries of the Dataset resource, written
with datasets.patch under the dataset's etag (`If-Match`), read with accessPolicyVersion=3; the
entries of others (members, special groups, an authorized view) survive every write."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import tfgcp
from gcpfake import FakeGcp
from gcpharness import WorkerCredentials

from jitc.catalog import parse_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError
from jitc.local import MemorySink, NullScheduler
from jitc.messages import parse_request
from jitc.models import utcnow
from jitc.secrets import EnvSecretStore, SecretStores

RUN = secrets.token_hex(2)
PROJECT = f"jitc-bq-{RUN}"
DATASET = f"projects/{PROJECT}/datasets/sales_{RUN}"
ROLE = "roles/bigquery.dataViewer"
WORKER_ROLE = f"projects/{PROJECT}/roles/jitc_bigquery_target"
# What the worker needs on a dataset, and all infra/terraform/gcp gives it there.
WORKER_PERMISSIONS = frozenset(
    {
        "bigquery.datasets.get",
        "bigquery.datasets.getIamPolicy",
        "bigquery.datasets.update",
        "bigquery.datasets.setIamPolicy",
    }
)
NEIGHBOUR = "user:neighbour@example.com"
ANA = "user:ana@example.com"
VIEW = {"view": {"projectId": PROJECT, "datasetId": "reports", "tableId": "summary"}}


# The module's tombstone bucket (google_storage_bucket.tombstones), where revokes leave theirs.
TOMBSTONES = f"buckets/{PROJECT}-jitc-tombstones"


def _env(fake: FakeGcp) -> dict[str, str]:
    return {
        "JITC_GCP_ENDPOINT_BIGQUERY": f"{fake.url}/bigquery/v2/",
        "JITC_STORAGE_ENDPOINT": fake.url,
        "JITC_GCP_TOMBSTONE_BUCKET": TOMBSTONES.removeprefix("buckets/"),
    }


def terraform(server: FakeGcp) -> tuple[dict[str, str], dict[str, Any]]:
    """The deployment's accounts (emails, key files), each with exactly the dataset rights the
    module binds."""
    accounts = {
        name: server.service_account(f"jitc-{name}") for name in ("worker", "sweep", "sync", "invoker")
    }  # fmt: skip
    emails = {name: email for name, (email, _) in accounts.items()}
    facts = tfgcp.facts_from_catalog(catalog_doc(), PROJECT, "europe-west1", "jitc")
    server.custom_roles.update(tfgcp.custom_roles(facts))
    server.buckets.add(TOMBSTONES.removeprefix("buckets/"))
    for binding in tfgcp.bindings(facts, emails):
        if binding.resource in (DATASET, TOMBSTONES):
            server.bind(
                binding.resource, binding.role, f"serviceAccount:{emails[binding.function]}"
            )
    return emails, accounts["worker"][1]


@pytest.fixture
def fake(worker_credentials: WorkerCredentials) -> Iterator[FakeGcp]:
    server = FakeGcp(PROJECT)
    server.add_dataset(DATASET)
    server.datasets[DATASET]["access"].append(dict(VIEW))
    server.bind(DATASET, ROLE, NEIGHBOUR)
    _, info = terraform(server)
    worker_credentials(info, _env(server))
    yield server
    assert server.violations == []
    # Least privilege: every call the worker made was allowed by what Terraform binds, on the
    # dataset itself, and it used no permission the module's role does not hold.
    assert [c for c in server.calls if not c.allowed] == []
    assert {c.resource for c in server.calls} <= {DATASET, TOMBSTONES}
    server.close()


def catalog_doc(resource: str = DATASET, **permission: Any) -> dict[str, Any]:
    return {
        "connector": {"label_key": "mem:label"},
        "integrations": {
            "bq": {
                "kind": "gcp_iam",
                "connection": {"resources": [resource], "allowed_members": ["user:*@example.com"]},
                "permissions": {"reader": {"role": ROLE, "resources": [resource], **permission}},
            }
        },
    }


def engine(doc: dict[str, Any] | None = None) -> Engine:
    store = EnvSecretStore({"label": "label-key-" + "k" * 32})
    return Engine(
        parse_catalog(doc or catalog_doc()), SecretStores({"mem": store}), NullScheduler(),
        MemorySink(),
    )  # fmt: skip


def request(action: str = "grant", request_id: str = "r1", **fields: Any) -> Any:
    doc: dict[str, Any] = {"request_id": request_id, "action": action, "integration": "bq"}
    if action == "grant":
        doc.update(
            permission="reader",
            resources=[DATASET],
            identity={"email": "ana@example.com"},
            duration="1h",
        )
    doc.update(fields)
    return parse_request(json.dumps(doc))


def access(fake: FakeGcp) -> list[dict[str, Any]]:
    return list(fake.datasets[DATASET]["access"])


def live(fake: FakeGcp, grant_id: str) -> list[dict[str, Any]]:
    """The grant's live entries (its title, a condition that can still hold)."""
    return [
        e for e in access(fake)
        if (e.get("condition") or {}).get("title") == f"jitc {grant_id}"
        and "1970-01-01" not in e["condition"]["expression"]
    ]  # fmt: skip


def others(fake: FakeGcp) -> list[dict[str, Any]]:
    """Every entry not under a `jitc ` title: what the connector must never change (in any
    order: BigQuery gives the array's order no meaning)."""
    kept = [
        e for e in access(fake)
        if not str((e.get("condition") or {}).get("title", "")).startswith("jitc ")
    ]  # fmt: skip
    return sorted(kept, key=lambda e: json.dumps(e, sort_keys=True))


def can_read(fake: FakeGcp) -> bool:
    return fake.allowed(ANA, "bigquery.tables.getData", DATASET)


def test_grant_is_one_conditional_entry_that_google_ends(fake: FakeGcp) -> None:
    before = others(fake)
    outcome = engine().execute(request())
    assert outcome.status == "granted", outcome.message
    assert outcome.principal == ANA
    [entry] = live(fake, outcome.grant_id or "")
    # Stored as BigQuery answers it: the legacy role name, the member as userByEmail.
    assert entry["role"] == "READER" and entry["userByEmail"] == "ana@example.com"
    assert entry["condition"]["description"].startswith("jitc:")
    assert entry["condition"]["expression"].startswith("request.time < timestamp(")
    assert others(fake) == before  # owners, the neighbour, the worker, the authorized view
    assert can_read(fake)
    fake.advance(timedelta(minutes=61))
    assert not can_read(fake)
    # Every write was conditional on the etag of the read it edited.
    writes = [c for c in fake.calls if c.method == "bigquery.datasets.patch"]
    assert writes and all(c.resource == DATASET for c in writes)
    # Every permission the module's role holds was needed (and the fixture: nothing else),
    # besides the read of the grant's tombstone in the module's bucket.
    assert {c.permission for c in fake.calls} == WORKER_PERMISSIONS | {"storage.objects.get"}


def test_revoke_removes_the_entry_and_keeps_everyone_else(fake: FakeGcp) -> None:
    e = engine()
    before = others(fake)
    grant_id = e.execute(request()).grant_id or ""
    outcome = e.execute(request("revoke"))
    assert outcome.status == "revoked" and outcome.verified, outcome
    assert live(fake, grant_id) == []
    assert not can_read(fake)
    assert others(fake) == before
    assert VIEW in access(fake)


def test_redelivered_grant_is_reissued_not_duplicated(fake: FakeGcp) -> None:
    e = engine()
    first = e.execute(request())
    again = e.execute(request())
    assert first.status == again.status == "granted" and again.reissued
    assert again.expires_at == first.expires_at
    assert len(live(fake, first.grant_id or "")) == 1


def test_a_grant_redelivered_after_its_revoke_is_refused(fake: FakeGcp) -> None:
    e = engine()
    grant_id = e.execute(request()).grant_id or ""
    assert e.execute(request("revoke")).status == "revoked"
    late = e.execute(request())
    assert late.status == "refused" and late.field == "request_id"
    assert live(fake, grant_id) == [] and not can_read(fake)


def test_a_revoke_delivered_before_its_grant_refuses_the_grant(fake: FakeGcp) -> None:
    e = engine()
    early = e.execute(request("revoke", request_id="r9"))
    assert early.status == "revoked" and "nothing to revoke" in str(early.message)
    late = e.execute(request(request_id="r9"))
    assert late.status == "refused" and late.field == "request_id"
    assert not can_read(fake)


def test_a_service_account_grantee_answered_as_user_by_email_is_still_revoked(
    fake: FakeGcp,
) -> None:
    doc = catalog_doc(member_type="serviceAccount")
    doc["integrations"]["bq"]["connection"]["allowed_members"] = ["serviceAccount:*"]
    e = engine(doc)
    robot = f"robot@{PROJECT}.iam.gserviceaccount.com"
    outcome = e.execute(request(identity={"email": robot}))
    assert outcome.status == "granted" and outcome.principal == f"serviceAccount:{robot}"
    [entry] = live(fake, outcome.grant_id or "")
    assert entry["userByEmail"] == robot and "iamMember" not in entry
    revoked = e.execute(request("revoke"))
    assert revoked.status == "revoked" and revoked.verified, revoked
    assert live(fake, outcome.grant_id or "") == []


def test_a_concurrent_writer_gets_412_and_the_write_is_redone_on_its_result(
    fake: FakeGcp,
) -> None:
    late = "user:late@example.com"

    def other_writer() -> None:
        # Another administrator adds an entry between the connector's read and its patch.
        fake.bind(DATASET, "roles/bigquery.dataEditor", late)

    fake.before_dataset_write = other_writer
    outcome = engine().execute(request())
    assert outcome.status == "granted", outcome.message
    assert {"role": "WRITER", "userByEmail": "late@example.com"} in access(fake)
    assert len(live(fake, outcome.grant_id or "")) == 1
    patches = [c for c in fake.calls if c.method == "bigquery.datasets.patch"]
    assert len(patches) >= 2  # the first one answered 412, the second one wrote


def test_a_label_copied_onto_another_entry_is_never_acted_on(fake: FakeGcp) -> None:
    e = engine()
    grant_id = e.execute(request()).grant_id or ""
    [mine] = live(fake, grant_id)
    # Someone copies the connector's condition (title, label, expression) onto an entry of
    # their own member, and onto one of another role for the same person.
    forged_member = {"role": "READER", "userByEmail": "neighbour@example.com",
                     "condition": dict(mine["condition"])}  # fmt: skip
    forged_role = {"role": "WRITER", "userByEmail": "ana@example.com",
                   "condition": dict(mine["condition"])}  # fmt: skip
    fake.datasets[DATASET]["access"] += [forged_member, forged_role]
    fake.datasets[DATASET]["etag"] = "Zm9yZ2Vk"
    outcome = e.execute(request("revoke"))
    assert outcome.status == "revoked", outcome.message
    assert sum("left alone" in r for r in outcome.residual) == 2, outcome.residual
    assert forged_member in access(fake) and forged_role in access(fake)
    assert mine not in access(fake)


def test_a_dataset_read_without_its_access_list_is_never_written(fake: FakeGcp) -> None:
    # A worker that may update the dataset but not see its access (no getIamPolicy): a patch
    # from that read would replace everyone's access with the connector's entry alone.
    fake.custom_roles[WORKER_ROLE] -= {"bigquery.datasets.getIamPolicy"}
    before = access(fake)
    outcome = engine().execute(request())
    assert outcome.status == "failed" and "getIamPolicy" in str(outcome.message)
    assert access(fake) == before
    assert not [c for c in fake.calls if c.method == "bigquery.datasets.patch"]
    fake.calls.clear()  # the fixture's check is for the worker's granted rights


def test_a_read_that_hides_conditions_is_never_written_back(
    fake: FakeGcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Below accessPolicyVersion 3 BigQuery shows a conditional entry as an unconditional one of
    # a made-up role; written back, that would be a different (unexpiring) entry.
    e = engine()
    grant_id = e.execute(request()).grant_id or ""
    before = access(fake)
    from jitc.templates import gcp_bigquery

    monkeypatch.setattr(gcp_bigquery, "POLICY_VERSION", 1)
    outcome = e.execute(request("revoke"))
    assert outcome.status == "failed" and "policy version" in str(outcome.message)
    assert access(fake) == before and len(live(fake, grant_id)) == 1


@pytest.mark.parametrize("role", ["roles/owner", "roles/editor", "roles/viewer"])
def test_basic_roles_are_refused_by_the_catalog_and_by_bigquery(fake: FakeGcp, role: str) -> None:
    with pytest.raises(CatalogError, match="condition"):
        parse_catalog(catalog_doc(role=role, privileged=True))
    from googleapiclient.errors import HttpError

    from jitc.templates.gcp_iam import _Api

    api = _Api()
    policy = api.get(DATASET)
    policy["bindings"].append(
        {
            "role": role,
            "members": [ANA],
            "condition": {
                "title": "t",
                "expression": 'request.time < timestamp("2999-01-01T00:00:00Z")',
            },
        }
    )
    with pytest.raises(HttpError) as caught:
        api.set(DATASET, policy)
    assert caught.value.resp.status == 400


def test_the_data_owner_role_needs_privileged() -> None:
    with pytest.raises(CatalogError, match="privileged"):
        parse_catalog(catalog_doc(role="roles/bigquery.dataOwner"))
    parse_catalog(catalog_doc(role="roles/bigquery.dataOwner", privileged=True))


@pytest.mark.parametrize(
    "resource",
    [f"projects/{PROJECT}/datasets/sales-2024", f"projects/{PROJECT}/datasets/",
     f"{PROJECT}:sales", "datasets/sales", f"projects/{PROJECT}/datasets/a/tables/b"],
)  # fmt: skip
def test_a_malformed_dataset_is_refused_when_the_catalog_loads(resource: str) -> None:
    with pytest.raises(CatalogError, match="datasets/D"):
        parse_catalog(catalog_doc(resource=resource))


def test_terraform_gives_the_worker_and_sweep_exactly_the_access_rights_and_sync_reads() -> None:
    server = FakeGcp(PROJECT)
    try:
        server.add_dataset(DATASET)
        emails, _ = terraform(server)
        roles = {entry.get("role"): entry.get("userByEmail") for entry in access(server)}
        assert server.custom_roles[WORKER_ROLE] == WORKER_PERMISSIONS
        reader = f"projects/{PROJECT}/roles/jitc_bigquery_reader"
        assert server.custom_roles[reader] == {
            "bigquery.datasets.get", "bigquery.datasets.getIamPolicy"
        }  # fmt: skip
        granted = sorted(
            (e["role"], e["userByEmail"]) for e in access(server) if "userByEmail" in e
        )  # fmt: skip
        assert granted == sorted(
            [(WORKER_ROLE, emails["worker"]), (WORKER_ROLE, emails["sweep"]),
             (reader, emails["sync"])]
        ), roles  # fmt: skip
        # Nothing on the project: the rights end at the catalog's datasets.
        assert server.policies.get(f"projects/{PROJECT}", {}).get("bindings", []) == []
    finally:
        server.close()


# -- adversarial: the tombstone bucket failing, BigQuery's update rate limit ---------------------


def test_a_revoke_whose_tombstone_write_fails_still_takes_the_access_away(fake: FakeGcp) -> None:
    from gcpfake import ApiError

    e = engine()
    grant_id = e.execute(request()).grant_id or ""
    assert can_read(fake)

    def refuse() -> None:
        # The bucket refuses the create (its IAM binding was edited, an org policy, an outage
        # answered 403): the revoke cannot leave its tombstone.
        raise ApiError(403, "PERMISSION_DENIED", "storage.objects.create denied")

    fake.before_object_write = refuse
    outcome = e.execute(request("revoke"))
    # Failing (so that the queue retries it and the tombstone is written later) is right; leaving
    # the access usable for the rest of its hour is not: an early revoke is the one that matters.
    assert outcome.status == "failed"
    assert live(fake, grant_id) == [] and not can_read(fake)


@pytest.fixture
def pauses(fake: FakeGcp, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The rate-limit pauses the worker takes, taken on the fake's clock (BigQuery's window moves
    with them) instead of the test's."""
    from jitc.templates import gcp_iam

    taken: list[float] = []

    def sleep(seconds: float) -> None:
        taken.append(seconds)
        fake.advance(timedelta(seconds=seconds))

    monkeypatch.setattr(gcp_iam, "BACKOFF", gcp_iam.Backoff(sleep=sleep))
    return taken


def rate_limit_error() -> Exception:
    from gcpfake import DATASET_RATE_LIMITED, ApiError

    # What BigQuery answers the sixth update of a dataset within 10 s (the fake's own limit
    # answers the same).
    return ApiError(
        403, "PERMISSION_DENIED", DATASET_RATE_LIMITED, reason="rateLimitExceeded",
        domain="usageLimits",
    )  # fmt: skip


def patches(fake: FakeGcp) -> int:
    """datasets.patch requests (each is authorised for bigquery.datasets.update first)."""
    return len([c for c in fake.calls if c.permission == "bigquery.datasets.update"])


def test_a_rate_limited_patch_is_retried_not_failed(fake: FakeGcp, pauses: list[float]) -> None:
    def rate_limited() -> None:
        raise rate_limit_error()

    fake.before_dataset_write = rate_limited
    outcome = engine().execute(request())
    assert outcome.status == "granted", outcome.message
    assert len(live(fake, outcome.grant_id or "")) == 1
    assert patches(fake) == 2
    [pause] = pauses
    assert 1.0 <= pause <= 1.5  # the first pause, with its jitter


def test_a_burst_on_one_dataset_waits_out_bigquerys_window(
    fake: FakeGcp, pauses: list[float]
) -> None:
    from gcpfake import DATASET_UPDATES

    fake.dataset_updates_per_window = DATASET_UPDATES
    e = engine()
    ids = [f"burst{n}" for n in range(8)]  # one message each, as Cloud Tasks delivers them
    granted = [e.execute(request(request_id=i)) for i in ids]
    assert [o.status for o in granted] == ["granted"] * len(ids), [o.message for o in granted]
    assert fake.rate_limited and pauses  # the sixth write met the limit and was paced
    revoked = [e.execute(request("revoke", request_id=i)) for i in ids]
    assert all(o.status == "revoked" and o.verified for o in revoked), revoked
    assert all(live(fake, o.grant_id or "") == [] for o in granted)
    assert not can_read(fake)


def test_a_rate_limit_that_does_not_lift_fails_and_says_so(
    fake: FakeGcp, pauses: list[float]
) -> None:
    def rate_limited() -> None:
        fake.before_dataset_write = rate_limited  # every write, not only the next one
        raise rate_limit_error()

    fake.before_dataset_write = rate_limited
    outcome = engine().execute(request())
    fake.before_dataset_write = None
    # Failed (the queue delivers it again later), and not reported as a denied permission.
    assert outcome.status == "failed"
    assert "BigQuery's rate limit" in str(outcome.message), outcome.message
    assert "not a missing permission" in str(outcome.message)
    assert live(fake, outcome.grant_id or "") == []
    # Four pauses, five writes: bounded (22.5 s at most) and past BigQuery's 10 s window.
    assert len(pauses) == 4 and patches(fake) == 5
    assert 10 < sum(pauses) <= 22.5


def test_the_pauses_of_one_message_stay_within_its_budget(
    fake: FakeGcp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jitc.templates import gcp_iam

    taken: list[float] = []
    monkeypatch.setattr(gcp_iam, "BACKOFF", gcp_iam.Backoff(sleep=taken.append, budget=5.0))

    def rate_limited() -> None:
        fake.before_dataset_write = rate_limited
        raise rate_limit_error()

    fake.before_dataset_write = rate_limited
    outcome = engine().execute(request())
    fake.before_dataset_write = None
    assert outcome.status == "failed" and "rate limit" in str(outcome.message)
    # 1-1.5 s and 2-3 s fit in 5 s; the third (4-6 s) would not, and is not taken.
    assert len(taken) == 2 and sum(taken) <= 5.0


def test_a_denied_patch_fails_at_once_and_is_never_paced(
    fake: FakeGcp, pauses: list[float]
) -> None:
    # The worker lost setIamPolicy on the dataset: BigQuery answers 403 too, with reason
    # accessDenied, and no pause would change that.
    fake.custom_roles[WORKER_ROLE] -= {"bigquery.datasets.setIamPolicy"}
    outcome = engine().execute(request())
    assert outcome.status == "failed"
    assert "HTTP 403" in str(outcome.message) and "rate limit" not in str(outcome.message)
    assert pauses == [] and patches(fake) == 1
    assert live(fake, outcome.grant_id or "") == []
    fake.calls.clear()  # the fixture's check is for the worker's granted rights


def http_error(status: int, body: Any) -> Exception:
    import httplib2
    from googleapiclient.errors import HttpError

    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpError(httplib2.Response({"status": status}), content)


def error_body(reason: str, message: str, code: int = 403) -> dict[str, Any]:
    return {
        "error": {
            "code": code, "message": message, "status": "PERMISSION_DENIED",
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "limited"),
    [
        (429, b"", True),
        (403, error_body("rateLimitExceeded", "Exceeded rate limits: too many ..."), True),
        (403, error_body("userRateLimitExceeded", "User Rate Limit Exceeded"), True),
        (403, error_body("quotaExceeded", "Exceeded rate limits: too many table updates"), True),
        # A long-term quota (a daily one): no pause of seconds lifts it.
        (403, error_body("quotaExceeded", "Quota exceeded: your project exceeded quota"), False),
        (403, error_body("accessDenied", "Access Denied: Dataset p:d: Permission denied"), False),
        (403, {"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}}, False),
        (403, b"<html>Forbidden</html>", False),
        (403, b"", False),
        (400, error_body("rateLimitExceeded", "not a 403", code=400), False),
    ],
)  # fmt: skip
def test_only_a_rate_limit_is_read_as_one(status: int, body: Any, limited: bool) -> None:
    from jitc.templates.gcp_iam import _rate_limited

    assert (_rate_limited(http_error(status, body)) is not None) is limited


def test_a_user_grant_to_a_service_account_address_is_made_and_revoked_once(
    fake: FakeGcp,
) -> None:
    # `member_type: user` with `allowed_members: user:*`: nothing stops a grantee from naming a
    # service account's address. BigQuery keeps it as userByEmail, which reads back as
    # serviceAccount:..., another member than the one the label was MACed over.
    doc = catalog_doc()
    doc["integrations"]["bq"]["connection"]["allowed_members"] = ["user:*"]
    e = engine(doc)
    robot = f"robot@{PROJECT}.iam.gserviceaccount.com"
    for _ in range(3):  # Cloud Tasks redelivers a failed grant
        e.execute(request(identity={"email": robot}))
    entries = [e_ for e_ in access(fake) if e_.get("userByEmail") == robot]
    revoked = e.execute(request("revoke"))
    assert len(entries) <= 1, f"{len(entries)} entries written for one grant"
    assert [e_ for e_ in access(fake) if e_.get("userByEmail") == robot] == [], revoked


def test_a_revoke_run_while_its_grant_writes_ends_with_no_access(fake: FakeGcp) -> None:
    # Cloud Tasks runs the two on two workers: the revoke (tombstone, read, nothing found)
    # happens between the grant's read of the dataset and its patch.
    outcomes = []

    def revoke_meanwhile() -> None:
        outcomes.append(engine().execute(request("revoke")))

    fake.before_dataset_write = revoke_meanwhile
    grant = engine().execute(request())
    assert fake.before_dataset_write is None and len(outcomes) == 1  # the interleaving happened
    assert outcomes[0].status == "revoked"
    assert grant.status == "refused" and grant.field == "request_id", grant
    assert live(fake, grant.grant_id or "") == [] and not can_read(fake)


def test_two_deliveries_of_one_grant_racing_write_one_entry(fake: FakeGcp) -> None:
    outcomes = []

    # Both deliveries carry the one signed time of the message, as a queue's redelivery does
    # (without it each would count its hour from its own second).
    signed = utcnow()

    def deliver_again() -> None:
        outcomes.append(engine().execute(request(), issued_at=signed))

    fake.before_dataset_write = deliver_again
    first = engine().execute(request(), issued_at=signed)
    assert len(outcomes) == 1 and outcomes[0].status == first.status == "granted"
    assert outcomes[0].expires_at == first.expires_at
    assert len(live(fake, first.grant_id or "")) == 1
