"""The hostile-model corpus, each file through the real runner at level strict as root.

Every test asserts the attack failed, that the agent's side saw nothing, and
the reason the task ended with.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from sbx_helpers import CORPUS, SECRET, Outside, RunModel, leftover_processes, nothing_arrived

from pod_agent.errors import SandboxError
from pod_agent.policy.codes import failure_code_for
from pod_agent.sandbox.frames import check_safetensors
from pod_agent.sandbox.staging import KEPT_STDERR_FILES


async def test_tcp_connect_to_agent_listener_is_blocked(run_model: RunModel, outside: Outside) -> None:
    outcome = await run_model("tcp_connect")
    assert outcome.header["blocked"] == "PermissionError"
    nothing_arrived(outside)


async def test_udp_to_agent_socket_is_blocked(run_model: RunModel, outside: Outside) -> None:
    outcome = await run_model("udp_send")
    assert outcome.header["blocked"] == "PermissionError"
    nothing_arrived(outside)


async def test_path_and_abstract_unix_sockets_are_unreachable(run_model: RunModel, outside: Outside) -> None:
    outcome = await run_model("unix_socket")
    assert outcome.header["blocked"] == {"path": "FileNotFoundError", "abstract": "ConnectionRefusedError"}
    nothing_arrived(outside)


async def test_dns_lookup_fails(run_model: RunModel) -> None:
    outcome = await run_model("dns_lookup")
    assert outcome.header["blocked"] is not None


async def test_canaries_key_environ_and_data_are_unreadable(run_model: RunModel) -> None:
    outcome = await run_model("read_files")
    read = outcome.header["read"]
    assert set(read) == {"canary_644", "canary_600", "key", "environ", "etc_shadow", "data"}
    for name, value in read.items():
        assert value.startswith("blocked:"), name
    assert SECRET not in repr(outcome.header)


async def test_environment_is_scrubbed(run_model: RunModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_AGENT_HUB_TOKEN", SECRET)
    outcome = await run_model("env_dump")
    environ = outcome.header["environ"]
    assert SECRET not in repr(environ)
    assert not any(name.startswith("POD_AGENT") for name in environ)


async def test_input_is_read_only(run_model: RunModel, tmp_path: Path) -> None:
    outcome = await run_model("write_input")
    assert outcome.header["blocked"]["inside"] in {"OSError", "PermissionError"}
    assert outcome.header["blocked"]["host"] == "FileNotFoundError"
    original = (CORPUS / "write_input.py").read_text()
    assert [p.read_text() for p in tmp_path.glob("*/input/model.py")] == [original]


async def test_agent_cannot_be_signalled_or_traced(run_model: RunModel) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signo, _frame: received.append(signo))
    try:
        outcome = await run_model("signal_agent")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert outcome.header["blocked"]["kill"] in {"ProcessLookupError", "PermissionError"}
    assert outcome.header["blocked"]["ptrace"] is not None
    assert received == []


async def test_fork_bomb_stops_at_the_process_limit(run_model: RunModel, outside: Outside) -> None:
    outcome = await run_model("fork_bomb", max_processes=16)
    assert 0 < outcome.header["forked"] <= 16
    assert leftover_processes(outside.comm) == []


@pytest.mark.parametrize(
    ("model", "memory_mb"),
    [("memory_hog", 256), ("memory_list", 256), ("memory_numpy", 256), ("memory_torch", 1024)],
    ids=["bytes-chunks", "list-growth", "numpy-array", "torch-tensor"],
)
async def test_allocating_twice_the_memory_cap_ends_memory_exceeded(run_model: RunModel, model: str,
                                                                    memory_mb: int) -> None:
    # The data rlimit fires first in one process (MemoryError, or torch's allocator RuntimeError),
    # the cgroup's OOM killer if resident memory gets there first: either way the cap is named.
    with pytest.raises(SandboxError) as caught:
        await run_model(model, memory_mb=memory_mb)
    assert (caught.value.code, caught.value.detail) in {("memory_exceeded", "worker exited without a result"),
                                                          ("task_failed", "memory_exceeded")}
    assert failure_code_for(caught.value) == "memory_exceeded"


async def test_memory_spread_over_processes_is_capped_by_the_cgroup(run_model: RunModel, outside: Outside) -> None:
    with pytest.raises(SandboxError) as caught:
        await run_model("memory_hog_forked", memory_mb=256)
    assert caught.value.code == "memory_exceeded"
    assert failure_code_for(caught.value) == "memory_exceeded"
    assert leftover_processes(outside.comm) == []


async def test_an_oom_kill_outranks_the_word_the_worker_reports(run_model: RunModel) -> None:
    with pytest.raises(SandboxError) as caught:
        await run_model("memory_forked_then_blame", memory_mb=256)
    assert caught.value.code == "memory_exceeded"
    assert failure_code_for(caught.value) == "memory_exceeded"


@pytest.mark.parametrize(
    ("word", "code"),
    [("diagnosis_hiv", "model_error"), ("sandbox_unavailable", "model_error"), ("internal_error", "model_error"),
     ("time_exceeded", "model_error"), ("syntax_error", "syntax_error"), ("memory_exceeded", "memory_exceeded")],
)
async def test_a_word_the_worker_reports_reaches_the_hub_only_if_a_worker_may_say_it(
    run_model: RunModel, word: str, code: str
) -> None:
    # A worker may claim memory_exceeded (it could exhaust memory for real just as well); it may not
    # claim an agent-decided code, nor smuggle a word of its own out.
    with pytest.raises(SandboxError) as caught:
        await run_model("fail_with_word", request={"word": word})
    assert (caught.value.code, caught.value.detail) == ("task_failed", word)
    assert failure_code_for(caught.value) == code


async def test_busy_loop_is_killed_at_the_cpu_limit(run_model: RunModel) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError) as caught:
        await run_model("cpu_burn", cpu_time_s=1, wall_timeout_s=15)
    assert caught.value.code == "cpu_time_exceeded"
    assert failure_code_for(caught.value) == "time_exceeded"
    assert time.monotonic() - started < 8


async def test_sleep_past_wall_time_is_killed(run_model: RunModel, outside: Outside) -> None:
    started = time.monotonic()
    with pytest.raises(SandboxError) as caught:
        await run_model("sleep_forever", wall_timeout_s=1.5)
    assert caught.value.code == "wall_timeout"
    assert failure_code_for(caught.value) == "time_exceeded"
    assert time.monotonic() - started < 6
    assert leftover_processes(outside.comm) == []


async def test_cancelling_a_running_task_kills_its_tree(run_model: RunModel, outside: Outside) -> None:
    task = asyncio.ensure_future(run_model("setsid_daemon", wall_timeout_s=60))
    await asyncio.sleep(1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not leftover_processes(outside.comm):
            break
        await asyncio.sleep(0.05)
    assert leftover_processes(outside.comm) == []


async def test_setsid_daemon_dies_and_its_inherited_pipe_reaches_eof(run_model: RunModel, outside: Outside) -> None:
    # The runner waits for EOF on the stderr pipe the daemon inherited; a survivor would
    # surface as reason "tree_survived" instead of "wall_timeout".
    started = time.monotonic()
    with pytest.raises(SandboxError, match="wall_timeout"):
        await run_model("setsid_daemon", wall_timeout_s=1.5)
    assert time.monotonic() - started < 6
    assert leftover_processes(outside.comm) == []


async def test_file_bigger_than_the_cap_is_refused(run_model: RunModel) -> None:
    with pytest.raises(SandboxError, match=r"\(task_failed\): file_size_exceeded") as caught:
        await run_model("big_file", max_file_mb=4)
    assert failure_code_for(caught.value) == "output_too_large"


async def test_scratch_cannot_fill_the_host_disk(run_model: RunModel, tmp_path: Path) -> None:
    # Many files each under the per-file cap: scratch is a tmpfs sized to the memory cap and charged to
    # the task's memory cgroup, so either it fills (ENOSPC) or the cgroup stops the task; never the disk.
    try:
        outcome = await run_model("many_files", max_file_mb=4, memory_mb=256)
    except SandboxError as exc:
        assert exc.code == "memory_exceeded"
    else:
        assert outcome.header["stopped_by"] == "OSError(28)"
        assert outcome.header["written_mb"] <= 256
    assert not list(tmp_path.glob("*/work/*"))


async def test_stdout_and_stderr_flood_is_cut_off(run_model: RunModel) -> None:
    with pytest.raises(SandboxError, match="output_exceeded") as caught:
        await run_model("flood_output")
    assert failure_code_for(caught.value) == "output_too_large"


async def test_pickled_result_is_refused_and_never_unpickled(run_model: RunModel, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    with pytest.raises(SandboxError, match="bad_payload"):
        await run_model("pickle_result", request={"marker": str(marker)})
    assert not marker.exists()


async def test_garbage_on_the_frame_pipe_fails_the_task(run_model: RunModel) -> None:
    with pytest.raises(SandboxError) as caught:
        await run_model("garbage_frames")
    assert caught.value.code in {"frame_too_large", "bad_frame"}


async def test_exit_without_result_is_a_failed_task(run_model: RunModel) -> None:
    with pytest.raises(SandboxError, match="no_result"):
        await run_model("exit_without_result")


async def test_missing_module_is_reported_as_import_error(run_model: RunModel) -> None:
    with pytest.raises(SandboxError, match=r"\(task_failed\): import_error"):
        await run_model("missing_module")


# The pool's worker trains the same model in test_levels' Landlock fallback (no forks there).
@pytest.mark.parametrize("worker_path", ["fork_server"], indirect=True)
async def test_benign_lightning_model_trains_under_strict(run_model: RunModel, tmp_path: Path) -> None:
    outcome = await run_model("benign_torch", memory_mb=4096, max_processes=64, cpu_time_s=300,
                              wall_timeout_s=180, max_open_files=1024, max_file_mb=64)
    assert outcome.header["steps"] == 6
    tensors = check_safetensors(outcome.payload)
    assert tensors["net.0.weight"] == {"dtype": "F32", "shape": [16, 8]}
    assert outcome.header["notes"] == "trained\n"


async def test_data_on_stderr_stays_out_of_the_logs_and_the_error(
    run_model: RunModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with pytest.raises(SandboxError) as caught:
        await run_model("stderr_leak", request={"secret": SECRET})
    assert SECRET not in str(caught.value)
    assert SECRET not in caplog.text
    assert "bytes to stderr (not kept" in caplog.text


async def test_stderr_is_kept_only_in_the_file_the_operator_asked_for(
    run_model: RunModel, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level("DEBUG")
    kept = tmp_path / "stderr" / "task.log"
    kept.parent.mkdir()
    older = [kept.parent / f"older-{i:03}.log" for i in range(KEPT_STDERR_FILES)]
    for i, path in enumerate(older):
        path.write_text("old")
        os.utime(path, ns=(i * 10**9, i * 10**9))
    with pytest.raises(SandboxError):
        await run_model("stderr_leak", request={"secret": SECRET}, stderr_path=kept)
    # Only the newest KEPT_STDERR_FILES stay: the oldest one made room for this task's.
    assert not older[0].exists() and older[1].exists() and len(list(kept.parent.iterdir())) == KEPT_STDERR_FILES
    text = kept.read_text()
    assert f"row 17: {SECRET}" in text and "ValueError" in text
    assert kept.stat().st_mode & 0o777 == 0o600
    assert SECRET not in caplog.text


@pytest.mark.parametrize(("where", "code"), [("header", "bad_frame"), ("payload", "bad_payload")])
async def test_json_nested_past_the_recursion_limit_is_a_typed_failure(run_model: RunModel, where: str,
                                                                       code: str) -> None:
    with pytest.raises(SandboxError) as caught:
        await run_model("deep_json", request={"where": where})
    assert caught.value.code == code
    assert "recursion limit" in caught.value.detail
    # A malformed answer from the sandbox, not "internal_error" (a pod-agent bug).
    assert failure_code_for(caught.value) == "sandbox_error"
