"""The hub's status page in a real browser, after the tutorials trained on the federation's pods.

Headless Chromium loads /status from the tutorials' hub (three real pods, the notebooks' finished
runs) with the admin token as the basic-auth password: the DOM lists every pod online and each run
finished, with its curves as inline SVG; a screenshot is kept among the artefacts. Without the token
the page answers 401, and the browser shows nothing of the federation.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser_support import dump_dom, screenshot
from notebook_support import NotebookRun
from tutorial_support import artifacts_dir

from pod_agent.protocol import IdentityKey, canonical_json, sign_request

pytestmark = pytest.mark.slow

# The model names the notebooks give their runs.
RUN_MODELS = ("census-mlp", "tabular-net", "census-spec")
# A pod chooses its own sandbox_level text (up to 32 characters); the page must show it as text.
HOSTILE_LEVEL = "<script>alert(1)</script>"


def _register_hostile_pod(hub_url: str) -> None:
    """A pod registering itself (signed, as any key may on an open hub) with markup for its sandbox level."""
    key = IdentityKey.generate()
    body = canonical_json({
        "name": "hostile-pod", "public_key": key.public.to_b64(), "schema_public": {"columns": []},
        "schema_hash": "b" * 64, "row_count": 1, "sandbox_level": HOSTILE_LEVEL, "heartbeat_s": 1.0,
    })
    path = "/v1/pods/register"
    headers = {**sign_request(key, "POST", path, body, now=int(time.time())), "Content-Type": "application/json"}
    request = urllib.request.Request(hub_url + path, data=body, headers=headers, method="POST")  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the test's own loopback hub
        assert answer.status == 200


def _with_password(hub_url: str, token: str) -> str:
    parts = urlsplit(hub_url)
    return f"{parts.scheme}://operator:{token}@{parts.netloc}/status"


class _Page(HTMLParser):
    """The elements the test looks for: pod rows, run blocks and their state, SVG lines, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.pod_rows: dict[str, list[str]] = {}
        self.runs: list[str] = []
        self.charts: list[list[str]] = []  # per run, the titles of its SVG charts
        self.polylines = 0
        self.scripts = 0
        self._row: str | None = None
        self._run_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and (found.get("id") or "").startswith("pod-"):
            self._row = (found["id"] or "")[4:]
            self.pod_rows[self._row] = []
        if tag == "div" and found.get("class") == "run":
            self.runs.append("")
            self.charts.append([])
            self._run_depth = 1
        elif tag == "div" and self._run_depth:
            self._run_depth += 1
        if tag == "svg" and self._run_depth:
            self.charts[-1].append(found.get("aria-label") or "")
        self.polylines += tag == "polyline"
        self.scripts += tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "div" and self._run_depth:
            self._run_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self.pod_rows[self._row].append(data.strip())
        if self._run_depth:
            self.runs[-1] += data


def test_status_page_in_chromium_shows_the_pods_and_the_finished_runs(
    tutorial_federation: Any, notebook_runs: dict[str, NotebookRun], tmp_path: Path
) -> None:
    assert all(run.error is None for run in notebook_runs.values()), "a notebook failed; see its own test"
    _register_hostile_pod(tutorial_federation.tutorial.hub_url)
    url = _with_password(tutorial_federation.tutorial.hub_url, tutorial_federation.admin_token)
    page = _Page()
    page.feed(dump_dom(url, profile=tmp_path / "profile"))
    pods = tutorial_federation.tutorial.pods
    assert sorted(page.pod_rows) == sorted([*pods, "hostile-pod"])
    # The browser parsed the pod's markup as text: it is in the row's text and no script element exists.
    assert HOSTILE_LEVEL in page.pod_rows["hostile-pod"]
    for pod in pods:
        assert "online" in page.pod_rows[pod]
        # The tutorial's modeller pins the pods' keys; the hub's operator was given none.
        assert "unpinned" in page.pod_rows[pod]
    runs, charts = {}, {}
    for model in RUN_MODELS:
        ((runs[model], charts[model]),) = [
            (text, titles) for text, titles in zip(page.runs, page.charts, strict=True) if model in text
        ]
        assert "2 rounds" in runs[model] and "finished" in runs[model], runs[model]
        assert "seconds per round" in charts[model] and "pods answering" in charts[model]
    # The plain run's pods report their metrics in clear: a curve per pod; the secure runs' stay masked.
    assert "plain FedAvg" in runs["tabular-net"] and "secure aggregation" in runs["census-mlp"]
    assert {"train_loss after each round", "test_accuracy after each round"} <= set(charts["tabular-net"])
    assert "train_loss after each round" not in charts["census-mlp"]
    assert page.polylines >= 2 * 3 * len(RUN_MODELS)
    assert page.scripts == 0
    shot = screenshot(url, artifacts_dir(tmp_path) / "status-page.png", profile=tmp_path / "profile")
    print(f"status page screenshot: {shot}")


def test_status_page_without_the_admin_token_is_401_in_the_browser_too(
    tutorial_federation: Any, tmp_path: Path
) -> None:
    bare = tutorial_federation.tutorial.hub_url + "/status"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bare, timeout=10)  # noqa: S310 - a loopback http URL the test started
    with refused.value as answer:  # an HTTPError holds the response open
        assert answer.code == 401
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    # The browser asks for the password and, given a wrong one, shows nothing of the federation.
    for url in (bare, _with_password(tutorial_federation.tutorial.hub_url, "not-the-token-" + "x" * 30)):
        dom = dump_dom(url, profile=tmp_path / "profile")
        assert "pod-agent hub status" not in dom
        assert not any(pod in dom for pod in tutorial_federation.tutorial.pods)
