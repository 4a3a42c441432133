"""Attack: reach the process that forked this worker (on the fork-server path, the zygote every later
task is forked from) and any other process of the sandbox uid: signal it, trace it, read or write its
memory through /proc/<pid>/mem and process_vm_readv/writev, read its environ and maps; and leave a
SysV shared-memory segment under a fixed key, where the next task forked by the same zygote (same IPC
namespace) would find it."""
import ctypes
import os
import signal

import sbx_test_entry

PTRACE_ATTACH = 16
PTRACE_SEIZE = 0x4206


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _try(action):
    try:
        action()
    except OSError as exc:
        return "blocked:" + type(exc).__name__
    return "done"


def _open(path, mode):
    def action():
        with open(path, mode) as handle:
            handle.read(16)
    return action


def _errno_call(result):
    return "done" if result >= 0 else "blocked:" + os.strerror(ctypes.get_errno())


def run(channel):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    libc.process_vm_writev.restype = ctypes.c_ssize_t
    target = os.getppid()
    buf = ctypes.create_string_buffer(16)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 16)
    remote = _IoVec(ctypes.c_void_p(0x400000), 16)
    attempts = {
        "kill": lambda: os.kill(target, signal.SIGSTOP),
        "mem_read": _open(f"/proc/{target}/mem", "rb"),
        "mem_write": _open(f"/proc/{target}/mem", "r+b"),
        "environ": _open(f"/proc/{target}/environ", "rb"),
        "maps": _open(f"/proc/{target}/maps", "rb"),
    }
    found = {name: _try(action) for name, action in attempts.items()}
    found["ptrace_attach"] = _errno_call(libc.ptrace(PTRACE_ATTACH, target, None, None))
    found["ptrace_seize"] = _errno_call(libc.ptrace(PTRACE_SEIZE, target, None, None))
    found["vm_readv"] = _errno_call(libc.process_vm_readv(target, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))
    found["shmget"] = _errno_call(libc.shmget(0x706F6421, 4096, 0o1000 | 0o600))  # IPC_CREAT
    found["vm_writev"] = _errno_call(libc.process_vm_writev(target, ctypes.byref(local), 1, ctypes.byref(remote), 1,
                                                            0))
    # Every pid this namespace could hold that is not this task's own: none may take a signal.
    mine = {os.getpid()}
    signalled = []
    for pid in range(1, 4096):
        if pid in mine:
            continue
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        signalled.append(pid)
    found["signalled"] = signalled
    return {"parent": target, "found": found, "token": sbx_test_entry.TOKEN}, {}
