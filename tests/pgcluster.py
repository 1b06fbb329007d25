"""A throwaway PostgreSQL cluster the fault tests can stop and restart.

``initdb`` and ``pg_ctl`` come from PATH or /usr/local/bin. The cluster lives in a
temporary directory on a free port with trust authentication. PostgreSQL refuses to
run as root, so when the tests run as root the server binaries run as an unprivileged
user (``postgres`` by default) through ``runuser`` and the directory belongs to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SERVER_USER = os.environ.get("PIPELINE_TEST_PG_USER", "postgres")
# Debian and Ubuntu (GitHub runners) keep the server binaries out of PATH, one folder per version.
_SEARCH_PATH = os.pathsep.join(
    [
        os.environ.get("PATH", ""),
        "/usr/local/bin",
        *sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True),
    ]
)


class ClusterUnavailable(RuntimeError):
    """The server binaries or an unprivileged user to run them are missing."""


def find_binary(name: str) -> str:
    found = shutil.which(name, path=_SEARCH_PATH)
    if found is None:
        raise ClusterUnavailable(f"{name} not found on PATH or in /usr/local/bin")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgCluster:
    """One PostgreSQL cluster: ``init`` once, then ``start``/``stop``/``restart`` freely."""

    def __init__(self) -> None:
        self.initdb = find_binary("initdb")
        self.pg_ctl = find_binary("pg_ctl")
        self.as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise ClusterUnavailable(f"running as root and no user '{SERVER_USER}'") from None
            self.as_user = SERVER_USER
        self.directory = Path(tempfile.mkdtemp(prefix="pgcluster-"))
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.log = self.directory / "server.log"
        self.port = free_port()
        if self.as_user:
            entry = pwd.getpwnam(self.as_user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self._run(["mkdir", "-p", str(self.socket_dir)])

    # The superuser name inside the cluster is always "postgres", whoever runs it.
    def url(self, database: str = "postgres", password: str | None = None) -> str:
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql+psycopg2://{auth}@127.0.0.1:{self.port}/{database}"

    def _run(self, command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/")
        if completed.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed: {completed.stderr.strip()}\n{log}")
        return completed

    def init(self) -> PgCluster:
        self._run(
            [self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
        )
        return self

    def start(self) -> None:
        # fsync off is safe for an immediate stop (the OS keeps the writes); synchronous_commit
        # must stay on, or commits still in WAL buffers vanish with the "crash".
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"])

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` drops every connection like a crash would."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    @property
    def running(self) -> bool:
        command = [self.pg_ctl, "-D", str(self.data), "status"]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        return subprocess.run(command, capture_output=True, cwd="/").returncode == 0

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def wait_ready(self, timeout: float = 30) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def destroy(self) -> None:
        if self.data.exists() and self.running:
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
