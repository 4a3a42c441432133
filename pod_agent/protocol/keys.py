"""Ed25519 identity keys of pods and modellers: generate, store, load, sign, verify.

Owns the key file format (PKCS8 PEM, optionally passphrase-encrypted with the best
algorithm ``cryptography`` offers, mode 0600), the key id (sha256 hex of the raw
32-byte public key) and the public-key text form (base64 of the raw bytes, as
pod.toml's ``security.modellers[].public_key`` holds it). What gets signed is
decided by ``signing.py`` and ``request_auth.py``.

A key file readable or writable by group or others is refused on load. Keys never
show their bytes in ``repr``/``str``; only the key id does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pod_agent.errors import KeyFileError, ProtocolError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# A PKCS8 Ed25519 PEM is ~120 bytes (encrypted ~300); anything far bigger is not a key.
MAX_KEY_FILE_BYTES = 64 * 1024


def key_id_of(public_key: PublicKey | bytes) -> str:
    """Key id: lowercase hex sha256 of the raw 32-byte Ed25519 public key."""
    raw = public_key.raw if isinstance(public_key, PublicKey) else public_key
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ProtocolError(f"Ed25519 public key must be {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return hashlib.sha256(raw).hexdigest()


def passphrase_from_env(var: str | None) -> bytes | None:
    """The passphrase held by env var ``var`` (None when no var is named); a named but unset var is an error."""
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise KeyFileError(f"environment variable {var} (the key passphrase) is not set or empty: export it first")
    return value.encode("utf-8")


def b64decode_strict(text: str, *, what: str) -> bytes:
    """Standard base64 with padding; anything else is a ProtocolError naming ``what``."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ProtocolError(f"{what} is not valid base64: send standard padded base64") from exc


class PublicKey:
    """An Ed25519 public key; verifies signatures."""

    __slots__ = ("_key", "_key_id", "_raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._key_id = key_id_of(self._raw)

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        if len(raw) != PUBLIC_KEY_BYTES:
            raise ProtocolError(f"Ed25519 public key must be {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
        try:
            return cls(Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise ProtocolError(f"bytes are not an Ed25519 public key: {exc}") from exc

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        return cls.from_raw(b64decode_strict(text, what="public key"))

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def key_id(self) -> str:
        return self._key_id

    def to_b64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise ProtocolError unless ``signature`` is this key's Ed25519 signature of ``data``."""
        if len(signature) != SIGNATURE_BYTES:
            raise ProtocolError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
        try:
            self._key.verify(signature, data)
        except InvalidSignature as exc:
            raise ProtocolError(f"signature does not verify against key {self._key_id[:16]}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"PublicKey(id={self._key_id[:16]})"

    __str__ = __repr__


class IdentityKey:
    """An Ed25519 private key with its public half. Its bytes never appear in repr/str."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = PublicKey(key.public_key())

    @classmethod
    def generate(cls) -> IdentityKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None, *, source: str = "key") -> IdentityKey:
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError as exc:
            if passphrase is None:
                raise KeyFileError(f"{source} is passphrase-protected: give its passphrase") from exc
            raise KeyFileError(f"{source} is not encrypted: load it without a passphrase") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(
                f"{source} is not a readable PKCS8 PEM private key (or the passphrase is wrong): "
                "check the file and passphrase, or make a new key with `pod-agent keys generate`"
            ) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{source} holds a {type(key).__name__}, not an Ed25519 key: use an Ed25519 key")
        return cls(key)

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> IdentityKey:
        """Load a PEM key file; refuse it when group or others may read or write it."""
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise KeyFileError(
                f"key file {path} does not exist: create it with `pod-agent init` or "
                f"`pod-agent keys generate --out {path}`"
            ) from exc
        except OSError as exc:
            raise KeyFileError(
                f"key file {path} cannot be read ({exc.strerror}): check its path and permissions"
            ) from exc
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file: point the config at the PEM file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}, open to group or others: "
                f"run `chmod 600 {path}`"
            )
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(
                f"key file {path} is {st.st_size} bytes, too big for a key: point the config at the PEM file"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"key file {path} cannot be read ({exc.strerror}): check its permissions") from exc
        return cls.from_pem(data, passphrase, source=f"key file {path}")

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def save(self, path: Path, passphrase: bytes | None = None, *, overwrite: bool = False) -> None:
        """Write the key as PKCS8 PEM with mode 0600, atomically; refuse to replace a file unless ``overwrite``."""
        if path.exists() and not overwrite:
            raise KeyFileError(f"key file {path} already exists: move it away first (or pass --force where offered)")
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.to_pem(passphrase))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise KeyFileError(
                f"cannot write key file {path} ({exc.strerror}): check that its directory is writable"
            ) from exc

    @property
    def public(self) -> PublicKey:
        return self._public

    @property
    def key_id(self) -> str:
        return self._public.key_id

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"IdentityKey(id={self.key_id[:16]})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the private key into whatever reads the pickle (a sandbox, a log).
        raise TypeError("IdentityKey cannot be pickled: pass the key file path instead")
