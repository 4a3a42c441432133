"""``pod-agent review list|show|approve|reject``: the owner's review of model code (``security.review``).

Reads and decides the review queue in the state database (``pod_agent.state``) next to a running
agent; the agent notices a decision within seconds (an approved task runs without being sent again,
a rejected one is answered ``review_rejected``). Which tasks wait, and the text and diff a reviewer
reads, are ``pod_agent.policy.review``'s. Every decision records who made it (``--by``, else $USER)
and when; approval adds the model's sha256 to the allow-list for that modeller's key.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import typer

from pod_agent.cli.tasks import modeller_names, open_state
from pod_agent.config import load_settings
from pod_agent.errors import ConfigError
from pod_agent.policy import review_diff
from pod_agent.state import ReviewNotPending, ReviewRecord

_review = typer.Typer(name="review", help="Review model code before it runs on this pod (security.review).",
                      no_args_is_help=True)

_CONFIG = typer.Option(..., "--config", help="The pod's pod.toml.")
_TASK = typer.Argument(..., help="A task id from `pod-agent review list`.")
_BY = typer.Option(None, "--by", help="Who decides (recorded with the decision); default: $USER.")


def _when(at: int) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _reviewer(by: str | None) -> str:
    name = by or os.environ.get("USER", "")
    if not name.strip():
        raise ConfigError("no reviewer name: pass --by NAME (recorded with the decision), or set $USER")
    return name.strip()


def _line(review: ReviewRecord, names: dict[str, str]) -> str:
    who = names.get(review.modeller_id, f"key:{review.modeller_id[:16]} (no longer in the policy)")
    status = review.decision or f"pending, expires {_when(review.expires_at)}"
    return (f"{_when(review.created_at)}  {review.task_id}  modeller={who}  "
            f"model={review.model_name} sha256:{review.model_sha256[:16]}  {status}")


@_review.command("list")
def list_reviews(
    config: Path = _CONFIG,
    show_all: bool = typer.Option(False, "--all", help="Decided reviews too, with who decided and when."),
) -> None:
    """Tasks waiting for the owner's review, oldest first."""
    settings = load_settings(config)
    with open_state(settings) as state:
        reviews = state.reviews(pending_only=not show_all)
    names = modeller_names(settings)
    if not reviews:
        typer.echo("no task waits for review" if not show_all else "no reviews yet")
    for review in reviews:
        decided = f"  by {review.decided_by} at {_when(review.decided_at)}" if review.decided_at is not None else ""
        typer.echo(_line(review, names) + decided)


@_review.command("show")
def show_review(task_id: str = _TASK, config: Path = _CONFIG) -> None:
    """The model a task waits on, as a diff against the last approved version of the same name."""
    settings = load_settings(config)
    with open_state(settings) as state:
        review = state.review(task_id)
        if review is None:
            raise ReviewNotPending(task_id, "is not in the review queue")
        previous = state.last_approved(review.model_name)
    typer.echo(_line(review, modeller_names(settings)))
    if previous is None:
        typer.echo(f"no version of {review.model_name!r} was approved before; the whole model:")
    typer.echo(review_diff(previous, name=review.model_name, text=review.model_text), nl=False)


def _decide(task_id: str, config: Path, by: str | None, *, approve: bool) -> None:
    reviewer = _reviewer(by)
    settings = load_settings(config)
    with open_state(settings) as state:
        moved = state.decide_review(task_id, approve=approve, by=reviewer, now=int(time.time()))
    if approve:
        typer.echo(f"approved by {reviewer}; queued {len(moved)} task(s): {' '.join(moved)}")
    else:
        typer.echo(f"rejected by {reviewer}; the modeller is told review_rejected")


@_review.command("approve")
def approve(task_id: str = _TASK, config: Path = _CONFIG, by: str | None = _BY) -> None:
    """Approve the task's model for its modeller: the task runs, and so will that model's later tasks."""
    _decide(task_id, config, by, approve=True)


@_review.command("reject")
def reject(task_id: str = _TASK, config: Path = _CONFIG, by: str | None = _BY) -> None:
    """Refuse the task (review_rejected); the model stays unapproved."""
    _decide(task_id, config, by, approve=False)


def register(app: typer.Typer) -> None:
    app.add_typer(_review)
