"""Inside a worker: whether an exception means one of the sandbox's caps fired, as a fixed word.

Owns recognising, in the worker, a cap that surfaces as an exception rather than a
kill: RLIMIT_DATA (``MemoryError`` and numpy's subclass of it, torch's allocator
``RuntimeError``, ``ENOMEM``) is ``memory_exceeded``; RLIMIT_FSIZE (``EFBIG``:
Python ignores SIGXFSZ) and a full scratch (``ENOSPC``, ``EDQUOT``: with namespaces
scratch is a tmpfs sized to the memory cap) are ``file_size_exceeded``. Also owns
the order of reporting one: name the code, free what the failed code still holds,
only then print the traceback (at the memory cap printing may itself fail). The
bootstrap and entries that catch their own errors (training.worker) use it; the
runner names the caps that kill a worker outright (signals, the cgroup's OOM killer);
policy.codes decides what the hub sees. A model may raise these exceptions itself
and so claim a cap fired: the word is still one of a fixed few.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import traceback
from collections.abc import Iterator

MEMORY_EXCEEDED = "memory_exceeded"
FILE_SIZE_EXCEEDED = "file_size_exceeded"
# torch reports a failed CPU allocation as a plain RuntimeError (c10::Error), so its text is all
# there is to go on; "not enough memory" is the same failure on older builds.
_ALLOCATOR_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory",
                       "std::bad_alloc")
_FILE_CAP_ERRNOS = frozenset({errno.EFBIG, errno.ENOSPC, errno.EDQUOT})
# Links of __cause__/__context__ followed: wrappers nest a few deep; a hostile cycle stops here.
_MAX_CHAIN = 16


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, newest first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _one(exc: BaseException) -> str | None:
    if isinstance(exc, MemoryError):
        return MEMORY_EXCEEDED
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOMEM:
            return MEMORY_EXCEEDED
        return FILE_SIZE_EXCEEDED if exc.errno in _FILE_CAP_ERRNOS else None
    if isinstance(exc, RuntimeError):
        try:
            text = str(exc)
        except Exception:  # noqa: BLE001 - a model's own __str__ may raise anything; then it names no cap
            return None
        return MEMORY_EXCEEDED if any(marker in text for marker in _ALLOCATOR_FAILURES) else None
    return None


def cap_code(exc: BaseException) -> str | None:
    """The cap behind ``exc`` or anything in its chain (a wrapper's ``raise ... from``); None if none."""
    for link in _chain(exc):
        code = _one(link)
        if code is not None:
            return code
    return None


def release_and_print(exc: BaseException) -> None:
    """Clear the locals of every finished frame ``exc`` and its chain unwound through, then print
    its traceback on stderr; call it once the failure's code is named.

    A memory hog's allocation lives on in its traceback, and reporting the failure needs memory
    of its own. The traceback stays printable (code and line numbers remain); where even that
    fails at the cap, the report goes out without it.
    """
    for link in _chain(exc):
        traceback.clear_frames(link.__traceback__)
    with contextlib.suppress(MemoryError):
        traceback.print_exception(exc, file=sys.stderr)
