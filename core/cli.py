"""`jitc`: the command line.

Exit status: 0 success; 1 failure (a target, the network, a sink or the disk failed: trying
again may help); 2 refused (the request or an input file is invalid, missing or not allowed:
nothing was done); 64 usage (wrong arguments); 130 interrupted.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import importlib
import json
import logging
import math
import os
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

from jitc.catalog import Catalog, catalog_warnings, load_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError, JitcError, Refused
from jitc.local import FanOutSink, JsonLinesSink, NullScheduler
from jitc.messages import parse_request
from jitc.models import AuditEvent, Outcome, utcnow
from jitc.ports import EventSink
from jitc.secrets import local_stores
from jitc.signing import sign, signing_keypair

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 64, 130
SHOWN = 20  # live grants listed when serve stops


class Failed(JitcError):
    """Something outside the input failed (network, disk, server); the message says what."""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with their own status, never 2 (which means refused)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: usage error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _read(source: str, what: str = "request") -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise Refused(what, f"cannot read {source}: {exc.strerror}") from None


def _key(path: str, what: str) -> str:
    """A base64 32-byte key from a file: the refusal names the file, never its content."""
    text = _read(path, "key").decode("utf-8", "replace").strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise Refused("key", f"{path} does not hold a base64 {what} private key (jitc keygen)")
    return text


def _catalog(args: argparse.Namespace) -> Catalog:
    path = getattr(args, "path", None) or args.catalog or os.environ.get("JITC_CATALOG")
    if not path:
        raise Refused("catalog", "no catalog: pass --catalog PATH or set JITC_CATALOG")
    try:
        return load_catalog(path)
    except CatalogError as exc:
        raise Refused("catalog", str(exc)) from None
    except UnicodeDecodeError:
        raise Refused("catalog", f"{path} is not UTF-8 text") from None


def _ranged(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a finite number within [low, high]."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


class _CheckedSink:
    """Audit events as JSON lines, opened before anything is done, so that no act happens
    without its record; a write that fails later is remembered, not raised, so the person
    still sees the outcome of what was done, and is told that the record is missing."""

    def __init__(self, events: str | None) -> None:
        self.error: str | None = None
        if events and events != "-":
            path = Path(events)
            try:
                # Events name identities and grants: readable by the connector's user only.
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
            except OSError as exc:
                raise Refused("events", f"cannot write {events}: {exc.strerror}") from None
            self._inner = JsonLinesSink(path=path)
        else:
            self._inner = JsonLinesSink()

    def audit(self, event: AuditEvent) -> None:
        try:
            self._inner.audit(event)
        except OSError as exc:
            self.error = f"audit event not recorded: {exc.strerror or exc}"

    def outcome(self, outcome: Outcome) -> None:
        try:
            self._inner.outcome(outcome)
        except OSError as exc:
            self.error = f"outcome not recorded: {exc.strerror or exc}"


# What each target kind's template needs installed, and the extra that installs it.
KIND_NEEDS = {
    "postgresql": ("psycopg", "postgresql"),
    "aws_iam": ("boto3", "aws"),
    "aws_identity_center": ("boto3", "aws"),
    "gcp_iam": ("googleapiclient", "gcp"),
}


def _check_installed(catalog: Catalog) -> None:
    """Say which extra to install before anything runs, rather than fail inside a grant."""
    for integration in catalog.integrations.values():
        module, extra = KIND_NEEDS.get(integration.kind, (None, None))
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            raise Failed(
                f"integration {integration.name!r} ({integration.kind}) needs {module}: "
                f"pip install 'jit-connector[{extra}]'"
            ) from None


def _engine(args: argparse.Namespace) -> tuple[Engine, _CheckedSink]:
    catalog = _catalog(args)
    _check_installed(catalog)
    sink = _CheckedSink(getattr(args, "events", None))
    # One-shot commands have no timer to keep: expiry is enforced by the target and the sweep.
    return Engine(catalog, local_stores(), NullScheduler(), sink), sink


def _status(outcome: Outcome) -> int:
    return {"refused": EXIT_REFUSED, "failed": EXIT_FAILED}.get(outcome.status, EXIT_OK)


def _create_private(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Refused("out", f"{path} exists; it is not overwritten") from None
    except OSError as exc:
        raise Refused("out", f"cannot create {path}: {exc.strerror}") from None


def _write_private(path: str, text: str) -> None:
    with os.fdopen(_create_private(path), "w") as fh:
        fh.write(text + "\n")


class _OutFile:
    """The --out file, created before the grant is made: a grant whose credentials could not be
    written anywhere would be a password nobody can use, and a re-run would issue another."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd = _create_private(path) if path else None
        self.error: str | None = None

    def write(self, text: str) -> bool:
        if self._fd is None:
            return False
        fd, self._fd = self._fd, None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text + "\n")
        except OSError as exc:
            self.error = f"could not write {self.path}: {exc.strerror or exc}"
            return False
        return True

    def discard(self) -> None:
        """Nothing to write (refused or failed): remove the empty file this command created."""
        if self._fd is not None and self.path:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _show(
    outcome: Outcome,
    args: argparse.Namespace,
    sink: _CheckedSink | None = None,
    out_file: _OutFile | None = None,
) -> int:
    out = None
    if out_file is not None:
        if outcome.sealed_credentials and out_file.write(outcome.sealed_credentials):
            out = out_file.path
        out_file.discard()
    code = _status(outcome)
    if out_file is not None and out_file.error and code == EXIT_OK:
        code = EXIT_FAILED
    if sink is not None and sink.error and code == EXIT_OK:
        code = EXIT_FAILED
    if args.json:
        doc = outcome.model_dump(mode="json", exclude_none=True)
        if sink is not None and sink.error:
            doc["sink_error"] = sink.error
        if out_file is not None and out_file.error:
            doc["out_error"] = out_file.error
        print(json.dumps(doc, indent=2))
        return code
    head = f"{outcome.status}: {outcome.action} {outcome.request_id}"
    if outcome.grant_id:
        head += f" (grant {outcome.grant_id})"
    print(head)
    if outcome.field or outcome.message:
        print(f"  {outcome.field + ': ' if outcome.field else ''}{outcome.message or ''}")
    if outcome.principal:
        print(f"  principal: {outcome.principal}")
    if outcome.expires_at:
        print(f"  expires at: {outcome.expires_at.isoformat()} ({_left(outcome.expires_at)})")
    for statement in outcome.statements:
        print(f"  {statement};")
    if outcome.sealed_credentials:
        if out:
            print(f"  sealed credentials: written to {out}")
        else:
            print(f"  sealed credentials: {outcome.sealed_credentials}")
        print("  (open them with: jitc open FILE --key BOX.key, or paste them into jitc open -)")
    if outcome.credentials:
        for key, value in outcome.credentials.items():
            print(f"  {key}: {value}")
    for item in outcome.residual:
        print(f"  left: {item}")
    if outcome.verified is not None:
        print(f"  access verified gone: {'yes' if outcome.verified else 'NO'}")
    if out_file is not None and out_file.error:
        print(f"  WARNING: {out_file.error}; the sealed credentials are shown above instead")
    if sink is not None and sink.error:
        print(f"  WARNING: {sink.error}; the action above was done")
    return code


def _left(moment: datetime) -> str:
    seconds = int((moment - utcnow()).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "in " + (f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s")


def cmd_request(args: argparse.Namespace) -> int:
    if args.command == "revoke" and args.grant_id:
        if args.request or not args.integration:
            raise Refused("grant-id", "give either REQUEST, or --grant-id with --integration")
        request = parse_request(
            json.dumps(
                {
                    "request_id": f"cli-revoke-{args.grant_id}",
                    "action": "revoke",
                    "integration": args.integration,
                    "grant_id": args.grant_id,
                }
            )
        )
    else:
        if not args.request:
            raise Refused("request", "give a request file, or - for stdin")
        request = parse_request(_read(args.request))
    if request.action != args.command and args.command != "plan":
        raise Refused("action", f"this request is a {request.action}, not a {args.command}")
    engine, sink = _engine(args)
    if args.command == "plan":
        # The operator previews statements; how credentials would travel is not the question.
        return _show(engine.plan(request, plain=True), args)
    out_file = _OutFile(getattr(args, "out", None))
    try:
        outcome = engine.execute(request, plain=getattr(args, "plain", False))
    except BaseException:
        out_file.discard()
        raise
    return _show(outcome, args, sink, out_file)


def cmd_list(args: argparse.Namespace) -> int:
    engine, _ = _engine(args)
    names = [args.integration] if args.integration else None
    if args.integration:
        engine.catalog.integration(args.integration)
    now = utcnow()
    found = engine.live_grants(names)
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for name, grants in found.items():
        if isinstance(grants, str):
            errors[name] = grants
            continue
        for grant in grants:
            if grant.state == "tombstone":
                continue
            rows.append(
                {
                    "integration": name,
                    "grant_id": grant.grant_id,
                    "principal": grant.principal,
                    "permission": grant.permission,
                    "state": grant.state,
                    "expires_at": grant.model_dump(mode="json")["expires_at"],
                    "seconds_left": max(0, int((grant.expires_at - now).total_seconds())),
                }
            )
    rows.sort(key=lambda r: (r["expires_at"], r["grant_id"]))
    if args.json:
        print(json.dumps({"grants": rows, "failed": errors}, indent=2))
    else:
        for row in rows:
            print(
                f"{row['integration']}  {row['grant_id']}  {row['principal']}  "
                f"{row['permission']}  {row['state']}  until {row['expires_at']} "
                f"({_left(datetime.fromisoformat(row['expires_at']))})"
            )
        if not rows:
            print("no live grants")
        for name, error in errors.items():
            print(f"failed {name}: {error}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    engine, sink = _engine(args)
    report = engine.sweep()
    doc: dict[str, Any] = {
        "revoked": report.revoked,
        "residual": report.residual,
        "forgotten": report.forgotten,
        "failed": report.failed,
        "remaining": report.remaining,
    }
    if sink.error:
        doc["sink_error"] = sink.error
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"revoked {len(report.revoked)}, tombstones forgotten {len(report.forgotten)}, "
            f"failed {len(report.failed)}, left {report.remaining}"
        )
        for key, value in report.failed.items():
            print(f"  failed {key}: {value}")
        if sink.error:
            print(f"  WARNING: {sink.error}")
    return EXIT_OK if report.ok and not sink.error else EXIT_FAILED


def cmd_sync(args: argparse.Namespace) -> int:
    from jitc.inventory import FileSyncState, JsonLinesTransport, webhook_transport

    engine, sink = _engine(args)
    if args.out == "-":
        transport: Any = JsonLinesTransport(sys.stdout)
    elif args.out:
        # Closed when the command ends; a new private file, like every --out.
        transport = JsonLinesTransport(os.fdopen(_create_private(args.out), "w"))
    else:
        transport = webhook_transport(engine.catalog, engine.secrets)
    integrations = [args.integration] if args.integration else None
    if integrations and args.integration not in engine.catalog.integrations:
        raise Refused("integration", f"{args.integration!r} is not in the catalog")
    report = engine.sync(
        transport,
        FileSyncState(Path(args.state)),
        names=integrations,
        full=args.full,
        stall_seconds=args.stall_seconds,
    )
    doc = report.as_dict()
    if sink.error:
        doc["sink_error"] = sink.error
    if args.json:
        print(json.dumps(doc, indent=2), file=sys.stderr if args.out == "-" else sys.stdout)
    else:
        for name, part in report.integrations.items():
            line = f"{name}: {part.status}"
            if part.status == "complete":
                line += (
                    f", {part.records} records in {part.pages} pages, {part.sent} sent"
                    f"{', acknowledged' if part.acked else ''}"
                )
            if part.error:
                line += f": {part.error}"
            print(line, file=sys.stderr if args.out == "-" else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_rotate(args: argparse.Namespace) -> int:
    from jitc.rotation import rotate_local

    done = rotate_local(_catalog(args), args.integration)
    doc = {
        "integration": done.integration,
        "reference": done.reference,
        "changed": done.changed,
        "old_refused": done.old_refused,
    }
    if done.note:  # e.g. a Redis server without an ACL file: a restart reverts the change
        doc["note"] = done.note
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        how = "changed" if done.changed else "already set by an interrupted rotation; finished"
        print(f"{done.integration}: admin password {how}; {done.reference} holds the new one")
        if not done.old_refused:
            print("  WARNING: the server still lets the old password in (does it check passwords?)")
        if done.note:
            print(f"  NOTE: {done.note}")
    return EXIT_OK


def cmd_catalog_check(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    warnings = catalog_warnings(catalog)
    rows = []
    for integration in catalog.integrations.values():
        permissions = {
            name: integration.permissions[name].max_duration or integration.max_duration_text
            for name in sorted(integration.permissions)
        }
        rows.append((integration, permissions))
    if args.json:
        doc = {
            "integrations": {
                i.name: {"kind": i.kind, "max_duration": i.max_duration_text, "permissions": p}
                for i, p in rows
            },
            "warnings": warnings,
        }
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    for integration, permissions in rows:
        shown = ", ".join(f"{name} (max {limit})" for name, limit in permissions.items())
        print(f"{integration.name} ({integration.kind}): {shown}")
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"catalog OK ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from jitc.inventory_models import SCHEMA_MODELS
    from jitc.openapi import openapi_document

    docs = {name: model.model_json_schema() for name, model in SCHEMA_MODELS.items()}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, doc in docs.items():
            (out / f"{name}.schema.json").write_text(
                json.dumps(doc, indent=2, sort_keys=True) + "\n"
            )
        (out / "openapi.json").write_text(
            json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
        )
        print(f"wrote {len(docs)} schemas and openapi.json to {out}")
    else:
        print(json.dumps(docs, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from jitc.sealing import box_keypair

    private, public = signing_keypair() if args.signing else box_keypair()
    _write_private(args.out, private)
    print(public)
    return EXIT_OK


def _is_sealed_blob(text: str) -> bool:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) > 48  # a sealed box adds 48 bytes to what it seals


def _sealed_from(text: str) -> str:
    """The sealed blob in an outcome, a `serve` events line, a webhook body, or the bare blob."""
    candidates: list[Any] = []
    try:
        candidates.append(json.loads(text))
    except ValueError:
        for line in text.splitlines():
            try:
                candidates.append(json.loads(line))
            except ValueError:
                continue
    for doc in reversed(candidates):
        if isinstance(doc, dict):
            inner = doc.get("outcome", doc)
            if isinstance(inner, dict) and isinstance(inner.get("sealed_credentials"), str):
                return str(inner["sealed_credentials"])
    bare = text.strip()
    if not candidates and _is_sealed_blob(bare):
        return bare
    raise Refused(
        "outcome", "no sealed_credentials in it (give an outcome, an event line or the blob)"
    )


def cmd_open(args: argparse.Namespace) -> int:
    from nacl.exceptions import CryptoError

    from jitc.sealing import unseal

    sealed = _sealed_from(_read(args.outcome, "outcome").decode("utf-8", "replace"))
    key = _key(args.key, "X25519 box")
    try:
        opened = unseal(sealed, key)
    except (CryptoError, binascii.Error, ValueError):
        raise Refused(
            "key", "these credentials do not open with this key (sealed to another key?)"
        ) from None
    print(json.dumps(opened, indent=2))
    return EXIT_OK


def _intake_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise Refused("url", f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("url", f"{url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/requests"):
        path += "/v1/requests"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def cmd_send(args: argparse.Namespace) -> int:
    url = _intake_url(args.url)
    body = _read(args.request)
    envelope = sign(body, _key(args.key, "Ed25519 signing"), args.key_id)
    request = urllib.request.Request(  # noqa: S310 - scheme checked in _intake_url
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **envelope.headers()},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Failed(f"cannot reach {url}: {reason}") from None
    print(text)
    if status < 300:
        return EXIT_OK
    return EXIT_REFUSED if status < 500 else EXIT_FAILED


class _OneLine(logging.Formatter):
    """serve's log: one line per record, the exception as its type and message; a traceback
    per failed request would bury the log of an outage."""

    def formatException(self, ei: Any) -> str:
        return f"{ei[0].__name__}: {ei[1]}" if ei and ei[0] else ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", " | ")


def _log_one_line() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # depth notes in a burst


def _quiet_stdout() -> None:
    """The reader of stdout went away (`| head`): what is left to say goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _say(*parts: object) -> None:
    """serve's report: a closed stdout must not stop serve, nor its clean shutdown."""
    try:
        print(*parts, flush=True)
    except BrokenPipeError:
        _quiet_stdout()


def _periodic_sync(args: argparse.Namespace, engine: Engine) -> Any:
    """The inventory sync of `jitc serve`, when the catalog names a webhook to send it to."""
    if not args.sync_interval or not engine.catalog.connector.webhook_url:
        return None
    from jitc.inventory import FileSyncState, PeriodicSync, webhook_transport

    transport = webhook_transport(engine.catalog, engine.secrets)
    state = FileSyncState(Path(args.sync_state))
    _say(f"  inventory sync every {args.sync_interval:g}s (state {args.sync_state})")
    return PeriodicSync(lambda: engine.sync(transport, state), args.sync_interval).start()


def _descriptors_up_to_the_hard_limit() -> None:
    """A long-running server holds a socket per client and per target connection: the soft
    limit (often 1024) is raised to the hard one, which the operator sets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cmd_serve(args: argparse.Namespace) -> int:
    from jitc.runtime import LocalRuntime

    catalog, secrets = _catalog(args), local_stores()
    _check_installed(catalog)
    checked = _CheckedSink(args.events)
    sink: EventSink = checked._inner
    connector = catalog.connector
    if connector.webhook_url:
        if not connector.signing_key:
            raise Refused("catalog", "connector.webhook_url needs connector.signing_key")
        from jitc.webhook import WebhookSink

        hook = WebhookSink.from_catalog(connector.webhook_url, connector.signing_key, secrets)
        sink = FanOutSink(sink, hook)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    _log_one_line()
    _descriptors_up_to_the_hard_limit()
    try:
        runtime = LocalRuntime(
            catalog,
            secrets,
            sink,
            args.host,
            args.port,
            args.sweep_interval,
            journal=Path(args.journal),
            workers=args.workers,
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
        )
    except ValueError as exc:  # e.g. a host name that cannot be encoded or resolved
        raise Refused("host", f"cannot listen on {args.host!r}: {exc}") from None
    pending_at_start = len(runtime.journal.pending())
    runtime.start()
    periodic = _periodic_sync(args, runtime.engine)
    _say(f"jit-connector listening on {runtime.url}/v1/requests")
    _say(
        f"  journal {args.journal}: {pending_at_start} accepted request(s) to replay; "
        "rebuilding the expiry timers from the targets and sweeping now"
    )

    def report_timers() -> None:
        if runtime.timers_ready.wait() and runtime.timers_rebuilt_at is not None:
            took = runtime.timers_rebuilt_at - runtime.started_at
            unread = dict(runtime.timers_unread)
            _say(
                f"  {runtime.timers_rebuilt} expiry timer(s) rebuilt from the targets "
                f"{took:.2f}s after start"
            )
            for name, reason in unread.items():
                _say(f"  not rebuilt for {name}: {reason} (trying again)")
            if unread and runtime.timers_complete.wait() and runtime.timers_back_at is not None:
                took = runtime.timers_back_at - runtime.started_at
                _say(
                    f"  every target's expiry timers rebuilt ({runtime.timers_rebuilt} in all) "
                    f"{took:.2f}s after start"
                )

    threading.Thread(target=report_timers, daemon=True).start()
    while not stop.wait(0.5):
        if not runtime.http.alive:  # a supervisor restarts a process that exits, not one that hangs
            break
    problem = runtime.http.problem()
    if problem is None:
        _say("stopping: no new requests; finishing the batches in flight ...")
    else:
        _say(f"the intake stopped answering ({problem}); finishing the batches ...")
    if periodic is not None:
        periodic.stop()
    left = runtime.stop()
    _say(
        f"stopped. {len(left.journal)} accepted request(s) not done yet, kept in "
        f"{args.journal} for the next start"
    )
    timers = sorted(left.timers.items(), key=lambda kv: kv[1])
    if timers:
        _say(
            f"{len(timers)} live grant(s); each target enforces its own expiry meanwhile, "
            "and the next start revokes what is due:"
        )
    for grant_id, at in timers[:SHOWN]:
        _say(f"  grant {grant_id} expires {at.isoformat()} ({_left(at)})")
    if len(timers) > SHOWN:
        _say(f"  ... and {len(timers) - SHOWN} more (jitc list shows them all)")
    return EXIT_OK if problem is None else EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from jitc.demo import run_demo
    except ModuleNotFoundError as exc:
        raise Failed(f"the demo needs {exc.name}: pip install 'jit-connector[demo]'") from None
    return run_demo(args.seconds, args.embedded)


EXAMPLES = {
    "plan": "jitc plan request.json --catalog catalog.yaml",
    "grant": "jitc grant request.json --catalog catalog.yaml --out creds.sealed\n"
    "  jitc grant request.json --plain --json      # local use: credentials in the clear",
    "revoke": "jitc revoke request.json\n  jitc revoke --grant-id gabc... --integration billing-db",
    "list": "jitc list --catalog catalog.yaml\n  jitc list --integration billing-db --json",
    "sweep": "jitc sweep --catalog catalog.yaml --json",
    "sync": "jitc sync --catalog catalog.yaml --json\n  jitc sync --out inventory.jsonl --full",
    "rotate": "jitc rotate billing-db --catalog catalog.yaml",
    "check": "jitc catalog check catalog.yaml",
    "schema": "jitc schema --out schemas",
    "keygen": "jitc keygen --box --out box.key > box.pub\n"
    "  jitc keygen --signing --out cp.key > cp.pub",
    "open": "jitc open outcome.json --key box.key\n"
    "  jitc grant request.json --json | jitc open - --key box.key\n"
    "  grep sealed events.jsonl | tail -1 | jitc open - --key box.key",
    "send": "jitc send http://127.0.0.1:8080/v1/requests request.json --key cp.key --key-id cp-1",
    "serve": "jitc serve --catalog catalog.yaml --events events.jsonl --journal /var/lib/jitc/j.db",
    "demo": "jitc demo\n  JITC_PG_DSN='host=db user=admin' jitc demo --seconds 10",
}


def _sub(sub: Any, name: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=f"example:\n  {EXAMPLES[name]}" if name in EXAMPLES else None,
        formatter_class=_Help,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jitc",
        description="jit-connector: grants temporary access and takes it away on time.",
        epilog="exit status: 0 ok, 1 failed, 2 refused (bad or disallowed input), "
        "64 usage error, 130 interrupted\nexample:\n  jitc demo",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_catalog(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--catalog", help="catalog YAML (default: $JITC_CATALOG)")
        p.add_argument(
            "--events", help="append audit events (JSON lines) to this file (default: stderr)"
        )
        return p

    for name, text in (
        ("plan", "show the statements a grant would run; nothing is executed"),
        ("grant", "grant access now"),
        ("revoke", "revoke access now"),
    ):
        p = with_catalog(_sub(sub, name, text))
        p.add_argument("request", nargs="?", help="request JSON file, or - for stdin")
        p.add_argument("--json", action="store_true", help="print the outcome as JSON")
        if name == "grant":
            p.add_argument(
                "--plain",
                action="store_true",
                help="also print generated credentials in the clear (local use only)",
            )
            p.add_argument(
                "--out", help="write the sealed credentials to this new file (mode 0600)"
            )
        if name == "revoke":
            p.add_argument("--grant-id", help="revoke this grant (no request file needed)")
            p.add_argument("--integration", help="the grant's integration (with --grant-id)")
        p.set_defaults(func=cmd_request)

    p = with_catalog(_sub(sub, "list", "the live grants, read from the targets"))
    p.add_argument("--integration", help="only this integration (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = with_catalog(_sub(sub, "sweep", "revoke every labelled grant past its expiry"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_sweep)

    p = with_catalog(
        _sub(sub, "sync", "send each target's inventory (names only) to the control plane")
    )
    p.add_argument("--integration", help="only this integration (default: all)")
    p.add_argument("--full", action="store_true", help="send every page, changed or not")
    p.add_argument(
        "--state",
        default=os.environ.get("JITC_SYNC_STATE", "jitc-sync-state.json"),
        help="file of the versions the control plane acknowledged ($JITC_SYNC_STATE)",
    )
    p.add_argument(
        "--out", help="write the events as JSON lines here (- for stdout) instead of the webhook"
    )
    p.add_argument(
        "--stall-seconds",
        type=_ranged(float, 1, 3600),
        default=60.0,
        help="a target silent this long fails its own part",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_sync)

    p = with_catalog(
        _sub(sub, "rotate", "rotate an integration's admin password held in a file: secret")
    )
    p.add_argument("integration", help="the integration whose admin credential to rotate")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_rotate)

    catalog = _sub(sub, "catalog", "catalog commands")
    csub = catalog.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND")
    p = with_catalog(_sub(csub, "check", "validate a catalog and warn about relaxed settings"))
    p.add_argument("path", nargs="?", help="the catalog (or --catalog, or $JITC_CATALOG)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_catalog_check)

    p = _sub(sub, "schema", "print or write the JSON Schemas and the OpenAPI document")
    p.add_argument("--out", help="write one file per model, and openapi.json, into this folder")
    p.set_defaults(func=cmd_schema)

    p = _sub(sub, "keygen", "make a key pair: private key to a new 0600 file, public to stdout")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--signing", action="store_true", help="Ed25519, for signing requests")
    kind.add_argument("--box", action="store_true", help="X25519, for receiving sealed credentials")
    p.add_argument("--out", required=True, help="file for the private key (must not exist)")
    p.set_defaults(func=cmd_keygen)

    p = _sub(sub, "open", "open sealed credentials with a box private key")
    p.add_argument(
        "outcome", help="an outcome, an events line, a webhook body or the bare blob; - for stdin"
    )
    p.add_argument("--key", required=True, help="file holding the X25519 private key")
    p.set_defaults(func=cmd_open)

    p = _sub(sub, "send", "sign a request and send it to a connector's intake")
    p.add_argument("url", help="the intake URL as `jitc serve` prints it, or its base URL")
    p.add_argument("request", help="request JSON file, or -")
    p.add_argument("--key", required=True, help="file holding the Ed25519 private key")
    p.add_argument("--key-id", required=True, help="the key's id in the catalog")
    p.set_defaults(func=cmd_send)

    p = with_catalog(
        _sub(sub, "serve", "run the local runtime: intake, journal, workers, expiry, sweep")
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port", type=_ranged(int, 0, 65535), default=8080, help="port to listen on (0: any)"
    )
    p.add_argument(
        "--journal",
        default=os.environ.get("JITC_JOURNAL", "jitc-journal.sqlite3"),
        help="file of accepted requests (SQLite), replayed at start ($JITC_JOURNAL)",
    )
    p.add_argument(
        "--sweep-interval",
        type=_ranged(float, 1, 86400),
        default=60.0,
        help="seconds between sweeps (one at start)",
    )
    p.add_argument(
        "--workers", type=_ranged(int, 1, 64), default=4, help="requests run in parallel"
    )
    p.add_argument(
        "--read-timeout",
        type=_ranged(int, 1, 3600),
        default=10,
        help="seconds a connection may stay idle",
    )
    p.add_argument(
        "--max-connections",
        type=_ranged(int, 1, 10000),
        default=100,
        help="open connections accepted at once",
    )
    p.add_argument(
        "--sync-interval",
        type=_ranged(float, 0, 604800),
        default=3600.0,
        help="seconds between inventory syncs to the webhook (one at start; 0: none)",
    )
    p.add_argument(
        "--sync-state",
        default=os.environ.get("JITC_SYNC_STATE", "jitc-sync-state.json"),
        help="file of the inventory versions the control plane acknowledged",
    )
    p.set_defaults(func=cmd_serve)

    # `jitc package ...` is handed whole to jitc.packaging (see main); listed here for --help.
    _sub(sub, "package", "build one cloud's deployable zip (jitc package aws --help)")

    p = _sub(sub, "demo", "the whole story on a real PostgreSQL, in about half a minute")
    p.add_argument("--seconds", type=int, default=20, help="how long the demo grant lasts, seconds")
    p.add_argument(
        "--embedded", action="store_true", help="use an embedded PostgreSQL (pgserver) regardless"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    try:
        return version("jit-connector")
    except PackageNotFoundError:
        return "unknown"


def _fail(as_json: bool, kind: str, field: str | None, message: str) -> None:
    if as_json:
        doc = {"error": kind, "message": message}
        if field:
            doc["field"] = field
        print(json.dumps(doc, indent=2))
    else:
        prefix = f"{kind}: {field + ': ' if field else ''}"
        print(prefix + message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing left to say, and nothing to say it to.
        _quiet_stdout()
        return EXIT_FAILED


def _main(argv: list[str]) -> int:
    as_json = "--json" in argv
    if argv[:1] == ["package"]:
        from jitc.packaging import main as package

        if "-h" not in argv and "--help" not in argv:
            print(
                "building the package (fetches the pinned wheels: about a minute) ...",
                file=sys.stderr,
                flush=True,
            )
        return package(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        # A one-shot command prints each failure once, in its outcome; the engine's own
        # warnings are for a long-running process's log.
        logging.getLogger("jitc").setLevel(logging.ERROR)
    try:
        result: int = args.func(args)
    except Refused as exc:
        _fail(as_json, "refused", exc.field, exc.message)
        return EXIT_REFUSED
    except BrokenPipeError:
        raise  # not a failure of the command: main ends quietly
    except (JitcError, OSError) as exc:
        _fail(as_json, "failed", None, str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _fail(as_json, "interrupted", None, "stopped by Ctrl-C")
        return EXIT_INTERRUPTED
    return result


if __name__ == "__main__":
    sys.exit(main())
