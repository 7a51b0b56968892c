"""An in-memory distribution point for a model store's TUF repository, for attack tests.

:class:`MemoryFetcher` serves a dict of URL to bytes through python-tuf's fetcher seam (absent
means a 404 ``DownloadHTTPError``, as the agents' MQTT fetcher reports it). The simulator keeps
the real :class:`TufRepository` on disk in a temporary directory, target bytes by sha256, and
copies both into the fetcher on :meth:`RepositorySimulator.sync`; a test then swaps in whatever
an attacker would serve.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer  # type: ignore[attr-defined]
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import FetcherInterface, Updater  # type: ignore[attr-defined]

from model_store.keys import Keyring
from model_store.tuf_repo import ExpiryPolicy, TargetSpec, TufRepository

METADATA_URL = "mem://repo/metadata/"
TARGETS_URL = "mem://repo/targets/"
_CHUNK = 4096


class MemoryFetcher(FetcherInterface):
    """Serves ``files`` (URL → bytes); records every URL asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requested: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requested.append(url)
        data = self.files.get(url)
        if data is None:
            raise DownloadHTTPError(f"{url} not found", 404)
        return iter([data[i : i + _CHUNK] for i in range(0, len(data), _CHUNK)] or [b""])


class RepositorySimulator:
    """A real store repository under ``directory`` and the fetcher that distributes it."""

    def __init__(self, directory: Path, repo: TufRepository, keyring: Keyring) -> None:
        self.directory = directory
        self.repo = repo
        self.keyring = keyring
        self.blobs: dict[str, bytes] = {}
        self.fetcher = MemoryFetcher()
        self.sync()

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        thresholds: Mapping[str, int] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        expiry: ExpiryPolicy | None = None,
    ) -> RepositorySimulator:
        keyring = Keyring.create(directory / "keys", thresholds)
        repo = TufRepository.create(
            directory / "store", keyring, clock=clock, expiry=expiry or ExpiryPolicy()
        )
        return cls(directory, repo, keyring)

    def target(self, path: str, data: bytes, **custom: Any) -> TargetSpec:
        """Keep ``data`` as a blob and describe it as a target."""
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return TargetSpec(path, len(data), digest, custom)

    def publish(self, specs: Sequence[TargetSpec]) -> int:
        version = self.repo.publish(specs)
        self.sync()
        return version

    def sync(self) -> None:
        """Serve exactly what the repository holds now."""
        for name in sorted(os.listdir(self.repo.metadata_dir)):
            data = self.repo.read_metadata(name)
            if data is not None:
                self.fetcher.files[METADATA_URL + name] = data
        for spec in self.repo.targets().values():
            url = TARGETS_URL + TufRepository.target_file_name(spec)
            self.fetcher.files[url] = self.blobs[spec.sha256]

    def metadata(self, name: str) -> bytes:
        """The bytes currently served as ``metadata/<name>``."""
        return self.fetcher.files[METADATA_URL + name]

    def serve(self, name: str, data: bytes) -> None:
        """Serve ``data`` as ``metadata/<name>`` from now on."""
        self.fetcher.files[METADATA_URL + name] = data

    def serve_target(self, spec: TargetSpec, data: bytes) -> None:
        self.fetcher.files[TARGETS_URL + TufRepository.target_file_name(spec)] = data

    def forge(self, data: bytes, signers: Sequence[Signer], change: Callable[[Any], None]) -> bytes:
        """Metadata ``data`` after ``change(signed)``, signed by ``signers`` only."""
        metadata: Metadata[Any] = Metadata.from_bytes(data)
        change(metadata.signed)
        metadata.signatures.clear()
        for signer in signers:
            metadata.sign(signer, append=True)
        return metadata.to_bytes(JSONSerializer(compact=False))


class Client:
    """An agent's TUF client state: a metadata cache and a download directory."""

    def __init__(self, simulator: RepositorySimulator, directory: Path, trust_root: bytes) -> None:
        self.simulator = simulator
        self.metadata_dir = directory / "metadata"
        self.target_dir = directory / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.target_dir.mkdir(parents=True)
        self.trust_root = trust_root

    def updater(self) -> Updater:
        """A fresh updater (each refreshes once), bootstrapped from the agent's trust root."""
        return Updater(
            str(self.metadata_dir),
            METADATA_URL,
            str(self.target_dir),
            TARGETS_URL,
            self.simulator.fetcher,
            bootstrap=self.trust_root,
        )

    def cached_version(self, role: str) -> int | None:
        """Version of the role's metadata the client has accepted, None when it has none."""
        path = self.metadata_dir / f"{role}.json"
        if not path.exists():
            return None
        metadata: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
        version: int = metadata.signed.version
        return version

    def trusted_root_versions(self) -> list[int]:
        names = os.listdir(self.metadata_dir / "root_history")
        return sorted(int(name.split(".")[0]) for name in names)

    def downloaded(self) -> list[str]:
        return sorted(os.listdir(self.target_dir))
