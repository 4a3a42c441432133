"""The owner's review of model code: which tasks wait for it, and what the reviewer reads.

Owns the rule (with ``security.review = true``, a task whose model, name and sha256, is
neither in pod.toml's ``allowed_models`` nor approved in the state for one of its
modeller's keys is held as ``pending_review``), the text a model is reviewed as (its
source, or its declarative spec as indented JSON) and the diff against the last approved
version of the same name. The queue itself, the decisions and the state's allow-list
are ``pod_agent.state``'s; ``pod-agent review`` (``cli/review.py``) drives them; the
daemon reports ``pending_review`` to the hub and sends the refusal of a rejected or
expired task.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence

from pod_agent.config import SecuritySection
from pod_agent.protocol import ModelRef
from pod_agent.state import ApprovedModel, NonceStore, ReviewHold


def model_text(model: ModelRef) -> str:
    """What the reviewer reads: the inline source, the spec as indented JSON, or the hub reference."""
    if model.source is not None:
        return model.source
    if model.spec is not None:
        return json.dumps(model.spec, indent=2, sort_keys=True) + "\n"
    # Source by hub_ref is fetched when the task runs and checked against the signed sha256 then.
    return f"# source by hub reference {model.hub_ref}, sha256 {model.sha256}; fetched and hash-checked when it runs\n"


def review_hold(
    model: ModelRef | None, *, security: SecuritySection, modeller_keys: Sequence[str], approvals: NonceStore
) -> ReviewHold | None:
    """The hold for a task's model when the owner must review it first, else None."""
    if not security.review or model is None:
        return None
    if any(m.name == model.name and m.sha256 == model.sha256 for m in security.allowed_models):
        return None
    if approvals.is_approved(modeller_keys=modeller_keys, name=model.name, sha256=model.sha256):
        return None
    return ReviewHold(model_name=model.name, model_sha256=model.sha256, model_text=model_text(model))


def review_diff(previous: ApprovedModel | None, *, name: str, text: str) -> str:
    """A unified diff of ``text`` against the last approved version of ``name``; all of it when there is none."""
    if previous is None:
        return "".join(f"+{line}" for line in text.splitlines(keepends=True)) or "(empty)\n"
    diff = difflib.unified_diff(
        previous.model_text.splitlines(keepends=True), text.splitlines(keepends=True),
        fromfile=f"{name} sha256:{previous.model_sha256[:16]} (approved by {previous.approved_by})",
        tofile=f"{name} (this task)",
    )
    return "".join(diff) or "(identical to the approved version)\n"
