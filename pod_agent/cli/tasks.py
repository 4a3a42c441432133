"""``pod-agent tasks``: the pod's own record of what ran on its data, who asked, and how it ended.

Reads the state database (``pod_agent.state``) next to a running agent (SQLite WAL:
readers never block it) and renders it; it changes nothing. ``export`` writes the
audit log (``pod_agent.state.audit``: hash-chained, signed by the pod's identity key)
and ``verify-export`` checks one. Every task listed passed
its signature check, so the modeller and model named are the ones that signed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from pod_agent.config import PodSettings, load_settings
from pod_agent.errors import StateError
from pod_agent.policy import modeller_keys
from pod_agent.protocol import IdentityKey, passphrase_from_env
from pod_agent.state import PodState, TaskRecord, TaskStatus, export_lines, verify_export

_tasks = typer.Typer(name="tasks", help="What ran on this pod's data: tasks, outcomes, who signed them.",
                     no_args_is_help=True)


@dataclass(frozen=True)
class _Row:
    task_id: str
    received: str
    kind: str
    outcome: str
    reason: str | None
    delivered: bool
    modeller: str
    model: str | None


def open_state(settings: PodSettings) -> PodState:
    """The pod's state database as the agent wrote it; StateError when the agent never ran here."""
    path = settings.pod.state_dir / "state.sqlite"
    if not path.is_file():
        raise StateError(f"no state database at {path}: the agent has not run with this state_dir yet")
    return PodState.open(path)


def modeller_names(settings: PodSettings) -> dict[str, str]:
    """Each key id a modeller signs with -> the modeller's name in pod.toml."""
    return {key_id: m.name for key_id, m in modeller_keys(settings.security.modellers).items()}


def _row(task: TaskRecord, state: PodState, names: dict[str, str]) -> _Row:
    outcome = task.status.value
    if task.status is TaskStatus.DELIVERED:
        # Delivered is where every task ends; what it ended as is the status before it.
        outcome = next((to for _, to, _, _ in reversed(state.history(task.task_id)) if to != "delivered"), outcome)
    model = json.loads(task.envelope_json).get("payload", {}).get("model")
    return _Row(
        task_id=task.task_id,
        received=datetime.fromtimestamp(task.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        kind=task.kind,
        outcome=outcome,
        reason=task.reason,
        delivered=task.status is TaskStatus.DELIVERED,
        modeller=names.get(task.modeller_id, f"key:{task.modeller_id[:16]} (no longer in the policy)"),
        model=f"{model['name']} sha256:{model['sha256'][:16]}" if model else None,
    )


@_tasks.command("list")
def list_tasks(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
    limit: int = typer.Option(20, "--limit", min=1, help="How many of the newest tasks."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The newest tasks, newest first: when, kind, outcome and reason, modeller, model and its hash."""
    settings = load_settings(config)
    with open_state(settings) as state:
        names = modeller_names(settings)
        rows = [_row(t, state, names) for t in state.list_tasks(limit=limit, newest_first=True)]
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    for r in rows:
        sent = "delivered" if r.delivered else "pending"
        typer.echo(f"{r.received}  {r.task_id}  {r.kind:<12} {r.outcome:<8} {r.reason or '-':<22} {sent:<9}"
                   f" modeller={r.modeller}  model={r.model or '-'}")


@_tasks.command("show")
def show_task(
    task_id: str = typer.Argument(..., help="A task id from `pod-agent tasks list`."),
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
) -> None:
    """One task: its status history and the signed request, with the model source summarised."""
    settings = load_settings(config)
    with open_state(settings) as state:
        task = state.get_task(task_id)
        if task is None:
            raise StateError(f"no task {task_id} in {state.path}; `pod-agent tasks list` shows the known ones")
        row = _row(task, state, modeller_names(settings))
        history = state.history(task_id)
    typer.echo(f"task      {row.task_id}\nkind      {row.kind}\noutcome   {row.outcome}"
               f"{f' ({row.reason})' if row.reason else ''}\nmodeller  {row.modeller}\nmodel     {row.model or '-'}")
    for before, after, reason, at in history:
        when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(f"  {when}  {before or '(new)'} -> {after}{f'  {reason}' if reason else ''}")
    typer.echo(json.dumps(_summarised(json.loads(task.envelope_json).get("payload", {})), indent=2, sort_keys=True))


def _summarised(payload: dict[str, Any]) -> dict[str, Any]:
    """The signed payload with model source text replaced by its size (the sha256 stays)."""
    model = payload.get("model")
    if isinstance(model, dict) and isinstance(model.get("source"), str):
        source = model["source"]
        payload = {**payload, "model": {**model, "source": f"<{len(source.splitlines())} lines>"}}
    return payload


@_tasks.command("export")
def export_tasks(
    config: Path = typer.Option(..., "--config", help="The pod's pod.toml."),
    since: datetime = typer.Option(..., "--since", formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
                                   help="First day (UTC) to include, e.g. 2026-01-31."),
    out: Path = typer.Option(..., "--out", help="The JSON Lines file to write (mode 0600)."),
) -> None:
    """Write every task since DATE as a hash-chained JSON Lines log the pod signs: who signed, model hash,
    kind, outcome or refusal code, rows touched, bytes and privacy budget released."""
    settings = load_settings(config)
    key = IdentityKey.load(
        settings.pod.identity_key_path, passphrase_from_env(settings.pod.identity_key_passphrase_env)
    )
    start = int(since.replace(tzinfo=UTC).timestamp())
    with open_state(settings) as state:
        rows = state.audit_rows(since=start)
    lines = export_lines(rows, names=modeller_names(settings), pod=settings.pod.name, key=key, since=start)
    try:
        with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
            file.writelines(f"{line}\n" for line in lines)
    except OSError as exc:
        raise StateError(f"cannot write the export to {out} ({exc.strerror}): choose a writable path") from exc
    typer.echo(f"wrote {len(rows)} task(s) since {since:%Y-%m-%d} to {out}; check it with "
               f"`pod-agent tasks verify-export {out} --config ...`")


@_tasks.command("verify-export")
def verify_export_file(
    file: Path = typer.Argument(..., help="A file `pod-agent tasks export` wrote."),
    config: Path | None = typer.Option(None, "--config", help="The pod's pod.toml: check the signature "
                                       "against its identity key (without: the key the file names)."),
) -> None:
    """Check an export's hash chain and the pod's signature over it; exit non-zero naming the first bad line."""
    pinned = None
    if config is not None:
        settings = load_settings(config)
        pinned = IdentityKey.load(
            settings.pod.identity_key_path, passphrase_from_env(settings.pod.identity_key_passphrase_env)
        ).public
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(
            f"cannot read the export {file} ({exc}): pass the file `pod-agent tasks export` wrote"
        ) from exc
    summary = verify_export(lines, pinned=pinned)
    trust = "the pod's identity key" if pinned is not None else "the key the file names (pass --config to pin it)"
    typer.echo(f"ok: {summary.tasks} task(s) from pod {summary.pod}, chain intact, signed by {trust} "
               f"{summary.key_id[:16]}")


def register(app: typer.Typer) -> None:
    app.add_typer(_tasks)
