"""Start and stop a local MongoDB-compatible server for development and tests.

The server is a separate program (by default SecantusDB's ``secantusd-py``), run as a child
process on a free loopback port; production points ``LABELSVC_MONGODB_URI`` at real MongoDB.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from service.parent_death import signal_on_parent_death

# A port picked free can be taken by another program before the server binds it: try again
# on a new one this many times in all.
PORT_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def command_words(command: str) -> list[str]:
    """The server's command (``LABELSVC_DB_SERVER``) as words, quoted as a shell quotes them;
    ValueError when it cannot be split or names no program."""
    words = shlex.split(command)
    if not words:
        raise ValueError("names no program")
    return words


class DatabaseServerError(RuntimeError):
    """The local database server could not be started."""


class _PortTaken(DatabaseServerError):
    """Another program holds the port the server was to listen on."""


@contextmanager
def _opening(what: str, path: Path) -> Iterator[None]:
    """An OSError from a file beside the storage as a one-line DatabaseServerError."""
    try:
        yield
    except OSError as exc:
        raise DatabaseServerError(f"cannot open {what} {path}: {exc.strerror}") from None


def _killed_with_the_starting_thread() -> None:
    """In the server's process, before its program runs: SIGKILL it when the thread that
    started it ends, as when the launcher is SIGKILLed, rather than let it hold the storage
    until the next start stops it (which that start still does, should this fail).

    Not SIGTERM: as a launcher's threads exit one after another, the kernel signals the
    server again each time it passes from one of them to the next, and SecantusDB can hang
    on a second SIGTERM that comes while it handles the first. A SIGKILL loses no write it
    acknowledged (its log is in the system's page cache; the next start recovers from it)."""
    with suppress(OSError):
        signal_on_parent_death(signal.SIGKILL)


class LocalDatabaseServer:
    def __init__(
        self, command: str, storage: Path, *, host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.command = command
        self.storage = storage
        self.host = host
        self.port = port or free_port(host)
        # A port this object picked may move until the first start succeeds; after that,
        # clients hold the URI, so restarts keep it.
        self._port_movable = port is None
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self._beside("log")
        self._lock: int | None = None  # a descriptor holding the storage's lock file

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    def start(self, timeout: float = 60.0) -> str:
        try:
            self.storage.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseServerError(
                f"cannot create the database storage {self.storage}: {exc.strerror}; set"
                " LABELSVC_DATA_DIR to a writable directory, or LABELSVC_MONGODB_URI to a server"
            ) from None
        self._take_lock()
        self._stop_left_over()
        attempt = 1
        try:
            while True:
                try:
                    self._launch()
                    self._wait_until_answering(timeout)
                    break
                except _PortTaken as exc:
                    if not self._port_movable or attempt == PORT_ATTEMPTS:
                        raise DatabaseServerError(str(exc)) from None
                    self._end_process()
                    self.port = free_port(self.host)
                    attempt += 1
        except BaseException:
            self.stop()  # nothing left running, and the storage free for the next try
            raise
        self._port_movable = False
        return self.uri

    def _launch(self) -> None:
        args = [
            *command_words(self.command),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage),
            "--log-level",
            "WARNING",
        ]
        with _opening("the database server's log", self._log), self._log.open("ab") as log:
            try:
                # A session of its own: a Ctrl-C or a hangup at the terminal reaches the
                # launcher alone, which stops the server once the API has stopped. Tied to
                # the thread starting it here: start it from one that lasts as long as it.
                self._process = subprocess.Popen(  # noqa: S603 (arguments are ours, no shell)
                    args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_killed_with_the_starting_thread,
                )
            except FileNotFoundError:
                raise DatabaseServerError(
                    f"database server command not found: {args[0]!r}; run `make install` or set"
                    " LABELSVC_DB_SERVER (or LABELSVC_MONGODB_URI for an existing server)"
                ) from None
            except OSError as exc:  # not executable, not a program, a directory
                raise DatabaseServerError(
                    f"cannot run the database server command {args[0]!r}: {exc.strerror};"
                    " set LABELSVC_DB_SERVER to the server's program"
                ) from None
        with _opening("the database server's pid file", self._pidfile):
            self._pidfile.write_text(str(self._process.pid))

    def _beside(self, suffix: str) -> Path:
        """The server's log, pid file and lock file sit beside its storage directory."""
        return self.storage.parent / f"{self.storage.name}.{suffix}"

    @property
    def _pidfile(self) -> Path:
        return self._beside("pid")

    def _take_lock(self) -> None:
        """Hold the storage's lock file while this process owns its server. The lock goes
        with the process, however it ends, and the server (a child that does not inherit the
        descriptor) never holds it: a held lock means another live service owns the storage."""
        if self._lock is not None:  # restarted by this process
            return
        path = self._beside("lock")
        with _opening("the database storage's lock file", path):
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise DatabaseServerError(
                f"another service is running on the database storage {self.storage}; stop it"
                " first, or give this one its own LABELSVC_DATA_DIR"
            ) from None
        self._lock = descriptor

    def _release_lock(self) -> None:
        descriptor, self._lock = self._lock, None
        if descriptor is not None:
            os.close(descriptor)

    def _stop_left_over(self) -> None:
        """A server an earlier run started on this storage and never stopped (that run was
        SIGKILLed, by the OOM killer say) still holds the storage: stop it, or no start
        succeeds. Called with the lock held, so that run is gone. The server is that run's if
        its command line names this storage."""
        try:
            pid = int(self._pidfile.read_text())
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.storage).encode() not in command_line:
            return  # gone, or the number now belongs to another process
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client: MongoClient[dict[str, object]]
        with MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    if self._port_in_use():
                        raise _PortTaken(f"port {self.port} is in use by another program")
                    raise DatabaseServerError(f"database server exited early; see {self._log}")
                try:
                    status = client.admin.command("serverStatus")
                except PyMongoError:
                    time.sleep(0.2)
                    continue
                if self._is_ours(status.get("pid")):
                    return
                # Another server already on the port: ours fails to bind it and exits.
                time.sleep(0.2)
        self.stop()
        raise DatabaseServerError(
            f"database server did not answer within {timeout:.0f}s; see {self._log}"
        )

    def _is_ours(self, pid: object) -> bool:
        """Whether the server process ``pid`` (serverStatus's, in MongoDB as in SecantusDB) is
        the one started here: that process, or one it started (the command may be a wrapper),
        all in the session of its own it was given."""
        if self._process is None or not isinstance(pid, int):
            return False
        try:
            return os.getsid(pid) == self._process.pid
        except OSError:  # no such process here
            return False

    def _port_in_use(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            return sock.connect_ex((self.host, self.port)) == 0

    def stop(self, timeout: float = 15.0) -> None:
        try:
            self._end_process(timeout)
        finally:
            self._release_lock()

    def _end_process(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop abruptly (for fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> LocalDatabaseServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
