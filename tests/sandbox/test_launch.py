"""Command building: the bwrap line (binds, GPU devices, no host env), worker env, Landlock paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pod_agent
from pod_agent.sandbox.launch import (
    SANDBOX_INPUT,
    SANDBOX_WORK,
    Identity,
    bwrap_argv,
    gpu_device_paths,
    landlock_paths,
    python_ro_paths,
    worker_env,
)

_IDENTITY = Identity("pod-sandbox", 999, 995, True)


def _argv(tmp_path: Path, *, gpu: bool, dev_root: Path) -> list[str]:
    return bwrap_argv(bwrap="/usr/bin/bwrap", ro_paths=python_ro_paths(), input_dir=tmp_path / "in",
                      env=worker_env(_IDENTITY, home=SANDBOX_WORK, gpu=gpu), gpu=gpu, tmpfs_bytes=1 << 20,
                      dev_root=dev_root)


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_bwrap_isolates_everything_and_binds_input_read_only(tmp_path: Path) -> None:
    argv = _argv(tmp_path, gpu=False, dev_root=tmp_path)
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--clearenv"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert (str(tmp_path / "in"), str(SANDBOX_INPUT)) in _pairs(argv, "--ro-bind")
    assert not _pairs(argv, "--bind")
    # Scratch is a size-capped tmpfs, so a worker cannot fill the host's disk.
    work = argv.index(str(SANDBOX_WORK), argv.index("--chdir") - 3)
    assert argv[work - 5:work] == ["--perms", "0700", "--size", str(1 << 20), "--tmpfs"]
    assert argv[argv.index("--") + 1:] == [sys.executable, "-I", "-m", "pod_agent.sandbox.bootstrap"]
    assert not any("nvidia" in a for a in argv)


def test_python_environment_and_package_are_bound_read_only() -> None:
    paths = python_ro_paths()
    package = Path(pod_agent.__file__).resolve().parent
    for needed in (Path(sys.prefix), package):
        assert any(needed.is_relative_to(p) for p in paths)
    assert not any(Path("/root").is_relative_to(p) or p == Path("/") for p in paths)


def test_gpu_tasks_bind_every_nvidia_device(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-caps", "null"):
        (tmp_path / name).touch()
    argv = _argv(tmp_path, gpu=True, dev_root=tmp_path)
    devices = _pairs(argv, "--dev-bind")
    assert devices == [(str(tmp_path / n), f"/dev/{n}") for n in ("nvidia-caps", "nvidia-uvm", "nvidia0", "nvidiactl")]
    assert gpu_device_paths(tmp_path) == [tmp_path / n for n in ("nvidia-caps", "nvidia-uvm", "nvidia0", "nvidiactl")]


def test_worker_env_carries_nothing_of_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_AGENT_HUB__URL", "https://secret.example")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    env = worker_env(_IDENTITY, home=SANDBOX_WORK, gpu=False)
    assert not any(k.startswith("POD_AGENT") or k == "CUDA_VISIBLE_DEVICES" for k in env)
    assert env["HOME"] == env["TMPDIR"] == str(SANDBOX_WORK)
    assert worker_env(_IDENTITY, home=SANDBOX_WORK, gpu=True)["CUDA_VISIBLE_DEVICES"] == "1"


def test_landlock_fallback_allows_no_host_tmp_or_etc_tree() -> None:
    read_only, read_write = landlock_paths(ro_paths=python_ro_paths(), gpu=False)
    assert "/tmp" not in read_only + read_write
    assert not any(p in ("/etc", "/", "/root", "/home") for p in read_only + read_write)


def test_landlock_fallback_allows_of_proc_only_the_workers_own_files_and_cpuinfo() -> None:
    read_only, read_write = landlock_paths(ro_paths=[], gpu=False)
    proc = [p for p in read_only + read_write if p.startswith("/proc")]
    assert all(p.startswith(("/proc/self/", "/proc/thread-self/")) or p == "/proc/cpuinfo" for p in proc)
    assert not any(p.endswith(("/net", "/task", "/mem", "/mountinfo")) for p in proc)


def test_a_python_tree_under_tmp_is_bound_on_top_of_the_sandboxes_own_tmp(tmp_path: Path) -> None:
    venv = Path("/tmp/some-checkout/.venv")
    argv = bwrap_argv(bwrap="/usr/bin/bwrap", ro_paths=[venv], input_dir=None, env={}, gpu=False, tmpfs_bytes=1 << 20)
    tmpfs_at = [i for i, a in enumerate(argv) if a == "--tmpfs" and argv[i + 1] == "/tmp"]
    bind_at = [i for i, a in enumerate(argv) if a == "--ro-bind" and argv[i + 1] == str(venv)]
    assert len(tmpfs_at) == len(bind_at) == 1 and tmpfs_at[0] < bind_at[0]
    assert str(SANDBOX_INPUT) not in argv


def test_the_command_defaults_to_the_bootstrap_and_can_be_a_trial(tmp_path: Path) -> None:
    trial = bwrap_argv(bwrap="/usr/bin/bwrap", ro_paths=[], input_dir=None, env={}, gpu=False, tmpfs_bytes=1 << 20,
                       command=["python", "-c", "pass"])
    assert trial[-4:] == ["--", "python", "-c", "pass"]
    assert "pod_agent.sandbox.bootstrap" in _argv(tmp_path, gpu=False, dev_root=tmp_path)[-3:]


def test_a_prepared_worker_leaves_a_modest_task_cap_room_to_work(tmp_path: Path) -> None:
    # RLIMIT_DATA counts reserved address space: with Arrow's default pool a prepared training worker
    # held ~1.5 GiB before the task began, so a 1.5 GiB task cap failed at its first thread, as model_error.
    env = worker_env(_IDENTITY, home=tmp_path, gpu=False)
    probe = ("import re; from pod_agent.training import worker; worker.prepare(); "
             "print(re.search(r'VmData:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    env["PYTHONPATH"] = str(Path(pod_agent.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    assert int(out.stdout.split()[-1]) < 1024 * 1024  # kB: under 1 GiB
