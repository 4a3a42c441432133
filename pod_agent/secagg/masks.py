"""Round keys and pairwise masks that cancel in the cohort's sum.

Owns the X25519 round key pair, the per-pair seed and its expansion into one mask
element per value. For pods i < j (sorted by pod name) the pair seed is
HKDF-SHA256 over X25519(i, j) with salt = task id and round, and info binding the
cohort (names and round keys, sorted) and both pod names in canonical order; so a
new task, a new round or a changed cohort gives fresh masks even if round keys are
reused. The seed keys AES-128-CTR from ``cryptography``; its keystream, read as
little-endian uint32/uint64, is the mask (M is a power of two, so each element is
exactly uniform mod M). Pod i adds the masks for j > i and subtracts those for
j < i; the aggregator's plain sum cancels them.

Announcing a round key is signed by the pod's identity key through
``pod_agent.protocol`` (sign_envelope / open_envelope); this module only builds the
announcement and takes public keys as given. Policy (min_pods) is ``pod_agent.policy``.

Dropout recovery (a later step): a dropped pod's dangling masks are exactly its own
masks over the survivors (:func:`dropout_correction`), so once its round key is
reconstructed (SecAgg+ Shamir shares, together with self-masks so that a late vector
stays hidden) the aggregator adds that correction to the survivors' sum. Until that
protocol exists ``aggregate.IncompleteRound`` is raised and the round is retried.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pod_agent.errors import SecAggError
from pod_agent.protocol.messages import Participant, RoundKeyAnnouncement
from pod_agent.secagg.fixed_point import modulus_dtype

_INFO_LABEL = b"pod-agent/secagg/v1/pair-mask"
_KEY_BYTES = 32  # X25519 keys
# AES-128: a 128-bit key matches X25519's ~128-bit security and is a quarter faster than AES-256.
_MASK_KEY_BYTES = 16
# Each pair key is used for one keystream only, so a fixed initial counter is safe.
_CTR_START = bytes(16)
# Mask values produced per cipher call: the numpy add that follows stays in cache.
_STREAM_VALUES = 1 << 16


class RoundKeyPair:
    """An X25519 key pair for one or more secure-aggregation rounds; repr shows only the public key."""

    __slots__ = ("_private", "_public_b64")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._public_b64 = base64.b64encode(raw).decode("ascii")

    @classmethod
    def generate(cls) -> RoundKeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> RoundKeyPair:
        """Restore a pair saved with :meth:`private_bytes` (the pod's state keeps it until the round ends)."""
        if len(raw) != _KEY_BYTES:
            raise SecAggError(f"round private key is {len(raw)} bytes; expected {_KEY_BYTES} raw X25519 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public_b64(self) -> str:
        return self._public_b64

    def shared_secret(self, peer_public_b64: str) -> bytes:
        peer = _public_key(peer_public_b64)
        try:
            return self._private.exchange(peer)
        except ValueError as exc:  # low-order point: the shared secret would be all zeros
            raise SecAggError(f"round public key {peer_public_b64!r} is a low-order point; refusing it") from exc

    def __repr__(self) -> str:
        return f"RoundKeyPair(public={self._public_b64!r})"

    __str__ = __repr__


def _public_key(b64: str) -> X25519PublicKey:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecAggError(f"round public key {b64!r} is not base64") from exc
    if len(raw) != _KEY_BYTES:
        raise SecAggError(f"round public key {b64!r} is {len(raw)} bytes; expected {_KEY_BYTES}")
    return X25519PublicKey.from_public_bytes(raw)


def round_key_announcement(*, pod: str, key_id: str, round_key: RoundKeyPair, issued_at: int) -> RoundKeyAnnouncement:
    """The payload a pod signs (protocol.sign_envelope) to register its round key with the hub."""
    return RoundKeyAnnouncement(pod=pod, key_id=key_id, round_public_key=round_key.public_b64, issued_at=issued_at)


def participant_from(announcement: RoundKeyAnnouncement) -> Participant:
    """The task's participant entry for a verified announcement (verify with protocol.open_envelope first)."""
    return Participant(
        pod=announcement.pod, key_id=announcement.key_id, round_public_key=announcement.round_public_key
    )


@dataclass(frozen=True)
class Cohort:
    """The round's participants sorted by pod name, checked for duplicates."""

    participants: tuple[Participant, ...]

    @classmethod
    def of(cls, participants: Sequence[Participant]) -> Cohort:
        ordered = tuple(sorted(participants, key=lambda p: p.pod))
        names = [p.pod for p in ordered]
        if len(set(names)) != len(names):
            raise SecAggError(f"participant list names a pod twice: {names}; each pod takes part once")
        keys = [p.round_public_key for p in ordered]
        if len(set(keys)) != len(keys):
            raise SecAggError("two participants announce the same round key; each pod needs its own")
        return cls(ordered)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.pod for p in self.participants)

    def member(self, pod: str) -> Participant:
        for participant in self.participants:
            if participant.pod == pod:
                return participant
        raise SecAggError(f"pod {pod!r} is not in the round's participants {list(self.names)}")

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for p in self.participants:
            for part in (p.pod, p.round_public_key):
                encoded = part.encode("utf-8")
                h.update(len(encoded).to_bytes(4, "big") + encoded)
        return h.digest()


def pair_key(
    shared_secret: bytes, *, task_id: str, round_index: int, cohort_digest: bytes, pod_a: str, pod_b: str
) -> bytes:
    """The 16-byte AES key of the pair {pod_a, pod_b} for this task, round and cohort."""
    low, high = sorted((pod_a, pod_b))
    info = bytearray(_INFO_LABEL)
    for part in (cohort_digest, low.encode("utf-8"), high.encode("utf-8")):
        info += len(part).to_bytes(4, "big") + part
    salt = f"{task_id}:{round_index}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=_MASK_KEY_BYTES, salt=salt, info=bytes(info)).derive(shared_secret)


def add_pairwise_masks(
    vector: npt.NDArray[np.unsignedinteger],
    *,
    me: str,
    my_round_key: RoundKeyPair,
    participants: Sequence[Participant],
    task_id: str,
    round_index: int,
) -> None:
    """Add (j > me) or subtract (j < me) each peer's mask, in place, mod 2**bits of ``vector``."""
    cohort = Cohort.of(participants)
    streams = _pair_streams(
        cohort, me=me, round_key=my_round_key, peers=cohort.names, task_id=task_id, round_index=round_index
    )
    _apply_streams(vector, streams)


def dropout_correction(
    size: int,
    *,
    dropped: str,
    dropped_round_key: RoundKeyPair,
    participants: Sequence[Participant],
    survivors: Sequence[str],
    task_id: str,
    round_index: int,
    modulus_bits: Literal[32, 64],
) -> npt.NDArray[np.unsignedinteger]:
    """The vector that, added to the survivors' sum, cancels the masks they shared with ``dropped``.

    Needs the dropped pod's round key, which only a dropout-tolerant protocol may
    reconstruct (with self-masks, so that a late vector from that pod stays hidden).
    """
    cohort = Cohort.of(participants)
    for name in survivors:
        cohort.member(name)
    correction = np.zeros(size, dtype=modulus_dtype(modulus_bits))
    streams = _pair_streams(
        cohort, me=dropped, round_key=dropped_round_key, peers=survivors, task_id=task_id, round_index=round_index
    )
    _apply_streams(correction, streams)
    return correction


def _pair_streams(
    cohort: Cohort, *, me: str, round_key: RoundKeyPair, peers: Sequence[str], task_id: str, round_index: int
) -> list[tuple[bool, CipherContext]]:
    """(add?, keystream) for each peer of ``me`` named in ``peers``."""
    own = cohort.member(me)
    if own.round_public_key != round_key.public_b64:
        raise SecAggError(
            f"the task lists round key {own.round_public_key!r} for pod {me!r} but this pod holds "
            f"{round_key.public_b64!r}; re-announce the round key and resubmit the task"
        )
    digest = cohort.digest()
    streams: list[tuple[bool, CipherContext]] = []
    for peer in cohort.participants:
        if peer.pod == me or peer.pod not in peers:
            continue
        key = pair_key(
            round_key.shared_secret(peer.round_public_key),
            task_id=task_id,
            round_index=round_index,
            cohort_digest=digest,
            pod_a=me,
            pod_b=peer.pod,
        )
        encryptor = Cipher(algorithms.AES(key), modes.CTR(_CTR_START)).encryptor()
        streams.append((peer.pod > me, encryptor))
    return streams


def _apply_streams(vector: npt.NDArray[np.unsignedinteger], streams: list[tuple[bool, CipherContext]]) -> None:
    dtype = vector.dtype.newbyteorder("<")
    itemsize = dtype.itemsize
    stream_values = max(1, min(_STREAM_VALUES, vector.size))
    zeros = memoryview(bytes(stream_values * itemsize))
    # update_into wants room for one extra block in general; CTR never uses it.
    buffer = bytearray(stream_values * itemsize + 15)
    mask = np.frombuffer(buffer, dtype=dtype, count=stream_values)
    for start in range(0, vector.size, stream_values):
        segment = vector[start : start + stream_values]
        count = segment.size
        for add, encryptor in streams:
            encryptor.update_into(zeros[: count * itemsize], buffer)
            if add:
                np.add(segment, mask[:count], out=segment)
            else:
                np.subtract(segment, mask[:count], out=segment)
