"""Private servers for outage tests, and a crash that takes a whole worker down.

The machine's own Postgres and Redis are never stopped: an outage test starts a throwaway Postgres cluster
(``initdb`` + ``pg_ctl``) or a ``redis-server`` on a spare port, and stops, restarts or cuts that one.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.processes import Process, spare_port, wait_until

START_TIMEOUT_SECONDS = 30


def _find_postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        pytest.skip(f"this machine has no PostgreSQL server binaries ({name} not found)")
    return found


class PrivatePostgres:
    """A throwaway Postgres cluster of our own (trust auth, no fsync), on a spare port.

    As root the cluster belongs to the ``postgres`` user (Postgres refuses to run as root).
    """

    def __init__(self) -> None:
        self.initdb = _find_postgres_bin("initdb")
        self.pg_ctl = _find_postgres_bin("pg_ctl")
        self.port = spare_port()
        self.base = Path(tempfile.mkdtemp(prefix="wre-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> PrivatePostgres:
        self._run(
            self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"
        )
        self.start()
        return self

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )

    def start(self) -> None:
        self._run(
            self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-w", "start"
        )

    def restart(self) -> float:
        """``pg_ctl restart -m fast``: every connection is cut, the server is back when it returns.

        :returns: the seconds the restart took.
        """
        started = time.monotonic()
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self._options(),
            "-m",
            "fast",
            "-w",
            "restart",
        )
        return time.monotonic() - started

    def outage(self, seconds: float) -> float:
        """Stop the server (``-m fast``: connections cut, transactions rolled back), stay down ``seconds``, start.

        :returns: the seconds it was unreachable.
        """
        started = time.monotonic()
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        time.sleep(seconds)  # the outage itself, not a wait for a condition
        self.start()
        return time.monotonic() - started

    def terminate_connections(self, database: str) -> int:
        """``pg_terminate_backend`` on every connection to ``database``; returns how many were cut."""
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                cut = conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :database AND pid <> pg_backend_pid()"
                    ),
                    {"database": database},
                ).scalar_one()
        finally:
            engine.dispose()
        return int(cut)

    def create_database(self, name: str) -> str:
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except subprocess.CalledProcessError:
                pass  # not running
        shutil.rmtree(self.base, ignore_errors=True)


class PrivateRedis:
    """A ``redis-server`` of our own on a spare port, with or without an append-only file.

    :param appendonly: persistence as docker-compose runs it (``appendonly yes``, ``appendfsync everysec``)
        or none at all (no AOF, no RDB snapshots).
    """

    def __init__(self, appendonly: bool) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("this machine has no redis-server")
        self.binary = binary
        self.appendonly = appendonly
        self.port = spare_port()
        self.dir = Path(tempfile.mkdtemp(prefix="wre-redis-"))
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def start(self) -> PrivateRedis:
        self.starts += 1
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / f"redis-{self.starts}.log"),
        ]  # fmt: skip
        self.popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self._answers, timeout=START_TIMEOUT_SECONDS, interval=0.02, what="redis-server to answer")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.exceptions.RedisError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (the AOF, if on, is flushed); SIGKILL: a crash."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
            self.popen.wait(START_TIMEOUT_SECONDS)
        self.popen = None

    def restart(self, sig: signal.Signals = signal.SIGTERM, down_seconds: float = 0.0) -> float:
        """Stop, stay down ``down_seconds``, start again on the same port and directory.

        :returns: the seconds it was away.
        """
        started = time.monotonic()
        self.stop(sig)
        time.sleep(down_seconds)  # the outage itself, not a wait for a condition
        self.start()
        return time.monotonic() - started

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a prefork worker's pool processes)."""
    children = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(Path(stat).parent.name))
    return children


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def kill_worker_tree(process: Process) -> list[int]:
    """SIGKILL a prefork worker *and* its pool processes, as an OOM kill or a lost container would.

    Killing only the parent would leave its pool processes running orphaned; they would finish their
    task but could not ack it. The parent is killed first, so that it never sees a child die (which it
    would answer by requeueing the child's message itself, see ``task_reject_on_worker_lost``).

    :returns: the pids killed, parent first.
    """
    pids = [process.pid, *child_pids(process.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.popen.wait(START_TIMEOUT_SECONDS)
    wait_until(lambda: all(_gone(pid) for pid in pids), timeout=10, what="the killed processes to go")
    return pids
