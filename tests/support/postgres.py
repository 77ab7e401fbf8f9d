"""A throwaway PostgreSQL server for the test suite (Debian's binaries, loopback only).

initdb refuses to run as root, so as root the binaries run as the ``postgres``
user through ``runuser``. One server per test session; each test gets a fresh
database created from ``template0``. :meth:`PostgresServer.destroy` stops it for good
(also a frozen or half-started one) and removes its data folder; the end of the session
does that for any server a fixture did not (``tests.support.cleanup``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import cleanup


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin_dir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; "
            "install Debian's postgresql package (make test does)"
        )
    return candidates[-1]


@dataclass
class PostgresServer:
    port: int
    data_dir: Path
    bin_dir: Path
    as_postgres_user: bool

    @property
    def admin_url(self) -> str:
        return f"postgresql://test@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://test@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        if self.as_postgres_user:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir / "data"), *args),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self.pg_ctl(
            "-l",
            str(self.data_dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start",
        )

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "-w", "stop")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Stop the server for good and remove its data folder; safe to call again."""
        if self.postmaster_pid() is not None:
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                self.pg_ctl("-m", "fast", "-w", "-t", "10", "stop")
        pid = self.postmaster_pid()
        if pid is not None and self._is_postmaster(pid):  # frozen (SIGSTOP) or stuck:
            # the postmaster leads the server's process group
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(OSError):
                    os.killpg(pid, sig)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
        cleanup.remove_dir(self.data_dir)

    def _is_postmaster(self, pid: int) -> bool:
        """``pid`` (from a pid file that may be stale) is this server's postmaster."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return str(self.data_dir / "data").encode() in argv

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def start_postgres() -> PostgresServer:
    bin_dir = postgres_bin_dir()
    as_postgres = os.geteuid() == 0
    data_dir = Path(tempfile.mkdtemp(prefix="ketch-pg-"))
    if as_postgres:
        shutil.chown(data_dir, "postgres", "postgres")
    server = PostgresServer(free_port(), data_dir, bin_dir, as_postgres)
    cleanup.at_session_end(server.destroy)
    try:
        _init_and_start(server)
    except BaseException:
        server.destroy()
        raise
    return server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # a child of ours after all: reap it
            return False
    return True


def _init_and_start(server: PostgresServer) -> None:
    bin_dir, data_dir = server.bin_dir, server.data_dir
    subprocess.run(
        server._cmd(
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir / "data"),
            "-U",
            "test",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    server.start()
