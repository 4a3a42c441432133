"""The agent encodes its table into the column store when it starts, so that no task's input reads the table."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from agent_support import hub_with_agent

from pod_agent.agent.pipeline import COLUMN_STORE_BYTES
from pod_agent.config.settings import DatasourceSection
from pod_agent.data import ColumnStore, open_datasource

CSV = "age,hours,TARGET\n" + "".join(f"{20 + i % 40},{i % 60},{'>50K' if i % 3 else '<=50K'}\n" for i in range(100))


async def test_the_agent_builds_its_column_store_at_start_before_any_task(tmp_path: Path) -> None:
    store_dir = tmp_path / "pod" / "column-store"
    async with hub_with_agent(tmp_path, CSV, stop_within_s=10):  # online, and no task sent
        for _ in range(200):
            built = list(store_dir.glob("*.arrow"))
            if built:
                break
            await asyncio.sleep(0.05)
        assert built, "no column store under the state dir 10 s after the agent started"
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    # It is the store of the pod's table as it is: the next process opens it instead of building another.
    ds = open_datasource(DatasourceSection(path=tmp_path / "small.csv"))
    table = ColumnStore(store_dir, max_bytes=COLUMN_STORE_BYTES).table(ds, ds.schema())
    assert table is not None and table.columns == {"age", "hours", "TARGET"}
    assert list(store_dir.iterdir()) == built
