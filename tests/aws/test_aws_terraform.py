"""The Terraform module read as AWS would read it once applied: what each resource refers to,
what AWS services do on the functions' behalf, and what the alarms watch. Parsed from the HCL
(python-hcl2), since no provider can be downloaded to plan it."""

from __future__ import annotations

from tfmodule import as_list, env_value, load, statements


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
    assert "contains([\"AWS_IAM\", \"NONE\"]" in str(auth["validation"])
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
