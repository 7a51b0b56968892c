"""Signed desired state: what the controller wants a device to run, and how a device checks it.

The controller signs ``DOMAIN + DesiredState bytes`` with an ed25519 key; the device holds the
matching public key (PEM) and accepts a state only when the signature verifies, the state names
this device, and its sequence is newer than the one it applied. Shared by the store (signing)
and the agent (verifying), so both agree on the bytes signed.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from edgefabric.errors import InvalidInputError
from edgefabric.wire.v1.fleet_pb2 import DesiredState, SignedDesiredState

__all__ = ["key_id", "load_public_key", "open_desired", "seal_desired"]

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
        raise InvalidInputError("the desired-state key must be an ed25519 public key")
    return key


def seal_desired(state: DesiredState, private_key: Ed25519PrivateKey) -> bytes:
    """The signed envelope to publish on ``ef/v1/dev/{device}/desired``."""
    body = state.SerializeToString(deterministic=True)
    envelope = SignedDesiredState(
        state=body,
        key_id=key_id(private_key.public_key()),
        signature=private_key.sign(DOMAIN + body),
    )
    return envelope.SerializeToString()


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
        if not envelope.signature:
            raise InvalidInputError("desired state is not signed; refusing it")
        try:
            public_key.verify(envelope.signature, DOMAIN + envelope.state)
        except InvalidSignature:
            raise InvalidInputError(
                f"desired state signature does not verify with key {key_id(public_key)} "
                f"(signed by {envelope.key_id or 'an unnamed key'}); refusing it"
            ) from None
    if state.device_id != device_id:
        raise InvalidInputError(
            f"desired state is for device {state.device_id!r}, not {device_id!r}; ignoring it"
        )
    if state.sequence <= applied_sequence:
        raise InvalidInputError(
            f"desired state sequence {state.sequence} is not newer than the applied "
            f"{applied_sequence}; ignoring a stale or replayed state"
        )
    return state
