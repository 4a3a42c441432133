"""The audit export: every task the pod recorded, as a hash-chained, signed JSON Lines log.

Owns the line format and the chain. Each line is canonical JSON (keys sorted, no spaces)
holding ``prev``, the sha256 (hex) of the line before it (64 zeros for the first), so that
a changed, removed or reordered line breaks every hash after it. The last line (``record:
"end"``) counts the tasks and carries the pod's Ed25519 signature over the hash of the line
before it: a log cut short, or rebuilt whole by someone without the pod's key, fails too.

One task line: task_id, received (Unix s), signer (key id), modeller (its name in pod.toml at
export time, or null), model {name, sha256} or null, kind, outcome (done, failed, refused,
pending_review, ...), reason (the refusal or failure code), rows (the result's row count),
bytes (every byte that left the pod for it, or was queued to) and bytes_by (the same by channel:
result, update, masked, round, progress; ``records.AuditRow``), dp (the privacy-ledger events
charged to it). ``pod-agent tasks export|verify-export`` (``cli/tasks.py``) drives this.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pod_agent.errors import ProtocolError, StateError
from pod_agent.protocol import IdentityKey, PublicKey, canonical_json
from pod_agent.state.records import AuditRow

GENESIS = "0" * 64
EXPORT_VERSION = 1


class ExportBroken(StateError):
    """An audit export whose chain or signature does not hold: it was changed after the pod wrote it."""

    def __init__(self, line: int, why: str) -> None:
        self.line = line
        super().__init__(f"audit export line {line}: {why}: the file was changed after the pod wrote it, "
                         "or is not a pod-agent export")


@dataclass(frozen=True)
class ExportSummary:
    """What a verified export holds."""

    tasks: int
    pod: str
    key_id: str
    head: str  # the hash the pod signed


def _digest(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _task_line(row: AuditRow, names: Mapping[str, str]) -> dict[str, Any]:
    payload = json.loads(row.task.envelope_json).get("payload", {})
    model = payload.get("model") if isinstance(payload, dict) else None
    return {
        "record": "task",
        "task_id": row.task.task_id,
        "received": row.task.created_at,
        "signer": row.task.modeller_id,
        "modeller": names.get(row.task.modeller_id),
        "model": {"name": model.get("name"), "sha256": model.get("sha256")} if isinstance(model, dict) else None,
        "kind": row.task.kind,
        "outcome": row.outcome,
        "reason": row.task.reason,
        "rows": row.n_rows,
        "bytes": row.bytes_released,
        "bytes_by": dict(row.bytes_by_channel),
        "dp": [json.loads(event) for event in row.dp_events],
    }


def export_lines(
    rows: Iterable[AuditRow], *, names: Mapping[str, str], pod: str, key: IdentityKey, since: int
) -> Iterator[str]:
    """The export, a line at a time (without newlines): a header, one line per task, the signed end."""
    header = {"record": "export", "v": EXPORT_VERSION, "pod": pod, "key_id": key.key_id,
              "public_key": key.public.to_b64(), "since": since, "prev": GENESIS}
    line = canonical_json(header)
    yield line.decode("utf-8")
    count = 0
    for row in rows:
        line = canonical_json({**_task_line(row, names), "prev": _digest(line)})
        yield line.decode("utf-8")
        count += 1
    head = _digest(line)
    signature = base64.b64encode(key.sign(head.encode("ascii"))).decode("ascii")
    yield canonical_json({"record": "end", "tasks": count, "prev": head, "signature": signature}).decode("utf-8")


def verify_export(lines: Sequence[str], *, pinned: PublicKey | None = None) -> ExportSummary:
    """Check the chain line by line and the end's signature (by ``pinned``, else the header's key)."""
    records = [_chained(number, text) for number, text in enumerate(lines, start=1)]
    prev = GENESIS
    for number, (record, text) in enumerate(records, start=1):
        if record.get("prev") != prev:
            raise ExportBroken(number, f"does not chain to line {number - 1} (its prev is not that line's sha256)")
        prev = _digest(text.encode("utf-8"))
    if not records or records[0][0].get("record") != "export":
        raise ExportBroken(1, "is not an export header")
    header = records[0][0]
    end, _ = records[-1]
    if len(records) < 2 or end.get("record") != "end":
        raise ExportBroken(len(records) + 1, "the signed end line is missing (the export was cut short)")
    strays = [n for n, (r, _) in enumerate(records[1:-1], start=2) if r.get("record") != "task"]
    if strays:
        raise ExportBroken(strays[0], "is neither a task nor where the export ends")
    tasks = len(records) - 2
    if end.get("tasks") != tasks:
        raise ExportBroken(len(records), f"the end counts {end.get('tasks')} tasks, the file holds {tasks}")
    key = pinned or _header_key(header)
    try:
        key.verify(base64.b64decode(str(end.get("signature")), validate=True), str(end.get("prev")).encode("ascii"))
    except (ProtocolError, ValueError) as exc:
        raise ExportBroken(
            len(records), f"the signature over the chain does not verify with key {key.key_id[:16]}"
        ) from exc
    return ExportSummary(tasks=tasks, pod=str(header.get("pod")), key_id=key.key_id, head=str(end.get("prev")))


def _chained(number: int, text: str) -> tuple[dict[str, Any], str]:
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise ExportBroken(number, "is not JSON") from exc
    if not isinstance(record, dict) or canonical_json(record).decode("utf-8") != text:
        raise ExportBroken(number, "is not a canonical JSON object (it was edited)")
    return record, text


def _header_key(header: Mapping[str, Any]) -> PublicKey:
    try:
        return PublicKey.from_b64(str(header.get("public_key")))
    except ProtocolError as exc:
        raise ExportBroken(1, "the header's public_key is not an Ed25519 key") from exc
