"""Attack: look around the host's /proc (other processes, their command lines, the agent's memory,
the socket tables) and, as a control, read the worker's own /proc entries."""

import os


def _try(action):
    try:
        action()
    except OSError as exc:
        return "blocked:" + type(exc).__name__
    return "read"


def _read(path, mode="rb"):
    def action():
        with open(path, mode) as handle:
            handle.read(4096)
    return action


def run(channel):
    agent = channel.request()["agent_pid"]
    hostile = {
        "list_proc": lambda: os.listdir("/proc"),
        "init_cmdline": _read("/proc/1/cmdline"),
        "agent_cmdline": _read(f"/proc/{agent}/cmdline"),
        "agent_environ": _read(f"/proc/{agent}/environ"),
        "agent_mem_rw": _read(f"/proc/{agent}/mem", "r+b"),
        "net_tcp": _read("/proc/net/tcp"),
        "net_unix": _read("/proc/net/unix"),
        "self_net_tcp6": _read("/proc/self/net/tcp6"),
        "thread_net_tcp": _read(f"/proc/self/task/{os.getpid()}/net/tcp"),
        "mountinfo": _read("/proc/self/mountinfo"),
        "kallsyms": _read("/proc/kallsyms"),
        "loadavg": _read("/proc/loadavg"),
    }
    own = {
        "self_status": _read("/proc/self/status"),
        "self_maps": _read("/proc/self/maps"),
        "self_fd": lambda: os.listdir("/proc/self/fd"),
        "thread_self_stat": _read("/proc/thread-self/stat"),
        "cpuinfo": _read("/proc/cpuinfo"),
    }
    return {"hostile": {k: _try(v) for k, v in hostile.items()}, "own": {k: _try(v) for k, v in own.items()}}, {}
