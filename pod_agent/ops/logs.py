"""Logging of the agent: human lines by default, one JSON object per line on request.

Owns the root handler, both formats, and how a task's identity reaches every
line logged while the task runs: ``task_context`` sets the task id and the
modeller's key id in context variables (asyncio copies them into tasks it
starts), a filter stamps them on each record, and ``task_logger`` does the same
for one logger explicitly.

What may appear: the message (capped), the task id, the modeller key id and the
fields in ``SAFE_EXTRA_FIELDS``. Other ``extra=`` keys are dropped. Exceptions
that can carry text from inside the sandbox (``SandboxError``, ``TrainingError``,
``ContractViolation``) are rendered as their type and fixed reason code only,
never their detail or traceback. Callers still must not put data values or
model source into messages; this module only narrows what slips through.
Nothing here sends logs anywhere but the chosen stream.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator, MutableMapping
from typing import Any, Literal, TextIO

from pod_agent.errors import ContractViolation, SandboxError, TrainingError

LogFormat = Literal["text", "json"]

# Extra fields a caller may attach with ``extra=``: identifiers, codes and numbers, never data.
SAFE_EXTRA_FIELDS: frozenset[str] = frozenset(
    {"pod", "kind", "outcome", "reason", "code", "seconds", "round", "attempt", "level", "hub", "rows", "status"}
)
# Long enough for any line the agent writes on purpose; stops an accidental dump of a table.
MAX_MESSAGE_CHARS = 2000
# Reason codes of these errors are fixed strings; their detail may echo the sandbox's stderr.
_SANDBOX_DERIVED = (SandboxError, TrainingError, ContractViolation)

_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("pod_agent_task_id", default=None)
_modeller: contextvars.ContextVar[str | None] = contextvars.ContextVar("pod_agent_modeller", default=None)

# Marks the handler configure_logging installed, so a second call replaces it instead of adding one.
_HANDLER_NAME = "pod-agent"


@contextlib.contextmanager
def task_context(*, task_id: str, modeller_key_id: str) -> Iterator[None]:
    """Every record logged inside the block (and in asyncio tasks started from it) carries both ids."""
    t1, t2 = _task_id.set(task_id), _modeller.set(modeller_key_id)
    try:
        yield
    finally:
        _modeller.reset(t2)
        _task_id.reset(t1)


class TaskLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one task: its records carry ``task_id`` and ``modeller``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.update(self.extra or {})
        kwargs["extra"] = extra
        return msg, kwargs


def task_logger(logger: logging.Logger, *, task_id: str, modeller_key_id: str) -> TaskLogAdapter:
    return TaskLogAdapter(logger, {"task_id": task_id, "modeller": modeller_key_id})


class TaskContextFilter(logging.Filter):
    """Stamps ``task_id`` and ``modeller`` from the task context onto records that lack them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "task_id", None) is None:
            record.task_id = _task_id.get()
        if getattr(record, "modeller", None) is None:
            record.modeller = _modeller.get()
        return True


def _safe_message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"... [{len(message) - MAX_MESSAGE_CHARS} chars cut]"
    return message


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if not record.exc_info or record.exc_info[1] is None:
        return None
    exc = record.exc_info[1]
    if isinstance(exc, _SANDBOX_DERIVED):
        return f"{type(exc).__name__}(code={exc.code})"
    return formatter.formatException(record.exc_info)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: record.__dict__[k] for k in sorted(SAFE_EXTRA_FIELDS) if k in record.__dict__}


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class HumanFormatter(logging.Formatter):
    """``2026-01-01T12:00:00.000Z INFO pod_agent.agent: message [task=... modeller=... kind=train]``."""

    def format(self, record: logging.LogRecord) -> str:
        task_id, modeller = getattr(record, "task_id", None), getattr(record, "modeller", None)
        tags = [f"task={task_id}"] if task_id else []
        if modeller:
            tags.append(f"modeller={modeller}")
        tags += [f"{k}={v}" for k, v in _extras(record).items()]
        line = f"{_utc(record)} {record.levelname} {record.name}: {_safe_message(record)}"
        if tags:
            line += " [" + " ".join(tags) + "]"
        exc = _exception_text(self, record)
        return f"{line}\n{exc}" if exc else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, task_id, modeller, safe extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": _safe_message(record),
        }
        for key in ("task_id", "modeller"):
            value = getattr(record, key, None)
            if value is not None:
                obj[key] = value
        obj.update({k: v for k, v in _extras(record).items() if k not in obj})
        exc = _exception_text(self, record)
        if exc:
            obj["exc"] = exc
        return json.dumps(obj, ensure_ascii=False, default=str)


def configure_logging(*, fmt: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Install the agent's single root handler (replacing one installed earlier) and return it."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r} is not one of 'text', 'json'")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(TaskContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


__all__ = [
    "MAX_MESSAGE_CHARS",
    "SAFE_EXTRA_FIELDS",
    "HumanFormatter",
    "JsonFormatter",
    "LogFormat",
    "TaskContextFilter",
    "TaskLogAdapter",
    "configure_logging",
    "task_context",
    "task_logger",
]
