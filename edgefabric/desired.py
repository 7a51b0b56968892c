"""Signed desired state: what the controller wants a device to run, and how a device checks it.

The controller signs ``DOMAIN + DesiredState bytes`` with an ed25519 key; the device holds the
matching public key (PEM) and accepts a state only when the signature verifies, the state names
this device, and its sequence is newer than the one it applied. Shared by the store (signing)
and the agent (verifying), so both agree on the bytes signed.

:func:`sign` and :func:`check_signature` are the same scheme for any other message the
controller signs (the gateways' route table, :mod:`edgefabric.signed_routes`): each kind of
message has its own domain string, so a signature made for one is never valid for another.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from edgefabric.errors import InvalidInputError
from edgefabric.wire.v1.fleet_pb2 import DesiredState, SignedDesiredState

__all__ = [
    "check_newer",
    "check_signature",
    "key_id",
    "load_public_key",
    "open_desired",
    "seal_desired",
    "sign",
]

DOMAIN = b"edgefabric-desired-v1\x00"


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (hex of its sha256, 16 characters)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An ed25519 public key from PEM; InvalidInputError when it is something else."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise InvalidInputError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInputError("the controller key must be an ed25519 public key")
    return key


def sign(body: bytes, private_key: Ed25519PrivateKey, *, domain: bytes) -> tuple[str, bytes]:
    """``(key id, signature)`` of ``domain + body``."""
    return key_id(private_key.public_key()), private_key.sign(domain + body)


def check_signature(
    what: str,
    body: bytes,
    signature: bytes,
    signer: str,
    public_key: Ed25519PublicKey,
    *,
    domain: bytes,
) -> None:
    """InvalidInputError unless ``signature`` signs ``domain + body`` with ``public_key``
    (``signer``: the key id the message claims, for the message)."""
    if not signature:
        raise InvalidInputError(f"{what} is not signed; refusing it")
    try:
        public_key.verify(signature, domain + body)
    except InvalidSignature:
        raise InvalidInputError(
            f"{what} signature does not verify with key {key_id(public_key)} "
            f"(signed by {signer or 'an unnamed key'}); refusing it"
        ) from None


def check_newer(what: str, sequence: int, applied: int) -> None:
    """InvalidInputError unless ``sequence`` is newer than the ``applied`` one."""
    if sequence <= applied:
        raise InvalidInputError(
            f"{what} sequence {sequence} is not newer than the applied "
            f"{applied}; ignoring a stale or replayed {what}"
        )


def seal_desired(state: DesiredState, private_key: Ed25519PrivateKey) -> bytes:
    """The signed envelope to publish on ``ef/v1/dev/{device}/desired``."""
    body = state.SerializeToString(deterministic=True)
    signer, signature = sign(body, private_key, domain=DOMAIN)
    return SignedDesiredState(state=body, key_id=signer, signature=signature).SerializeToString()


def open_desired(
    payload: bytes, *, device_id: str, public_key: Ed25519PublicKey | None, applied_sequence: int
) -> DesiredState:
    """The state inside ``payload`` if this device should act on it.

    InvalidInputError says why not: garbage, unsigned or wrongly signed (when a key is
    configured), another device's state, or not newer than ``applied_sequence``.
    """
    try:
        envelope = SignedDesiredState.FromString(payload)
        state = DesiredState.FromString(envelope.state)
    except DecodeError as exc:
        raise InvalidInputError(f"desired state is not a SignedDesiredState: {exc}") from None
    if public_key is not None:
        check_signature(
            "desired state",
            envelope.state,
            envelope.signature,
            envelope.key_id,
            public_key,
            domain=DOMAIN,
        )
    if state.device_id != device_id:
        raise InvalidInputError(
            f"desired state is for device {state.device_id!r}, not {device_id!r}; ignoring it"
        )
    check_newer("desired state", state.sequence, applied_sequence)
    return state
