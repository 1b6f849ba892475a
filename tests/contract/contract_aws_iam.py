"""The AWS IAM template in the contract suite, on moto's IAM server (in-process, on loopback, so
boto3's real HTTP path is used).

moto stores IAM but evaluates none of it, so this target judges access itself, as IAM would
for one role: every statement of the role's attached and inline policies, an explicit Deny
over any Allow, `aws:CurrentTime` and `aws:TokenIssueTime` date conditions, wildcards in
actions and resources. A condition it does not know fails the test rather than pass it. A
"login" is a role session that can do the allowed operation; a live connection is a session
issued at some moment, which keeps working exactly as long as the role's policies let a token
of that age.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from contract_targets import RUN

from jitc.models import Outcome
from jitc.templates.aws_iam import policy_name
from jitc.templates.base import encode_label

ACCOUNT = "123456789012"
REGION = "us-east-1"
PATH = f"/jitc{RUN}/"
BUCKET = f"bucket-{RUN}"
ROLES = [f"c{RUN}-dev-{i}" for i in range(4)]
BOUNDARY_NAME = f"c{RUN}-grant-boundary"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/{BOUNDARY_NAME}"
_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_ENV += ("AWS_DEFAULT_REGION", "AWS_REGION")


def _policy(actions: list[str]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": actions, "Resource": ["arn:aws:s3:::{resource}/*"]}
        ],
    }


@dataclass
class Session:
    role: str
    issued: datetime


def _date(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _conditions_hold(condition: dict[str, Any], now: datetime, issued: datetime) -> bool:
    keys = {"aws:currenttime": now, "aws:tokenissuetime": issued}
    for operator, tests in condition.items():
        for key, value in tests.items():
            moment = keys.get(key.lower())
            if operator not in ("DateLessThan", "DateGreaterThan") or moment is None:
                raise AssertionError(f"condition {operator} {key} is not evaluated here")
            values = value if isinstance(value, list) else [value]
            if operator == "DateLessThan" and not any(moment < _date(v) for v in values):
                return False
            if operator == "DateGreaterThan" and not any(moment > _date(v) for v in values):
                return False
    return True


def _matches(patterns: Any, value: str) -> bool:
    items = patterns if isinstance(patterns, list) else [patterns]
    return any(fnmatch.fnmatchcase(value.lower(), str(p).lower()) for p in items)


class AwsIamTarget:
    kind = "aws_iam"
    integration = f"aws-iam-{RUN}"
    generates_secrets = False
    history_examples = 5  # each access check is a dozen calls to moto

    def __init__(self) -> None:
        self._server: Any = None
        self._saved: dict[str, str | None] = {}
        self.foreign: set[str] = set()
        self._iam: Any = None

    @property
    def iam(self) -> Any:
        # One client: a client's exception classes are its own, so `except` must use the same.
        if self._iam is None:
            self._iam = boto3.session.Session().client("iam", region_name=REGION)
        return self._iam

    def reach(self) -> None:
        if not os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://127.0.0.1:"):
            from moto.server import ThreadedMotoServer

            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            self._server.start()
            self._saved = {key: os.environ.get(key) for key in _ENV}
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing",
                    "AWS_DEFAULT_REGION": REGION,
                    "AWS_REGION": REGION,
                }
            )
            self._iam = None
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        # Grantees carry the boundary the connector's module creates; without it nothing is given.
        with contextlib.suppress(self.iam.exceptions.EntityAlreadyExistsException):
            ceiling = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
            self.iam.create_policy(
                PolicyName=BOUNDARY_NAME,
                PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [ceiling]}),
            )
        for role in ROLES:
            with contextlib.suppress(self.iam.exceptions.EntityAlreadyExistsException):
                self.iam.create_role(
                    RoleName=role,
                    AssumeRolePolicyDocument=json.dumps(trust),
                    PermissionsBoundary=BOUNDARY,
                )

    def reset(self) -> None:
        self.foreign.clear()
        iam = self.iam
        for role in ROLES:
            # moto's reset between the AWS tests may have taken the roles away.
            with contextlib.suppress(iam.exceptions.NoSuchEntityException):
                for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                    iam.delete_role_policy(RoleName=role, PolicyName=name)
        for page in iam.get_paginator("list_policies").paginate(Scope="Local", PathPrefix=PATH):
            for item in page["Policies"]:
                entities = iam.list_entities_for_policy(PolicyArn=item["Arn"])
                for role in entities["PolicyRoles"]:
                    iam.detach_role_policy(RoleName=role["RoleName"], PolicyArn=item["Arn"])
                for user in entities["PolicyUsers"]:
                    iam.detach_user_policy(UserName=user["UserName"], PolicyArn=item["Arn"])
                for group in entities["PolicyGroups"]:
                    iam.detach_group_policy(GroupName=group["GroupName"], PolicyArn=item["Arn"])
                iam.delete_policy(PolicyArn=item["Arn"])
        self.reach()

    def cleanup(self) -> None:
        self.reset()
        for role in ROLES:
            with contextlib.suppress(self.iam.exceptions.NoSuchEntityException):
                self.iam.delete_role(RoleName=role)
        if self._server is not None:
            self._server.stop()
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def admin_secret(self) -> str:
        return "CANARY-aws-never-used-0d9b"  # the template's credential is the function's role

    def renamed(self) -> dict[str, Any]:
        return {"path": f"{PATH}z/"}

    def connection(self, **overrides: Any) -> dict[str, Any]:
        return {
            "account_id": ACCOUNT,
            "region": REGION,
            "path": PATH,
            "allowed_principals": [f"c{RUN}-dev-*"],
            "permissions_boundary_arn": BOUNDARY,
            **overrides,
        }

    def broken_connection(self) -> dict[str, Any] | None:
        return None  # nothing in its settings can point it at a dead server

    def permissions(self) -> dict[str, dict[str, Any]]:
        return {
            "allowed": {"policy": _policy(["s3:GetObject"]), "resources": [BUCKET]},
            "custom": {"policy": _policy(["s3:Get*"]), "resources": [BUCKET]},
        }

    def resource(self) -> str:
        return BUCKET

    def hostile_resources(self) -> list[str]:
        return ['a"b', "a b", "x;y", "{resource}", "arn:aws:s3:::*\n"]

    def identity(self, index: int = 0) -> dict[str, Any]:
        return {"email": f"ana{index}@example.com", "username": ROLES[index]}

    def holder(self, outcome: Outcome, credentials: dict[str, str] | None) -> Any:
        assert credentials is None
        return str(outcome.principal).partition("/")[2]

    def made(self, outcome: Outcome) -> str:
        return policy_name(str(outcome.grant_id))

    def _statements(self, role: str) -> list[dict[str, Any]]:
        iam = self.iam
        documents = []
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=role):
            for attached in page["AttachedPolicies"]:
                policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
                version = iam.get_policy_version(
                    PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"]
                )["PolicyVersion"]["Document"]
                documents.append(version)
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            documents.append(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
        statements: list[dict[str, Any]] = []
        for document in documents:
            doc = json.loads(document) if isinstance(document, str) else document
            found = doc["Statement"]
            statements += found if isinstance(found, list) else [found]
        return statements

    def _allows(self, role: str, action: str, issued: datetime) -> bool:
        now = datetime.now(UTC)
        resource = f"arn:aws:s3:::{BUCKET}/key"
        allowed = False
        for statement in self._statements(role):
            if not _matches(statement.get("Action", []), action):
                continue
            if not _matches(statement.get("Resource", []), resource):
                continue
            if not _conditions_hold(statement.get("Condition", {}), now, issued):
                continue
            if statement["Effect"] == "Deny":
                return False
            allowed = True
        return allowed

    def login(self, holder: Any) -> Session:
        session = Session(str(holder), datetime.now(UTC))
        if not self._allows(session.role, "s3:GetObject", session.issued):
            raise PermissionError(f"a session of {holder} can do nothing it was granted")
        return session

    def allowed(self, live: Session) -> None:
        assert self._allows(live.role, "s3:GetObject", live.issued)

    def denied(self, live: Session) -> bool:
        return not self._allows(live.role, "s3:DeleteObject", live.issued)

    def alive(self, live: Session) -> bool:
        return self._allows(live.role, "s3:GetObject", live.issued)

    def close(self, live: Session) -> None:
        return None

    def principals(self) -> set[str]:
        names = set()
        for page in self.iam.get_paginator("list_policies").paginate(
            Scope="Local", PathPrefix=PATH
        ):
            names |= {p["PolicyName"] for p in page["Policies"]}
        return {n for n in names if not n.startswith("jitc-x-")}

    def snapshot(self) -> Any:
        iam = self.iam
        roles = []
        for role in ROLES:
            attached = sorted(
                p["PolicyName"]
                for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
                if p["PolicyName"] in self.foreign or not p["PolicyName"].startswith("jitc-")
            )
            roles.append(
                (role, attached, sorted(iam.list_role_policies(RoleName=role)["PolicyNames"]))
            )
        foreign = []
        for name in sorted(self.foreign):
            arn = f"arn:aws:iam::{ACCOUNT}:policy{PATH}{name}"
            policy = iam.get_policy(PolicyArn=arn)["Policy"]
            foreign.append((name, policy.get("Description"), policy["DefaultVersionId"]))
        return roles, foreign

    def make_foreign(self, name: str, description: str = "") -> None:
        """A neighbour's policy, under the connector's own path, attached to one of the roles."""
        arn = f"arn:aws:iam::{ACCOUNT}:policy{PATH}{name}"
        with contextlib.suppress(self.iam.exceptions.NoSuchEntityException):
            self.iam.detach_role_policy(RoleName=ROLES[3], PolicyArn=arn)
            self.iam.delete_policy(PolicyArn=arn)
        self.iam.create_policy(
            PolicyName=name,
            Path=PATH,
            PolicyDocument=json.dumps(_policy(["s3:ListBucket"])).replace("{resource}", BUCKET),
            Description=description,
        )
        self.iam.attach_role_policy(RoleName=ROLES[3], PolicyArn=arn)
        self.foreign.add(name)

    def forge_label(self, name: str, grant_id: str, integration: str) -> None:
        # The label as this template writes it (its policies' description), minus any key.
        label = {
            "v": 1,
            "grant_id": grant_id,
            "request_id": "forged",
            "integration": integration,
            "permission": "allowed",
            "identity": "x@example.com",
            "expires_at": "2020-01-01T00:00:00+00:00",
            "state": "active",
            "principal_type": "role",
            "principal": ROLES[3],
        }
        self.make_foreign(name, encode_label(label))

    def planned_principal(self, statements: list[str]) -> str:
        return statements[0].split(": ", 1)[0].rsplit("/", 1)[1]
