"""A throwaway PostgreSQL cluster from the installed server binaries (Debian's ``postgresql``,
which ``make test`` installs): initdb in a temporary directory, a free port, trust auth on
loopback, stopped and removed after. As root (CI), the server runs as the ``postgres`` user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)
#: CI must run the lake tests (make test installs PostgreSQL): there, missing binaries fail
MISSING = (
    None if BIN or os.environ.get("CI") else "PostgreSQL's server binaries are not installed (make test installs them)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    def __init__(self) -> None:
        assert BIN, "PostgreSQL's server binaries are not installed (make test installs them)"
        self.root = Path(tempfile.mkdtemp(prefix="coordstate-pg-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:  # PostgreSQL refuses to run as root
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "coordstate", "--no-sync", "-E", "UTF8")
        self.start()
        self.create("coordstate")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [f"{BIN}/{tool}", *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"{tool} failed: {done.stdout}{done.stderr}")
        return done

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def create(self, database: str) -> None:
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "coordstate", "-d", "postgres",
             "-qc", f'CREATE DATABASE "{database}"'],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def catalog(self, database: str = "coordstate") -> str:
        return f"postgres:dbname={database} host=127.0.0.1 port={self.port} user=coordstate"

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
