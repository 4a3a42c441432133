"""Two hub processes on one PostgreSQL serve one federation: real hub processes, a real pod agent.

The pod is connected to one process while the modeller submits through the other, so each task
reaches the pod by the database's LISTEN/NOTIFY; then the pod's process is killed, and the pod
moves to the other through its ``hub.fallback_urls`` (promoting the standby socket it holds there), with no
task or result lost; a modeller reading through the killed process goes on through its ``--fallback-hub``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from e2e_support import Cluster, HubProcess, Modeller, register_modeller, wait_for  # type: ignore[import-not-found]

from pod_agent.modeller import run_sync
from pod_agent.protocol import IdentityKey

pytestmark = pytest.mark.slow


def _stored(db: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(db) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def _result_in(db: str, task_id: str) -> bool:
    """Whether the hubs' database holds pod-1's result for the task (what any process serves the modeller)."""
    return _stored(db, "SELECT pod FROM results WHERE task_id = %s", task_id) == [("pod-1",)]


def test_two_hub_processes_on_postgresql_serve_one_federation_and_losing_one_loses_no_task(
    tmp_path: Path, postgres_db: Callable[[], str], small_csv: Path
) -> None:
    db, blobs = postgres_db(), tmp_path / "shared-blobs"
    hubs = [
        HubProcess(db=db, log=tmp_path / f"hub-{name}.log", extra=["--blob-dir", str(blobs)]).start()
        for name in ("a", "b")
    ]
    a, b = hubs
    key = IdentityKey.generate()
    key.save(tmp_path / "modeller.pem")
    via_a = Modeller(key, tmp_path / "modeller.pem", a.url)
    via_b = replace(via_a, hub_url=b.url)
    cluster = Cluster(tmp_path, a, via_a)
    try:
        run_sync(register_modeller(via_a))
        pod = cluster.add_pod("pod-1", small_csv, hub_url=b.url, hub_extra=f'fallback_urls = ["{a.url}"]')
        wait_for(lambda: _stored(db, "SELECT name FROM pods"), what="pod-1 registered through hub B")

        # Submitted to A, pushed by B (the pod's process), the verified result read back through B.
        first = via_a.cli("submit", "--pods", "pod-1", "--kind", "schema-stats").stdout.strip()
        shown = via_b.cli("results", first, "--out", str(tmp_path / "first"), "--wait", "30").stdout
        assert shown.splitlines()[1].split()[:2] == ["pod-1", "done"], shown

        # B dies with a task on its way: the pod's standby at A takes over, and A delivers it; a later one too.
        second = via_a.cli("submit", "--pods", "pod-1", "--kind", "schema-stats").stdout.strip()
        b.kill()
        third = via_a.cli("submit", "--pods", "pod-1", "--kind", "schema-stats").stdout.strip()
        wait_for(lambda: _result_in(db, second) and _result_in(db, third), timeout_s=30, what="both results")
        assert f"hub {b.url} unavailable; the next try goes to {a.url}" in pod.log_text()
        assert f"the standby at {a.url} takes over" in pod.log_text()
        # The modeller who read through B goes on through A, its --fallback-hub.
        via_b_then_a = replace(via_b, extra=["--fallback-hub", a.url])
        shown = via_b_then_a.cli("results", second, "--out", str(tmp_path / "second"), "--wait", "30")
        assert shown.stdout.splitlines()[1].split()[:2] == ["pod-1", "done"], shown.stdout
        assert f"trying {a.url} next" in shown.stderr
        assert pod.terminate() == 0
    finally:
        for agent in cluster.agents:
            agent.kill()
        for hub in hubs:
            hub.kill()
