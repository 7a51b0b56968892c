"""python-tuf's fetcher over MQTT, resuming content-addressed downloads from disk.

ngclient asks for URLs under the two base URLs below; the fetcher turns each into a repository
path (``metadata/...`` or ``targets/...``) and streams it with :class:`RepoClient`. A target
file whose name starts with its sha256 never changes, so its bytes are appended to
``<partial_dir>/<hash>.part`` as they arrive: after a dropped broker, a store restart or the
agent being killed, the next attempt sends the bytes already on disk and asks the store only
for the rest. ngclient checks length and hash of the whole file as always; a file that fails is
removed by :meth:`MqttFetcher.discard`. A kept file longer than the store's (the store answers
BAD_REQUEST for an offset past the end) is discarded and the download starts again from 0.

Each chunk is handed to the kernel at once (it survives the agent being killed); ``fsync`` runs
every ``SYNC_EVERY_BYTES`` and at the end, which costs a power cut at most that much
re-download (a torn tail fails the hash check and the file is fetched again). Syncing every
chunk halved throughput (bench/agent_transfer.py).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface  # type: ignore[attr-defined]

from edgefabric.errors import TransportError
from edgefabric.repo_client import RepoClient, RepoResponse

__all__ = ["METADATA_BASE_URL", "TARGETS_BASE_URL", "MqttFetcher"]

log = logging.getLogger(__name__)

SCHEME = "mqtt-repo://store/"
METADATA_BASE_URL = SCHEME + "metadata/"
TARGETS_BASE_URL = SCHEME + "targets/"

SYNC_EVERY_BYTES = 8 * 1024 * 1024
_READ_PIECE = 1024 * 1024

_HASHED_NAME = re.compile(r"([0-9a-f]{64})\.[^/]+")

ChunkObserver = Callable[[str, int, int], None]
"""``(path, offset, size)`` of every chunk received from the store (for progress and tests)."""


def _repository_path(url: str) -> str:
    if not url.startswith(SCHEME):
        raise DownloadHTTPError(f"{url}: not a repository URL of this fetcher", 400)
    return url.removeprefix(SCHEME)


class MqttFetcher(FetcherInterface):
    """Fetches repository files from ``edgefabric store serve`` through the broker."""

    def __init__(
        self,
        client: RepoClient,
        partial_dir: Path,
        *,
        on_chunk: ChunkObserver | None = None,
    ) -> None:
        self._client = client
        self._partial_dir = partial_dir
        self._on_chunk = on_chunk
        self.received_bytes = 0  # from the store, since this fetcher was made
        self.resumed_bytes = 0  # read back from partial files instead of fetched again
        partial_dir.mkdir(parents=True, exist_ok=True)

    def partial_path(self, url: str) -> Path | None:
        """Where a resumable download of ``url`` keeps its bytes (None: not resumable)."""
        match = _HASHED_NAME.fullmatch(_repository_path(url).rsplit("/", 1)[-1])
        return self._partial_dir / f"{match.group(1)}.part" if match else None

    def discard(self, url: str) -> None:
        """Forget the bytes kept for ``url`` (after ngclient refused them)."""
        path = self.partial_path(url)
        if path is not None:
            path.unlink(missing_ok=True)

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = _repository_path(url)
        partial = self.partial_path(url)
        have = partial.stat().st_size if partial and partial.exists() else 0
        try:
            try:
                opened = self._client.open_stream(path, have)
            except TransportError:
                if not have or not self._past_the_end(path, have):
                    raise
                log.warning(
                    "%s: the %d bytes kept in %s are more than the file holds; discarding them "
                    "and fetching it from byte 0",
                    path,
                    have,
                    partial,
                )
                opened = None
            if opened is None and have:  # the store lost it, or the partial file is bogus
                self.discard(url)
                have, opened = 0, self._client.open_stream(path, 0)
        except TransportError as exc:
            raise DownloadError(f"{path}: {exc}") from exc
        if opened is None:
            raise DownloadHTTPError(f"{path}: the repository has no such file", 404)
        _total, chunks = opened
        return self._stream(path, partial, have, chunks)

    def _past_the_end(self, path: str, offset: int) -> bool:
        """Whether the store refuses ``offset`` as a bad request (past the end of ``path``)."""
        try:
            answer = self._client.fetch(path, offset, max_length=1)
        except TransportError:
            return False
        return answer.status == RepoResponse.BAD_REQUEST

    def _stream(
        self, path: str, partial: Path | None, offset: int, chunks: Iterator[bytes]
    ) -> Iterator[bytes]:
        if partial is not None and offset:
            log.info("resuming %s at byte %d from %s", path, offset, partial)
            self.resumed_bytes += offset
            with partial.open("rb") as kept:
                while piece := kept.read(_READ_PIECE):
                    yield piece
        try:
            if partial is None:
                for chunk in chunks:
                    self._observe(path, offset, chunk)
                    offset += len(chunk)
                    yield chunk
                return
            with partial.open("ab") as keep:
                unsynced = 0
                for chunk in chunks:
                    keep.write(chunk)
                    keep.flush()
                    unsynced += len(chunk)
                    if unsynced >= SYNC_EVERY_BYTES:
                        os.fsync(keep.fileno())
                        unsynced = 0
                    self._observe(path, offset, chunk)
                    offset += len(chunk)
                    yield chunk
                os.fsync(keep.fileno())
        except TransportError as exc:
            raise DownloadError(f"{path}: {exc} (kept {offset} bytes to resume)") from exc

    def _observe(self, path: str, offset: int, chunk: bytes) -> None:
        self.received_bytes += len(chunk)
        if self._on_chunk is not None:
            self._on_chunk(path, offset, len(chunk))
