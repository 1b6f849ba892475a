"""Adversarial checks of the inventory sync against a control plane that misbehaves: on the real
PostgreSQL, to a real HTTP control plane (tests/inventory_cp.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from inventory_cp import ControlPlane, serving
from pgtest import catalog_doc
from test_inventory_sync import DEAD, INTEGRATION, PUBLIC, _engine, pg  # noqa: F401

from jitc.inventory import FileSyncState, webhook_transport

LATE = INTEGRATION + "-late"


class RefusesFailedManifests(ControlPlane):
    """A control plane that answers 400 to a `failed` manifest (its schema or its policy does
    not take the error text): a 4xx the connector must treat as that part's refusal only."""

    def _manifest(self, event: dict[str, Any]) -> tuple[int, bytes]:
        if event["status"] == "failed":
            return 400, b'{"error":"not taken"}'
        return super()._manifest(event)


def test_a_refused_failed_manifest_does_not_stop_the_other_integrations(
    pg: psycopg.Connection[Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    late = json.loads(json.dumps(catalog_doc()["integrations"][INTEGRATION]))
    cp = RefusesFailedManifests(PUBLIC)
    with serving(cp) as url:
        engine = _engine(url, {LATE: late})
        order = list(engine.catalog.integrations)
        assert order.index(DEAD) < order.index(LATE)  # the dead one is synced first
        report = engine.sync(
            webhook_transport(engine.catalog, engine.secrets), FileSyncState(tmp_path / "s")
        )
    assert report.integrations[DEAD].status == "failed"
    assert report.integrations[LATE].status == "complete"
    assert LATE in cp.current
