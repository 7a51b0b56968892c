"""A private mosquitto broker on loopback, for the tests, the demo and ``edgefabric up``.

Mosquitto cannot be asked for a free TCP port (``listener 0`` means a unix socket), and picking
one by binding and closing a socket races with everything else on the host. So the broker tries a
random port below the kernel's ephemeral range, reads its own log to learn whether it is
listening or the port was taken, and tries another port if need be. Its log is kept in
``workdir/mosquitto.log``.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import IO

from edgefabric.errors import TransportError

__all__ = ["PrivateBroker", "find_mosquitto"]

_PORTS = range(20000, 32768)  # below Linux's default ephemeral range (32768-60999)
_ATTEMPTS = 8
_FALLBACK_BINARY = Path("/usr/sbin/mosquitto")


def find_mosquitto() -> Path:
    """The mosquitto binary, or a TransportError saying how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    if os.access(_FALLBACK_BINARY, os.X_OK):
        return _FALLBACK_BINARY
    raise TransportError(
        "mosquitto (the MQTT broker) is not installed: install it with "
        "`sudo apt-get install -y mosquitto` or run `make venv`, which does"
    )


class _LogReader(threading.Thread):
    """Copies the broker's output to its log file and notices "running" or the end."""

    def __init__(self, stream: IO[bytes], log_path: Path) -> None:
        super().__init__(name=f"mosquitto-log-{log_path.parent.name}", daemon=True)
        self._stream = stream
        self._log_path = log_path
        self.settled = threading.Event()  # running, or the process ended
        self.running = False
        self.reloaded = threading.Event()  # "Reloading config." seen (SIGHUP)
        self.tail: deque[str] = deque(maxlen=20)

    def run(self) -> None:
        with self._stream, self._log_path.open("a", encoding="utf-8") as log:
            for raw in self._stream:
                line = raw.decode("utf-8", "replace").rstrip()
                log.write(line + "\n")
                log.flush()
                self.tail.append(line)
                if line.endswith(" Reloading config."):
                    self.reloaded.set()
                if line.endswith(" running"):
                    self.running = True
                    self.settled.set()
        self.settled.set()


class PrivateBroker:
    """A mosquitto process on 127.0.0.1 with its own config dir; for tests, the demo and
    ``edgefabric up``."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        max_packet_size: int | None = None,
        persistence: bool = True,
        extra_config: str = "",
        config_file: Path | None = None,
    ) -> None:
        """``config_file``: a mosquitto.conf with exactly one ``listener`` line (such as
        ``edgefabric fleet broker-config`` writes) to run instead of the open, anonymous
        listener; that line is rewritten to 127.0.0.1 and the broker's port, logging added."""
        self.workdir = Path(workdir)
        self._base_config = _one_listener(config_file) if config_file is not None else None
        self._requested_port = port
        self._port: int | None = None
        self._max_packet_size = max_packet_size
        self._persistence = persistence
        self._extra_config = extra_config
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: _LogReader | None = None

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (fixed by the first successful start)."""
        if self._port is None:
            raise RuntimeError("the broker has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``, or ``mqtts://`` when the configuration holds a TLS
        certificate."""
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def tls(self) -> bool:
        """Whether the listener speaks TLS (a ``certfile`` in the given configuration)."""
        base = self._base_config
        return base is not None and any(line.split()[:1] == ["certfile"] for line in base[1])

    @property
    def log_path(self) -> Path:
        """Everything the broker printed, across restarts."""
        return self.workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until it listens; on the port of an earlier start, if
        any. Raises TransportError if it cannot."""
        if self.running:
            raise RuntimeError(f"the broker is already running on port {self.port}")
        binary = find_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        fixed = self._port or self._requested_port
        candidates = [fixed] if fixed else random.sample(_PORTS, _ATTEMPTS)
        failures: list[str] = []
        for port in candidates:
            outcome = self._try_start(binary, port, timeout_s)
            if outcome is None:
                self._port = port
                return
            failures.append(f"port {port}: {outcome}")
        raise TransportError(
            f"mosquitto did not start ({'; '.join(failures)}); see {self.log_path}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker with SIGTERM (it saves its persistence file) and wait for it."""
        self._end(signal.SIGTERM, timeout_s)

    def reload(self, timeout_s: float = 10.0) -> None:
        """Re-read the configuration, ACL, certificates and CRL (SIGHUP) without dropping
        clients; returns once the broker has begun reloading (it accepts no connection before
        it is done)."""
        process, reader = self._process, self._reader
        if process is None or reader is None or process.poll() is not None:
            raise RuntimeError("the broker is not running")
        reader.reloaded.clear()
        process.send_signal(signal.SIGHUP)
        if not reader.reloaded.wait(timeout_s):
            raise TransportError(f"mosquitto did not reload within {timeout_s:g} s")

    def kill(self) -> None:
        """Kill the broker with SIGKILL: no goodbye to clients, nothing saved."""
        self._end(signal.SIGKILL, 10.0)

    def restart(self, timeout_s: float = 10.0) -> None:
        """Stop the broker if it runs, then start it again on the same port."""
        self.stop(timeout_s)
        self.start(timeout_s)

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _try_start(self, binary: Path, port: int, timeout_s: float) -> str | None:
        """Start on ``port``; None when listening, else why not (the process has ended)."""
        config = self.workdir / "mosquitto.conf"
        config.write_text(self._config(port), encoding="utf-8")
        process = subprocess.Popen(  # noqa: S603 - our own config, a fixed binary
            [str(binary), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a ^C in the terminal does not reach the broker first
        )
        assert process.stdout is not None  # stdout=PIPE above
        reader = _LogReader(process.stdout, self.log_path)
        reader.start()
        self._process, self._reader = process, reader
        if reader.settled.wait(timeout_s) and reader.running:
            return None
        self._end(signal.SIGKILL, timeout_s)
        last = next((line for line in reversed(reader.tail) if "Error" in line), None)
        return last or (
            f"not listening within {timeout_s:g} s" if process.returncode is None else "exited"
        )

    def _end(self, signum: signal.Signals, timeout_s: float) -> None:
        process, reader = self._process, self._reader
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if reader is not None:
            reader.join(timeout_s)
        self._process = self._reader = None

    def _config(self, port: int) -> str:
        if self._base_config is None:
            lines = [f"listener {port} 127.0.0.1", "allow_anonymous true"]
        else:
            before, after = self._base_config
            lines = [*before, f"listener {port} 127.0.0.1", *after]
        lines += [
            "log_dest stderr",  # unbuffered, unlike stdout into a pipe
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "set_tcp_nodelay true",  # small answers must not wait for delayed ACKs
            # A fleet reconciling at once queues many QoS 1 events for the controller; the
            # default of 1000 per client drops the rest (seen with 1,000 devices).
            "max_queued_messages 100000",
            # As root, mosquitto would switch to the user `mosquitto`, who cannot write here.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        ]
        if self._persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        if self._max_packet_size is not None:
            lines.append(f"max_packet_size {self._max_packet_size}")
        if self._extra_config:
            lines.append(self._extra_config)
        return "\n".join(lines) + "\n"


def _one_listener(config_file: Path) -> tuple[list[str], list[str]]:
    """The lines of ``config_file`` before and after its one ``listener`` line."""
    lines = Path(config_file).read_text(encoding="utf-8").splitlines()
    listeners = [i for i, line in enumerate(lines) if line.split()[:1] == ["listener"]]
    if len(listeners) != 1:
        raise ValueError(
            f"{config_file} has {len(listeners)} `listener` lines; a private broker runs a "
            "configuration with exactly one (its port is replaced by a free one)"
        )
    (at,) = listeners
    return lines[:at], lines[at + 1 :]
