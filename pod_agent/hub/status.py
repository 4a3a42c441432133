"""The hub's read-only status page for its operator: pods, tasks and FedAvg runs, rendered on the server.

Owns ``StatusPage`` (the operator's admin token and the pod keys the operator pinned),
``GET /status`` (registered by ``server.create_app`` when a page is configured), its
authentication (the admin token as a bearer token or as the password of HTTP basic auth,
compared in constant time; anything else is 401) and the rendering: one HTML document with
every value escaped, per-round curves as inline SVG, no script, and a Content-Security-Policy
that allows nothing but the page's one stylesheet (by hash).

It shows only what the hub already holds (``Storage`` and its live connection counts) and
only what a task's modeller may read of it: delivery states, refusal and failure codes, and
the metrics pods put in clear in their signed results (a secure round's metrics are inside
the masked sum, which the hub cannot read, so such a run shows round times and participation).
No payloads, sources, weights or secure-round messages. The hub does not know "runs": a run
here is a sequence of train tasks by one modeller with one model and target (a secure round
numbered no higher than the last one starts another), closed by the evaluate task of that model
that follows it. Nothing on the
page changes anything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html import escape

from aiohttp import web
from pydantic import ValidationError

from pod_agent.errors import HubError
from pod_agent.hub.storage import HubTaskRecord, PodRecord, Storage
from pod_agent.protocol import ResultPayload, TaskPayload

STATUS_ROUTE = "status"
STATUS_PATH = "/status"
# Long enough that it cannot be guessed at any request rate (a token_urlsafe(32) is 43 characters).
MIN_ADMIN_TOKEN_CHARS = 16
# The page lists the newest tasks and the runs they make up; older ones stay in the database.
MAX_TASKS_SCANNED = 300
MAX_TASKS_LISTED = 60
MAX_RUNS_SHOWN = 12
# One colour per pod line in a chart; more pods than colours share the last ones' legend order.
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
# The clear-text metrics a run's charts draw, when its pods report them (plain rounds only).
_CHART_METRICS = ("train_loss", "test_loss", "test_accuracy")
# The page reloads itself (no script) so an operator watching a round sees it move.
REFRESH_S = 15

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.on{color:#1a7f37;font-weight:600}.off{color:#b42318;font-weight:600}.warn{color:#b42318;font-weight:600}
.muted{color:#666}.run{background:#fff;border:1px solid #ddd;padding:.6em .9em;margin:.6em 0}
.charts{display:flex;flex-wrap:wrap;gap:.8em}code{font-size:.92em}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class StatusPage:
    """The operator's side of the page: the admin token (kept out of repr) and the pods' keys as the
    operator pinned them (name -> base64 Ed25519 key, as ``pod-agent keys show`` prints them)."""

    admin_token: str = field(repr=False)
    pod_pins: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.admin_token) < MIN_ADMIN_TOKEN_CHARS:
            raise HubError(
                f"admin token of {len(self.admin_token)} characters is too short to keep the status page private; "
                f"use at least {MIN_ADMIN_TOKEN_CHARS}, e.g. `python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))' > admin.token`"
            )

    def authorised(self, header: str | None) -> bool:
        """Whether an Authorization header carries the admin token (Bearer, or Basic with any user name)."""
        offered = _offered_token(header)
        # Digests of equal length, compared in constant time: neither the token nor its length leaks.
        expected = hashlib.sha256(self.admin_token.encode()).digest()
        return hmac.compare_digest(hashlib.sha256(offered.encode()).digest(), expected)


def _offered_token(header: str | None) -> str:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return decoded.partition(":")[2]
    return ""


@dataclass(frozen=True)
class StatusSource:
    """What the page reads of a running hub: its storage, clock, online rule and registration policy."""

    storage: Storage
    now: Callable[[], int]
    online: Callable[[PodRecord, int], bool]
    registration: str


_PAGE: web.AppKey[StatusPage] = web.AppKey("status_page", StatusPage)
_SOURCE: web.AppKey[StatusSource] = web.AppKey("status_source", StatusSource)


def add_status_route(app: web.Application, page: StatusPage, source: StatusSource) -> None:
    """Serve ``GET /status`` on ``app``; the caller exempts the route from request signing."""
    app[_PAGE] = page
    app[_SOURCE] = source
    app.router.add_get(STATUS_PATH, _status, name=STATUS_ROUTE)


async def _status(request: web.Request) -> web.Response:
    page, source = request.app[_PAGE], request.app[_SOURCE]
    if not page.authorised(request.headers.get("Authorization")):
        return web.Response(
            status=401, text="401: the status page needs the hub's admin token (the password; any user name)\n",
            headers={**SECURITY_HEADERS, "WWW-Authenticate": 'Basic realm="pod-agent hub status", charset="UTF-8"'},
        )
    snapshot = await asyncio.to_thread(collect, source, page.pod_pins)
    return web.Response(text=render(snapshot), content_type="text/html", charset="utf-8", headers=SECURITY_HEADERS)


# -- what the page shows ----------------------------------------------------------------------


@dataclass(frozen=True)
class PodRow:
    name: str
    online: bool
    last_seen: int
    sandbox_level: str
    schema_hash: str
    row_count: int
    key_id: str
    key_state: str  # pinned, MISMATCH or unpinned, against the operator's pins
    pending: bool  # awaiting the operator's approval


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    created_at: int
    modeller: str
    kind: str
    model: str
    secure: bool
    states: dict[str, str]  # pod -> its delivery state


@dataclass(frozen=True)
class RoundPoint:
    round: int
    seconds: float | None  # submitted -> last result; None while pods are still out
    answered: int
    cohort: int
    metrics: dict[str, dict[str, float]]  # pod -> clear-text metrics of its signed result
    evaluated_first: bool  # its test_* metrics are of the model it started from: the previous round's


@dataclass(frozen=True)
class RunRow:
    modeller: str
    model: str
    secure: bool
    rounds: list[RoundPoint]
    evaluation: dict[str, dict[str, float]] | None  # the closing evaluate task's metrics per pod
    finished: bool


@dataclass(frozen=True)
class Snapshot:
    now: int
    registration: str
    pods: list[PodRow]
    tasks: list[TaskRow]
    runs: list[RunRow]


@dataclass
class _Task:
    record: HubTaskRecord
    payload: TaskPayload | None
    states: dict[str, str]
    results: dict[str, ResultPayload]
    last_result_at: int | None
    answered: int


def collect(source: StatusSource, pins: Mapping[str, str]) -> Snapshot:
    """Read the hub's records into the page's rows (blocking: storage calls; run it off the event loop)."""
    storage, now = source.storage, source.now()
    pending = {k.key_id for k in storage.pending_keys()}
    pods = [
        PodRow(
            name=p.name, online=source.online(p, now), last_seen=p.last_seen, sandbox_level=p.sandbox_level,
            schema_hash=p.schema_hash, row_count=p.row_count, key_id=p.key_id,
            key_state=_key_state(pins.get(p.name), p.public_key), pending=p.key_id in pending,
        )
        for p in storage.list_pods()
    ]
    names: dict[str, str] = {}

    def modeller_name(key_id: str) -> str:
        if key_id not in names:
            record = storage.get_modeller(key_id)
            names[key_id] = record.name if record is not None else key_id[:12]
        return names[key_id]

    tasks = [_read_task(storage, record) for record in storage.recent_tasks(MAX_TASKS_SCANNED)]
    rows = [
        TaskRow(
            task_id=t.record.task_id, created_at=t.record.created_at, modeller=modeller_name(t.record.modeller_id),
            kind=t.payload.kind if t.payload else "?", model=_model_label(t.payload),
            secure=bool(t.payload and t.payload.secagg), states=t.states,
        )
        for t in tasks[:MAX_TASKS_LISTED]
    ]
    runs = _runs(list(reversed(tasks)), modeller_name)
    return Snapshot(now=now, registration=source.registration, pods=pods, tasks=rows, runs=runs[-MAX_RUNS_SHOWN:][::-1])


def _key_state(pinned: str | None, held: str) -> str:
    if pinned is None:
        return "unpinned"
    return "pinned" if hmac.compare_digest(pinned, held) else "MISMATCH"


def _read_task(storage: Storage, record: HubTaskRecord) -> _Task:
    try:
        payload: TaskPayload | None = TaskPayload.model_validate(json.loads(record.envelope)["payload"])
    except (ValueError, KeyError, TypeError, ValidationError):
        payload = None  # stored before a protocol change; listed without its details
    results: dict[str, ResultPayload] = {}
    received: list[int] = []
    for stored in storage.results(record.task_id):
        try:
            results[stored.pod] = ResultPayload.model_validate(json.loads(stored.envelope)["payload"])
        except (ValueError, KeyError, TypeError, ValidationError):
            continue
        received.append(stored.received_at)
    states: dict[str, str] = {}
    answered = 0
    for d in storage.deliveries(record.task_id):
        result = results.get(d.pod)
        if d.refusal is not None:
            states[d.pod] = f"refused: {d.refusal}"
        elif result is not None and result.status != "done":
            states[d.pod] = f"{result.status}: {result.reason or '-'}"
        elif d.result_status is not None:
            states[d.pod] = d.result_status
        elif d.progress is not None:
            states[d.pod] = str(d.progress.get("stage", "acknowledged"))
        else:
            states[d.pod] = "acknowledged" if d.acked_at is not None else "waiting for the pod"
        answered += d.refusal is not None or d.result_status is not None
    return _Task(record, payload, states, results, max(received, default=None), answered)


def _model_label(payload: TaskPayload | None) -> str:
    if payload is None or payload.model is None:
        return "-"
    model = payload.model
    return f"{model.name or model.class_name or model.style} ({model.style}, {model.sha256[:10]})"


def _run_key(task: _Task) -> tuple[str, str, str] | None:
    payload = task.payload
    if payload is None or payload.model is None or payload.data is None:
        return None
    return (task.record.modeller_id, payload.model.sha256, payload.data.target)


def _runs(oldest_first: list[_Task], modeller_name: Callable[[str], str]) -> list[RunRow]:
    """Group train tasks into FedAvg runs (see the module docstring); oldest run first."""
    runs: list[tuple[_Task, list[_Task], list[_Task]]] = []  # (first task, train tasks, closing evaluate)
    open_runs: dict[tuple[str, str, str], int] = {}
    for task in oldest_first:
        key = _run_key(task)
        if key is None or task.payload is None:
            continue
        if task.payload.kind == "train":
            if key not in open_runs or _restarts(runs[open_runs[key]][1][-1], task):
                open_runs[key] = len(runs)
                runs.append((task, [], []))
            runs[open_runs[key]][1].append(task)
        elif task.payload.kind == "evaluate" and key in open_runs:
            runs[open_runs.pop(key)][2].append(task)
    return [_run_row(first, trains, closing, modeller_name) for first, trains, closing in runs]


def _restarts(previous: _Task, task: _Task) -> bool:
    """A secure round numbered no higher than the run's last one begins another run."""
    before = previous.payload.secagg if previous.payload is not None else None
    now = task.payload.secagg if task.payload is not None else None
    return before is not None and now is not None and now.round <= before.round


def _run_row(first: _Task, trains: list[_Task], closing: list[_Task], modeller_name: Callable[[str], str]) -> RunRow:
    points = [
        RoundPoint(
            round=i + 1,
            seconds=None if t.answered < len(t.states) or t.last_result_at is None
            else float(t.last_result_at - t.record.created_at),
            answered=t.answered, cohort=len(t.states),
            metrics={pod: _finite(r.metrics) for pod, r in sorted(t.results.items()) if r.metrics},
            evaluated_first=t.payload is not None and t.payload.evaluate_first,
        )
        for i, t in enumerate(trains)
    ]
    evaluation = None
    if closing:
        evaluation = {pod: _finite(r.metrics) for pod, r in sorted(closing[0].results.items())}
    done = all(t.answered == len(t.states) for t in [*trains, *closing])
    return RunRow(
        modeller=modeller_name(first.record.modeller_id), model=_model_label(first.payload),
        secure=first.payload is not None and first.payload.secagg is not None, rounds=points,
        evaluation=evaluation, finished=bool(closing) and done,
    )


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if math.isfinite(v)}


# -- rendering --------------------------------------------------------------------------------


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(ts: int, now: int) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))
    return f'<span title="{_e(stamp)}">{_e(_ago(now - ts))}</span>'


def _ago(seconds: int) -> str:
    if seconds < 120:
        return f"{max(seconds, 0)} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def render(snap: Snapshot) -> str:
    """The whole page; every value from storage passes through ``_e`` (pod names and task fields are
    chosen by pods and modellers, who may be hostile)."""
    online = sum(p.online for p in snap.pods)
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(snap.now))
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        "<title>pod-agent hub status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>pod-agent hub status</h1>",
        f'<p class="muted">{online} of {len(snap.pods)} pods online &middot; registration '
        f"<code>{_e(snap.registration)}</code> &middot; {_e(stamp)} &middot; read-only, reloads every "
        f"{REFRESH_S} s</p>",
        _pods_html(snap),
        _runs_html(snap),
        _tasks_html(snap),
        "</body></html>",
    ])


def _pods_html(snap: Snapshot) -> str:
    if not snap.pods:
        return '<h2>Pods</h2><p class="muted">No pod has registered.</p>'
    rows = []
    for p in snap.pods:
        key_class = "warn" if p.key_state == "MISMATCH" else ""
        admission = ' <span class="warn">(pending approval)</span>' if p.pending else ""
        rows.append(
            f'<tr id="pod-{_e(p.name)}"><td>{_e(p.name)}{admission}</td>'
            f'<td class="{"on" if p.online else "off"}">{"online" if p.online else "offline"}</td>'
            f"<td>{_when(p.last_seen, snap.now)}</td><td>{_e(p.sandbox_level)}</td>"
            f'<td><code title="{_e(p.schema_hash)}">{_e(p.schema_hash[:12])}</code></td>'
            f'<td class="num">{p.row_count}</td>'
            f'<td><code title="{_e(p.key_id)}">{_e(p.key_id[:12])}</code> '
            f'<span class="{key_class}">{_e(p.key_state)}</span></td></tr>'
        )
    return (
        '<h2>Pods</h2><table id="pods"><tr><th>pod</th><th>status</th><th>last heartbeat</th><th>sandbox</th>'
        "<th>schema hash</th><th>rows</th><th>key (operator's pins)</th></tr>" + "".join(rows) + "</table>"
    )


def _tasks_html(snap: Snapshot) -> str:
    if not snap.tasks:
        return '<h2>Tasks</h2><p class="muted">No tasks yet.</p>'
    rows = []
    for t in snap.tasks:
        states = "<br>".join(f"{_e(pod)}: {_e(state)}" for pod, state in sorted(t.states.items()))
        rows.append(
            f'<tr><td><code title="{_e(t.task_id)}">{_e(t.task_id[:8])}</code></td>'
            f"<td>{_when(t.created_at, snap.now)}</td><td>{_e(t.modeller)}</td><td>{_e(t.kind)}</td>"
            f"<td>{_e(t.model)}</td><td>{'secure' if t.secure else 'plain'}</td><td>{states}</td></tr>"
        )
    return (
        f"<h2>Tasks (newest {len(snap.tasks)})</h2><table id=\"tasks\"><tr><th>task</th><th>submitted</th>"
        "<th>modeller</th><th>kind</th><th>model</th><th>aggregation</th><th>pods</th></tr>"
        + "".join(rows) + "</table>"
    )


def _runs_html(snap: Snapshot) -> str:
    if not snap.runs:
        return '<h2>FedAvg runs</h2><p class="muted">No training runs yet.</p>'
    parts = ["<h2>FedAvg runs</h2>"]
    for i, run in enumerate(snap.runs):
        state = "finished" if run.finished else "in progress"
        how = "secure aggregation" if run.secure else "plain FedAvg"
        parts.append(
            f'<div class="run" id="run-{i}"><b>{_e(run.model)}</b> by {_e(run.modeller)} &middot; {how} &middot; '
            f"{len(run.rounds)} rounds &middot; <span class=\"run-state\">{state}</span>"
        )
        last = len(run.rounds)
        charts = [
            _chart("seconds per round", {"round": [(p.round, p.seconds) for p in run.rounds]}, last=last),
            _chart("pods answering", {"answered": [(p.round, float(p.answered)) for p in run.rounds]}, last=last),
        ]
        for metric in _CHART_METRICS:
            series = _metric_series(run, metric)
            if series:
                charts.append(_chart(f"{metric} after each round", series, last=last))
        parts.append('<div class="charts">' + "".join(charts) + "</div>")
        if run.secure:
            parts.append(
                '<p class="muted">Secure rounds: pods send their metrics inside the masked sum, which only the '
                "modeller can read; the hub sees round times and who answered.</p>"
            )
        parts.append(_evaluation_html(run.evaluation))
        parts.append("</div>")
    return "".join(parts)


def _metric_series(run: RunRow, metric: str) -> dict[str, list[tuple[int, float | None]]]:
    """Each pod's ``metric`` of the model after each round: train metrics come with the round's own
    results; test metrics of round k's model with round k + 1's task (it evaluates first) or with the
    closing evaluate task."""
    series: dict[str, list[tuple[int, float | None]]] = {}
    testing = metric.startswith("test_")
    for point in run.rounds:
        if testing and not point.evaluated_first:
            continue
        after = point.round - 1 if testing else point.round
        for pod, values in point.metrics.items():
            if metric in values and after >= 1:
                series.setdefault(pod, []).append((after, values[metric]))
    if testing and run.evaluation is not None:
        for pod, values in run.evaluation.items():
            if metric in values:
                series.setdefault(pod, []).append((len(run.rounds), values[metric]))
    return series


def _evaluation_html(evaluation: dict[str, dict[str, float]] | None) -> str:
    if evaluation is None:
        return '<p class="muted">No closing evaluation yet.</p>'
    names = sorted({name for values in evaluation.values() for name in values})
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{_e(pod)}</td>" + "".join(
            f'<td class="num">{_e(_num(values[n])) if n in values else "-"}</td>' for n in names
        ) + "</tr>"
        for pod, values in evaluation.items()
    )
    return (
        '<p>Final evaluation, as the pods reported it:</p>'
        f'<table class="evaluation"><tr><th>pod</th>{head}</tr>{body}</table>'
    )


def _num(value: float) -> str:
    return f"{value:.4g}"


_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 300, 170, 46, 10, 22, 34
_LEGEND_ENTRIES = 3  # as many pod names as fit under a chart


def _chart(title: str, series: Mapping[str, list[tuple[int, float | None]]], *, last: int) -> str:
    """A line chart as inline SVG: rounds 1..``last`` on x, the values on y, one line per series."""
    points = [(x, y) for values in series.values() for x, y in values if y is not None]
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{_e(title)}"><rect width="{_W}" height="{_H}" fill="#fff" stroke="#ddd"/>'
        f'<text x="{_W / 2}" y="15" text-anchor="middle" font-size="12">{_e(title)}</text>'
    )
    if not points:
        return head + f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" fill="#666">no data yet</text></svg>'
    ys = [y for _, y in points]
    x0, x1 = 1, max(last, 2)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def sx(x: float) -> float:
        return _PAD_L + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return _PAD_T + (1 - (y - y0) / (y1 - y0)) * plot_h

    out = [head]
    bottom, right = _PAD_T + plot_h, _PAD_L + plot_w
    out.append(f'<polyline points="{_PAD_L},{_PAD_T} {_PAD_L},{bottom} {right},{bottom}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end" font-size="10">{_e(_num(y1))}</text>')
    out.append(f'<text x="{_PAD_L - 4}" y="{bottom}" text-anchor="end" font-size="10">{_e(_num(y0))}</text>')
    out.append(f'<text x="{_PAD_L}" y="{bottom + 12}" text-anchor="middle" font-size="10">{x0}</text>')
    out.append(f'<text x="{right}" y="{bottom + 12}" text-anchor="middle" font-size="10">{x1}</text>')
    out.append(f'<text x="{_PAD_L + plot_w / 2}" y="{bottom + 12}" text-anchor="middle" font-size="10">round</text>')
    for i, (label, values) in enumerate(series.items()):
        colour = _PALETTE[min(i, len(_PALETTE) - 1)]
        known = [(sx(x), sy(y)) for x, y in values if y is not None]
        if len(known) > 1:
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py in known)
            out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in known)
        if len(series) > 1 and i < _LEGEND_ENTRIES:
            out.append(
                f'<text x="{_PAD_L + 84 * i}" y="{_H - 5}" font-size="10" fill="{colour}">{_e(label[:14])}</text>'
            )
    if len(series) > _LEGEND_ENTRIES:
        out.append(f'<text x="{_W - 4}" y="{_H - 5}" text-anchor="end" font-size="10">'
                   f"+{len(series) - _LEGEND_ENTRIES} more</text>")
    out.append("</svg>")
    return "".join(out)
