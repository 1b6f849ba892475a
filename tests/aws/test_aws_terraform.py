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
