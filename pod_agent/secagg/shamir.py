"""Shamir secret sharing of 32-byte secrets: split among n holders, rebuild from any t.

Owns ``Share`` and the two operations on it. The field arithmetic is PyCryptodome's
``Crypto.Protocol.SecretSharing.Shamir``: polynomials over GF(2^128), one 16-byte block
per secret. A 32-byte secret (an X25519 private key, a self-mask seed) is split as two
16-byte halves, each with its own random polynomial and the same x-coordinates, so a
``Share`` is (index, 32 bytes) and a holder keeps one of each half.

Limits, read in PyCryptodome's code (4.5, the version tested here): an x-coordinate is
any integer read as a GF(2^128) element, so there is no 255-holder cap (that is the
``ssss`` tool's and GF(2^8) schemes'); we accept 1 <= index <= MAX_HOLDERS. The cost is
pure Python: splitting is n * t field multiplications per half, rebuilding t**2 and t
inversions (about 10 ms per half for t = 21 on one core), which is why the neighbour
graph keeps t logarithmic.
``Shamir.combine`` interpolates through every point it gets; we hand it exactly t and use
any further shares to check that they agree (a holder that sends a wrong share is caught
whenever more than t arrive, not otherwise).

Who holds which index, and what t is, is ``graph.py``; encrypting shares to holders is
``plus.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from Crypto.Protocol.SecretSharing import Shamir

from pod_agent.errors import SecAggError

SECRET_BYTES = 32
_HALF_BYTES = 16  # one GF(2^128) element
# Far above any neighbour count the graph produces; it only bounds the pure-Python cost.
MAX_HOLDERS = 1024


@dataclass(frozen=True)
class Share:
    """One holder's share of a 32-byte secret: the x-coordinate and both halves' y-values."""

    index: int
    data: bytes

    def __repr__(self) -> str:
        return f"Share(index={self.index}, data=<{len(self.data)} bytes>)"

    __str__ = __repr__


def split_secret(secret: bytes, *, n: int, threshold: int) -> list[Share]:
    """Shares 1..n of ``secret`` such that any ``threshold`` of them rebuild it and fewer reveal nothing."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret is {SECRET_BYTES} bytes; got {len(secret)}")
    if not 2 <= threshold <= n <= MAX_HOLDERS:
        raise SecAggError(
            f"secret sharing needs 2 <= threshold <= n <= {MAX_HOLDERS}; got threshold = {threshold}, n = {n} "
            "(a threshold of 1 would hand the whole secret to every holder)"
        )
    low = Shamir.split(threshold, n, secret[:_HALF_BYTES])
    high = Shamir.split(threshold, n, secret[_HALF_BYTES:])
    return [Share(index=x, data=y_low + y_high) for (x, y_low), (_, y_high) in zip(low, high, strict=True)]


def combine_shares(shares: Sequence[Share], *, threshold: int) -> bytes:
    """The secret that ``threshold`` (or more, which must agree) of its shares rebuild.

    Checks, in order: share sizes and indexes, no index twice, at least ``threshold``
    shares, and, when more arrived, that the last ``threshold`` give the same secret as the
    first ``threshold``.
    """
    if threshold < 2:
        raise SecAggError(f"threshold = {threshold}: secret sharing needs at least 2")
    for share in shares:
        if len(share.data) != SECRET_BYTES or not 1 <= share.index <= MAX_HOLDERS:
            raise SecAggError(
                f"share {share!r} is malformed: a share has an index in 1..{MAX_HOLDERS} and {SECRET_BYTES} bytes"
            )
    indexes = [share.index for share in shares]
    if len(set(indexes)) != len(indexes):
        raise SecAggError(f"share indexes {sorted(indexes)} name a holder twice; each holder sends one share")
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares arrived; rebuilding the secret needs {threshold}")
    ordered = sorted(shares, key=lambda share: share.index)
    secret = _interpolate(ordered[:threshold])
    if len(ordered) > threshold and _interpolate(ordered[-threshold:]) != secret:
        raise SecAggError(
            f"the {len(ordered)} shares (indexes {indexes}) do not lie on one polynomial: a holder sent a "
            "wrong or altered share"
        )
    return secret


def _interpolate(shares: Sequence[Share]) -> bytes:
    low = Shamir.combine([(share.index, share.data[:_HALF_BYTES]) for share in shares])
    high = Shamir.combine([(share.index, share.data[_HALF_BYTES:]) for share in shares])
    return low + high
