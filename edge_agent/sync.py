"""Verified model downloads: python-tuf's ngclient over the MQTT fetcher.

Nothing reaches the slots unless the TUF client accepted fresh, correctly signed metadata and
the bytes match the signed length and hash. Each :meth:`ModelSync.fetch` runs a full metadata
refresh first (root rotation, rollback and freeze checks), as the TUF client workflow asks.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.exceptions import (
    DownloadError,
    DownloadLengthMismatchError,
    LengthOrHashMismatchError,
    RepositoryError,
)
from tuf.ngclient import Updater  # type: ignore[attr-defined]

from edge_agent.fetcher import METADATA_BASE_URL, TARGETS_BASE_URL, MqttFetcher
from edgefabric.errors import IntegrityError, ModelNotFoundError, TransportError
from edgefabric.targets import model_target_path

__all__ = ["DownloadedVersion", "ModelSync"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadedVersion:
    """Verified files of one model version, and the signed contract that came with them."""

    name: str
    version: int
    model: Path
    golden: Path | None
    custom: dict[str, Any]
    fetched_bytes: int = 0  # from the store during this fetch (metadata included)
    resumed_bytes: int = 0  # kept on disk from an earlier, interrupted fetch


class ModelSync:
    """Refreshes TUF metadata and downloads verified targets into ``download_dir``."""

    def __init__(
        self, metadata_dir: Path, trust_root: bytes, fetcher: MqttFetcher, download_dir: Path
    ) -> None:
        self._metadata_dir = metadata_dir
        self._trust_root = trust_root
        self._fetcher = fetcher
        self._download_dir = download_dir
        metadata_dir.mkdir(parents=True, exist_ok=True)
        download_dir.mkdir(parents=True, exist_ok=True)
        self.last_refresh: float | None = None  # time.time() of the last accepted refresh

    def metadata_age_s(self) -> float | None:
        """Seconds since metadata was last refreshed successfully (None: never)."""
        return None if self.last_refresh is None else max(time.time() - self.last_refresh, 0.0)

    def _updater(self) -> Updater:
        bootstrap = None if (self._metadata_dir / "root.json").exists() else self._trust_root
        return Updater(
            metadata_dir=str(self._metadata_dir),
            metadata_base_url=METADATA_BASE_URL,
            target_base_url=TARGETS_BASE_URL,
            target_dir=str(self._download_dir),
            fetcher=self._fetcher,
            bootstrap=bootstrap,
        )

    def fetch(self, name: str, version: int) -> DownloadedVersion:
        """Refresh metadata, then download and verify ``name:version`` (and its golden vectors).

        Raises IntegrityError when metadata or bytes fail verification (nothing is kept),
        TransportError when the store cannot be reached, ModelNotFoundError when the version
        is not a signed target.
        """
        fetched, resumed = self._fetcher.received_bytes, self._fetcher.resumed_bytes
        updater = self._updater()
        try:
            updater.refresh()
        except RepositoryError as exc:
            raise IntegrityError(f"refused the store's metadata: {exc}") from exc
        except DownloadError as exc:
            raise TransportError(f"could not refresh metadata from the store: {exc}") from exc
        self.last_refresh = time.time()
        path = model_target_path(name, version)
        info = updater.get_targetinfo(path)
        if info is None:
            raise ModelNotFoundError(f"{name}:{version} is not a signed target of the store")
        custom = dict(info.unrecognized_fields.get("custom", {}))
        model = self._download(updater, info, f"{name}-{version}.onnx")
        golden = None
        golden_ref = custom.get("golden")
        if golden_ref:
            golden_info = updater.get_targetinfo(str(golden_ref["path"]))
            if golden_info is None:
                raise IntegrityError(f"{name}:{version}: its golden vectors are not signed")
            golden = self._download(updater, golden_info, f"{name}-{version}.golden.npz")
        return DownloadedVersion(
            name,
            version,
            model,
            golden,
            custom,
            fetched_bytes=self._fetcher.received_bytes - fetched,
            resumed_bytes=self._fetcher.resumed_bytes - resumed,
        )

    def _download(self, updater: Updater, info: Any, filename: str) -> Path:
        destination = self._download_dir / filename
        url = TARGETS_BASE_URL + _hashed_path(info)
        partial = self._fetcher.partial_path(url)
        try:
            if partial is None:
                updater.download_target(info, str(destination))
            else:
                self._fetch_in_place(url, info, partial, destination)
        except (LengthOrHashMismatchError, DownloadLengthMismatchError, RepositoryError) as exc:
            self._fetcher.discard(url)
            destination.unlink(missing_ok=True)
            raise IntegrityError(f"refused {info.path}: {exc}") from exc
        except DownloadError as exc:
            raise TransportError(f"could not download {info.path}: {exc}") from exc
        return destination

    def _fetch_in_place(self, url: str, info: Any, partial: Path, destination: Path) -> None:
        """Let the fetcher fill its partial file, then check it against the signed length and
        hashes and rename it into place: no temporary copy of the whole model.

        Same checks as ngclient's ``download_target``: at most ``info.length`` bytes are
        accepted (endless data), then length and sha256 must match the signed target.
        """
        received = 0
        for chunk in self._fetcher.fetch(url):
            received += len(chunk)
            if received > info.length:
                raise DownloadLengthMismatchError(
                    f"{info.path}: more than the signed {info.length} bytes arrived"
                )
        with partial.open("rb") as downloaded:
            info.verify_length_and_hashes(downloaded)
        os.replace(partial, destination)


def _hashed_path(info: Any) -> str:
    directory, _, name = str(info.path).rpartition("/")
    hashed = f"{info.hashes['sha256']}.{name}"
    return f"{directory}/{hashed}" if directory else hashed
