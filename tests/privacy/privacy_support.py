"""The attack corpus's rig and decoders: one real hub and one real pod (sandbox level strict) on a
slice of the Adult table, every request the pod sends captured at the hub, and the table's secrets
that an attack tries to carry out (each split's target sequence, every category value).

The hub is an adversary like the modeller, so what it sees is the attacker's view: every progress
event, refusal and result the pod posts, and every blob. An attack is judged by decoding that view
the way its author would and comparing the outcome with the table.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from agent_support import HubWithAgent
from aiohttp import web
from task_support import cohort_of, entries

from pod_agent.agent.egress import METRIC_VOCABULARY
from pod_agent.config.settings import DatasourceSection
from pod_agent.data import open_datasource
from pod_agent.data.task_input import DATA_FILE_NAME, SPLIT_CODES, prepare_task_input
from pod_agent.modeller import ModellerClient, PodInfo, VerifiedResult, build_task
from pod_agent.modeller.weights import starting_weights
from pod_agent.policy import FailureCode, RefusalCode
from pod_agent.protocol import CohortEntry, IdentityKey, source_sha256, spec_sha256
from pod_agent.protocol.messages import (
    DataSelection,
    Hyperparameters,
    ModelRef,
    SecAggParams,
    Split,
    TaskPayload,
    WeightsRef,
)

CORPUS = Path(__file__).parent / "corpus"
# Every model source starts with the kit: how a hostile model finds the worker's channel and the prepared rows.
KIT = (CORPUS / "_kit.py").read_text()

# 700 Adult rows split 60/20/20: every split holds >= 100 rows (min_rows' default), training stays tiny.
TABLE_ROWS = 700
FEATURES = ["age", "workclass", "education", "sex", "hours-per-week"]
SELECTION = DataSelection(target="TARGET", columns=FEATURES, split=Split(train=60, validation=20, test=20))
# A second target set on only this many rows: the estimate from the table's row count passes min_rows,
# the prepared splits (rows without a target dropped) do not.
FOLLOWUP_ROWS = 60
FOLLOWUP = "followup"
# The pod's own floor for this corpus: low enough that a short task crosses it.
MAX_EFFECTIVE_STEPS = 100
# Category values searched for in what leaves: those with a letter (numbers such as capital-gain's "0"
# occur in any JSON) and at least this long. Blobs are binary (a masked vector is a megabyte of random
# bytes), so there only from MIN_BLOB_WORD on, where a chance match is under 2**-28 per word.
MIN_TEXT_WORD, MIN_BLOB_WORD = 3, 6
TASK_TIMEOUT_S = 180.0

WORDS = frozenset(code.value for code in RefusalCode) | frozenset(code.value for code in FailureCode)
SPEC: dict[str, Any] = {
    "layers": [{"type": "Linear", "in_features": "input_size", "out_features": "n_classes"}],
    "optimizer": "SGD", "loss": "CrossEntropy", "learning_rate": 0.1,
}


def adult_slice(adult_parquet: Path, dest: Path) -> str:
    """The first TABLE_ROWS Adult rows plus a ``followup`` column (TARGET on FOLLOWUP_ROWS rows, else null),
    written as CSV at ``dest``; returns the CSV text."""
    table = pq.read_table(adult_parquet).slice(0, TABLE_ROWS)
    target = table.column("TARGET").to_pylist()
    followup = pa.array([value if i < FOLLOWUP_ROWS else None for i, value in enumerate(target)], pa.string())
    table = table.append_column(FOLLOWUP, followup)
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    text = buffer.getvalue().decode("utf-8")
    dest.write_text(text)
    return text


@dataclass(frozen=True)
class TableSecrets:
    """What must not leave: each split's target sequence (prepared-file order) and every category value."""

    targets: Mapping[str, Sequence[int]]
    n_rows: Mapping[str, int]
    categories: frozenset[str]
    datastructure: Mapping[str, Any]

    @classmethod
    def of(cls, csv_path: Path, selection: DataSelection, work: Path) -> TableSecrets:
        """Prepared exactly as the pod prepares it (same selection, categories not shared)."""
        ds = open_datasource(DatasourceSection(path=csv_path))
        schema = ds.schema()
        prepared = prepare_task_input(ds, schema, selection, work, share_categories=False)
        with pa.memory_map(str(work / DATA_FILE_NAME)) as source:
            table = ipc.open_file(source).read_all()
        ys, splits = table.column("y").to_pylist(), table.column("split").to_pylist()
        targets = {
            name: [int(y) for y, s in zip(ys, splits, strict=True) if s == code] for name, code in SPLIT_CODES.items()
        }
        categories = frozenset(c for column in schema.columns for c in (column.categories or ()))
        return cls(targets=targets, n_rows=dict(prepared.datastructure["n_rows"]),  # type: ignore[call-overload]
                   categories=categories, datastructure=prepared.datastructure)

    def leaked_split(self, positions: Mapping[int, int], *, min_bits: int = 16) -> str | None:
        """The split whose target sequence ``positions`` (index -> bit) reproduces, or None.

        At least ``min_bits`` positions must be known and every one must match: a chance match of 16
        target bits is under 2**-16 for a balanced target, and Adult's is about 1:3.
        """
        if len(positions) < min_bits:
            return None
        for name, sequence in self.targets.items():
            if all(0 <= i < len(sequence) and sequence[i] == bit for i, bit in positions.items()):
                return name
        return None

    @property
    def words(self) -> list[str]:
        """The category values a search can find without false hits (see MIN_TEXT_WORD)."""
        return sorted(c for c in self.categories if len(c) >= MIN_TEXT_WORD and any(ch.isalpha() for ch in c))

    def categories_in_text(self, text: str) -> list[str]:
        return [word for word in self.words if word in text]

    def categories_in_bytes(self, data: bytes) -> list[str]:
        return [word for word in self.words if len(word) >= MIN_BLOB_WORD and word.encode() in data]


def bits(value: int, width: int) -> list[int]:
    """``value``'s ``width`` low bits, most significant first (the corpus's packing order)."""
    return [(value >> (width - 1 - i)) & 1 for i in range(width)]


@dataclass
class PodTraffic:
    """Every request the pod sent to the hub, in order: path and body (blob uploads excepted: they are fetched)."""

    requests: list[tuple[str, bytes]] = field(default_factory=list)

    def middleware(self) -> Callable[[web.Request, Any], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def capture(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "POST" and request.path.startswith("/v1/pod/"):
                self.requests.append((request.path, await request.read()))
            return await handler(request)  # type: ignore[no-any-return]

        return capture

    def for_task(self, task_id: str) -> list[tuple[str, bytes]]:
        return [(path, body) for path, body in self.requests if task_id.encode() in path.encode() + body]

    def progress(self, task_id: str) -> list[dict[str, Any]]:
        """The progress events the pod posted for ``task_id`` (what the hub shows, and more)."""
        return [json.loads(body) for path, body in self.requests if path == f"/v1/pod/tasks/{task_id}/progress"]

    def text(self, task_id: str) -> str:
        """What the pod sent about ``task_id``, as text, less its signatures: 88 random base64 characters
        each, in which a short category value such as "9th" or "Male" turns up by chance (about 1 in
        3000 per signature); a signature is fixed by what it signs, so it carries nothing else."""
        return "\n".join(_unsigned_text(body) for _, body in self.for_task(task_id))


@dataclass
class Attacker:
    """A modeller as the pod knows it: its client, and the pod it targets."""

    client: ModellerClient
    pod: PodInfo
    work: Path

    def task(
        self, kind: str, model: ModelRef, *, hp: Hyperparameters | None = None, data: DataSelection = SELECTION,
        secagg: SecureCohort | None = None, **fields: Any,
    ) -> TaskPayload:
        """A task for this pod; under ``secagg`` for its whole cohort (only this pod answers)."""
        own = entries([self.pod.name], self.pod.schema_hash, key_ids={self.pod.name: self.pod.key_id})
        cohort = secagg.entries if secagg is not None else own
        return build_task(
            modeller_id=self.client.key.key_id, cohort=cohort, kind=kind,  # type: ignore[arg-type]
            model=model, data=data, hyperparameters=hp or Hyperparameters(epochs=1, batch_size=32),
            secagg=None if secagg is None else secagg.params, **fields,
        )

    async def pinned(self, model: ModelRef, hp: Hyperparameters, data: DataSelection = SELECTION) -> WeightsRef:
        """Starting weights made and published as the SDK makes them for a train task."""
        return await starting_weights(self.client, model=model, cohort=[self.pod], selection=data,
                                      hyperparameters=hp, weights_file=None, work_dir=self.work)

    async def outcome(self, task: TaskPayload) -> ResultView:
        await self.client.submit_task(task, cohort_of(task))
        answers = await self.client.wait_results(task.task_id, [self.pod.name], timeout_s=TASK_TIMEOUT_S)
        got = answers[self.pod.name]
        if isinstance(got, VerifiedResult):
            return ResultView(task.task_id, got.payload.status, got.payload.reason, got)
        return ResultView(task.task_id, "refused", got, None)

    async def blob(self, view: ResultView) -> bytes:
        assert view.result is not None and view.result.payload.blob is not None, view
        sha = view.result.payload.blob.sha256
        return (await self.client.download_blob(sha, self.work / f"{sha}.blob")).read_bytes()


@dataclass(frozen=True)
class ResultView:
    """How a task ended, as the modeller learns it: status, the fixed reason word, the signed result."""

    task_id: str
    status: str
    reason: str | None
    result: VerifiedResult | None


def lightning(name: str, *, class_name: str = "Attack") -> ModelRef:
    """corpus/<name>.py after the kit, as an inline Lightning model pinned by sha256."""
    source = KIT + "\n\n# ---- " + name + " ----\n" + (CORPUS / f"{name}.py").read_text()
    return ModelRef(style="lightning", name=name, class_name=class_name, source=source, sha256=source_sha256(source))


def declarative(spec: Mapping[str, Any] = SPEC) -> ModelRef:
    return ModelRef(style="declarative", name="linear", spec=dict(spec), sha256=spec_sha256(dict(spec)))


@dataclass(frozen=True)
class SecureCohort:
    """A secure task's cohort entries and its secure-aggregation parameters."""

    entries: list[CohortEntry]
    params: SecAggParams

    def with_params(self, **update: Any) -> SecureCohort:
        return SecureCohort(self.entries, self.params.model_copy(update=update))


def cohort(pod: PodInfo, peers: Iterable[tuple[str, str]]) -> SecureCohort:
    """This pod and ``peers`` (name, key id) under secure aggregation within the default clip ceiling:
    bound = prime_q / (2 * precision * num_workers) = 2**20 / 2**17 / 3, about 2.7."""
    keys = {pod.name: pod.key_id, **dict(peers)}
    members = entries(list(keys), pod.schema_hash, key_ids=keys)
    return SecureCohort(members, SecAggParams(prime_q=2**20, precision=2**16, num_workers=len(members)))


@dataclass
class PrivacyRig:
    """The module's hub and pod (conftest.py), what the pod sent, the table's secrets and the three modellers."""

    hub: HubWithAgent
    traffic: PodTraffic
    secrets: TableSecrets
    owner: Attacker
    lifted: Attacker
    general: Attacker
    peers: list[tuple[str, str]]  # the pinned peers' names and key ids
    peer_keys: dict[str, IdentityKey]  # their identity keys: a secure round's other pods are the test's


def _unsigned_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    return json.dumps(_without_signatures(doc), sort_keys=True)


def _without_signatures(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_signatures(item) for key, item in value.items() if key != "signature"}
    if isinstance(value, list):
        return [_without_signatures(item) for item in value]
    return value


async def nothing_recoverable(rig: PrivacyRig, view: ResultView) -> None:
    """What every attack must leave behind: a reason from the pod's fixed words, metric names from the
    vocabulary, and no category value in anything the pod sent about the task or in its blob."""
    assert view.reason is None or view.reason in WORDS, view.reason
    text = rig.traffic.text(view.task_id)
    assert rig.secrets.categories_in_text(text) == [], "category values in what the pod sent"
    # The corpus writes target bits as binary text where it can (names, failure words): read any back.
    for run in re.findall(r"[01]{16,}", text):
        assert rig.secrets.leaked_split(dict(enumerate(int(b) for b in run))) is None, f"target bits {run}"
    if view.result is not None:
        assert set(view.result.payload.metrics) <= set(METRIC_VOCABULARY), view.result.payload.metrics
        if view.result.payload.blob is not None:
            # The hub serves a result blob only to the task's own modeller (and the pod): read it as that one.
            task = rig.hub.storage.get_task(view.task_id)
            assert task is not None, view.task_id
            reader = next(a for a in (rig.owner, rig.lifted, rig.general) if a.client.key.key_id == task.modeller_id)
            data = await reader.blob(view)
            assert rig.secrets.categories_in_bytes(data) == [], "category values in the blob"


async def settle(check: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` holds (a message still in flight to the hub), at most ``timeout_s``."""
    for _ in range(int(timeout_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)

