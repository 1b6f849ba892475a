"""The engine: check against the catalog, resolve the secret, run the template, schedule the
expiry, report. Every operation is idempotent by grant id, because queues redeliver and reorder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from jitc.catalog import Catalog, Integration
from jitc.errors import AuthenticationFailed, JitcError, Refused, SecretError
from jitc.labels import LabelKey
from jitc.messages import Work
from jitc.models import AccessRequest, AuditEvent, Grant, Outcome, parsed_duration, utcnow
from jitc.ports import EventSink, ExpiryScheduler
from jitc.secrets import Secret, SecretRef, SecretStore, reread
from jitc.templates.base import (
    GrantResult,
    GrantSpec,
    InventoryRecord,
    RevokeResult,
    TargetSession,
    fields_repr,
)

if TYPE_CHECKING:
    # The inventory sync is imported by sync() alone: the worker, sweep and intake never sync,
    # and its module (threads, temp files, paging) is ~15 ms of CPU in their cold start.
    from jitc.inventory import InventoryTransport, SyncReport, SyncState


def seal(credentials: dict[str, str], public_key_b64: str) -> str:
    """`jitc.sealing.seal`, imported when a grant first seals credentials: PyNaCl (~6 ms) stays
    out of the cold start of a revoke, an expiry or a sweep."""
    from jitc.sealing import seal as sealed

    return sealed(credentials, public_key_b64)


log = logging.getLogger("jitc.engine")

# A tombstone outlives the catalog's longest grant, plus clock skew: any grant delivered after it
# is gone has expired by then and is refused on its own.
TOMBSTONE_MARGIN = timedelta(minutes=10)
# The catalog's durations, parsed once each: every revoke asks for the allowed clock skew.


class _Batch:
    """Secrets and connections for one batch: each fetched at most once, all dropped at the end."""

    def __init__(self, secrets: SecretStore, label_key: SecretRef | None = None) -> None:
        self._store = secrets
        self._label_ref = label_key
        self._secrets: dict[str, Secret | None] = {}
        self._sessions: dict[str, TargetSession] = {}
        self._reread: set[str] = set()
        self.ahead: dict[str, GrantResult | Refused] = {}

    def session(self, integration: Integration) -> TargetSession:
        session = self._sessions.get(integration.name)
        if session is None:
            if integration.name in self._reread:
                session = self._open_any(integration)
            else:
                try:
                    session = self._open(integration, self.secret(integration))
                except AuthenticationFailed:
                    if not self.reread(integration):
                        raise
                    session = self._open_any(integration)
            self._sessions[integration.name] = session
        return session

    def reread(self, integration: Integration) -> bool:
        """After the target refused the admin credential: read it again, once per batch and
        integration (a rotation moved it between our read and our login, or holds the new one
        as pending after setting it). False when that chance was already taken."""
        if integration.name in self._reread or integration.credentials is None:
            return False
        self._reread.add(integration.name)
        self.discard(integration)
        self._secrets.pop(integration.name, None)  # refused: only the fresh reads are tried
        for index, secret in enumerate(reread(self._store, integration.credentials)):
            # Under keys no integration name has, so every candidate is scrubbed and dropped.
            self._secrets[f"{integration.name}\0{index}"] = secret
        return True

    def _open_any(self, integration: Integration) -> TargetSession:
        """After a re-read: the candidate that logged in before, else each in turn."""
        proven = self._secrets.get(integration.name)
        if proven is not None:
            return self._open(integration, proven)
        refused: AuthenticationFailed | None = None
        index = 0
        while (secret := self._secrets.get(f"{integration.name}\0{index}")) is not None:
            index += 1
            try:
                session = self._open(integration, secret)
            except AuthenticationFailed as exc:
                refused = exc
                continue
            try:
                # A session that logs in only at its first command (Redis) proves this
                # candidate now, so a refused one makes way for the next.
                getattr(session, "login", lambda: None)()
            except AuthenticationFailed as exc:
                session.close()
                refused = exc
                continue
            self._secrets[integration.name] = secret
            return session
        raise refused or AuthenticationFailed(f"integration {integration.name!r}: no credential")

    def _open(self, integration: Integration, secret: Secret | None) -> TargetSession:
        """Templates that label with a MAC get the connector's label key with the connection."""
        template = integration.template
        if not getattr(template, "uses_label_key", False):
            return template.open(integration.name, integration.connection, secret)
        # Kept with the batch's other secrets (no integration name holds a NUL), so it is
        # scrubbed from error texts and dropped with the batch like them.
        if self._label_ref is not None and "\0label" not in self._secrets:
            self._secrets["\0label"] = self._store.resolve(self._label_ref)
        key = self._secrets.get("\0label")
        if key is None:
            # The catalog refuses this; a template that labels never runs with a public key.
            raise SecretError(f"integration {integration.name!r}: connector.label_key is not set")
        if len(key.reveal()) < 16:
            # A configured key that is empty or short would make labels forgeable in silence.
            raise SecretError(f"secret {self._label_ref}: a label key needs 16 characters or more")
        opener: Any = template.open
        return cast(
            TargetSession,
            opener(
                integration.name,
                integration.connection,
                secret,
                label_key=LabelKey.from_secret(key.reveal()),
            ),
        )

    def secret(self, integration: Integration) -> Secret | None:
        if integration.name not in self._secrets:
            ref = integration.credentials
            self._secrets[integration.name] = self._store.resolve(ref) if ref else None
        return self._secrets[integration.name]

    def discard(self, integration: Integration) -> None:
        """Forget a connection that failed, so the next message reconnects."""
        session = self._sessions.pop(integration.name, None)
        if session is not None:
            # Closed for good, never kept for a later batch: its state is not known. (Its pool
            # key stays: a refused credential still clears every session kept under it.)
            if hasattr(session, "broken"):
                session.broken = True
            try:
                session.close()
            except Exception:
                log.debug("closing a failed session raised", exc_info=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets.values():
            if secret is not None and secret.reveal():
                text = text.replace(secret.reveal(), "********")
        return text

    # A context manager of its own (not contextlib's generator): one per message on the
    # worker's path.
    def __enter__(self) -> _Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for name in list(self._sessions):
            session = self._sessions.pop(name)
            try:
                session.close()
            except Exception:
                log.debug("closing session raised", exc_info=True)
        self._secrets.clear()


class SweepReport:
    # A plain class, not a dataclass: see jitc.templates.base.GrantSpec.
    __slots__ = ("failed", "forgotten", "remaining", "residual", "revoked", "unfinished")

    def __init__(self) -> None:
        self.revoked: list[str] = []
        self.residual: dict[str, list[str]] = {}
        self.forgotten: list[str] = []
        self.failed: dict[str, str] = {}
        self.remaining = 0
        # Revokes (or integrations) not started because the time budget ran out: the next
        # sweep does them; a sweep that left some is not complete.
        self.unfinished = 0

    def __repr__(self) -> str:
        return fields_repr(self, self.__slots__)

    @property
    def ok(self) -> bool:
        return not self.failed


class Engine:
    def __init__(
        self,
        catalog: Catalog,
        secrets: SecretStore,
        scheduler: ExpiryScheduler,
        sink: EventSink,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.catalog = catalog
        self.secrets = secrets
        self.scheduler = scheduler
        self.sink = sink
        self.clock = clock

    # -- public surface --------------------------------------------------------------------

    def plan(
        self, request: AccessRequest, issued_at: datetime | None = None, *, plain: bool = False
    ) -> Outcome:
        """The statements a grant would run; no connection, no secret, no side effect."""
        issued = issued_at or self.clock()
        try:
            if request.action != "grant":
                raise Refused(
                    "action", "only a grant has a plan; a revoke drops what the grant made"
                )
            spec = self.catalog.check_grant(request, issued, self.clock(), plain=plain)
            integration = self.catalog.integration(request.integration)
            statements = integration.template.plan(integration.connection, spec)
        except Refused as exc:
            return self._refusal(request, exc)
        return Outcome(
            request_id=request.request_id,
            action="grant",
            status="planned",
            integration=request.integration,
            grant_id=spec.grant_id,
            expires_at=spec.expires_at,
            statements=statements,
        )

    def execute(
        self, request: AccessRequest, issued_at: datetime | None = None, *, plain: bool = False
    ) -> Outcome:
        return self.execute_batch([Work(request, issued_at or self.clock())], plain=plain)[0]

    def execute_batch(
        self,
        items: Sequence[Work],
        *,
        plain: bool = False,
        proceed: Callable[[], bool] | None = None,
    ) -> list[Outcome]:
        """Run a batch in order; one message's failure never stops the others.

        A `failed` outcome means: retry this message (the queue will); `refused` means: never.
        `proceed`, asked before each item, ends the batch early when it answers False (the
        caller's time is running out): only the items that ran have an outcome.
        """
        outcomes: list[Outcome] = []
        with self._batch() as batch:
            if proceed is None or proceed():
                self._grant_ahead(batch, items, plain)
            for work in items:
                # A grant already made ahead costs no more target time: report it. (Asked only
                # when something was made ahead: a grant's id is a hash of the request.)
                done = bool(batch.ahead) and work.request.target_grant_id in batch.ahead
                if not done and proceed is not None and not proceed():
                    break
                outcomes.append(self._run(batch, work, plain))
        return outcomes

    def _grant_ahead(self, batch: _Batch, items: Sequence[Work], plain: bool) -> None:
        """Run a batch's grants together where the template can (`grant_many`: one
        transaction, one savepoint each). Only grants no earlier revoke in the batch names go
        ahead, so the order of a grant and a revoke of one grant is kept. What fails here is
        simply run again, alone, in order; each outcome is still reported in order."""
        if len(items) < 2 or sum(work.request.action == "grant" for work in items) < 2:
            return  # nothing to group: each grant runs alone anyway, checked once there
        revoked: set[str] = set()
        groups: dict[str, list[GrantSpec]] = {}
        for work in items:
            request = work.request
            if request.action != "grant":
                revoked.add(request.target_grant_id)
                continue
            if request.target_grant_id in revoked:
                continue
            try:
                spec = self.catalog.check_grant(request, work.issued_at, self.clock(), plain=plain)
            except Refused:
                continue
            group = groups.setdefault(request.integration, [])
            if all(other.grant_id != spec.grant_id for other in group):
                group.append(spec)
        for name, specs in groups.items():
            integration = self.catalog.integration(name)
            try:
                grant_many = getattr(batch.session(integration), "grant_many", None)
                if grant_many is None or len(specs) < 2:
                    continue
                results = grant_many(specs)
            except Exception:  # each grant then runs alone and reports its own error
                log.warning("batched grants on %s failed; granting one by one", name)
                batch.discard(integration)
                continue
            for spec, result in zip(specs, results, strict=True):
                if isinstance(result, GrantResult | Refused):
                    batch.ahead[spec.grant_id] = result

    def sweep(
        self, now: datetime | None = None, proceed: Callable[[], bool] | None = None
    ) -> SweepReport:
        """Ask every target for our labelled grants and end those past their expiry, and any
        found live under its own tombstone.
        `proceed` is asked before each target and each revoke; once it answers False nothing
        more starts, so a sweep with a backlog ends inside its time instead of being killed."""
        report = SweepReport()
        moment = now or self.clock()
        with self._batch() as batch:
            for integration in self.catalog.integrations.values():
                if proceed is not None and not proceed():
                    report.unfinished += 1
                    continue
                try:
                    session = batch.session(integration)
                    grants = session.active_grants()
                except JitcError as exc:
                    report.failed[integration.name] = batch.scrub(str(exc))
                    continue
                except Exception as exc:  # a client library's error (Azure Storage's): this
                    # integration failed, not the sweep of every other one
                    batch.discard(integration)
                    report.failed[integration.name] = batch.scrub(type(exc).__name__)
                    continue
                due: list[str] = []
                # A grant both live and tombstoned was made again after its revoke (a delivery
                # cut short between its write and its look for the tombstone): it ends now, not
                # at its expiry, and its tombstone stays until that revoke is done.
                stones = {g.grant_id for g in grants if g.state == "tombstone"}
                live = {g.grant_id for g in grants if g.state != "tombstone"}
                for grant in grants:
                    if grant.state == "tombstone":
                        if grant.expires_at <= moment and grant.grant_id not in live:
                            try:
                                session.forget(grant.grant_id, grant.principal)
                            except Exception as exc:  # reported; the next sweep tries again
                                # One tombstone that cannot go (a lease on it, a Storage error)
                                # must not keep the revokes below from running.
                                report.failed[grant.grant_id] = "tombstone not forgotten: " + (
                                    batch.scrub(str(exc))
                                    if isinstance(exc, JitcError)
                                    else type(exc).__name__
                                )
                                continue
                            report.forgotten.append(grant.grant_id)
                    elif (
                        grant.expires_at <= moment
                        or grant.state == "revoking"
                        or grant.grant_id in stones
                    ):
                        due.append(grant.grant_id)
                # One revoke per grant, however many of its principals the target lists (one
                # made again under another prefix, say): a revoke acts on the grant.
                due = list(dict.fromkeys(due))
                if due and proceed is not None and not proceed():
                    report.unfinished += len(due)
                    report.remaining += len(due)
                    continue
                bulk = self._revoke_many(batch, integration, session, due)
                for grant_id in due:
                    request = AccessRequest(
                        request_id=f"sweep-{grant_id}",
                        action="revoke",
                        integration=integration.name,
                        grant_id=grant_id,
                    )
                    if grant_id not in bulk and proceed is not None and not proceed():
                        report.unfinished += 1
                        report.remaining += 1
                        continue
                    if grant_id in bulk:
                        try:
                            self.scheduler.cancel(grant_id)
                            outcome = self._revoked(request, integration, bulk[grant_id])
                        except Exception as exc:  # reported; the next sweep retries
                            outcome = self._failure(batch, request, exc)
                        self._report(request, outcome)
                    else:
                        outcome = self._run(batch, Work(request, moment), plain=False)
                    if outcome.status == "revoked":
                        report.revoked.append(grant_id)
                        if outcome.residual:
                            report.residual[grant_id] = outcome.residual
                            report.remaining += 1
                    else:
                        report.failed[grant_id] = outcome.message or outcome.status
                        report.remaining += 1
                # Template housekeeping after the revokes (PostgreSQL: bundles nobody uses), on
                # the batch's session now: a failure above may have discarded the one read first.
                if proceed is None or proceed():
                    try:
                        tidy = getattr(batch.session(integration), "tidy", None)
                        for line in tidy(moment) if tidy is not None else ():
                            report.failed[f"{integration.name}: {line}"] = line
                    except JitcError as exc:
                        report.failed[integration.name] = batch.scrub(str(exc))
                    except Exception as exc:  # reported; the next sweep tries again
                        report.failed[integration.name] = batch.scrub(type(exc).__name__)
        self.sink.audit(
            AuditEvent(
                type="sweep",
                status="failed" if report.failed else "revoked",
                message=(
                    f"revoked {len(report.revoked)}, forgot {len(report.forgotten)} tombstones, "
                    f"{len(report.failed)} failed, {report.remaining} left, "
                    f"{report.unfinished} not started for lack of time"
                ),
            )
        )
        return report

    def revoke_batch(self, requests: Sequence[AccessRequest]) -> list[Outcome]:
        """Revokes that fell due together (expiry timers): each integration's share goes to the
        template's bulk revoke where it has one, the rest one by one; reported one by one,
        exactly as `execute_batch` would."""
        outcomes: dict[int, Outcome] = {}
        with self._batch() as batch:
            shares: dict[str, list[int]] = {}
            for index, request in enumerate(requests):
                shares.setdefault(request.integration, []).append(index)
            for name, indexes in shares.items():
                integration = self.catalog.integrations.get(name)
                bulk: dict[str, RevokeResult] = {}
                if integration is not None:
                    ids = list(dict.fromkeys(requests[i].target_grant_id for i in indexes))
                    try:
                        session = batch.session(integration)
                    except Exception:  # each revoke below reports the connection's failure
                        batch.discard(integration)
                    else:
                        bulk = self._revoke_many(batch, integration, session, ids)
                for index in indexes:
                    request = requests[index]
                    result = bulk.get(request.target_grant_id)
                    if integration is None or result is None:
                        outcomes[index] = self._run(batch, Work(request, self.clock()), False)
                        continue
                    try:
                        self.scheduler.cancel(request.target_grant_id)
                        outcome = self._revoked(request, integration, result)
                    except Exception as exc:  # reported; the message is retried
                        outcome = self._failure(batch, request, exc)
                    self._report(request, outcome)
                    outcomes[index] = outcome
        return [outcomes[index] for index in range(len(requests))]

    def refuse(self, request: AccessRequest, exc: Refused) -> Outcome:
        """Report a request refused before it reached the engine, as the engine reports its own."""
        outcome = self._refusal(request, exc)
        self._report(request, outcome)
        return outcome

    def live_grants(self, names: Sequence[str] | None = None) -> dict[str, list[Grant] | str]:
        """The grants each target still holds that this connector made (the target is the
        ledger), by integration; an integration that cannot be read gives the reason instead."""
        found: dict[str, list[Grant] | str] = {}
        with self._batch() as batch:
            for integration in self.catalog.integrations.values():
                if names is not None and integration.name not in names:
                    continue
                try:
                    found[integration.name] = batch.session(integration).active_grants()
                except Exception as exc:
                    batch.discard(integration)
                    text = str(exc) if isinstance(exc, JitcError) else type(exc).__name__
                    found[integration.name] = batch.scrub(text)
        return found

    def sync(
        self,
        transport: InventoryTransport,
        state: SyncState,
        *,
        names: Sequence[str] | None = None,
        full: bool = False,
        proceed: Callable[[], bool] | None = None,
        stall_seconds: float | None = None,
    ) -> SyncReport:
        """Send every integration's inventory (names only) and the connector's own view of it
        (catalog permissions, live grants) to the control plane: see jitc.inventory.
        `stall_seconds` defaults to jitc.inventory.DEFAULT_STALL_SECONDS."""
        from jitc.inventory import DEFAULT_STALL_SECONDS, Syncer

        def target_records(integration: Integration) -> Iterator[Grant | InventoryRecord]:
            # Runs in the sync's reader thread, with its own batch: its connection is opened,
            # used and closed by that thread alone, even when the sync gives up waiting on it.
            with self._batch() as batch:
                try:
                    session = batch.session(integration)
                    yield from session.active_grants()
                    yield from session.inventory_records()
                except JitcError as exc:
                    raise type(exc)(batch.scrub(str(exc))) from None

        syncer = Syncer(
            self.catalog,
            target_records,
            transport,
            state,
            clock=self.clock,
            stall_seconds=DEFAULT_STALL_SECONDS if stall_seconds is None else stall_seconds,
            proceed=proceed,
        )
        return syncer.run(names, full=full)

    # -- internals -------------------------------------------------------------------------

    def _batch(self) -> _Batch:
        """A batch to use in a `with` block: closed at its end, whatever happened."""
        return _Batch(self.secrets, self.catalog.connector.label_key_ref)

    def _run(self, batch: _Batch, work: Work, plain: bool) -> Outcome:
        request = work.request
        try:
            try:
                outcome = self._act(batch, work, plain)
            except AuthenticationFailed:
                # Refused mid-operation (a revoke opens a connection per database): every
                # operation is idempotent, so it runs again once on the credential read afresh.
                integration = self.catalog.integrations.get(request.integration)
                if integration is None or not batch.reread(integration):
                    raise
                outcome = self._act(batch, work, plain)
        except Refused as exc:
            outcome = self._refusal(request, exc)
        except Exception as exc:  # one message's failure is reported, then retried by the queue
            outcome = self._failure(batch, request, exc)
        self._report(request, outcome)
        return outcome

    def _act(self, batch: _Batch, work: Work, plain: bool) -> Outcome:
        if work.request.action == "grant":
            return self._grant(batch, work, plain)
        return self._revoke(batch, work.request)

    def _failure(self, batch: _Batch, request: AccessRequest, exc: Exception) -> Outcome:
        integration = self.catalog.integrations.get(request.integration)
        if integration is not None:
            batch.discard(integration)
        message = batch.scrub(f"{type(exc).__name__}: {exc}")
        log.warning("request %s failed: %s", request.request_id, message)
        return Outcome(
            request_id=request.request_id,
            action=request.action,
            status="failed",
            integration=request.integration,
            grant_id=request.target_grant_id,
            message=message,
        )

    def _grant(self, batch: _Batch, work: Work, plain: bool) -> Outcome:
        request = work.request
        spec = self.catalog.check_grant(request, work.issued_at, self.clock(), plain=plain)
        integration = self.catalog.integration(request.integration)
        result = batch.ahead.pop(spec.grant_id, None) or batch.session(integration).grant(spec)
        if isinstance(result, Refused):
            raise result
        expires_at = self._recorded_expiry(batch, integration, spec, result)
        self.scheduler.schedule(spec.grant_id, integration.name, expires_at)
        credentials = result.credentials
        if credentials is not None and "expires_at" in credentials:
            credentials = {**credentials, "expires_at": expires_at.isoformat()}
        sealed = None
        assert request.identity is not None
        if credentials is not None and request.identity.public_key is not None:
            sealed = spec.sealed_for(credentials) or seal(credentials, request.identity.public_key)
        return Outcome(
            request_id=request.request_id,
            action="grant",
            status="granted",
            integration=integration.name,
            grant_id=spec.grant_id,
            principal=result.principal,
            expires_at=expires_at,
            sealed_credentials=sealed,
            credentials=credentials if plain else None,
            reissued=result.reissued,
            message=result.note,
        )

    def _recorded_expiry(
        self, batch: _Batch, integration: Integration, spec: GrantSpec, result: GrantResult
    ) -> datetime:
        """The expiry the target holds for this grant. A redelivery computes its own, later one
        (a duration counts from its own signature), but the grant keeps the first: the timer
        and every outcome must say what the target will enforce."""
        if result.expires_at is not None:
            return result.expires_at
        if result.reissued:
            for grant in batch.session(integration).active_grants():
                if grant.grant_id == spec.grant_id and grant.state == "active":
                    return grant.expires_at
        return spec.expires_at

    def _tombstone_until(self, integration: Integration) -> datetime:
        skew = parsed_duration(self.catalog.control_plane.max_skew)
        return self.clock() + integration.max_duration + TOMBSTONE_MARGIN + skew

    def _revoke_many(
        self, batch: _Batch, integration: Integration, session: TargetSession, grant_ids: list[str]
    ) -> dict[str, RevokeResult]:
        """The template's bulk revoke where it has one; what it misses is revoked one by one."""
        revoke_many = getattr(session, "revoke_many", None)
        if revoke_many is None or not grant_ids:
            return {}
        try:
            results: dict[str, RevokeResult] = revoke_many(
                grant_ids, self._tombstone_until(integration)
            )
        except Exception:  # each grant is then retried alone, which reports its own error
            log.warning("bulk revoke on %s failed; revoking one by one", integration.name)
            batch.discard(integration)
            return {}
        return results

    def _revoke(self, batch: _Batch, request: AccessRequest) -> Outcome:
        integration = self.catalog.integration(request.integration)
        until = self._tombstone_until(integration)
        result = batch.session(integration).revoke(request.target_grant_id, until)
        self.scheduler.cancel(request.target_grant_id)
        return self._revoked(request, integration, result)

    def _revoked(
        self, request: AccessRequest, integration: Integration, result: RevokeResult
    ) -> Outcome:
        lag = None
        if result.expires_at is not None:
            lag = (self.clock() - result.expires_at).total_seconds()
        return Outcome(
            request_id=request.request_id,
            action="revoke",
            # Access that may still be usable is a failure: the message is retried until it is gone.
            status="revoked" if result.verified else "failed",
            integration=integration.name,
            grant_id=request.target_grant_id,
            principal=result.principal,
            expires_at=result.expires_at,
            residual=result.residual,
            verified=result.verified,
            revocation_lag_seconds=lag,
            message=result.note
            if result.found
            else "nothing to revoke (never granted or already revoked)",
        )

    def _refusal(self, request: AccessRequest, exc: Refused) -> Outcome:
        return Outcome(
            request_id=request.request_id,
            action=request.action,
            status="refused",
            integration=request.integration,
            grant_id=request.target_grant_id,
            field=exc.field,
            message=exc.message,
        )

    def _report(self, request: AccessRequest, outcome: Outcome) -> None:
        kind = {"refused": "refusal", "failed": "failure"}.get(outcome.status, request.action)
        self.sink.audit(
            AuditEvent(
                type=kind,  # type: ignore[arg-type]
                status=outcome.status,
                request_id=request.request_id,
                grant_id=outcome.grant_id,
                integration=request.integration,
                permission=request.permission,
                identity=request.identity.email if request.identity else None,
                principal=outcome.principal,
                expires_at=outcome.expires_at,
                justification=request.justification,
                field=outcome.field,
                message=outcome.message,
                residual=outcome.residual,
                verified=outcome.verified,
                revocation_lag_seconds=outcome.revocation_lag_seconds,
            )
        )
        # Plain credentials are for the local caller only; the control plane gets the sealed box.
        if outcome.credentials is not None:
            outcome = outcome.model_copy(update={"credentials": None})
        self.sink.outcome(outcome)
