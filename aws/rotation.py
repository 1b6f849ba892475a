"""Lambda entry point `jitc.aws.rotation.handler`: Secrets Manager's rotation function for the
admin credentials the catalog names (`aws-sm:` references of PostgreSQL, MySQL/MariaDB, Redis
and RabbitMQ integrations), single-user: the admin account keeps its name, gets a new password.

Secrets Manager calls it four times per rotation, each with the new version's id
(`ClientRequestToken`): createSecret puts a new value as AWSPENDING under that id, setSecret
makes the target take it, testSecret logs in with it, finishSecret moves AWSCURRENT to it.
Secrets Manager retries a failed step and may call one twice, so each step first checks whether
its work is already done. Between setSecret and finishSecret the target takes only the pending
value: the engine, refused with AWSCURRENT, reads the secret again with AWSPENDING (see
`SecretsManagerStore.candidates`), so no grant or revoke in flight fails.

Nothing here logs or raises a secret value: messages carry the secret's ARN, the version id and
the step; target errors carry only their type (see jitc.rotation).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import suppress
from functools import cache
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from jitc.aws import runtime
from jitc.aws.observability import logger
from jitc.aws.secrets_manager import SCHEME
from jitc.catalog import Catalog, Integration, parse_catalog
from jitc.errors import CatalogError, Refused, SecretError
from jitc.rotation import (
    account_of,
    credential_ref,
    new_password,
    persist,
    rotator_for,
    set_password,
    with_password,
)
from jitc.secrets import Secret, SecretRef, pick_field

STEPS = ("createSecret", "setSecret", "testSecret", "finishSecret")
# Secrets Manager's version ids: ClientRequestToken is 32 to 64 characters (its API model; a
# caller of RotateSecret may choose any, Secrets Manager's own are UUIDs).
TOKEN = re.compile(r"[\x21-\x7e]{32,64}")
# Other versions tried at setSecret, newest first: enough for a lost race or two, not a
# hundred failed logins against the target.
OTHER_VERSIONS = 10


class RotationError(ValueError):
    """The rotation cannot go on; Secrets Manager marks it failed and retries it later."""


@cache
def catalog() -> Catalog:
    """The catalog Terraform shipped (the layer the other functions read), digest-checked."""
    settings_path = Path(os.environ.get("JITC_CATALOG_PATH") or runtime.DEFAULT_CATALOG)
    expected = os.environ.get("JITC_CATALOG_SHA256")
    try:
        data = settings_path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{settings_path}: cannot read ({exc.strerror})") from None
    if expected and hashlib.sha256(data).hexdigest() != expected.lower():
        raise CatalogError(f"{settings_path}: digest differs from JITC_CATALOG_SHA256")
    return parse_catalog(json.loads(data), str(settings_path))


def integrations_of(cat: Catalog, arn: str, name: str) -> list[Integration]:
    """Every integration whose credential is this secret, named by its ARN or its name."""
    found = []
    for integration in cat.integrations.values():
        ref = integration.credentials
        if ref is not None and ref.scheme == SCHEME and ref.location in (arn, name):
            found.append(integration)
    if not found:
        raise RotationError(f"{arn}: no integration in the catalog uses this secret")
    first = found[0]
    fields = {credential_ref(i).field for i in found}
    where = {account_of(i) for i in found}
    if len(fields) > 1 or len(where) > 1:
        # One password set in one account would lock the other integrations out.
        raise RotationError(
            f"{arn}: integrations {', '.join(i.name for i in found)} share this secret for "
            "different accounts or fields; give each admin account its own secret"
        )
    sharing = {i.name for i in found}
    elsewhere = [
        i.name
        for i in cat.integrations.values()
        if i.name not in sharing
        and i.credentials is not None
        and account_of(i) == account_of(first)
    ]
    if elsewhere:
        # The new password would reach only this secret: theirs would be refused from then on.
        raise RotationError(
            f"{arn}: the same admin account is also reached by {', '.join(elsewhere)} through "
            "another secret; name one secret in all of them"
        )
    rotator_for(first)  # refuses a kind that cannot rotate, before anything is changed
    return found


def _value(client: Any, arn: str, ref: SecretRef, **selector: str) -> tuple[str, Secret] | None:
    """The secret's text and the password in it, or None when there is no such version."""
    try:
        response = client.get_secret_value(SecretId=arn, **selector)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return None
        raise
    raw = response.get("SecretString")
    if raw is None:
        raise RotationError(f"{arn}: the secret has no text value")
    return raw, pick_field(ref, raw)


def _required(client: Any, arn: str, ref: SecretRef, **selector: str) -> tuple[str, Secret]:
    found = _value(client, arn, ref, **selector)
    if found is None:
        raise RotationError(f"{arn}: no version {selector}")
    return found


def create_secret(client: Any, arn: str, token: str, ref: SecretRef, event: dict[str, Any]) -> None:
    current_raw, _ = _required(client, arn, ref, VersionStage="AWSCURRENT")
    if _value(client, arn, ref, VersionId=token, VersionStage="AWSPENDING") is not None:
        logger.info("createSecret: the pending version exists already", extra=_ids(arn, token))
        return
    extra = {"RotationToken": event["RotationToken"]} if event.get("RotationToken") else {}
    try:
        client.put_secret_value(
            SecretId=arn,
            ClientRequestToken=token,  # the version id: one value per version, ever
            SecretString=with_password(ref, current_raw, new_password()),
            VersionStages=["AWSPENDING"],
            **extra,
        )
    except ClientError as exc:
        # The same step running twice at once: the other's value was put first and stands.
        if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
            raise
        logger.info("createSecret: another run put the pending version", extra=_ids(arn, token))
        return
    logger.info("createSecret: pending version put", extra=_ids(arn, token))


def set_secret(client: Any, arn: str, token: str, found: list[Integration]) -> None:
    ref = credential_ref(found[0])
    _, pending = _required(client, arn, ref, VersionId=token, VersionStage="AWSPENDING")
    logins = [_required(client, arn, ref, VersionStage="AWSCURRENT")[1]]
    previous = _value(client, arn, ref, VersionStage="AWSPREVIOUS")
    if previous is not None:
        logins.append(previous[1])  # a restore from backup may have brought it back
    logins += _other_versions(client, arn, ref, token)
    rotator = rotator_for(found[0])
    changed = set_password(rotator, found[0], pending, logins)
    note = persist(rotator, found[0], pending)  # a replayed step saves too
    logger.info(
        "setSecret: " + ("password set" if changed else "already set"), extra=_ids(arn, token)
    )
    if note:
        logger.warning("setSecret: " + note, extra=_ids(arn, token))


def _other_versions(client: Any, arn: str, ref: SecretRef, token: str) -> list[Secret]:
    """Every other version's password, newest first: two rotations racing (or a pending value
    put by hand) can leave the target on a version that is neither current nor previous, and
    the next setSecret must still log in to repair that."""
    listed: list[tuple[str, str]] = []
    params: dict[str, Any] = {"SecretId": arn, "IncludeDeprecated": True, "MaxResults": 100}
    while True:  # botocore has no paginator for this operation
        page = client.list_secret_version_ids(**params)
        for version in page.get("Versions", []):
            vid = version.get("VersionId")
            stages = set(version.get("VersionStages") or [])
            if vid and vid != token and not stages & {"AWSCURRENT", "AWSPREVIOUS"}:
                listed.append((str(version.get("CreatedDate", "")), vid))
        if not page.get("NextToken"):
            break
        params["NextToken"] = page["NextToken"]
    found: list[Secret] = []
    for _, vid in sorted(listed, reverse=True)[:OTHER_VERSIONS]:
        with suppress(SecretError):  # a version without the field cannot be the password
            value = _value(client, arn, ref, VersionId=vid)
            if value is not None:
                found.append(value[1])
    return found


def test_secret(client: Any, arn: str, token: str, found: list[Integration]) -> None:
    ref = credential_ref(found[0])
    _, pending = _required(client, arn, ref, VersionId=token, VersionStage="AWSPENDING")
    for integration in found:
        rotator_for(integration).check(integration, pending)
    logger.info("testSecret: the pending password logs in", extra=_ids(arn, token))


def finish_secret(client: Any, arn: str, token: str) -> None:
    versions = client.describe_secret(SecretId=arn)["VersionIdsToStages"]
    current = next((v for v, stages in versions.items() if "AWSCURRENT" in stages), None)
    if current == token:
        logger.info("finishSecret: already current", extra=_ids(arn, token))
        return
    moved: dict[str, str] = {"MoveToVersionId": token}
    if current is not None:  # a secret always has one; without it there is nothing to take off
        moved["RemoveFromVersionId"] = current
    client.update_secret_version_stage(SecretId=arn, VersionStage="AWSCURRENT", **moved)
    # AWSPENDING stays on no version once the rotation is over, so a reader of AWSPENDING
    # (the engine after a refusal) never gets an old value back.
    client.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=token
    )
    logger.info("finishSecret: AWSCURRENT moved", extra=_ids(arn, token))


def _ids(arn: str, token: str) -> dict[str, str]:
    return {"secret_arn": arn, "version_id": token}


def rotate(client: Any, cat: Catalog, event: dict[str, Any]) -> None:
    """One step of Secrets Manager's rotation contract, for the secret the event names."""
    arn, token, step = (event.get(k) for k in ("SecretId", "ClientRequestToken", "Step"))
    if not isinstance(step, str) or step not in STEPS:
        raise RotationError(f"Step must be one of {', '.join(STEPS)}")
    if not isinstance(arn, str) or not arn:
        raise RotationError("SecretId must be a secret's ARN")
    if not isinstance(token, str) or not TOKEN.fullmatch(token):
        raise RotationError("ClientRequestToken must be a version id of 32-64 characters")
    metadata = client.describe_secret(SecretId=arn)
    if not metadata.get("RotationEnabled"):
        raise RotationError(f"{arn}: rotation is not enabled for this secret")
    versions: dict[str, list[str]] = metadata.get("VersionIdsToStages", {})
    if token not in versions:
        raise RotationError(f"{arn}: version {token} has no stage for rotation")
    if "AWSCURRENT" in versions[token]:
        logger.info(f"{step}: the version is already current", extra=_ids(arn, token))
        return
    if "AWSPENDING" not in versions[token]:
        raise RotationError(f"{arn}: version {token} is not AWSPENDING")
    # Another rotation's pending version (two rotations racing): only the one Secrets Manager
    # holds as AWSPENDING now may go on; the other stops here before changing anything.
    found = integrations_of(cat, metadata["ARN"], metadata["Name"])
    if step == "createSecret":
        create_secret(client, arn, token, credential_ref(found[0]), event)
    elif step == "setSecret":
        set_secret(client, arn, token, found)
    elif step == "testSecret":
        test_secret(client, arn, token, found)
    else:
        # A finishSecret run before its setSecret took (replayed, or invoked by hand) would make
        # current a password the target refuses, and the engine reads only current and pending.
        test_secret(client, arn, token, found)
        finish_secret(client, arn, token)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> None:
    try:
        rotate(runtime.client("secretsmanager"), catalog(), event)
    except RotationError:
        logger.error("rotation step refused", extra={"step": str(event.get("Step"))[:20]})
        raise
    except Refused as exc:  # our own text (an unsupported account), never a secret's
        logger.error("rotation step refused", extra={"step": str(event.get("Step"))[:20]})
        raise RotationError(exc.message) from None
    except Exception as exc:
        # The type only: a driver's or SDK's text is not ours to vouch for.
        logger.error("rotation step failed", extra={"error": type(exc).__name__})
        raise RotationError(f"rotation step failed: {type(exc).__name__}") from None
