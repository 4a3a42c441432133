"""SecAgg+ math, pod side and modeller side: keys, shares, masks, unmasking. No I/O.

Owns the round's secrets (``RoundSecrets``), the encryption of secret shares to
neighbours, the masked input, a pod's unmask answer and the modeller's unmasking of the
survivors' sum. The protocol is Bonawitz et al. (CCS 2017) over the sparse graph of Bell
et al. (CCS 2020), see ``graph.py``; the messages that carry these values, who signs them
and in which order they travel are ``pod_agent.protocol.secure_round`` and the agent,
hub and modeller packages.

A pod u, per task and round:

1. ``RoundSecrets.generate``: X25519 pairs c_u (encrypts shares) and s_u (agrees pair
   masks), and a 32-byte self-mask seed b_u. They live in memory only and are never
   persisted (pickling refuses); ``erase`` drops them when the round ends.
2. ``encrypt_shares``: Shamir-split b_u and the private s_u into k + 1 shares each
   (threshold t, ``graph.py``); the share with index k + 1 stays with u, each neighbour
   v gets its own pair under ChaCha20-Poly1305 keyed by HKDF-SHA256(X25519(c_u, c_v)),
   with associated data binding sender, receiver, task, round and graph.
3. ``decrypt_shares``: open what the neighbours sent; a ciphertext that does not open
   is refused, naming its sender.
4. ``mask_input``: y_u = x_u + PRG(b_u) + sum over committed neighbours v of
   +-PRG(s_uv) (+ when v sorts after u), mod 2**bits.
5. ``unmask_answer``: for the survivors named, shares of their b; for the dropped, shares
   of their s; never both kinds for one pod, in this answer or against an earlier one;
   and only for the pods ``confirmed_owners`` finds enough signers for (below).

The modeller, with the sum of the survivors' y (``aggregate.sum_vectors``), rebuilds
each survivor's b and each dropped pod's s from t shares (``unmask_sum``): it removes
PRG(b_u) of every survivor and the pair masks every survivor shared with a dropped pod,
leaving the sum of the survivors' inputs. A late y_d of a dropped pod stays hidden by
its self mask, whose seed is never rebuilt.

Security rests on the checks each function lists (a pod answers for its neighbourhood
only, t of k + 1 holders, one role per pod) and on the consistency round, which the
protocol layer carries and ``SurvivorView``/``confirmed_owners`` decide. Each pod is shown
the survivor list of its own neighbourhood only (nobody holds the cohort's), so a pod
cannot check that every pod saw the same list; what must not happen is that the modeller
shows one pod w as surviving to t of w's holders and as dropped to t others (with a
corrupt holder in both sets it would then hold both of w's secrets). So each pod signs the
list it was shown, neighbours' signed lists must agree wherever two name the same pod,
and a pod answers about w only when at least t signers in w's own neighbourhood (w and
its k neighbours, k + 1 pods) signed w's status as its own list gives it. Two honest
holders shown w in two roles would need two such signer sets, each of t > (k + 1) / 2 of
those k + 1 pods: they overlap, in a pod that signed two lists, which no honest pod does.
That is the SecAgg consistency check (Bonawitz et al., section 4, where every client
signs the one survivor set) cut down to the pods that hold w's shares.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from pod_agent.errors import SecAggError
from pod_agent.secagg.graph import NeighbourGraph
from pod_agent.secagg.masks import (
    KEY_BYTES,
    MaskStream,
    agree,
    apply_streams,
    mask_stream,
    pair_key,
    public_b64,
    self_mask_key,
)
from pod_agent.secagg.shamir import SECRET_BYTES, Share, combine_shares, split_secret

_SHARE_LABEL = b"pod-agent/secagg/v1/share-box"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_PLAINTEXT_BYTES = 2 * SECRET_BYTES  # the self-mask share, then the mask-key share
CIPHERTEXT_BYTES = _NONCE_BYTES + _PLAINTEXT_BYTES + _TAG_BYTES


@dataclass(frozen=True)
class _Split:
    """The shares this pod made of its own secrets, for one graph."""

    graph_digest: bytes
    self_mask: tuple[Share, ...]
    mask_key: tuple[Share, ...]


class RoundSecrets:
    """A pod's fresh secrets for one (task, round): c and s key pairs and the self-mask seed b.

    Never persisted: pickling refuses; ``erase`` drops every private value (Python cannot
    wipe the memory they occupied) and any later use raises. repr shows public keys only.
    """

    __slots__ = ("_b", "_c", "_c_public", "_masked", "_s", "_s_public", "_split")

    def __init__(self, *, c: X25519PrivateKey, s: X25519PrivateKey, b: bytes) -> None:
        if len(b) != SECRET_BYTES:
            raise SecAggError(f"the self-mask seed is {SECRET_BYTES} bytes; got {len(b)}")
        self._c: X25519PrivateKey | None = c
        self._s: X25519PrivateKey | None = s
        self._b: bytes | None = b
        self._c_public, self._s_public = public_b64(c), public_b64(s)
        self._split: _Split | None = None
        self._masked = False

    @classmethod
    def generate(cls) -> RoundSecrets:
        return cls(c=X25519PrivateKey.generate(), s=X25519PrivateKey.generate(), b=os.urandom(SECRET_BYTES))

    @property
    def c_public_b64(self) -> str:
        return self._c_public

    @property
    def s_public_b64(self) -> str:
        return self._s_public

    def erase(self) -> None:
        self._c = self._s = self._b = None
        self._split = None

    def _live(self) -> tuple[X25519PrivateKey, X25519PrivateKey, bytes]:
        if self._c is None or self._s is None or self._b is None:
            raise SecAggError("these round secrets were erased; a new round needs RoundSecrets.generate()")
        return self._c, self._s, self._b

    def __repr__(self) -> str:
        state = "erased" if self._b is None else "live"
        return f"RoundSecrets(c_public={self._c_public!r}, s_public={self._s_public!r}, {state})"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise SecAggError("round secrets are never persisted; a restarted pod drops out of the round")


@dataclass(frozen=True)
class PeerKeys:
    """A pod's advertised public keys for this round, from an advertisement the caller verified."""

    pod: str
    c_public_b64: str
    s_public_b64: str


@dataclass(frozen=True)
class HeldShares:
    """What a pod holds of ``owner``'s secrets: one share of its self-mask seed, one of its mask key."""

    owner: str
    self_mask: Share
    mask_key: Share


@dataclass(frozen=True)
class UnmaskAnswer:
    """A pod's answer to the modeller: owner pod -> share, self masks of survivors, mask keys of the dropped."""

    self_mask_shares: dict[str, Share]
    mask_key_shares: dict[str, Share]

    def __post_init__(self) -> None:
        both = sorted(set(self.self_mask_shares) & set(self.mask_key_shares))
        if both:
            raise SecAggError(f"an unmask answer holds both shares of {both}; that would reveal their inputs")


@dataclass(frozen=True)
class UnmaskRequest:
    """The survivors and dropped pods one pod is asked about: those of its own neighbourhood."""

    survivors: frozenset[str]
    dropped: frozenset[str]


def encrypt_shares(
    secrets: RoundSecrets,
    *,
    me: str,
    graph: NeighbourGraph,
    peers: Mapping[str, PeerKeys],
    task_id: str,
    round_index: int,
) -> dict[str, bytes]:
    """One ciphertext (nonce || ChaCha20-Poly1305 box) per neighbour of ``me`` that advertised keys.

    The shares are made once per round secrets and graph; calling again (a retry)
    re-encrypts the same shares, so no neighbour ever holds shares of two polynomials.
    """
    c_private, _, _ = secrets._live()
    _check_peers(peers, me=me, graph=graph, secrets=secrets)
    split = _own_split(secrets, graph)
    boxes = {}
    for neighbour in graph.neighbours(me):
        if neighbour not in peers:
            continue
        index = graph.share_index(neighbour, me)
        plaintext = split.self_mask[index - 1].data + split.mask_key[index - 1].data
        key = _box_key(c_private, peers[neighbour], sender=me, receiver=neighbour, graph=graph, task_id=task_id,
                       round_index=round_index)
        nonce = os.urandom(_NONCE_BYTES)
        ad = _box_ad(sender=me, receiver=neighbour, graph=graph, task_id=task_id, round_index=round_index)
        boxes[neighbour] = nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)
    return boxes


def decrypt_shares(
    secrets: RoundSecrets,
    *,
    me: str,
    graph: NeighbourGraph,
    peers: Mapping[str, PeerKeys],
    ciphertexts: Mapping[str, bytes],
    task_id: str,
    round_index: int,
) -> dict[str, HeldShares]:
    """The shares each neighbour sent ``me`` (sender -> ciphertext), plus this pod's own share.

    The result includes ``me`` (the share index k + 1 of its own secrets, made by
    :func:`encrypt_shares`, which must run first), so that ``unmask_answer`` can count it.
    Refuses a sender that is not a neighbour of ``me`` or did not advertise keys, and a
    ciphertext that does not open (tampered, or sealed for another receiver, task, round
    or graph), naming the sender.
    """
    c_private, _, _ = secrets._live()
    _check_peers(peers, me=me, graph=graph, secrets=secrets)
    split = secrets._split
    if split is None or split.graph_digest != graph.digest():
        raise SecAggError("decrypt_shares needs this pod's own share: call encrypt_shares for this graph first")
    own = graph.holders - 1
    held = {me: HeldShares(owner=me, self_mask=split.self_mask[own], mask_key=split.mask_key[own])}
    around = set(graph.neighbours(me))
    for sender, blob in sorted(ciphertexts.items()):
        if sender not in around:
            raise SecAggError(
                f"shares arrived from pod {sender!r}, which is not a neighbour of {me!r} in this round's graph; "
                "the relay mixed up the shares, refuse the round"
            )
        if sender not in peers:
            raise SecAggError(f"shares arrived from pod {sender!r}, which advertised no keys this round")
        if len(blob) != CIPHERTEXT_BYTES:
            raise SecAggError(f"the shares from pod {sender!r} are {len(blob)} bytes; expected {CIPHERTEXT_BYTES}")
        key = _box_key(c_private, peers[sender], sender=sender, receiver=me, graph=graph, task_id=task_id,
                       round_index=round_index)
        ad = _box_ad(sender=sender, receiver=me, graph=graph, task_id=task_id, round_index=round_index)
        try:
            plaintext = ChaCha20Poly1305(key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], ad)
        except InvalidTag:
            raise SecAggError(
                f"the shares from pod {sender!r} do not open: altered in transit, or sealed for another receiver, "
                "task, round or cohort; refuse the round"
            ) from None
        index = graph.share_index(me, sender)
        held[sender] = HeldShares(
            owner=sender,
            self_mask=Share(index=index, data=plaintext[:SECRET_BYTES]),
            mask_key=Share(index=index, data=plaintext[SECRET_BYTES:]),
        )
    return held


def mask_input(
    vector: npt.NDArray[np.unsignedinteger],
    secrets: RoundSecrets,
    *,
    me: str,
    graph: NeighbourGraph,
    peers: Mapping[str, PeerKeys],
    committed: Collection[str],
    task_id: str,
    round_index: int,
) -> None:
    """Add the self mask and the pair masks of ``me``'s committed neighbours to ``vector``, in place.

    Checks, in order: an unsigned 32/64-bit vector, secrets not erased and not used to
    mask before (two inputs under one mask reveal their difference), ``me`` committed,
    at least t - 1 committed neighbours (with ``me``, t: fewer could not unmask), each with
    advertised keys.
    """
    if vector.dtype not in (np.dtype("<u4"), np.dtype("<u8")) or vector.ndim != 1:
        raise SecAggError(f"mask_input takes a flat uint32 or uint64 vector; got {vector.dtype} {vector.shape}")
    _, s_private, b = secrets._live()
    if secrets._masked:
        raise SecAggError("these round secrets already masked an input; each round masks one input, once")
    _check_peers(peers, me=me, graph=graph, secrets=secrets)
    committed_set = set(committed)
    if me not in committed_set:
        raise SecAggError(f"pod {me!r} is not in the committed list: its shares did not arrive, so it cannot mask")
    partners = [pod for pod in graph.neighbours(me) if pod in committed_set]
    if len(partners) + 1 < graph.threshold:
        raise SecAggError(
            f"only {len(partners)} of the {graph.degree} neighbours of {me!r} committed; the round needs at least "
            f"{graph.threshold - 1} (threshold {graph.threshold} with this pod) to be able to unmask"
        )
    missing = [pod for pod in partners if pod not in peers]
    if missing:
        raise SecAggError(f"committed neighbours {missing} advertised no keys this pod verified; refuse the round")
    digest = graph.digest()
    streams: list[MaskStream] = [
        mask_stream(self_mask_key(b, task_id=task_id, round_index=round_index, pod=me), add=True)
    ]
    for pod in partners:
        shared = agree(s_private, peers[pod].s_public_b64, pod=pod)
        key = pair_key(shared, task_id=task_id, round_index=round_index, graph_digest=digest, pod_a=me, pod_b=pod)
        streams.append(mask_stream(key, add=pod > me))
    secrets._masked = True
    apply_streams(vector, streams)


def unmask_request(
    pod: str, *, graph: NeighbourGraph, survivors: Collection[str], dropped: Collection[str]
) -> UnmaskRequest:
    """The part of the round's survivor and dropped lists that ``pod`` may be asked about."""
    around = set(graph.neighbours(pod)) | {pod}
    return UnmaskRequest(survivors=frozenset(around & set(survivors)), dropped=frozenset(around & set(dropped)))


def unmask_answer(
    held: Mapping[str, HeldShares],
    *,
    me: str,
    graph: NeighbourGraph,
    survivors: Collection[str],
    dropped: Collection[str],
    previous: Collection[UnmaskAnswer] = (),
) -> UnmaskAnswer:
    """Self-mask shares of the survivors and mask-key shares of the dropped that ``me`` holds.

    Refuses, in order, unless: the two lists are disjoint; ``me`` is not called dropped;
    every named pod is ``me`` or a neighbour of ``me`` (``unmask_request`` cuts the
    round's lists down); at least t of ``me`` and its neighbours survive (a smaller sum
    would expose too few pods' inputs); and no pod is asked about in the other role than
    in ``previous``, every answer this pod gave earlier in the round (pass them on any retry).
    Pods whose shares ``me`` does not hold are left out of the answer.
    """
    alive, gone = set(survivors), set(dropped)
    both = sorted(alive & gone)
    if both:
        raise SecAggError(f"pods {both} are named both survivor and dropped; refusing to unmask (one role per pod)")
    if me in gone:
        raise SecAggError(f"this pod {me!r} is named dropped while it answers; refusing to unmask")
    around = set(graph.neighbours(me)) | {me}
    outsiders = sorted((alive | gone) - around)
    if outsiders:
        raise SecAggError(
            f"pods {outsiders} are not neighbours of {me!r}; a pod answers only for its own neighbourhood"
        )
    surviving = len(alive & around)
    if surviving < graph.threshold:
        raise SecAggError(
            f"only {surviving} of {me!r} and its {graph.degree} neighbours survive; unmasking needs at least "
            f"{graph.threshold}, or the sum would expose too few inputs"
        )
    revealed_keys = {pod for answer in previous for pod in answer.mask_key_shares}
    revealed_seeds = {pod for answer in previous for pod in answer.self_mask_shares}
    swapped = sorted((alive & revealed_keys) | (gone & revealed_seeds))
    if swapped:
        raise SecAggError(
            f"pods {swapped} were asked about in the other role in this pod's earlier answers; "
            "revealing both shares would expose their inputs"
        )
    for owner, shares in held.items():
        if shares.owner != owner:
            raise SecAggError(f"held shares filed under {owner!r} belong to {shares.owner!r}")
    return UnmaskAnswer(
        self_mask_shares={pod: held[pod].self_mask for pod in sorted(alive) if pod in held},
        mask_key_shares={pod: held[pod].mask_key for pod in sorted(gone) if pod in held},
    )


@dataclass(frozen=True)
class SurvivorView:
    """A survivor list as one pod was shown and signed it: its neighbourhood's survivors and dropped."""

    survivors: frozenset[str]
    dropped: frozenset[str]

    @property
    def named(self) -> frozenset[str]:
        return self.survivors | self.dropped

    def conflicts(self, other: SurvivorView) -> frozenset[str]:
        """The pods both views name, in different roles."""
        return frozenset(pod for pod in self.named & other.named if (pod in self.survivors) != (pod in other.survivors))


def confirmed_owners(graph: NeighbourGraph, views: Mapping[str, SurvivorView], *, me: str) -> frozenset[str]:
    """The pods of ``me``'s view whose role at least t signers of their own neighbourhood signed.

    ``views`` maps each signer whose signature ``me`` verified (``me`` included) to its view; the
    caller has refused any view that ``conflicts`` with ``me``'s, so a signer naming a pod gives
    it ``me``'s role. Answering only about these pods is the consistency rule of the module
    docstring; ``graph`` need know only ``me``'s neighbourhood.
    """
    if me not in views:
        raise SecAggError(f"the views confirming a survivor list must include {me!r}'s own")
    out = set()
    for owner in views[me].named:
        signers = [signer for signer, view in views.items() if owner in view.named and graph.adjacent(signer, owner)]
        if len(signers) >= graph.threshold:
            out.add(owner)
    return frozenset(out)


def unmask_sum(
    total: npt.NDArray[np.unsignedinteger],
    *,
    graph: NeighbourGraph,
    peers: Mapping[str, PeerKeys],
    committed: Collection[str],
    survivors: Collection[str],
    answers: Mapping[str, UnmaskAnswer],
    task_id: str,
    round_index: int,
) -> npt.NDArray[np.unsignedinteger]:
    """The survivors' unmasked sum, from ``total`` = sum mod M of their masked vectors (a new array).

    ``answers`` maps each answering survivor to its answer. Checks, in order: survivors
    within committed within the cohort; answers only from survivors, each share of the
    kind its owner's role calls for and at the index its holder keeps; at least t shares
    per secret; a rebuilt mask key matches its owner's advertised key. All secrets are
    rebuilt before any mask is removed.
    """
    committed_set, alive = set(committed), set(survivors)
    _check_members(graph, committed_set, what="committed")
    if not alive <= committed_set:
        raise SecAggError(f"survivors {sorted(alive - committed_set)} never committed; they cannot have masked")
    gone = committed_set - alive
    self_shares, key_shares = _collect(answers, graph=graph, alive=alive, gone=gone)
    short = [
        f"{pod} {kind} {len(shares.get(pod, []))} of {graph.threshold}"
        for kind, pods, shares in (("self-mask", alive, self_shares), ("mask-key", gone, key_shares))
        for pod in sorted(pods)
        if len(shares.get(pod, [])) < graph.threshold
    ]
    if short:
        raise SecAggError(
            f"too few shares arrived to unmask ({len(answers)} answers; pod, secret, shares arrived of needed): "
            + "; ".join(short)
            + "; the masks cannot be removed, run the round again"
        )
    seeds = {pod: combine_shares(self_shares[pod], threshold=graph.threshold) for pod in sorted(alive)}
    keys = {pod: _rebuilt_key(pod, key_shares[pod], graph=graph, peers=peers) for pod in sorted(gone)}
    streams: list[MaskStream] = [
        # The survivor added PRG(b); subtract it.
        mask_stream(self_mask_key(seed, task_id=task_id, round_index=round_index, pod=pod), add=False)
        for pod, seed in seeds.items()
    ]
    digest = graph.digest()
    for pod, private in keys.items():
        for survivor in graph.neighbours(pod):
            if survivor not in alive:
                continue
            if survivor not in peers:
                raise SecAggError(f"survivor {survivor!r} has no advertised keys; it cannot have masked")
            shared = agree(private, peers[survivor].s_public_b64, pod=survivor)
            key = pair_key(shared, task_id=task_id, round_index=round_index, graph_digest=digest, pod_a=pod,
                           pod_b=survivor)
            # The survivor applied -(dropped's sign); applying the dropped pod's own sign cancels it.
            streams.append(mask_stream(key, add=survivor > pod))
    out = total.copy()
    apply_streams(out, streams)
    return out


def _collect(
    answers: Mapping[str, UnmaskAnswer], *, graph: NeighbourGraph, alive: set[str], gone: set[str]
) -> tuple[dict[str, list[Share]], dict[str, list[Share]]]:
    self_shares: dict[str, list[Share]] = {}
    key_shares: dict[str, list[Share]] = {}
    for holder, answer in sorted(answers.items()):
        if holder not in alive:
            raise SecAggError(f"an unmask answer came from {holder!r}, which is not a survivor; refuse it")
        for kind, owners, shares, into in (
            ("self-mask", alive, answer.self_mask_shares, self_shares),
            ("mask-key", gone, answer.mask_key_shares, key_shares),
        ):
            for owner, share in shares.items():
                if owner not in owners:
                    raise SecAggError(
                        f"pod {holder!r} sent a {kind} share of {owner!r}, which this round does not call for"
                    )
                expected = graph.share_index(holder, owner)
                if share.index != expected:
                    raise SecAggError(
                        f"pod {holder!r} sent share index {share.index} of {owner!r}; it holds index {expected}"
                    )
                into.setdefault(owner, []).append(share)
    return self_shares, key_shares


def _rebuilt_key(
    pod: str, shares: list[Share], *, graph: NeighbourGraph, peers: Mapping[str, PeerKeys]
) -> X25519PrivateKey:
    # Exactly t shares: the advertised public key checks the result, so the second
    # interpolation combine_shares makes to cross-check extra shares would buy nothing.
    raw = combine_shares(shares[: graph.threshold], threshold=graph.threshold)
    private = X25519PrivateKey.from_private_bytes(raw)
    if pod not in peers or public_b64(private) != peers[pod].s_public_b64:
        raise SecAggError(
            f"the mask key of {pod!r} rebuilt from its shares is not the key it advertised: a holder sent a wrong "
            "share"
        )
    return private


def _own_split(secrets: RoundSecrets, graph: NeighbourGraph) -> _Split:
    _, s_private, b = secrets._live()
    digest = graph.digest()
    if secrets._split is not None:
        if secrets._split.graph_digest != digest:
            raise SecAggError("these round secrets were already shared over another graph; generate new ones")
        return secrets._split
    raw_s = s_private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    split = _Split(
        graph_digest=digest,
        self_mask=tuple(split_secret(b, n=graph.holders, threshold=graph.threshold)),
        mask_key=tuple(split_secret(raw_s, n=graph.holders, threshold=graph.threshold)),
    )
    secrets._split = split
    return split


def _check_peers(
    peers: Mapping[str, PeerKeys], *, me: str, graph: NeighbourGraph, secrets: RoundSecrets
) -> None:
    graph.share_index(me, me)  # me is in the cohort
    for name, keys in peers.items():
        if keys.pod != name:
            raise SecAggError(f"the keys filed under pod {name!r} were advertised by {keys.pod!r}")
    mine = peers.get(me)
    if mine is not None and (mine.c_public_b64, mine.s_public_b64) != (secrets.c_public_b64, secrets.s_public_b64):
        raise SecAggError(
            f"the advertised keys of {me!r} are not this pod's round keys: another advertisement was relayed "
            "under its name; refuse the round"
        )


def _check_members(graph: NeighbourGraph, pods: set[str], *, what: str) -> None:
    outsiders = sorted(pods - set(graph.members))
    if outsiders:
        raise SecAggError(f"{what} pods {outsiders} are not in the round's cohort")


def _box_key(
    private: X25519PrivateKey,
    other: PeerKeys,
    *,
    sender: str,
    receiver: str,
    graph: NeighbourGraph,
    task_id: str,
    round_index: int,
) -> bytes:
    shared = agree(private, other.c_public_b64, pod=other.pod)
    info = _box_ad(sender=sender, receiver=receiver, graph=graph, task_id=task_id, round_index=round_index)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def _box_ad(*, sender: str, receiver: str, graph: NeighbourGraph, task_id: str, round_index: int) -> bytes:
    """Sender, receiver, task, round and graph, length-prefixed: the box opens in this context only."""
    out = bytearray(_SHARE_LABEL)
    for part in (sender.encode(), receiver.encode(), task_id.encode(), str(round_index).encode(), graph.digest()):
        out += len(part).to_bytes(4, "big") + part
    return bytes(out)
