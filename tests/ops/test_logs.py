"""Logs: human and JSON lines, task identity on every task line, nothing from the sandbox."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from pod_agent.errors import ContractViolation, SandboxError, TrainingError
from pod_agent.ops import configure_logging, task_context, task_logger
from pod_agent.ops.logs import MAX_MESSAGE_CHARS

_log = logging.getLogger("pod_agent.test")


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging(fmt="json", level="INFO", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_task_and_modeller_inside_task_context(json_stream: io.StringIO) -> None:
    with task_context(task_id="t-1", modeller_key_id="ab12"):
        _log.info("accepted", extra={"kind": "train"})
    _log.info("idle")
    inside, outside = _lines(json_stream)
    assert inside["msg"] == "accepted" and inside["task_id"] == "t-1" and inside["modeller"] == "ab12"
    assert inside["kind"] == "train" and inside["level"] == "INFO" and inside["logger"] == "pod_agent.test"
    assert str(inside["ts"]).endswith("Z")
    assert "task_id" not in outside


async def test_task_context_follows_asyncio_tasks_started_inside_it(json_stream: io.StringIO) -> None:
    async def step() -> None:
        await asyncio.sleep(0)
        _log.info("step")

    with task_context(task_id="t-2", modeller_key_id="cd34"):
        child = asyncio.create_task(step())
    await child
    (line,) = _lines(json_stream)
    assert line["task_id"] == "t-2"


def test_task_logger_binds_ids_without_context(json_stream: io.StringIO) -> None:
    task_logger(_log, task_id="t-3", modeller_key_id="ef56").warning("refused", extra={"code": "expired"})
    (line,) = _lines(json_stream)
    assert (line["task_id"], line["modeller"], line["code"]) == ("t-3", "ef56", "expired")


def test_unlisted_extra_fields_are_dropped(json_stream: io.StringIO) -> None:
    # A value that no timestamp or level can contain by chance (a bare number like 37 matched a "16:37" once).
    _log.info("done", extra={"outcome": "done", "row": {"name": "Jane Doe"}})
    (line,) = _lines(json_stream)
    assert line["outcome"] == "done"
    assert "row" not in line and "Jane Doe" not in json_stream.getvalue()


@pytest.mark.parametrize(
    "exc",
    [
        SandboxError("task_failed", "ValueError: could not convert 'Jane Doe, 1961-04-02'"),
        TrainingError("nan_loss", "tensor([... 'Jane Doe' ...])"),
        ContractViolation("extra_tensor", "name 'Jane Doe'"),
    ],
)
def test_sandbox_exception_text_is_reduced_to_its_reason(json_stream: io.StringIO, exc: Exception) -> None:
    try:
        raise exc
    except Exception:  # noqa: BLE001 - every parametrized kind, logged as the agent would
        _log.exception("task failed")
    (line,) = _lines(json_stream)
    assert line["exc"] == f"{type(exc).__name__}(code={exc.code})"  # type: ignore[attr-defined]
    assert "Jane Doe" not in json_stream.getvalue()


def test_agent_exceptions_keep_their_traceback(json_stream: io.StringIO) -> None:
    try:
        raise OSError("disk full")
    except OSError:
        _log.exception("outbox write failed")
    (line,) = _lines(json_stream)
    assert "Traceback" in str(line["exc"]) and "disk full" in str(line["exc"])


def test_overlong_message_is_cut(json_stream: io.StringIO) -> None:
    _log.info("x" * (MAX_MESSAGE_CHARS + 500))
    (line,) = _lines(json_stream)
    assert str(line["msg"]).endswith("... [500 chars cut]")


def test_human_format_is_one_readable_line_with_tags() -> None:
    stream = io.StringIO()
    handler = configure_logging(fmt="text", stream=stream)
    try:
        with task_context(task_id="t-4", modeller_key_id="9a"):
            _log.info("training started", extra={"kind": "train"})
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().rstrip("\n")
    assert "\n" not in line
    assert line.endswith("INFO pod_agent.test: training started [task=t-4 modeller=9a kind=train]")


def test_configuring_twice_replaces_the_handler() -> None:
    first = configure_logging(fmt="text", stream=io.StringIO())
    second = configure_logging(fmt="json", stream=io.StringIO())
    try:
        root = logging.getLogger().handlers
        assert second in root and first not in root
    finally:
        logging.getLogger().removeHandler(second)


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="log format 'xml' is not one of"):
        configure_logging(fmt="xml")  # type: ignore[arg-type]
