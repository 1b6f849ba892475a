"""The promises every template keeps, each checked on every template's real server."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from contract_targets import ContractEnv, Target, catalog_doc

from jitc.catalog import parse_catalog
from jitc.errors import CatalogError, Refused
from jitc.messages import parse_request
from jitc.models import Outcome

MakeEnv = Callable[..., ContractEnv]


def test_grant_allows_the_permission_and_denies_the_rest(cenv: ContractEnv) -> None:
    outcome = cenv.engine.execute(cenv.request(request_id="c-grant"))
    assert outcome.status == "granted", outcome
    assert outcome.credentials is None  # sealed only, unless the local caller asks
    live = cenv.target.login(cenv.holder(outcome))
    cenv.target.allowed(live)
    assert cenv.target.denied(live)
    cenv.target.close(live)
    assert cenv.target.made(outcome) in cenv.target.principals()


def test_revoke_ends_the_live_connection_and_refuses_a_new_login(cenv: ContractEnv) -> None:
    outcome = cenv.engine.execute(cenv.request(request_id="c-revoke"))
    creds = cenv.holder(outcome)
    live = cenv.target.login(creds)
    assert cenv.target.alive(live)

    revoke = cenv.engine.execute(cenv.request("revoke", request_id="c-revoke"))
    assert revoke.status == "revoked" and revoke.verified is True and revoke.residual == []
    assert not cenv.target.alive(live)
    assert not cenv.can_login(creds)
    assert cenv.target.made(outcome) not in cenv.target.principals()
    event = cenv.sink.events[-1]
    assert event.type == "revoke" and event.verified is True


def test_plan_has_no_side_effects_and_shows_no_secret(cenv: ContractEnv) -> None:
    before = (cenv.target.principals(), cenv.target.snapshot())
    outcome = cenv.engine.plan(cenv.request(request_id="c-plan"))
    assert outcome.status == "planned" and outcome.statements
    assert (cenv.target.principals(), cenv.target.snapshot()) == before
    if cenv.target.generates_secrets:
        assert "********" in "\n".join(outcome.statements)
    assert cenv.target.admin_secret() not in outcome.model_dump_json()
    granted = cenv.engine.execute(cenv.request(request_id="c-plan"))
    assert cenv.target.made(granted) == cenv.target.planned_principal(outcome.statements)


def _left_alone(outcome: Outcome) -> bool:
    """A revoke that found no grant of ours: a success with nothing to revoke, or (a template
    that cannot tell a squatter from a grant it failed to label) a failure, retried and alarmed,
    that names what it left alone."""
    if outcome.status == "revoked":
        return "nothing to revoke" in str(outcome.message)
    return outcome.status == "failed" and any("left alone" in r for r in outcome.residual)


def test_redelivered_grant_lands_on_the_same_principal_with_working_credentials(
    target: Target, make_contract_env: MakeEnv
) -> None:
    env = make_contract_env(catalog_doc(target))
    request = env.request(request_id="c-dup")
    first = env.engine.execute(request)
    second = env.engine.execute(request)
    assert second.status == "granted" and second.reissued
    assert second.principal == first.principal and second.expires_at == first.expires_at
    assert target.principals() == {target.made(first)}
    holders = [env.holder(o) for o in (first, second)]
    assert env.usable(holders[1])
    if target.generates_secrets:
        # A redelivery computes the same password from the label key: a replay never takes
        # the working credentials away from the grantee.
        assert holders[0] == holders[1]


def test_a_redelivery_leaves_the_first_credentials_and_their_session_working(
    target: Target, make_contract_env: MakeEnv
) -> None:
    """What a redelivered grant really does (README, "Idempotent under redelivery"): it hands
    out the credentials of the first delivery again and changes nothing the grantee holds. The
    first delivery's password still logs in, and a session opened with it lives on."""
    env = make_contract_env(catalog_doc(target))
    request = env.request(request_id="c-redeliver-live")
    first = env.engine.execute(request)
    holder = env.holder(first)
    live = target.login(holder)
    try:
        again = env.engine.execute(request)
        assert again.status == "granted" and again.reissued
        assert target.alive(live)
        target.allowed(live)
    finally:
        target.close(live)
    assert env.usable(holder)
    if target.generates_secrets:
        assert env.holder(again) == holder


def test_a_redelivery_signed_later_keeps_the_first_expiry(
    target: Target, make_contract_env: MakeEnv
) -> None:
    """A duration counts from its request's signature, so a copy of the request signed later
    asks for a later expiry. The grant keeps the first one, in the target and in every outcome
    (the sealed credentials and the timer included): a re-signed request never lengthens
    access."""
    env = make_contract_env(catalog_doc(target))
    request = env.request(request_id="c-resigned")
    first = env.engine.execute(request)
    assert first.status == "granted" and first.expires_at is not None, first
    env.advance(timedelta(minutes=5))
    again = env.engine.execute(request)
    assert again.status == "granted" and again.reissued, again
    assert again.expires_at == first.expires_at
    if target.generates_secrets:
        sealed = env.credentials(again.sealed_credentials)
        assert datetime.fromisoformat(sealed["expires_at"]) == first.expires_at
    env.advance(timedelta(minutes=11))  # past the first expiry (15 min), before the later one
    report = env.engine.sweep()
    assert report.revoked == [first.grant_id] and report.ok, report


@pytest.mark.parametrize("end", ["revoked", "expired"])
def test_a_copy_signed_before_the_end_never_brings_the_grant_back(
    target: Target, make_contract_env: MakeEnv, end: str
) -> None:
    """A copy of the request signed later (the control plane retried its publish) asks for a
    later expiry. Arriving after the grant was revoked, or expired and was swept, and past the
    first expiry, it is refused: a grant's end is remembered as long as any copy signed before
    it can still ask for access."""
    env = make_contract_env(catalog_doc(target))
    t0 = env.now[0]
    request = env.request(request_id=f"c-copy-{end}")
    first = env.engine.execute(request, t0)
    assert first.status == "granted", first
    holder = env.holder(first)
    if end == "revoked":
        env.advance(timedelta(minutes=6))
        revoke = env.engine.execute(env.request("revoke", request_id=f"c-copy-{end}"))
        assert revoke.status == "revoked", revoke
    env.now[0] = t0 + timedelta(minutes=16)  # past the first expiry (15 min)
    report = env.engine.sweep()
    assert report.ok, report
    late = env.engine.execute(request, t0 + timedelta(minutes=5))  # its own ends at 20 min
    assert late.status == "refused", late
    assert not env.usable(holder)
    assert target.principals() == set()


def test_a_request_id_reused_for_a_different_request_is_refused(cenv: ContractEnv) -> None:
    first = cenv.engine.execute(cenv.request(request_id="c-reuse", duration="10m"))
    assert first.status == "granted"
    other = cenv.engine.execute(cenv.request(request_id="c-reuse", duration="20m"))
    assert other.status == "refused" and other.field == "request_id"
    assert cenv.target.principals() == {cenv.target.made(first)}


def test_a_forged_label_never_steers_a_revoke_or_sweep(cenv: ContractEnv) -> None:
    planned = cenv.target.planned_principal(
        cenv.engine.plan(cenv.request(request_id="c-forged")).statements
    )
    grant_id = str(cenv.request(request_id="c-forged").target_grant_id)
    cenv.engine.execute(cenv.request(request_id="c-real"))  # the target's ledger is in use
    cenv.target.make_foreign(planned)  # named exactly as the connector would name that grant
    cenv.target.forge_label(planned, grant_id, cenv.target.integration)
    before = cenv.target.snapshot()
    revoke = cenv.engine.execute(cenv.request("revoke", request_id="c-forged"))
    assert _left_alone(revoke), revoke
    cenv.advance(timedelta(hours=9))
    report = cenv.engine.sweep()
    assert grant_id not in report.revoked and report.ok and not report.residual
    assert cenv.target.snapshot() == before and planned in cenv.target.principals()


def test_revoke_before_grant_and_duplicate_revoke_succeed(cenv: ContractEnv) -> None:
    grant = cenv.request(request_id="c-early")
    revoke = cenv.request("revoke", request_id="c-early")
    first = cenv.engine.execute(revoke)
    assert first.status == "revoked" and "nothing to revoke" in str(first.message)
    late = cenv.engine.execute(grant)
    assert late.status == "refused" and late.field == "request_id"
    assert cenv.engine.execute(revoke).status == "revoked"
    granted_then = cenv.request(request_id="c-twice")
    outcome = cenv.engine.execute(granted_then)
    revoke_twice = cenv.request("revoke", request_id="c-twice")
    assert cenv.engine.execute(revoke_twice).status == "revoked"
    again = cenv.engine.execute(revoke_twice)
    assert again.status == "revoked" and "nothing to revoke" in str(again.message)
    assert cenv.engine.execute(granted_then).status == "refused"  # redelivered after revoke
    assert not cenv.can_login(cenv.holder(outcome))
    assert cenv.target.made(outcome) not in cenv.target.principals()


def test_overlapping_grants_are_independent(cenv: ContractEnv) -> None:
    one = cenv.engine.execute(cenv.request(request_id="c-ov1", duration="10m"))
    two = cenv.engine.execute(cenv.request(request_id="c-ov2", duration="1h"))
    assert cenv.target.made(one) != cenv.target.made(two)
    creds_two = cenv.holder(two)
    live = cenv.target.login(creds_two)
    assert cenv.engine.execute(cenv.request("revoke", request_id="c-ov1")).status == "revoked"
    assert cenv.target.alive(live)
    cenv.target.allowed(live)
    cenv.target.close(live)
    cenv.advance(timedelta(minutes=11))
    report = cenv.engine.sweep()
    assert report.revoked == [] and report.ok  # ov1 gone already, ov2 not yet due
    assert cenv.usable(creds_two)
    if cenv.target.generates_secrets:  # else both grants share one principal, which two keeps
        assert not cenv.can_login(cenv.holder(one))


def test_revoke_is_frozen_at_grant_time(target: Target, make_contract_env: MakeEnv) -> None:
    env = make_contract_env()
    outcome = env.engine.execute(env.request(request_id="c-frozen", permission="custom"))
    assert outcome.status == "granted", outcome
    creds = env.holder(outcome)
    assert env.usable(creds)
    # The permission is gone from the catalog and the other one now grants something else.
    later_permissions = {"allowed": target.permissions()["allowed"]}
    later = make_contract_env(catalog_doc(target, permissions=later_permissions))
    revoke = later.engine.execute(later.request("revoke", request_id="c-frozen"))
    assert revoke.status == "revoked" and revoke.verified
    assert not env.can_login(creds)


def test_a_revoke_after_the_naming_settings_change_ends_the_grant_made_before(
    target: Target, make_contract_env: MakeEnv
) -> None:
    """What a revoke removes was fixed at grant time, names included: after the catalog changes
    what a new grant's principal would be called (another prefix), a revoke still ends the
    grant made before, or fails, retried, naming it; it never says revoked while it lives. The
    sweep ends it at its expiry all the same."""
    env = make_contract_env()
    outcome = env.engine.execute(env.request(request_id="c-renamed"))
    holder = env.holder(outcome)
    assert env.usable(holder)
    later = make_contract_env(catalog_doc(target, connection=target.connection(**target.renamed())))
    revoke = later.engine.execute(later.request("revoke", request_id="c-renamed"))
    if revoke.status == "revoked":
        assert revoke.verified and not env.usable(holder), revoke
    else:
        assert revoke.status == "failed" and not revoke.verified, revoke
        assert any(target.made(outcome) in line for line in revoke.residual), revoke.residual
        done = env.engine.execute(env.request("revoke", request_id="c-renamed"))
        assert done.status == "revoked" and done.verified and not env.usable(holder), done
    again = later.engine.execute(later.request(request_id="c-swept", duration="5m"))
    assert again.status == "granted", again
    swept = make_contract_env()
    swept.advance(timedelta(minutes=10))
    report = swept.engine.sweep()
    assert again.grant_id in report.revoked and report.ok, report
    assert not env.usable(env.holder(again))


def _stones(env: ContractEnv, grant_id: str) -> list[str]:
    """The tombstones of this grant that the target lists (by name)."""
    listed = env.engine.live_grants()[env.target.integration]
    assert not isinstance(listed, str), listed
    return [g.principal for g in listed if g.grant_id == grant_id and g.state == "tombstone"]


def test_a_tombstone_made_before_the_naming_settings_change_is_forgotten_in_its_time(
    target: Target, make_contract_env: MakeEnv
) -> None:
    """The target lists a revoke's tombstone under the name it was made with after the naming
    settings change too, and the sweep forgets it there once no delivery of its grant can
    succeed: once, not reported again at every sweep. (Where tombstones live outside what the
    target lists, a bucket's lifecycle rule removes them: both listings are empty.)"""
    env = make_contract_env()
    outcome = env.engine.execute(env.request(request_id="c-renamed-stone"))
    revoke = env.engine.execute(env.request("revoke", request_id="c-renamed-stone"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    stones = _stones(env, outcome.grant_id)
    later = make_contract_env(catalog_doc(target, connection=target.connection(**target.renamed())))
    assert _stones(later, outcome.grant_id) == stones
    later.advance(timedelta(days=30))
    first = later.engine.sweep()
    assert first.ok and first.forgotten == [outcome.grant_id] * len(stones), first
    assert _stones(later, outcome.grant_id) == []
    second = later.engine.sweep()
    assert second.ok and second.forgotten == [], second


def _made_again(target: Target, make_contract_env: MakeEnv, request_id: str) -> Any:
    """A grant, then the same request delivered again after the naming settings changed: the
    two environments and what each grantee holds."""
    env = make_contract_env()
    first = env.engine.execute(env.request(request_id=request_id))
    later = make_contract_env(catalog_doc(target, connection=target.connection(**target.renamed())))
    second = later.engine.execute(later.request(request_id=request_id))
    assert first.status == second.status == "granted", second
    return env, later, [env.holder(first), later.holder(second)]


def test_a_grant_made_again_after_the_naming_settings_change_ends_whole_at_its_revoke(
    target: Target, make_contract_env: MakeEnv
) -> None:
    env, later, holders = _made_again(target, make_contract_env, "c-renamed-twice")
    revoke = later.engine.execute(later.request("revoke", request_id="c-renamed-twice"))
    if revoke.status == "revoked":
        assert revoke.verified and not any(env.usable(h) for h in holders), revoke
    else:
        assert revoke.status == "failed" and not revoke.verified, revoke


def test_a_grant_made_again_after_the_naming_settings_change_ends_whole_at_the_next_sweep(
    target: Target, make_contract_env: MakeEnv
) -> None:
    """A redelivery under the new settings may make the grant's principal again under its new
    name: the revoke ends that one, and the first sweep after it the one from before (live
    under its grant's tombstone) at the latest."""
    env, later, holders = _made_again(target, make_contract_env, "c-renamed-swept")
    revoke = later.engine.execute(later.request("revoke", request_id="c-renamed-swept"))
    assert revoke.status in ("revoked", "failed"), revoke
    report = later.engine.sweep()
    assert report.ok, report
    assert not any(env.usable(holder) for holder in holders)


def test_a_grant_revoked_before_the_naming_settings_change_is_not_made_again(
    target: Target, make_contract_env: MakeEnv
) -> None:
    env = make_contract_env()
    first = env.engine.execute(env.request(request_id="c-renamed-late"))
    revoke = env.engine.execute(env.request("revoke", request_id="c-renamed-late"))
    assert revoke.status == "revoked" and revoke.verified, revoke
    later = make_contract_env(catalog_doc(target, connection=target.connection(**target.renamed())))
    late = later.engine.execute(later.request(request_id="c-renamed-late"))
    assert late.status == "refused" and late.field == "request_id", late
    assert not env.usable(env.holder(first))


def test_sweep_revokes_expired_grants_only_and_never_a_foreign_principal(
    cenv: ContractEnv,
) -> None:
    short = cenv.engine.execute(cenv.request(request_id="c-sw1", duration="5m"))
    long = cenv.engine.execute(cenv.request(request_id="c-sw2", duration="2h"))
    foreign = f"{cenv.target.planned_principal(cenv.engine.plan(cenv.request()).statements)}x"
    cenv.target.make_foreign(foreign)
    before = cenv.target.snapshot()
    live = cenv.target.login(cenv.holder(short))
    cenv.advance(timedelta(minutes=10))
    report = cenv.engine.sweep()
    assert report.revoked == [short.grant_id] and report.ok
    assert cenv.target.made(short) not in cenv.target.principals()
    assert cenv.usable(cenv.holder(long))
    if cenv.target.generates_secrets:  # else both grants share one principal, which long keeps
        assert not cenv.target.alive(live)
        assert not cenv.can_login(cenv.holder(short))
    assert cenv.target.snapshot() == before
    cenv.advance(timedelta(hours=3))
    assert cenv.engine.sweep().revoked == [long.grant_id]
    assert foreign in cenv.target.principals()


def test_a_principal_the_connector_did_not_create_is_never_changed(cenv: ContractEnv) -> None:
    planned = cenv.engine.plan(cenv.request(request_id="c-clash"))
    name = cenv.target.planned_principal(planned.statements)
    cenv.target.make_foreign(name)
    before = cenv.target.snapshot()
    outcome = cenv.engine.execute(cenv.request(request_id="c-clash"))
    assert outcome.status == "refused" and "not created by this connector" in str(outcome.message)
    revoke = cenv.engine.execute(cenv.request("revoke", request_id="c-clash"))
    assert _left_alone(revoke), revoke
    cenv.advance(timedelta(hours=9))
    report = cenv.engine.sweep()
    assert not report.revoked and report.ok
    assert cenv.target.snapshot() == before
    assert name in cenv.target.principals()


def test_hostile_names_and_resources_are_refused_with_the_target_unchanged(
    target: Target, make_contract_env: MakeEnv
) -> None:
    env = make_contract_env()
    before = (target.principals(), target.snapshot())
    for hostile in target.hostile_resources():
        permissions = {"allowed": {**target.permissions()["allowed"], "resources": [hostile]}}
        with pytest.raises(CatalogError):
            parse_catalog(catalog_doc(target, permissions=permissions))
        try:
            request = env.request(resources=[hostile])
        except Refused as exc:  # the request's own schema already refuses it
            assert exc.field == "resources.0"
            continue
        outcome = env.engine.execute(request)
        assert outcome.status == "refused" and outcome.field == "resources[0]", hostile
    for username in ["alice'; DROP USER root; --", 'x"y', "a b", "`x`"]:
        with pytest.raises(Refused, match=r"identity\.username"):
            parse_request(
                json.dumps(
                    {
                        "request_id": "c-bad",
                        "action": "grant",
                        "integration": target.integration,
                        "permission": "allowed",
                        "resources": [target.resource()],
                        "identity": {"email": "a@example.com", "username": username},
                        "duration": "5m",
                    }
                )
            )
    not_offered = env.engine.execute(env.request(permission="nope"))
    assert not_offered.status == "refused" and not_offered.field == "permission"
    assert (target.principals(), target.snapshot()) == before


def test_canary_secrets_never_leak(
    target: Target, make_contract_env: MakeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = target.admin_secret()
    env = make_contract_env()
    outcome = env.engine.execute(env.request(request_id="c-canary"))
    assert outcome.status == "granted", outcome
    password = (
        env.credentials(outcome.sealed_credentials)["password"]
        if target.generates_secrets
        else canary
    )
    env.engine.execute(env.request("revoke", request_id="c-canary"))
    texts = [caplog.text]
    texts += [e.model_dump_json() for e in env.sink.events]
    texts += [o.model_dump_json() for o in env.sink.outcomes]
    dead = target.broken_connection()
    if dead is not None:
        # A failure: nothing listens there, and an error text is where a secret slips in.
        broken = make_contract_env(catalog_doc(target, connection=dead))
        failed = broken.engine.execute(broken.request(request_id="c-canary-2"))
        assert failed.status == "failed"
        texts += [caplog.text, failed.model_dump_json()]
        texts += [e.model_dump_json() for e in broken.sink.events]
        texts += [o.model_dump_json() for o in broken.sink.outcomes]
    for text in texts:
        assert canary not in text and password not in text
