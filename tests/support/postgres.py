"""A throwaway PostgreSQL server for the test suite (Debian's binaries, loopback only).

initdb refuses to run as root, so as root the binaries run as the ``postgres``
user through ``runuser``. One server per test session; each test gets a fresh
database created from ``template0``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


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
    return server
