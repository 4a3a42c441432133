"""A cap that surfaces as an exception inside the worker is named by its word, however it is wrapped."""

from __future__ import annotations

import errno
import gc
import weakref

import numpy as np
import pytest
import torch

from pod_agent.errors import TrainingError
from pod_agent.sandbox.bootstrap import failure_code
from pod_agent.sandbox.caps import cap_code, release_and_print

# More than any address space: the allocation fails at once, with or without a data rlimit.
_IMPOSSIBLE_BYTES = 1 << 60


def _raised(call: object) -> BaseException:
    try:
        call()  # type: ignore[operator]
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever it was
        return exc
    raise AssertionError("the call did not raise")


def _wrapped(inner: BaseException) -> TrainingError:
    """``inner`` as the engine hands it on: a TrainingError raised from it."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise TrainingError("training_error", "training error: ...") from exc
    except TrainingError as wrapper:
        return wrapper


def test_numpy_and_torch_allocation_failures_are_the_memory_cap() -> None:
    numpy_failure = _raised(lambda: np.empty(_IMPOSSIBLE_BYTES, dtype=np.uint8))
    torch_failure = _raised(lambda: torch.empty(_IMPOSSIBLE_BYTES, dtype=torch.uint8))
    assert isinstance(numpy_failure, MemoryError)
    assert type(torch_failure) is RuntimeError
    assert cap_code(numpy_failure) == cap_code(torch_failure) == "memory_exceeded"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (MemoryError(), "memory_exceeded"),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), "memory_exceeded"),
        (RuntimeError("[enforce fail] DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"),
         "memory_exceeded"),
        (OSError(errno.EFBIG, "File too large"), "file_size_exceeded"),
        (OSError(errno.ENOSPC, "No space left on device"), "file_size_exceeded"),
        (OSError(errno.ENOENT, "No such file"), None),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),
        (ValueError("row 17: secret"), None),
    ],
)
def test_cap_code_names_the_cap_directly_and_through_a_wrapper(exc: BaseException, code: str | None) -> None:
    assert cap_code(exc) == code
    assert cap_code(_wrapped(exc)) == code


def test_a_cap_raised_while_handling_another_error_is_still_found() -> None:
    try:
        try:
            raise MemoryError
        except MemoryError:
            raise ValueError("while cleaning up")  # noqa: B904 - the implicit context is the point
    except ValueError as exc:
        assert cap_code(exc) == "memory_exceeded"


def test_a_cyclic_chain_ends() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert cap_code(first) is None


def test_a_model_exception_whose_text_raises_names_no_cap() -> None:
    class Hostile(RuntimeError):
        def __str__(self) -> str:
            raise ValueError("no text for you")

    assert cap_code(Hostile()) is None
    assert failure_code(Hostile()) == "uncaught_exception"


def test_the_bootstrap_names_a_cap_before_the_exception_type() -> None:
    import_failed = ImportError("torch")
    import_failed.__context__ = MemoryError()
    assert failure_code(import_failed) == "memory_exceeded"
    assert failure_code(_wrapped(RuntimeError("DefaultCPUAllocator: can't allocate memory"))) == "memory_exceeded"


def test_release_frees_what_the_failed_frames_held_and_still_prints(capsys: pytest.CaptureFixture[str]) -> None:
    class Hog:
        pass

    held: list[weakref.ref[Hog]] = []

    def allocate() -> None:
        hog = Hog()
        held.append(weakref.ref(hog))
        raise MemoryError

    try:
        allocate()
    except MemoryError as exc:
        assert held[0]() is not None
        release_and_print(exc)
        gc.collect()
        assert held[0]() is None
    assert "in allocate" in capsys.readouterr().err
