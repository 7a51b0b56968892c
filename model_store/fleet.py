"""Desired state for devices, signed by the controller key and published retained over MQTT.

The controller key is an ed25519 key kept with the store's other keys
(``keys/controller.pem``, 0600); its public half is written to ``controller.pub`` in the store's
home, which is what agents are given as ``--desired-key``. Sequence numbers are kept per device
in the registry, so they keep increasing across restarts of the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefabric import topics
from edgefabric.desired import seal_desired
from edgefabric.errors import ConflictError, SigningKeyError
from edgefabric.files import write_atomic
from edgefabric.mqtt import MqttClient
from edgefabric.wire.v1.fleet_pb2 import DesiredState, ModelRef
from model_store.home import StoreHome
from model_store.registry import Stage
from model_store.store import ModelStore

__all__ = [
    "assign",
    "controller_key",
    "controller_public_key_path",
    "desired_models",
    "set_model",
]

_SEQUENCE_KEY = "desired_sequence:"
_MODELS_KEY = "desired_models:"


def controller_public_key_path(home: StoreHome) -> Path:
    """The PEM public key devices verify desired state with."""
    return home.root / "controller.pub"


def controller_key(home: StoreHome, *, create: bool = False) -> Ed25519PrivateKey:
    """The controller's signing key (made, with its public half, when ``create``)."""
    path = home.keys / "controller.pem"
    if not path.exists():
        if not create:
            raise SigningKeyError(
                f"no controller key at {path}: run `edgefabric keys init` to create the keys"
            )
        key = Ed25519PrivateKey.generate()
        home.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(path, pem, mode=0o600)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"{path}: unreadable controller key ({exc})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: the controller key must be ed25519")
    public = loaded.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = controller_public_key_path(home)
    if not public_path.exists() or public_path.read_bytes() != public:
        write_atomic(public_path, public, mode=0o644)
    return loaded


def assign(
    store: ModelStore,
    mqtt: MqttClient,
    device_id: str,
    models: Sequence[tuple[str, int]],
    *,
    rollout_id: str = "",
) -> DesiredState:
    """Sign and publish (retained) that ``device_id`` should run ``models``; returns the state."""
    topic = topics.device_desired(device_id)  # validates the id
    key = controller_key(store.home)
    with store.home.exclusive(), store.registry.transaction():
        for name, version in models:
            found = store.registry.get(name, version)
            if found.stage is Stage.DEPRECATED:
                raise ConflictError(f"{found.ref} is deprecated; assign another version")
        sequence = int(store.registry.meta(_SEQUENCE_KEY + device_id, "0")) + 1
        state = DesiredState(
            device_id=device_id,
            sequence=sequence,
            models=[ModelRef(name=n, version=v) for n, v in models],
            issued_at_ms=int(time.time() * 1000),
            rollout_id=rollout_id,
        )
        mqtt.publish(topic, seal_desired(state, key), qos=1, retain=True, wait=True)
        store.registry.set_meta(_SEQUENCE_KEY + device_id, str(sequence))
        store.registry.set_meta(_MODELS_KEY + device_id, json.dumps(dict(models), sort_keys=True))
        refs = [f"{n}:{v}" for n, v in models]
        store.record("fleet.assign", device_id, {"sequence": sequence, "models": refs})
    return state


def desired_models(store: ModelStore, device_id: str) -> dict[str, int]:
    """What the device was last told to run (model -> version)."""
    raw = store.registry.meta(_MODELS_KEY + device_id, "{}")
    return {str(name): int(version) for name, version in json.loads(raw).items()}


def set_model(
    store: ModelStore,
    mqtt: MqttClient,
    device_id: str,
    model: str,
    version: int | None,
    *,
    rollout_id: str = "",
) -> DesiredState:
    """Change one model of a device's desired state (``None`` removes it), keeping the others."""
    models = desired_models(store, device_id)
    if version is None:
        models.pop(model, None)
    else:
        models[model] = version
    return assign(store, mqtt, device_id, sorted(models.items()), rollout_id=rollout_id)
