"""Mask keys and mask streams: the pseudo-random vectors that hide a pod's input.

Owns the X25519 helpers (public keys from base64, key agreement that refuses low-order
points), the derivation of mask keys, and their expansion into one mask element per
value. A mask key keys AES-128-CTR from ``cryptography``; its keystream, read as
little-endian uint32/uint64, is the mask (M is a power of two, so each element is
exactly uniform mod M). Two kinds of key:

* pair mask key of pods {a, b}: HKDF-SHA256 over X25519(a, b) with salt = task id and
  round, info binding a digest of the round's graph (or cohort) and both names in
  sorted order, so a new task, round or cohort gives fresh masks even if keys repeat.
  The lower-named pod adds the mask and the higher one subtracts it: they cancel in
  the sum;
* self-mask key of one pod: HKDF-SHA256 over its 32-byte self-mask seed b, bound the
  same way to the task, round and pod (SecAgg+'s PRG(b_u)).

Which masks a pod applies, and how the modeller removes them after dropouts, is
``plus.py`` (SecAgg+). The one-shot pairwise scheme below the streams (``RoundKeyPair``,
``Cohort``, ``add_pairwise_masks``) predates it and goes once no caller is left.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from pod_agent.errors import SecAggError
from pod_agent.protocol.messages import Participant, RoundKeyAnnouncement

_INFO_LABEL = b"pod-agent/secagg/v1/pair-mask"
_SELF_LABEL = b"pod-agent/secagg/v1/self-mask"
KEY_BYTES = 32  # X25519 keys
# AES-128: a 128-bit key matches X25519's ~128-bit security and is a quarter faster than AES-256.
_MASK_KEY_BYTES = 16
# Each mask key is used for one keystream only, so a fixed initial counter is safe.
_CTR_START = bytes(16)
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
    shared_secret: bytes, *, task_id: str, round_index: int, cohort_digest: bytes, pod_a: str, pod_b: str
) -> bytes:
    """The 16-byte AES key of the pair {pod_a, pod_b} for this task, round and cohort (or graph) digest."""
    low, high = sorted((pod_a, pod_b))
    info = _info(_INFO_LABEL, [cohort_digest, low.encode("utf-8"), high.encode("utf-8")])
    salt = f"{task_id}:{round_index}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=_MASK_KEY_BYTES, salt=salt, info=info).derive(shared_secret)


def self_mask_key(seed: bytes, *, task_id: str, round_index: int, pod: str) -> bytes:
    """The 16-byte AES key of ``pod``'s self mask, from its 32-byte seed b."""
    salt = f"{task_id}:{round_index}".encode()
    info = _info(_SELF_LABEL, [pod.encode("utf-8")])
    return HKDF(algorithm=hashes.SHA256(), length=_MASK_KEY_BYTES, salt=salt, info=info).derive(seed)


def mask_stream(key: bytes, *, add: bool) -> MaskStream:
    """The mask of ``key``, to be added (``add``) or subtracted by :func:`apply_streams`."""
    return add, Cipher(algorithms.AES(key), modes.CTR(_CTR_START)).encryptor()


def apply_streams(vector: npt.NDArray[np.unsignedinteger], streams: Sequence[MaskStream]) -> None:
    """Add or subtract each stream's mask, in place, mod 2**bits of ``vector``, chunk by chunk."""
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
            # Unsigned numpy arithmetic wraps, which is exactly arithmetic mod 2**bits.
            if add:
                np.add(segment, mask[:count], out=segment)
            else:
                np.subtract(segment, mask[:count], out=segment)


# -- the one-shot pairwise scheme SecAgg+ replaces (no dropout recovery) --------------------


class RoundKeyPair:
    """An X25519 key pair for one or more secure-aggregation rounds; repr shows only the public key."""

    __slots__ = ("_private", "_public_b64")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self._public_b64 = public_b64(private)

    @classmethod
    def generate(cls) -> RoundKeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> RoundKeyPair:
        """Restore a pair saved with :meth:`private_bytes` (the pod's state keeps it until the round ends)."""
        if len(raw) != KEY_BYTES:
            raise SecAggError(f"round private key is {len(raw)} bytes; expected {KEY_BYTES} raw X25519 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public_b64(self) -> str:
        return self._public_b64

    def shared_secret(self, peer_public_b64: str, *, peer: str = "peer") -> bytes:
        return agree(self._private, peer_public_b64, pod=peer)

    def __repr__(self) -> str:
        return f"RoundKeyPair(public={self._public_b64!r})"

    __str__ = __repr__


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
    """The round's participants sorted by pod name, checked for duplicates and round keys."""

    participants: tuple[Participant, ...]

    @classmethod
    def of(cls, participants: Sequence[Participant]) -> Cohort:
        ordered = tuple(sorted(participants, key=lambda p: p.pod))
        names = [p.pod for p in ordered]
        if len(set(names)) != len(names):
            raise SecAggError(f"participant list names a pod twice: {names}; each pod takes part once")
        keys = [p.round_public_key for p in ordered]
        if None in keys:
            raise SecAggError("a participant has no round key; the one-shot pairwise scheme needs one per pod")
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

    def round_key(self, pod: str) -> str:
        key = self.member(pod).round_public_key
        if key is None:  # Cohort.of refuses this; kept for the type checker
            raise SecAggError(f"participant {pod!r} has no round key")
        return key

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for p in self.participants:
            for part in (p.pod, self.round_key(p.pod)):
                encoded = part.encode("utf-8")
                h.update(len(encoded).to_bytes(4, "big") + encoded)
        return h.digest()


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
    if cohort.round_key(me) != my_round_key.public_b64:
        raise SecAggError(
            f"the task lists round key {cohort.round_key(me)!r} for pod {me!r} but this pod holds "
            f"{my_round_key.public_b64!r}; re-announce the round key and resubmit the task"
        )
    digest = cohort.digest()
    streams = [
        mask_stream(
            pair_key(my_round_key.shared_secret(cohort.round_key(peer), peer=peer), task_id=task_id,
                     round_index=round_index, cohort_digest=digest, pod_a=me, pod_b=peer),
            add=peer > me,
        )
        for peer in cohort.names
        if peer != me
    ]
    apply_streams(vector, streams)
