"""The Terraform module read as AWS would read it once applied: what each resource refers to,
what AWS services do on the functions' behalf, and what the alarms watch. Parsed from the HCL
(python-hcl2), since no provider can be downloaded to plan it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tfmodule import (
    EXAMPLE,
    MEMBER_MODULE,
    MODULE,
    REFERENCE,
    as_list,
    env_value,
    load,
    role_policies,
    statements,
)


def _queue(reference: str) -> dict[str, object]:
    """The aws_sqs_queue an `${aws_sqs_queue.NAME.arn}` reference names."""
    name = reference.removeprefix("${aws_sqs_queue.").split(".")[0]
    return load().resource("aws_sqs_queue", name)


def test_schedules_dead_letter_to_a_standard_queue_that_is_encrypted_and_alarmed() -> None:
    module = load()
    reference = env_value("JITC_SCHEDULE_DLQ_ARN")
    queue = _queue(reference)
    # EventBridge Scheduler's DeadLetterConfig.Arn pattern admits no ".fifo".
    assert not queue.get("fifo_queue", False) and not str(queue["name"]).endswith(".fifo")
    assert queue["kms_master_key_id"] == "${aws_kms_key.this.arn}"
    name = reference.removeprefix("${aws_sqs_queue.").split(".")[0]
    watched = [
        a["dimensions"]
        for a in module.of_kind("aws_cloudwatch_metric_alarm").values()
        if a.get("namespace") == "AWS/SQS"
    ]
    assert {"QueueName": f"${{aws_sqs_queue.{name}.name}}"} in watched
    # The scheduler's role may deliver there (and to the request queue) and nowhere else.
    sends = [s for s in statements(module.policy("scheduler")) if "sqs:SendMessage" in s["actions"]]
    assert [sorted(as_list(s["resources"])) for s in sends] == [
        sorted(["${aws_sqs_queue.requests.arn}", reference])
    ]


def test_the_function_url_has_the_resource_policy_aws_requires_for_its_auth_type() -> None:
    module = load()
    url = module.resource("aws_lambda_function_url", "intake")
    assert url["authorization_type"] == "${var.function_url_auth_type}"
    auth = module.variables["function_url_auth_type"]
    # SigV4 by default: the control plane signs with its AWS credentials and its Ed25519 key.
    assert auth["default"] == "AWS_IAM"
    assert 'contains(["AWS_IAM", "NONE"]' in str(auth["validation"])
    permissions = [
        p
        for p in module.of_kind("aws_lambda_permission").values()
        if p["function_name"] == '${aws_lambda_function.this["intake"].function_name}'
    ]
    by_action = {p["action"]: p for p in permissions}
    assert set(by_action) == {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}
    # InvokeFunctionUrl only for the URL's own auth type ...
    assert by_action["lambda:InvokeFunctionUrl"]["function_url_auth_type"] == (
        "${var.function_url_auth_type}"
    )
    # ... and InvokeFunction only through the URL: without the flag, the principal ("*" under
    # NONE) could invoke the function directly, around the URL.
    assert by_action["lambda:InvokeFunction"]["invoked_via_function_url"] is True
    # Both go to the same principals: anyone under NONE, the control plane's under AWS_IAM.
    assert {p["for_each"] for p in permissions} == {"${local.url_invokers}"}
    principals = module.locals["url_principals"]
    assert "NONE" in principals and '["*"]' in principals
    assert "var.intake_invoker_arns" in principals


def test_every_schedule_role_can_decrypt_its_schedule_and_reach_its_target() -> None:
    # A schedule encrypted with a customer managed key is decrypted by Scheduler with the
    # schedule's role before each run; without kms:Decrypt the target is never invoked.
    module = load()
    schedules = module.of_kind("aws_scheduler_schedule")
    assert schedules
    for name, schedule in schedules.items():
        target = as_list(schedule["target"])[0]
        allowed = role_policies(target["role_arn"])
        key = schedule.get("kms_key_arn")
        if key is not None:
            assert any(
                "kms:Decrypt" in s["actions"] and key in as_list(s["resources"]) for s in allowed
            ), f"schedule {name}: its role cannot decrypt it with {key}"
        assert any(target["arn"] in as_list(s["resources"]) for s in allowed), name


def test_a_sweep_that_stops_running_is_alarmed() -> None:
    module = load()
    (heartbeat,) = [
        a
        for a in module.of_kind("aws_cloudwatch_metric_alarm").values()
        if a.get("metric_name") == "SweepCompleted"
    ]
    # No data at all (the sweep never runs) must breach, not be ignored.
    assert heartbeat["treat_missing_data"] == "breaching"
    assert heartbeat["comparison_operator"] == "LessThanThreshold" and heartbeat["threshold"] == 1
    assert heartbeat["period"] == "${60 * var.sweep_interval_minutes}"
    schedule = module.resource("aws_scheduler_schedule", "sweep")["schedule_expression"]
    assert "var.sweep_interval_minutes" in schedule


BOUNDED = {"iam:AttachRolePolicy", "iam:AttachUserPolicy"}
INLINE = {"iam:PutRolePolicy", "iam:PutUserPolicy", "iam:PutGroupPolicy"}


def test_the_connector_writes_no_inline_policy() -> None:
    """An inline policy carries no label, lies outside the connector's path and is never swept:
    a compromised worker with that right could leave permanent access behind."""
    module = load()
    for function in ("worker", "sweep"):
        for statement in statements(module.policy(function)):
            assert not INLINE & set(statement["actions"]), (function, statement["sid"])


def test_the_connector_attaches_and_writes_policies_only_on_principals_with_its_boundary() -> None:
    module = load()
    for function in ("worker", "sweep"):
        for statement in statements(module.policy(function)):
            if not BOUNDED & set(statement["actions"]):
                continue
            conditions = {
                (c["test"], c["variable"]): as_list(c["values"])
                for c in as_list(statement.get("condition", []))
            }
            assert conditions.get(("StringEquals", "iam:PermissionsBoundary")) == [
                "${local.iam_boundary_arn}"
            ], (function, statement["sid"])
            # Attach: only the connector's own policies under its path.
            assert conditions[("ArnLike", "iam:PolicyARN")][0] in (
                "${local.iam_grant_policy_arn}",
                "${local.iam_sessions_policy_arn}",
            )
    boundary = module.resource("aws_iam_policy", "grant_boundary")
    arn = module.locals["iam_boundary_arn"]
    assert arn.endswith(f":policy{boundary['path'].rstrip('/')}/{boundary['name']}")
    # The boundary lies outside the grant policies' path (`${local.iam_path}jitc-*`, never
    # "/"): no right over grant policies reaches it.
    assert boundary["path"] == "/"
    assert "${local.iam_path}jitc-*" in module.locals["iam_grant_policy_arn"]


def _hcl_string(text: str) -> str:
    """An HCL string literal's value (the escapes these expressions use)."""
    return text.replace('\\"', '"').replace("\\\\", "\\")


def test_the_secrets_the_functions_may_read_are_every_reference_in_the_catalog() -> None:
    import json
    import re

    import yaml

    from jitc.catalog import parse_catalog

    module = load()
    refs = module.locals["catalog_secret_refs"]
    # The expression: regexall("<pattern>", jsonencode(local.catalog)), first group of each.
    pattern = _hcl_string(re.search(r'regexall\("((?:[^"\\]|\\.)*)"', refs).group(1))
    assert "jsonencode(local.catalog)" in refs
    assert module.locals["catalog"] == "${yamldecode(file(var.catalog_file))}"
    doc = {
        "connector": {
            "signing_key": "aws-sm:jitc/connector#seed",
            # Any later reference (a key for MACing labels, say) is covered the same way.
            "label_key": "aws-sm:arn:aws:secretsmanager:eu-west-1:123456789012:secret:l-AbCdEf#k",
        },
        "integrations": yaml.safe_load(
            (module.path.parent / "examples" / "aws" / "catalog.yaml").read_text()
        )["integrations"],
    }
    found = {m.group(1) for m in re.finditer(pattern, json.dumps(doc))}
    catalog = parse_catalog(doc)
    expected = {str(i.credentials.location) for i in catalog.integrations.values() if i.credentials}
    expected |= {"jitc/connector", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:l-AbCdEf"}
    assert found == expected
    # The worker and the sweep read exactly those (and var.secret_arns), nothing wider.
    for function in ("worker", "sweep"):
        reads = [
            s for s in statements(module.policy(function))
            if "secretsmanager:GetSecretValue" in s["actions"]
        ]  # fmt: skip
        assert [s["resources"] for s in reads] == ["${local.secret_arns}"]
    assert "secret:${ref}-??????" in module.locals["secret_arns"]


def _interpolations(value: object) -> list[str]:
    """The text of every `${...}` in a parsed value (nested braces kept together)."""
    found: list[str] = []
    if isinstance(value, dict):
        for item in value.values():
            found += _interpolations(item)
    elif isinstance(value, list):
        for item in value:
            found += _interpolations(item)
    elif isinstance(value, str):
        start = value.find("${")
        while start != -1:
            depth, index = 0, start + 1
            while index < len(value):
                depth += {"{": 1, "}": -1}.get(value[index], 0)
                if depth == 0:
                    break
                index += 1
            found.append(value[start + 2 : index])
            start = value.find("${", index)
    return found


def _dangling(path: Path) -> list[str]:
    module = load(path)
    everything = [module.resources, module.data, module.locals, module.outputs, module.modules]
    everything += [{k: v.get("validation") for k, v in module.variables.items()}]
    missing: list[str] = []
    for expression in _interpolations(everything):
        for match in REFERENCE.finditer(expression):
            kind, name, attribute = match.groups()
            if kind == "var":
                ok = name in module.variables
            elif kind == "local":
                ok = name in module.locals
            elif kind == "data":
                ok = (name, attribute) in module.data
            elif kind == "module":
                ok = name in module.modules
                if ok and attribute:
                    source = module.modules[name]["source"]
                    ok = attribute in load((path / source).resolve()).outputs
            elif kind.startswith("aws_") or kind.startswith("archive_"):
                ok = (kind, name) in module.resources
            else:
                continue  # each., count., path.: Terraform's own
            if not ok:
                missing.append(match.group(0))
    return sorted(set(missing))


@pytest.mark.parametrize("path", [MODULE, EXAMPLE], ids=lambda p: p.name)
def test_every_reference_in_the_hcl_resolves_to_something_declared(path: Path) -> None:
    assert _dangling(path) == []


def test_the_reference_check_sees_a_dangling_reference(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        "locals {\n  a = aws_sqs_queue.nowhere.arn\n  b = var.missing\n  c = local.a\n}\n"
    )
    assert _dangling(tmp_path) == ["aws_sqs_queue.nowhere.arn", "var.missing"]


def test_whoever_sends_to_or_reads_an_encrypted_queue_may_use_its_key() -> None:
    # SQS calls KMS as the caller: SendMessage needs kms:GenerateDataKey on the queue's key,
    # ReceiveMessage kms:Decrypt; the Scheduler's role sends as well. A principal named in the
    # queue's resource policy (the control plane) gets it from the key's policy instead.
    module = load()
    key_policy = statements(module.policy("key"))
    needs = {"sqs:SendMessage": "kms:GenerateDataKey", "sqs:ReceiveMessage": "kms:Decrypt"}
    checked = 0
    for name, document in module.data.items():
        if name[0] != "aws_iam_policy_document" or name[1] == "key":
            continue
        found = statements(document)
        for statement in found:
            if statement.get("effect", "Allow") != "Allow":
                continue
            for resource in as_list(statement.get("resources", [])):
                if not str(resource).startswith("${aws_sqs_queue."):
                    continue
                key = _queue(resource).get("kms_master_key_id")
                for action, kms in needs.items():
                    if action not in statement["actions"] or not key:
                        continue
                    checked += 1
                    if "principals" in statement:
                        who = as_list(statement["principals"])[0]["identifiers"]
                        assert any(
                            kms in s["actions"]
                            and as_list(s.get("principals", [{}]))[0].get("identifiers") == who
                            for s in key_policy
                        ), (name[1], action, who)
                    else:
                        assert any(
                            kms in s["actions"] and key in as_list(s.get("resources", []))
                            for s in found
                        ), (name[1], action, resource)
    assert checked >= 5


def test_no_arn_is_pinned_to_the_commercial_partition() -> None:
    # GovCloud (aws-us-gov) and China (aws-cn) are partitions of their own.
    for path in (MODULE, EXAMPLE):
        for name, text in load(path).texts.items():
            assert "arn:aws:" not in text, f"{path.name}/{name}"


def test_every_alarm_says_when_it_is_over() -> None:
    alarms = load().of_kind("aws_cloudwatch_metric_alarm")
    assert alarms
    for name, alarm in alarms.items():
        assert alarm.get("ok_actions") == alarm["alarm_actions"], name


def test_a_dead_letter_queue_outlives_what_it_receives() -> None:
    # A message moved to a dead-letter queue keeps its first enqueue time.
    module = load()
    for name, queue in module.of_kind("aws_sqs_queue").items():
        if "redrive_policy" not in queue:
            continue
        target = re.search(r"aws_sqs_queue\.(\w+)\.arn", queue["redrive_policy"]).group(1)
        dead = module.resource("aws_sqs_queue", target)
        assert queue["message_retention_seconds"] == "${var.request_retention_seconds}"
        limit = module.variables["request_retention_seconds"]["validation"]
        assert "<= 604800" in str(limit) and dead["message_retention_seconds"] == 1209600, name


def test_in_a_vpc_lambda_may_make_the_network_interfaces_and_the_apis_are_reachable() -> None:
    module = load()
    function = module.resource("aws_lambda_function", "this")
    vpc = as_list(function["dynamic"])[0]["vpc_config"]
    # The intake talks to SQS only and stays outside; worker and sweep go in.
    assert 'each.key == "intake"' in vpc["for_each"]
    for name in ("worker", "sweep"):
        found = statements(module.policy(name))
        eni = {a for s in found for a in s["actions"] if a.startswith("ec2:")}
        # What AWSLambdaVPCAccessExecutionRole allows: Lambda creates the ENIs with this role.
        assert eni == {
            "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
            "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
            "ec2:UnassignPrivateIpAddresses",
        }, name  # fmt: skip
        create = next(s for s in found if "ec2:CreateNetworkInterface" in s["actions"])
        assert "var.vpc_config.subnet_ids" in str(create["resources"])
        assert "var.vpc_config.security_group_ids" in str(create["resources"])
    # Interface endpoints for every AWS API the worker and sweep call, bar the targets' own.
    services = module.locals["vpc_endpoint_services"]
    for service in ("sqs", "secretsmanager", "scheduler", "events", "sts", "xray"):
        assert f'"{service}"' in services, service
    endpoint = module.resource("aws_vpc_endpoint", "this")
    assert endpoint["private_dns_enabled"] is True
    assert endpoint["vpc_endpoint_type"] == "Interface"
    assert endpoint["subnet_ids"] == "${var.vpc_config.subnet_ids}"


def test_the_example_takes_what_the_catalog_says_from_the_catalog() -> None:
    import yaml

    example = load(EXAMPLE)
    catalog = yaml.safe_load((EXAMPLE / "catalog.yaml").read_text())
    call = example.modules["jitc"]
    # No hard-coded account: the one deployed into.
    assert "account_id" not in example.variables
    assert example.locals["account"] == "${data.aws_caller_identity.current.account_id}"
    # The grantees are the catalog's allowed principals, in this account and partition.
    principals = str(call["iam_target"])
    assert "local.iam.connection.allowed_principals" in principals
    assert example.locals["iam"] == '${local.catalog.integrations["account-iam"]}'
    assert example.locals["catalog"] == '${yamldecode(file("${path.module}/catalog.yaml"))}'
    # The catalog's boundary is the module's, in the catalog's own account.
    iam = catalog["integrations"]["account-iam"]["connection"]
    boundary = iam["permissions_boundary_arn"]
    assert boundary.split(":")[4] == iam["account_id"]
    assert boundary.endswith(f":policy/{call['name']}-grant-boundary")
    # The database said to be in a VPC gets one, which the deployer must give.
    assert "VPC" in catalog["integrations"]["orders-db"]["description"]
    assert (
        call["vpc_config"] == "${var.vpc_config}"
        and "default" not in example.variables["vpc_config"]
    )
    # The secret the catalog references exists, with a value.
    secret = example.resource("aws_secretsmanager_secret", "pg_admin")
    assert secret["name"] == "${local.pg_admin_secret}"
    assert "local.database.credentials" in example.locals["pg_admin_secret"]
    version = example.resource("aws_secretsmanager_secret_version", "pg_admin")
    assert version["secret_id"] == "${aws_secretsmanager_secret.pg_admin.id}"
    assert "secret_arns" not in call  # derived from the catalog by the module
    # An empty key list would refuse every request: the module stops the plan instead.
    function = load().resource("aws_lambda_function", "this")
    conditions = str(function["lifecycle"])
    assert "length(try(local.catalog.control_plane.keys, {})) > 0" in conditions


def test_the_functions_get_the_catalog_as_json_with_its_digest() -> None:
    module = load()
    assert module.locals["catalog_json"] == "${jsonencode(local.catalog)}"
    assert module.locals["catalog_sha256"] == "${sha256(local.catalog_json)}"
    source = as_list(module.data[("archive_file", "catalog")]["source"])[0]
    assert source == {"content": "${local.catalog_json}", "filename": "jitc/catalog.json"}
    # Layers are unpacked under /opt.
    assert env_value("JITC_CATALOG_PATH") == '"/opt/jitc/catalog.json"'
    assert env_value("JITC_CATALOG_SHA256") == "${local.catalog_sha256}"


def test_the_member_account_role_trusts_only_the_connector_and_only_with_the_external_id() -> None:
    member = load(MEMBER_MODULE)
    (trust,) = statements(member.policy("trust"))
    assert trust["actions"] == ["sts:AssumeRole"]
    assert as_list(trust["principals"])[0]["identifiers"] == "${var.connector_role_arns}"
    (condition,) = as_list(trust["condition"])
    assert (condition["test"], condition["variable"]) == ("StringEquals", "sts:ExternalId")
    assert condition["values"] == ["${var.external_id}"]
    # There as here: attach and write only on principals with the boundary made there.
    for statement in statements(member.policy("connector")):
        if BOUNDED & set(statement["actions"]):
            conditions = {c["variable"]: c["values"] for c in as_list(statement["condition"])}
            assert conditions["iam:PermissionsBoundary"] == ["${local.iam_boundary_arn}"]
    boundary = member.resource("aws_iam_policy", "grant_boundary")
    assert member.locals["iam_boundary_arn"].endswith(":policy/${var.name}-grant-boundary")
    assert boundary["name"] == "${var.name}-grant-boundary" and boundary["path"] == "/"
    # The connector may assume those roles and no others.
    for function in ("worker", "sweep"):
        assumes = [
            s for s in statements(load().policy(function)) if "sts:AssumeRole" in s["actions"]
        ]
        assert [s["resources"] for s in assumes] == ["${var.member_role_arns}"]
    assert _dangling(MEMBER_MODULE) == []


def test_the_example_says_the_boundary_caps_the_grantees_standing_access() -> None:
    """The boundary limits every policy of a grantee: the example must make its standing access
    an explicit input rather than silently cut it to what the catalog's grants allow."""
    example = load(EXAMPLE)
    target = example.modules["jitc"]["iam_target"]
    assert target["boundary_extra_actions"] == "${var.grantee_standing_actions}"
    assert "standing" in example.variables["grantee_standing_actions"]["description"]
    docs = (EXAMPLE.parents[2].parent / "docs" / "aws.md").read_text()
    assert "the boundary caps the grantees' standing access" in docs


def _holds(condition: str, values: dict[str, float]) -> bool:
    """Evaluate a module condition made of numbers, `var.*`, comparisons, `&&`, `*`, `floor`."""
    import math

    expression = condition.removeprefix("${").removesuffix("}").replace("&&", " and ")
    expression = re.sub(r"var\.(\w+)", lambda m: repr(values[m.group(1)]), expression)
    assert re.fullmatch(r"[\d\s.<>=*()andflor]+", expression), expression
    return bool(eval(expression, {"__builtins__": {}}, {"floor": math.floor}))


@pytest.mark.parametrize(
    ("values", "accepted"),
    [
        ({"worker_timeout": 60}, True),
        ({"worker_timeout": 900}, True),
        ({"worker_timeout": 30}, False),  # below the 30 s reserve: no message would ever start
        ({"worker_timeout": 59}, False),
        ({"worker_timeout": 901}, False),
        ({"worker_timeout": 90.5}, False),
        ({"sweep_missed_runs": 3}, True),
        ({"sweep_missed_runs": 0}, False),
        ({"sweep_missed_runs": 1.5}, False),
    ],
)
def test_timeouts_and_missed_runs_are_checked_before_they_break_the_deployment(
    values: dict[str, float], accepted: bool
) -> None:
    module = load()
    (name,) = values
    conditions = [v["condition"] for v in as_list(module.variables[name]["validation"])]
    assert conditions and all(_holds(c, values) for c in conditions) == accepted


def test_the_heartbeat_alarm_refuses_more_than_a_day_of_missed_runs() -> None:
    alarm = load().resource("aws_cloudwatch_metric_alarm", "sweep_heartbeat")
    (check,) = [p for block in as_list(alarm["lifecycle"]) for p in as_list(block["precondition"])]
    assert _holds(check["condition"], {"sweep_missed_runs": 3, "sweep_interval_minutes": 5})
    assert not _holds(check["condition"], {"sweep_missed_runs": 100, "sweep_interval_minutes": 60})


def test_what_the_module_repeats_from_the_catalog_is_checked_against_it() -> None:
    """Policy path, boundary and the Identity Center instance, store, permission sets and
    accounts are module inputs the policies are scoped to; the plan stops when the catalog's
    differ."""
    function = load().resource("aws_lambda_function", "this")
    checks = " ".join(
        str(p["condition"])
        for block in as_list(function["lifecycle"])
        for p in as_list(block["precondition"])
    )
    for repeated in (
        'try(integration.connection.path, "/jitc/") == local.iam_path',
        "integration.connection.permissions_boundary_arn == local.iam_boundary_arn",
        'integration.connection.instance_arn == try(local.idc.instance_arn, "")',
        'integration.connection.identity_store_id == try(local.idc.identity_store_id, "")',
        "p.permission_set_arn], try(local.idc.permission_set_arns, [])",
        "try(local.idc.account_ids, [])",
    ):
        assert repeated in checks, repeated
