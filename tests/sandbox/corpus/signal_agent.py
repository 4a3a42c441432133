"""Attack: signal and ptrace the agent process."""
import ctypes
import os
import signal

PTRACE_ATTACH = 16


def run(channel):
    pid = channel.request()["agent_pid"]
    outcome = {}
    try:
        os.kill(pid, signal.SIGUSR1)
        outcome["kill"] = None
    except OSError as exc:
        outcome["kill"] = type(exc).__name__
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    result = libc.ptrace(PTRACE_ATTACH, pid, None, None)
    outcome["ptrace"] = None if result == 0 else os.strerror(ctypes.get_errno())
    return {"blocked": outcome}, {}
