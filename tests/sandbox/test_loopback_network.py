"""What data-parallel ranks are granted: IP sockets only under the agent's loopback check, and each rank
the process allowance of one worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pod_agent.config.settings import SandboxLimitsSection
from pod_agent.errors import SandboxError
from pod_agent.sandbox.limits import EffectiveLimits, SandboxLimits, granted_ranks
from pod_agent.sandbox.netns import check_loopback_only

# Each socket() a filtered child tries, by family, type and protocol; it prints "ok" or the errno's name.
_TRY_SOCKETS = """
import errno, socket, sys
from pod_agent.sandbox.confine import apply_seccomp
apply_seccomp(loopback_network=sys.argv[1] == "1")
tries = [(1, 1, 0), (2, 1, 0), (10, 2, 0), (16, 3, 0), (16, 3, 9), (17, 3, 0), (40, 1, 0), (3, 1, 0)]
for family, kind, proto in tries:
    try:
        socket.socket(family, kind, proto).close()
        print("ok")
    except OSError as exc:
        print(errno.errorcode[exc.errno])
"""
_FAMILIES = ["unix", "inet", "inet6", "netlink route", "netlink audit", "packet", "vsock", "ax25"]


def _sockets_allowed(*, loopback_network: bool) -> dict[str, str]:
    run = subprocess.run([sys.executable, "-c", _TRY_SOCKETS, "1" if loopback_network else "0"],
                         capture_output=True, text=True, check=True, timeout=60)
    return dict(zip(_FAMILIES, run.stdout.split(), strict=True))


def test_seccomp_allows_ip_sockets_only_under_loopback_network() -> None:
    assert _sockets_allowed(loopback_network=False) == dict.fromkeys(_FAMILIES, "EPERM") | {"unix": "ok"}
    granted = _sockets_allowed(loopback_network=True)
    assert granted == {"unix": "ok", "inet": "ok", "inet6": "ok", "netlink route": "ok", "netlink audit": "EPERM",
                       "packet": "EPERM", "vsock": "EPERM", "ax25": "EPERM"}


def test_a_process_in_the_agents_network_is_not_loopback_only() -> None:
    with pytest.raises(SandboxError, match=r"shares a network \(interfaces .*\); data-parallel ranks need"):
        check_loopback_only([os.getpid()])
    with pytest.raises(SandboxError, match="run at the strict sandbox level or set training.devices = 1"):
        check_loopback_only([])


def test_a_process_in_an_empty_network_namespace_passes(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("unshare --net needs root")
    # `ip` is not everywhere; unshare alone makes a namespace whose only interface is lo.
    child = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        deadline = 50
        while os.readlink(f"/proc/{child.pid}/ns/net") == os.readlink("/proc/self/ns/net") and deadline:
            subprocess.run(["sleep", "0.02"], check=True)
            deadline -= 1
        check_loopback_only([child.pid])
    finally:
        child.kill()
        child.wait()


def test_each_rank_gets_the_process_allowance_of_one_worker() -> None:
    pod = SandboxLimitsSection(max_processes=64)
    assert EffectiveLimits.resolve(pod, SandboxLimits()).max_processes == 64
    two = EffectiveLimits.resolve(pod, SandboxLimits(max_processes=10), ranks=2)
    assert (two.max_processes, two.ranks) == (20, 2)
    assert two.rlimits(nproc_slack=8)["nproc"] == 28


def test_auto_devices_are_one_rank_per_gpu_node_or_one_process(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert granted_ranks("auto", gpu=True, dev_root=tmp_path) == 2
    assert granted_ranks("auto", gpu=False, dev_root=tmp_path) == 1
    assert granted_ranks(3, gpu=False, dev_root=tmp_path) == 3
