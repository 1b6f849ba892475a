"""The service-model checker sees what botocore's validator lets through and AWS refuses."""

from __future__ import annotations

from awsmodel import violations

ROLE = "arn:aws:iam::123456789012:role/jitc-scheduler"


def _schedule(**target: object) -> dict[str, object]:
    return {
        "Name": "gaaaaaaaaaaaaaaaaaaaaaaaa",
        "ScheduleExpression": "at(2030-01-01T00:00:00)",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {"Arn": "arn:aws:sqs:us-east-1:123456789012:q.fifo", "RoleArn": ROLE, **target},
    }


def test_pattern_length_enum_and_required_breaches_are_named() -> None:
    assert violations("scheduler", "CreateSchedule", _schedule()) == []
    fifo = _schedule(DeadLetterConfig={"Arn": "arn:aws:sqs:us-east-1:123456789012:d.fifo"})
    (breach,) = violations("scheduler", "CreateSchedule", fifo)
    assert breach.startswith("CreateSchedule.Target.DeadLetterConfig.Arn:")
    assert violations("scheduler", "CreateSchedule", {**_schedule(), "Name": "x" * 65})
    assert violations("scheduler", "CreateSchedule", {**_schedule(), "Name": "a b"})
    mode = {**_schedule(), "FlexibleTimeWindow": {"Mode": "off"}}
    assert violations("scheduler", "CreateSchedule", mode)
    missing = {k: v for k, v in _schedule().items() if k != "FlexibleTimeWindow"}
    assert violations("scheduler", "CreateSchedule", missing) == [
        "CreateSchedule.FlexibleTimeWindow: required"
    ]
    # Java's Unicode classes are widened, never narrowed: a valid tag passes.
    tag = {"Key": "jitc:gaaaaaaaaaaaaaaaaaaaaaaaa:x", "Value": "tombstone 2030 é"}
    permission_set = "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-1234567890abcdef"
    request = {
        "InstanceArn": "arn:aws:sso:::instance/ssoins-1234567890abcdef",
        "ResourceArn": permission_set,
        "Tags": [tag] * 76,
    }
    assert violations("sso-admin", "TagResource", request) == [
        "TagResource.Tags: 76 items > max 75"
    ]
    moto_shaped = {**request, "Tags": [tag], "ResourceArn": permission_set.replace(
        "permissionSet/", "instance/")}  # fmt: skip
    assert violations("sso-admin", "TagResource", moto_shaped)
