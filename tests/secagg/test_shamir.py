from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pod_agent.errors import SecAggError
from pod_agent.secagg import Share, combine_shares, split_secret
from pod_agent.secagg.shamir import MAX_HOLDERS

secrets_32 = st.binary(min_size=32, max_size=32)


@st.composite
def split_and_subset(draw: st.DrawFn, max_n: int = 24) -> tuple[bytes, int, list[Share], list[Share]]:
    n = draw(st.integers(2, max_n))
    threshold = draw(st.integers(2, n))
    secret = draw(secrets_32)
    shares = split_secret(secret, n=n, threshold=threshold)
    size = draw(st.integers(threshold, n))
    subset = draw(st.permutations(shares))[:size]
    return secret, threshold, shares, subset


@settings(max_examples=60, deadline=None)
@given(split_and_subset())
def test_any_threshold_of_the_shares_rebuild_the_secret(case: tuple[bytes, int, list[Share], list[Share]]) -> None:
    secret, threshold, shares, subset = case
    assert [share.index for share in shares] == list(range(1, len(shares) + 1))
    assert all(len(share.data) == 32 for share in shares)
    assert combine_shares(subset, threshold=threshold) == secret


def _bits(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def _solve_gf2(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """x with matrix @ x = target over GF(2), for an invertible square matrix."""
    size = matrix.shape[0]
    work = np.concatenate([matrix, target[:, None]], axis=1).astype(np.uint8)
    for col in range(size):
        pivot = col + int(np.argmax(work[col:, col]))
        assert work[pivot, col] == 1, "the map is not invertible"
        work[[col, pivot]] = work[[pivot, col]]
        rows = np.nonzero(work[:, col])[0]
        rows = rows[rows != col]
        work[rows] ^= work[col]
    return work[:, size]


@settings(max_examples=8, deadline=None)
@given(n=st.integers(3, 8), data=st.data(), candidate=secrets_32)
def test_fewer_than_threshold_shares_are_consistent_with_any_secret(n: int, data: st.DataObject,
                                                                     candidate: bytes) -> None:
    # For t - 1 shares of a secret and ANY candidate secret there is a t-th share that
    # completes them to the candidate: t - 1 shares rule out nothing.
    threshold = data.draw(st.integers(2, n))
    shares = split_secret(os.urandom(32), n=n, threshold=threshold)
    known = shares[: threshold - 1]
    x = shares[-1].index

    def rebuild(y: bytes) -> bytes:
        return combine_shares([*known, Share(index=x, data=y)], threshold=threshold)

    # rebuild(y) = rebuild(0) + L(y) with L linear over GF(2): find y with rebuild(y) = candidate.
    base = _bits(rebuild(bytes(32)))
    columns = []
    for bit in range(256):
        unit = np.zeros(256, dtype=np.uint8)
        unit[bit] = 1
        columns.append(_bits(rebuild(np.packbits(unit).tobytes())) ^ base)
    y = _solve_gf2(np.stack(columns, axis=1), _bits(candidate) ^ base)
    assert rebuild(np.packbits(y).tobytes()) == candidate


@settings(max_examples=20, deadline=None)
@given(split_and_subset(max_n=12))
def test_a_share_altered_among_more_than_threshold_is_caught(case: tuple[bytes, int, list[Share], list[Share]]) -> None:
    _secret, threshold, shares, _ = case
    if len(shares) == threshold:
        return
    bad = Share(index=shares[-1].index, data=bytes(b ^ 0xFF for b in shares[-1].data))
    with pytest.raises(SecAggError, match="do not lie on one polynomial: a holder sent a wrong or altered share"):
        combine_shares([*shares[:-1], bad], threshold=threshold)


def test_more_than_255_holders_work() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, n=300, threshold=3)
    assert combine_shares([shares[7], shares[256], shares[299]], threshold=3) == secret


def test_too_few_shares_are_refused_with_the_numbers() -> None:
    shares = split_secret(os.urandom(32), n=5, threshold=3)
    with pytest.raises(SecAggError, match="2 shares arrived; rebuilding the secret needs 3"):
        combine_shares(shares[:2], threshold=3)


def test_a_holder_named_twice_is_refused() -> None:
    shares = split_secret(os.urandom(32), n=5, threshold=3)
    with pytest.raises(SecAggError, match=r"share indexes \[1, 1, 2\] name a holder twice"):
        combine_shares([shares[0], shares[0], shares[1]], threshold=3)


@pytest.mark.parametrize("share", [Share(index=1, data=bytes(31)), Share(index=0, data=bytes(32)),
                                   Share(index=MAX_HOLDERS + 1, data=bytes(32))])
def test_a_malformed_share_is_refused(share: Share) -> None:
    good = split_secret(os.urandom(32), n=3, threshold=2)
    with pytest.raises(SecAggError, match="is malformed: a share has an index in 1..1024 and 32 bytes"):
        combine_shares([share, good[1], good[2]], threshold=2)


@pytest.mark.parametrize(("n", "threshold"), [(5, 1), (3, 4), (MAX_HOLDERS + 1, 2)])
def test_split_refuses_a_threshold_outside_two_to_n(n: int, threshold: int) -> None:
    with pytest.raises(SecAggError, match=f"got threshold = {threshold}, n = {n}"):
        split_secret(os.urandom(32), n=n, threshold=threshold)


def test_split_refuses_a_secret_of_the_wrong_size() -> None:
    with pytest.raises(SecAggError, match="a shared secret is 32 bytes; got 16"):
        split_secret(bytes(16), n=3, threshold=2)


def test_repr_hides_the_share_bytes() -> None:
    share = split_secret(b"\x01" * 32, n=3, threshold=2)[0]
    assert share.data.hex() not in repr(share) + str(share)
    assert repr(share) == "Share(index=1, data=<32 bytes>)"
