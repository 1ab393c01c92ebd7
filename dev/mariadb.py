"""Start a throwaway MariaDB server from Debian's `mariadb-server` package (tests and benchmarks).

Like dev/postgres.py: data in a temporary folder, TCP on 127.0.0.1 and a free port only, the unix
socket inside that folder, nothing read from /etc/mysql (``--no-defaults``). The server runs as the
current user (root needs ``--user=root`` said out loud). Durability is switched off: it is a test
server. `url()` connects as user `sg` (every privilege, no password) over TCP.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

USER = "sg"


def find_mariadb_bin() -> tuple[Path, Path]:
    """(mariadb-install-db, mariadbd): SAFEGUARD_MARIADB_BIN (a folder holding both), else PATH and /usr/sbin."""
    folders = [os.environ["SAFEGUARD_MARIADB_BIN"]] if os.environ.get("SAFEGUARD_MARIADB_BIN") else []
    folders += [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/usr/bin"]

    def find(*names: str) -> Path | None:
        for folder in folders:
            for name in names:
                if folder and (Path(folder) / name).is_file():
                    return Path(folder) / name
        return None

    install, server = find("mariadb-install-db", "mysql_install_db"), find("mariadbd", "mysqld")
    if install is None or server is None:
        raise RuntimeError("MariaDB binaries not found: install mariadb-server (`make mariadb`) or set "
                           "SAFEGUARD_MARIADB_BIN to the folder holding mariadb-install-db and mariadbd")
    return install, server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MariaDBServer:
    def __init__(self) -> None:
        self.install_db, self.server = find_mariadb_bin()
        self.root = Path(tempfile.mkdtemp(prefix="sg-mariadb-"))
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.port = _free_port()
        self.os_user = getpass.getuser()
        self.proc: subprocess.Popen | None = None

    def start(self) -> MariaDBServer:
        started = time.monotonic()
        subprocess.run([str(self.install_db), "--no-defaults", f"--datadir={self.data}", f"--user={self.os_user}",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, text=True)
        log = open(self.root / "log", "wb")
        self.proc = subprocess.Popen([
            str(self.server), "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
            f"--pid-file={self.root / 'mysqld.pid'}", f"--user={self.os_user}",
            "--bind-address=127.0.0.1", f"--port={self.port}", "--skip-name-resolve", "--skip-log-bin",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci", "--default-time-zone=+00:00",
            "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--innodb-buffer-pool-size=128M",
            "--max-connections=200", "--performance-schema=0",
        ], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(keep_files=True)
                raise RuntimeError(f"MariaDB did not start; see {self.root / 'log'}")
            time.sleep(0.1)
        # root may log in through the socket only; tests use `sg` over TCP.
        self.sql_as_root(f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '';"
                         f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;")
        self.startup_seconds = round(time.monotonic() - started, 2)
        return self

    def sql_as_root(self, sql: str) -> str:
        """Run SQL through the socket as root (the `mariadb` client), e.g. to create users."""
        client = shutil.which("mariadb") or shutil.which("mysql") or "/usr/bin/mariadb"
        deadline = time.monotonic() + 30
        while True:
            res = subprocess.run([client, "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-e", sql],
                                 capture_output=True, text=True)
            if res.returncode == 0:
                return res.stdout
            if time.monotonic() > deadline:
                raise RuntimeError(f"mariadb client failed: {res.stderr.strip()}")
            time.sleep(0.2)

    def url(self, database: str = "") -> str:
        return f"mysql+pymysql://{USER}@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def create_database(self, name: str | None = None, collation: str = "utf8mb4_bin") -> str:
        """A new database; binary collation by default, as a warehouse needs (schema.upgrade says why)."""
        name = name or f"db_{uuid.uuid4().hex[:12]}"
        self.sql_as_root(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {collation}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import sqlalchemy as sa

        self.sql_as_root(f"DROP DATABASE IF EXISTS `{sa.make_url(url).database}`")

    def stop(self, keep_files: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
