"""`jitc`: the command line. Exit status 0 success, 2 refused, 1 failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from jitc.catalog import Catalog, catalog_warnings, load_catalog
from jitc.engine import Engine
from jitc.errors import CatalogError, JitcError, Refused
from jitc.local import FanOutSink, JsonLinesSink, NullScheduler
from jitc.messages import parse_request
from jitc.models import SCHEMA_MODELS, Outcome
from jitc.ports import EventSink
from jitc.sealing import box_keypair, unseal
from jitc.secrets import local_stores
from jitc.signing import sign, signing_keypair

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


def _read(source: str) -> bytes:
    return sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()


def _catalog(args: argparse.Namespace) -> Catalog:
    path = args.catalog or os.environ.get("JITC_CATALOG")
    if not path:
        raise CatalogError("no catalog: pass --catalog PATH or set JITC_CATALOG")
    return load_catalog(path)


def _sink(args: argparse.Namespace) -> JsonLinesSink:
    events = getattr(args, "events", None)
    return JsonLinesSink(path=Path(events)) if events and events != "-" else JsonLinesSink()


def _engine(args: argparse.Namespace) -> Engine:
    # One-shot commands have no timer to keep: expiry is enforced by the target and the sweep.
    return Engine(_catalog(args), local_stores(), NullScheduler(), _sink(args))


def _status(outcome: Outcome) -> int:
    return {"refused": EXIT_REFUSED, "failed": EXIT_FAILED}.get(outcome.status, EXIT_OK)


def _show(outcome: Outcome, as_json: bool) -> int:
    if as_json:
        print(outcome.model_dump_json(indent=2, exclude_none=True))
        return _status(outcome)
    head = f"{outcome.status}: {outcome.action} {outcome.request_id}"
    if outcome.grant_id:
        head += f" (grant {outcome.grant_id})"
    print(head)
    if outcome.field or outcome.message:
        print(f"  {outcome.field + ': ' if outcome.field else ''}{outcome.message or ''}")
    if outcome.principal:
        print(f"  principal: {outcome.principal}")
    if outcome.expires_at:
        print(f"  expires at: {outcome.expires_at.isoformat()}")
    for statement in outcome.statements:
        print(f"  {statement};")
    if outcome.sealed_credentials:
        print("  credentials: sealed to the identity's public key (open with `jitc open`)")
    if outcome.credentials:
        for key, value in outcome.credentials.items():
            print(f"  {key}: {value}")
    for item in outcome.residual:
        print(f"  left: {item}")
    if outcome.verified is not None:
        print(f"  access verified gone: {'yes' if outcome.verified else 'NO'}")
    return _status(outcome)


def cmd_request(args: argparse.Namespace) -> int:
    try:
        request = parse_request(_read(args.request))
    except Refused as exc:
        print(f"refused: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    if request.action != args.command and args.command != "plan":
        print(
            f"refused: action: this request is a {request.action}, not a {args.command}",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    engine = _engine(args)
    if args.command == "plan":
        # The operator previews statements; how credentials would travel is not the question.
        return _show(engine.plan(request, plain=True), args.json)
    return _show(engine.execute(request, plain=getattr(args, "plain", False)), args.json)


def cmd_sweep(args: argparse.Namespace) -> int:
    report = _engine(args).sweep()
    doc = {
        "revoked": report.revoked,
        "residual": report.residual,
        "forgotten": report.forgotten,
        "failed": report.failed,
        "remaining": report.remaining,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"revoked {len(report.revoked)}, tombstones forgotten {len(report.forgotten)}, "
            f"failed {len(report.failed)}, left {report.remaining}"
        )
        for key, value in report.failed.items():
            print(f"  failed {key}: {value}")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_catalog_check(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    for integration in catalog.integrations.values():
        print(
            f"{integration.name} ({integration.kind}): "
            f"{', '.join(sorted(integration.permissions))}; max {integration.max_duration}"
        )
    for warning in catalog_warnings(catalog):
        print(f"warning: {warning}", file=sys.stderr)
    print("catalog OK")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    docs = {name: model.model_json_schema() for name, model in SCHEMA_MODELS.items()}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, doc in docs.items():
            (out / f"{name}.schema.json").write_text(
                json.dumps(doc, indent=2, sort_keys=True) + "\n"
            )
        print(f"wrote {len(docs)} schemas to {out}")
    else:
        print(json.dumps(docs, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    private, public = signing_keypair() if args.signing else box_keypair()
    out = Path(args.out)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(private + "\n")
    print(public)
    return EXIT_OK


def cmd_open(args: argparse.Namespace) -> int:
    doc = json.loads(_read(args.outcome))
    sealed = doc.get("sealed_credentials")
    if not sealed:
        print("refused: outcome has no sealed_credentials", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(unseal(sealed, Path(args.key).read_text().strip()), indent=2))
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    body = _read(args.request)
    envelope = sign(body, Path(args.key).read_text().strip(), args.key_id)
    request = urllib.request.Request(  # noqa: S310 - the operator names the URL
        args.url.rstrip("/") + "/v1/requests",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **envelope.headers()},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    print(text)
    if status < 300:
        return EXIT_OK
    return EXIT_REFUSED if status < 500 else EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    from jitc.runtime import LocalRuntime

    catalog, secrets = _catalog(args), local_stores()
    sink: EventSink = _sink(args)
    connector = catalog.connector
    if connector.webhook_url:
        if not connector.signing_key:
            raise CatalogError("connector.webhook_url needs connector.signing_key")
        from jitc.webhook import WebhookSink

        hook = WebhookSink.from_catalog(connector.webhook_url, connector.signing_key, secrets)
        sink = FanOutSink(sink, hook)
    runtime = LocalRuntime(
        catalog, secrets, sink, args.host, args.port, args.sweep_interval
    ).start()
    print(f"jit-connector listening on {runtime.url}/v1/requests", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        runtime.stop()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from jitc.demo import run_demo

    return run_demo(args.seconds, args.embedded)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jitc", description="jit-connector command line")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_catalog(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--catalog", help="catalog YAML (default: $JITC_CATALOG)")
        p.add_argument("--events", help="append audit events (JSON lines) here; default stderr")
        return p

    for name, text in (
        ("plan", "show what a grant would run"),
        ("grant", "grant access"),
        ("revoke", "revoke access"),
    ):
        p = with_catalog(sub.add_parser(name, help=text))
        p.add_argument("request", help="request JSON file, or - for stdin")
        p.add_argument("--json", action="store_true", help="print the outcome as JSON")
        if name == "grant":
            p.add_argument(
                "--plain",
                action="store_true",
                help="also print generated credentials in the clear (local use only)",
            )
        p.set_defaults(func=cmd_request)

    p = with_catalog(sub.add_parser("sweep", help="revoke every labelled grant past its expiry"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sweep)

    catalog = sub.add_parser("catalog", help="catalog commands")
    csub = catalog.add_subparsers(dest="catalog_command", required=True)
    p = with_catalog(csub.add_parser("check", help="validate a catalog"))
    p.set_defaults(func=cmd_catalog_check)

    p = sub.add_parser("schema", help="print or write the JSON Schemas of the protocol")
    p.add_argument("--out", help="write one file per model into this folder")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "keygen", help="make a key pair: private key to a 0600 file, public to stdout"
    )
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--signing", action="store_true", help="Ed25519, for signing requests")
    kind.add_argument("--box", action="store_true", help="X25519, for receiving sealed credentials")
    p.add_argument("--out", required=True, help="file for the private key (must not exist)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("open", help="open an outcome's sealed credentials with a box private key")
    p.add_argument("outcome", help="outcome JSON file, or -")
    p.add_argument("--key", required=True, help="file holding the X25519 private key")
    p.set_defaults(func=cmd_open)

    p = sub.add_parser("send", help="sign a request and send it to a connector's intake")
    p.add_argument("url", help="the connector's base URL")
    p.add_argument("request", help="request JSON file, or -")
    p.add_argument("--key", required=True, help="file holding the Ed25519 private key")
    p.add_argument("--key-id", required=True, help="the key's id in the catalog")
    p.set_defaults(func=cmd_send)

    p = with_catalog(
        sub.add_parser("serve", help="run the local runtime (intake, worker, expiry, sweep)")
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--sweep-interval", type=float, default=60.0)
    p.set_defaults(func=cmd_serve)

    # `jitc package ...` is handed whole to jitc.packaging (see main); listed here for --help.
    sub.add_parser("package", help="build one cloud's deployable zip (jitc package aws --help)")

    p = sub.add_parser("demo", help="the whole story on a real PostgreSQL, in about half a minute")
    p.add_argument("--seconds", type=int, default=20, help="how long the demo grant lasts")
    p.add_argument(
        "--embedded", action="store_true", help="use an embedded PostgreSQL (pgserver) regardless"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["package"]:
        from jitc.packaging import main as package

        return package(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except Refused as exc:
        print(f"refused: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (JitcError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return result


if __name__ == "__main__":
    sys.exit(main())
