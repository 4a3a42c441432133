"""The hub's status page: only for the admin token, escaped, scriptless, and read-only.

Pod names, sandbox levels, modeller names and task fields are chosen by pods and modellers, who may
be hostile; the page must show them as text. (tests/examples/test_status_page_in_browser.py loads it
in Chromium against real pods.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pod_agent.errors import HubError
from pod_agent.hub import SqliteStorage, StatusPage
from pod_agent.hub.status import Snapshot, StatusSource, collect, render
from pod_agent.hub.storage import HubTaskRecord
from pod_agent.modeller import build_task
from pod_agent.protocol import IdentityKey, envelope_bytes, sign_envelope
from pod_agent.protocol.messages import CohortEntry, DataSelection, ModelRef, ResultPayload, SecAggParams

TOKEN = "status-token-" + "k" * 30


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _get(hub: Any, authorization: str | None) -> tuple[int, str, Any]:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with hub.session.get(hub.base + "/status", headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-wrong-token", _basic("operator", "wrong-token-wrong"), "Basic !!!not-base64",
     f"Token {TOKEN}", "Bearer " + TOKEN[:-1]],
)
async def test_status_page_without_the_admin_token_is_401(make_hub: Any, authorization: str | None) -> None:
    hub = await make_hub(status=StatusPage(admin_token=TOKEN))
    status, text, headers = await _get(hub, authorization)
    assert status == 401
    assert text.startswith("401: the status page needs the hub's admin token")
    assert headers["WWW-Authenticate"] == 'Basic realm="pod-agent hub status", charset="UTF-8"'


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", _basic("operator", TOKEN), _basic("", TOKEN)])
async def test_status_page_with_the_admin_token_is_served_with_a_strict_policy(
    make_hub: Any, authorization: str
) -> None:
    hub = await make_hub(status=StatusPage(admin_token=TOKEN))
    status, text, headers = await _get(hub, authorization)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<h1>pod-agent hub status</h1>" in text
    policy = headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-") and "unsafe" not in policy
    assert "script-src" not in policy  # falls back to default-src 'none': no script at all
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert "<form" not in text and "<script" not in text


async def test_a_hub_without_an_admin_token_serves_no_status_page(make_hub: Any) -> None:
    hub = await make_hub()
    status, _, _ = await _get(hub, f"Bearer {TOKEN}")
    assert status == 404


def test_a_short_admin_token_is_refused() -> None:
    with pytest.raises(HubError, match=r"admin token of 8 characters is too short .* at least 16"):
        StatusPage(admin_token="1" * 8)


async def test_hostile_names_and_task_fields_are_escaped(make_hub: Any, list_pod: Callable[..., Any]) -> None:
    hub = await make_hub(status=StatusPage(admin_token=TOKEN))
    # The API refuses such a pod name outright ...
    pod_key = IdentityKey.generate()
    hostile_name = "<script>alert('pod')</script>"
    status, _ = await hub.caller(pod_key).call("POST", "/v1/pods/register", hub.pod_registration(pod_key, hostile_name))
    assert status == 400
    # ... but a record may reach storage another way (an older hub, another backend), and the free-text
    # fields it accepts are the pod's and the modeller's to choose.
    list_pod(hub.storage, hostile_name)
    registration = {**hub.pod_registration(pod_key, "pod-a"), "sandbox_level": "<script>alert(2)</script>"}
    assert (await hub.caller(pod_key).call("POST", "/v1/pods/register", registration))[0] == 200
    modeller = IdentityKey.generate()
    named = {"name": '"><img src=x onerror=alert(3)>', "public_key": modeller.public.to_b64()}
    assert (await hub.caller(modeller).call("POST", "/v1/modellers/register", named))[0] == 200
    task_id = str(uuid.uuid4())
    envelope = json.dumps({"payload": {"kind": "<script>alert(4)</script>"}, "signer": "x"}).encode()
    hub.storage.add_task(HubTaskRecord(task_id, modeller.key_id, envelope, ("<b>pod</b>",), 1))
    hub.storage.record_refusal(task_id, "<b>pod</b>", "<script>alert(5)</script>", now=2)

    status, text, _ = await _get(hub, f"Bearer {TOKEN}")
    assert status == 200
    lowered = text.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<b>" not in lowered
    assert "&lt;script&gt;alert(&#x27;pod&#x27;)&lt;/script&gt;" in text
    assert 'id="pod-&lt;script&gt;' in text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(3)&gt;" in text
    assert "&lt;b&gt;pod&lt;/b&gt;: refused: &lt;script&gt;alert(5)&lt;/script&gt;" in text


async def test_each_pod_key_is_marked_against_the_operators_pins(make_hub: Any, list_pod: Callable[..., Any]) -> None:
    other = IdentityKey.generate()
    pins: dict[str, str] = {}
    hub = await make_hub(status=StatusPage(admin_token=TOKEN, pod_pins=pins))
    pins["pod-a"] = list_pod(hub.storage, "pod-a").public.to_b64()
    pins["pod-b"] = other.public.to_b64()  # the hub holds another key for pod-b: a swapped key
    list_pod(hub.storage, "pod-b")
    list_pod(hub.storage, "pod-c", last_seen=1)
    _, text, _ = await _get(hub, f"Bearer {TOKEN}")
    rows = {name: text.split(f'id="pod-{name}"', 1)[1].split("</tr>", 1)[0] for name in ("pod-a", "pod-b", "pod-c")}
    assert "pinned" in rows["pod-a"] and 'class="on">online' in rows["pod-a"]
    assert "MISMATCH" in rows["pod-b"]
    assert "unpinned" in rows["pod-c"] and 'class="off">offline' in rows["pod-c"]


def test_hub_serve_with_an_admin_token_file_serves_the_page(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    hub = subprocess.Popen(
        [sys.executable, "-m", "pod_agent", "hub", "serve", "--db", str(tmp_path / "hub.sqlite"), "--port", "0",
         "--admin-token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert hub.stdout is not None
        url = hub.stdout.readline().split("hub listening on", 1)[1].strip()
        assert hub.stdout.readline().strip() == f"status page at {url}/status (the admin token is its password)"

        async def fetch() -> tuple[int, int]:
            async with (
                aiohttp.ClientSession() as session,
                session.get(url + "/status") as bare,
                session.get(url + "/status", headers={"Authorization": f"Bearer {TOKEN}"}) as ok,
            ):
                return bare.status, ok.status

        assert asyncio.run(fetch()) == (401, 200)
    finally:
        hub.kill()
        hub.wait(10)
        if hub.stdout is not None:
            hub.stdout.close()


# -- runs and curves, from what storage holds -------------------------------------------------------

_PODS = ("pod-a", "pod-b", "pod-c")


class _History:
    """Tasks and signed results put in a hub's storage as a modeller's rounds and pods' answers would."""

    def __init__(self, storage: Any) -> None:
        self.storage, self.modeller, self.clock = storage, IdentityKey.generate(), 1_000
        self.pods = {name: IdentityKey.generate() for name in _PODS}
        self.model = ModelRef(style="declarative", name="spec", spec={"layers": []}, sha256="c" * 64)

    def task(self, kind: str, *, secure_round: int | None = None, evaluate_first: bool = False,
             metrics: dict[str, float] | None = None) -> None:
        cohort = [CohortEntry(pod=name, schema_hash="a" * 64, key_id=key.key_id) for name, key in self.pods.items()]
        secagg = None if secure_round is None else SecAggParams(
            prime_q=2**20, precision=2**16, num_workers=3, round=secure_round
        )
        payload = build_task(
            modeller_id=self.modeller.key_id, cohort=cohort, kind=kind, model=self.model,
            data=DataSelection(target="TARGET"), secagg=secagg, evaluate_first=evaluate_first,
        )
        self.clock += 10
        envelope = envelope_bytes(sign_envelope(payload, self.modeller))
        self.storage.add_task(HubTaskRecord(payload.task_id, self.modeller.key_id, envelope, _PODS, self.clock))
        for i, (name, key) in enumerate(self.pods.items()):
            result = ResultPayload(
                task_id=payload.task_id, pod=name, kind=kind, status="done", n_rows=100, produced_at=self.clock,
                metrics={k: v + i for k, v in (metrics or {}).items()},
            )
            self.storage.put_result(payload.task_id, name, envelope_bytes(sign_envelope(result, key)), status="done",
                                    now=self.clock + 3)


def _snapshot(storage: Any) -> Snapshot:
    source = StatusSource(storage=storage, now=lambda: 2_000, online=lambda pod, now: True, registration="open")
    return collect(source, {})


def test_a_secure_run_restarting_at_round_1_is_a_new_run_and_an_evaluate_task_closes_one() -> None:
    storage = SqliteStorage(":memory:")
    history = _History(storage)
    history.task("train", secure_round=1)
    history.task("train", secure_round=2)  # abandoned: no closing evaluation
    history.task("train", secure_round=1)
    history.task("train", secure_round=2)
    history.task("evaluate", metrics={"test_accuracy": 0.5})
    runs = _snapshot(storage).runs  # newest first
    assert [(len(r.rounds), r.finished, r.secure) for r in runs] == [(2, True, True), (2, False, True)]
    assert runs[0].evaluation == {"pod-a": {"test_accuracy": 0.5}, "pod-b": {"test_accuracy": 1.5},
                                  "pod-c": {"test_accuracy": 2.5}}
    assert [p.seconds for p in runs[0].rounds] == [3.0, 3.0]
    storage.close()


def test_a_plain_runs_curves_draw_each_pods_metrics_at_the_round_whose_model_they_score() -> None:
    storage = SqliteStorage(":memory:")
    history = _History(storage)
    history.task("train", metrics={"train_loss": 0.9})
    # Round 2's task first scores round 1's model: its test metrics belong to round 1.
    history.task("train", evaluate_first=True, metrics={"train_loss": 0.7, "test_loss": 0.8})
    history.task("evaluate", metrics={"test_loss": 0.6})
    snap = _snapshot(storage)
    (run,) = snap.runs
    assert not run.secure and run.finished
    html = render(snap)
    # One line per pod in each metric chart, and the legend names the pods.
    for title in ("train_loss after each round", "test_loss after each round"):
        chart = html.split(f'aria-label="{title}"', 1)[1].split("</svg>", 1)[0]
        assert chart.count('stroke-width="2"') == 3 and all(pod in chart for pod in _PODS)
    # pod-a's test_loss: 0.8 after round 1 (x = 46, the left edge), 0.6 after round 2 (x = 290, the right edge,
    # y = 136, the bottom: the chart's least value).
    test_chart = html.split('aria-label="test_loss after each round"', 1)[1].split("</svg>", 1)[0]
    assert '<polyline points="46.0,125.6 290.0,136.0"' in test_chart
