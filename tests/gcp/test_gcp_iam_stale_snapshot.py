"""gcp_iam against a concurrent editor of the policy between the read a grant or a revoke
decides on and its (etag-refused) write: what the retry reads is checked as the first read was."""

from __future__ import annotations

from typing import Any

from gcpfake import FakeGcp, _etag
from test_gcp_iam_template import NEIGHBOUR, RESOURCE, ROLE, bindings, engine, fake, request

from jitc.models import derive_grant_id

__all__ = ["fake"]


def test_a_binding_edited_between_the_revokes_read_and_its_write_is_reported(
    fake: FakeGcp,
) -> None:
    """Edited before the revoke, the binding is named in the residual (left alone); edited
    after the revoke read the policy and before its write, the write is refused (etag), the
    retry finds nothing of ours, and the revoke must not then say it is verified and clean."""
    grant_id = engine().execute(request()).grant_id or ""
    original = fake._set_policy
    edited: list[int] = []

    def racing(resource: str, policy: dict[str, Any], storage: bool) -> dict[str, Any]:
        if resource == RESOURCE and not edited:
            edited.append(1)
            with fake.lock:
                for binding in fake.policies[RESOURCE]["bindings"]:
                    if (binding.get("condition") or {}).get("title") == f"jitc {grant_id}":
                        binding["condition"]["expression"] = (
                            'request.time < timestamp("2999-01-01T00:00:00Z")'
                        )
                fake.policies[RESOURCE]["etag"] = _etag()
        return original(resource, policy, storage)

    fake._set_policy = racing  # type: ignore[method-assign]
    outcome = engine().execute(request("revoke"))
    assert edited
    assert any("user:ana@example.com" in b["members"] for b in bindings(fake))  # still bound
    assert not outcome.verified or any("left alone" in r for r in outcome.residual), outcome


def test_a_binding_forged_under_the_grants_title_before_its_write_refuses_the_grant(
    fake: FakeGcp,
) -> None:
    """A binding under the grant's title that is not the connector's refuses the grant when the
    grant's read sees it; written after that read and before the grant's write (which the etag
    then refuses), the retry must refuse as well, not write the grant beside it."""
    grant_id = derive_grant_id("iam", "r1")
    original = fake._set_policy
    forged: list[int] = []

    def racing(resource: str, policy: dict[str, Any], storage: bool) -> dict[str, Any]:
        if resource == RESOURCE and not forged:
            forged.append(1)
            fake.bind(
                RESOURCE, ROLE, NEIGHBOUR,
                {"title": f"jitc {grant_id}",
                 "expression": 'request.time < timestamp("2999-01-01T00:00:00Z")'},
            )  # fmt: skip
        return original(resource, policy, storage)

    fake._set_policy = racing  # type: ignore[method-assign]
    outcome = engine().execute(request())
    assert forged
    assert outcome.status == "refused" and outcome.field == "grant_id", outcome
    assert not any("user:ana@example.com" in b["members"] for b in bindings(fake))
