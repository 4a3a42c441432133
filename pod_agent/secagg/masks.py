"""Mask keys and mask streams: the pseudo-random vectors that hide a pod's input.

Owns the X25519 helpers (public keys from base64, key agreement that refuses low-order
points), the derivation of mask keys, and their expansion into one mask element per
value. A mask key keys AES-128 in counter mode from ``cryptography``; its keystream,
read as little-endian uint32/uint64, is the mask (M is a power of two, so each element
is exactly uniform mod M). The counter blocks are 0^96 || c for c = 2, 3, ... (32-bit
big-endian), which is how GCM encrypts: the keystream comes from OpenSSL's GCM
encryptor, whose tag is never used, because OpenSSL runs GCM's AES on VAES/AVX-512 where
the CPU has it and its CTR mode only on AES-NI (1.2-1.3x the keystream rate on an AMD
EPYC with VAES). Two kinds of key:

* pair mask key of pods {a, b}: HKDF-SHA256 over X25519(a, b) with salt = task id and
  round, info binding the digest of the round's neighbour graph and both names in
  sorted order, so a new task, round or cohort gives fresh masks even if keys repeat.
  The lower-named pod adds the mask and the higher one subtracts it: they cancel in
  the sum;
* self-mask key of one pod: HKDF-SHA256 over its 32-byte self-mask seed b, bound the
  same way to the task, round and pod (SecAgg+'s PRG(b_u)).

Which masks a pod applies, and how the modeller removes them after dropouts, is
``plus.py`` (SecAgg+).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pod_agent.errors import SecAggError

_INFO_LABEL = b"pod-agent/secagg/v1/pair-mask"
_SELF_LABEL = b"pod-agent/secagg/v1/self-mask"
KEY_BYTES = 32  # X25519 keys
# AES-128: a 128-bit key matches X25519's ~128-bit security and is a quarter faster than AES-256.
_MASK_KEY_BYTES = 16
# Each mask key is used for one keystream only, so a fixed nonce is safe.
_NONCE = bytes(12)
# GCM's 32-bit block counter starts at 2 and may not wrap: at most 2**32 - 2 blocks a stream.
_MAX_STREAM_BYTES = (2**32 - 2) * 16
# Mask values produced per cipher call: the numpy add that follows stays in cache.
_STREAM_VALUES = 1 << 16

# (add?, keystream): one mask to add to or subtract from a vector.
MaskStream = tuple[bool, CipherContext]


def public_key_from_b64(b64: str, *, pod: str) -> X25519PublicKey:
    """The raw X25519 public key ``pod`` advertised, or SecAggError naming the pod."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecAggError(f"public key {b64!r} of pod {pod!r} is not base64") from exc
    if len(raw) != KEY_BYTES:
        raise SecAggError(f"public key {b64!r} of pod {pod!r} is {len(raw)} bytes; expected {KEY_BYTES}")
    return X25519PublicKey.from_public_bytes(raw)


def public_b64(private: X25519PrivateKey) -> str:
    return base64.b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")


def agree(private: X25519PrivateKey, peer_b64: str, *, pod: str) -> bytes:
    """X25519(private, peer); refuses a low-order peer key, whose shared secret would be all zeros."""
    peer = public_key_from_b64(peer_b64, pod=pod)
    try:
        return private.exchange(peer)
    except ValueError as exc:
        raise SecAggError(f"public key {peer_b64!r} of pod {pod!r} is a low-order point; refusing it") from exc


def _info(label: bytes, parts: Sequence[bytes]) -> bytes:
    info = bytearray(label)
    for part in parts:
        info += len(part).to_bytes(4, "big") + part
    return bytes(info)


def pair_key(
    shared_secret: bytes, *, task_id: str, round_index: int, graph_digest: bytes, pod_a: str, pod_b: str
) -> bytes:
    """The 16-byte AES key of the pair {pod_a, pod_b} for this task, round and graph."""
    low, high = sorted((pod_a, pod_b))
    info = _info(_INFO_LABEL, [graph_digest, low.encode("utf-8"), high.encode("utf-8")])
    salt = f"{task_id}:{round_index}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=_MASK_KEY_BYTES, salt=salt, info=info).derive(shared_secret)


def self_mask_key(seed: bytes, *, task_id: str, round_index: int, pod: str) -> bytes:
    """The 16-byte AES key of ``pod``'s self mask, from its 32-byte seed b."""
    salt = f"{task_id}:{round_index}".encode()
    info = _info(_SELF_LABEL, [pod.encode("utf-8")])
    return HKDF(algorithm=hashes.SHA256(), length=_MASK_KEY_BYTES, salt=salt, info=info).derive(seed)


def mask_stream(key: bytes, *, add: bool) -> MaskStream:
    """The mask of ``key``, to be added (``add``) or subtracted by :func:`apply_streams`."""
    return add, Cipher(algorithms.AES(key), modes.GCM(_NONCE)).encryptor()


def apply_streams(vector: npt.NDArray[np.unsignedinteger], streams: Sequence[MaskStream]) -> None:
    """Add or subtract each stream's mask, in place, mod 2**bits of ``vector``, chunk by chunk."""
    dtype = vector.dtype.newbyteorder("<")
    itemsize = dtype.itemsize
    if vector.size * itemsize > _MAX_STREAM_BYTES:
        raise SecAggError(
            f"a vector of {vector.size} x {itemsize} bytes is longer than one mask stream "
            f"({_MAX_STREAM_BYTES} bytes); split the update over several rounds"
        )
    stream_values = max(1, min(_STREAM_VALUES, vector.size))
    zeros = memoryview(bytes(stream_values * itemsize))
    # update_into wants room for one extra block in general; GCM's counter mode never uses it.
    buffer = bytearray(stream_values * itemsize + 15)
    mask = np.frombuffer(buffer, dtype=dtype, count=stream_values)
    for start in range(0, vector.size, stream_values):
        segment = vector[start : start + stream_values]
        count = segment.size
        for add, encryptor in streams:
            encryptor.update_into(zeros[: count * itemsize], buffer)
            # Unsigned numpy arithmetic wraps, which is exactly arithmetic mod 2**bits.
            if add:
                np.add(segment, mask[:count], out=segment)
            else:
                np.subtract(segment, mask[:count], out=segment)
