from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from secagg_cohort import CHI2_255_P001, TASK_A, TASK_B, chi_square_256

from pod_agent.errors import SecAggError
from pod_agent.secagg.masks import (
    agree,
    apply_streams,
    mask_stream,
    pair_key,
    public_b64,
    self_mask_key,
)


def _pair(a: X25519PrivateKey, b: X25519PrivateKey, *, task_id: str = TASK_A, round_index: int = 0,
          digest: bytes = b"d" * 32) -> bytes:
    return pair_key(agree(a, public_b64(b), pod="b"), task_id=task_id, round_index=round_index, graph_digest=digest,
                    pod_a="a", pod_b="b")


def test_both_pods_of_a_pair_derive_the_same_key_and_it_depends_on_task_round_and_graph() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ab = _pair(a, b)
    ba = pair_key(agree(b, public_b64(a), pod="a"), task_id=TASK_A, round_index=0, graph_digest=b"d" * 32,
                  pod_a="b", pod_b="a")
    assert ab == ba
    assert len({ab, _pair(a, b, task_id=TASK_B), _pair(a, b, round_index=1), _pair(a, b, digest=b"e" * 32)}) == 4


def test_self_mask_key_depends_on_seed_task_round_and_pod() -> None:
    seed = bytes(range(32))
    keys = {
        self_mask_key(seed, task_id=TASK_A, round_index=0, pod="a"),
        self_mask_key(seed, task_id=TASK_B, round_index=0, pod="a"),
        self_mask_key(seed, task_id=TASK_A, round_index=1, pod="a"),
        self_mask_key(seed, task_id=TASK_A, round_index=0, pod="b"),
        self_mask_key(bytes(32), task_id=TASK_A, round_index=0, pod="a"),
    }
    assert len(keys) == 5


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_mask_added_and_subtracted_cancels_and_looks_uniform(dtype: type) -> None:
    key = bytes(range(16))
    vector = np.zeros(100_003, dtype=dtype)
    apply_streams(vector, [mask_stream(key, add=True)])
    assert chi_square_256(vector.view(np.uint8)) < CHI2_255_P001
    apply_streams(vector, [mask_stream(key, add=False)])
    assert not vector.any()


def test_the_mask_is_the_aes_128_keystream_over_counter_blocks_from_2_read_little_endian() -> None:
    # Pins the PRG's output layout, which pods and the modeller must share: AES-128(key, 0^96 || c),
    # c = 2, 3, ... big-endian, computed here block by block with ECB.
    key = bytes(range(16))
    blocks = b"".join(bytes(12) + c.to_bytes(4, "big") for c in range(2, 8))
    # ECB of distinct counter blocks is counter mode by hand, the reference the test wants.
    expected = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(blocks)  # noqa: S305
    vector = np.zeros(11, dtype=np.uint64)  # 88 bytes: the stream ends inside a block
    apply_streams(vector, [mask_stream(key, add=True)])
    assert vector.tolist() == np.frombuffer(expected[:88], dtype="<u8").tolist()


@pytest.mark.parametrize("bad", ["not base64!", "AAAA"])
def test_malformed_peer_key_is_refused_naming_the_pod(bad: str) -> None:
    with pytest.raises(SecAggError, match=f"public key {bad!r} of pod 'pod-07'"):
        agree(X25519PrivateKey.generate(), bad, pod="pod-07")


def test_low_order_peer_key_is_refused() -> None:
    with pytest.raises(SecAggError, match="of pod 'pod-07' is a low-order point"):
        agree(X25519PrivateKey.generate(), "A" * 43 + "=", pod="pod-07")
