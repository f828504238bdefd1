"""A private PostgreSQL cluster that a test starts, stops and kills: only its own; and the
other processes tests start (`todo-api serve`, pgbouncer), stopped the same way.

By default it runs the binaries that ship with pgserver (no TLS support); pass
`bindir=system_bindir()` for the system's PostgreSQL, which is built with OpenSSL.
PostgreSQL refuses to run as root, so as root it runs as an unprivileged system user.
"""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from issuer import ISSUER

PGSERVER_USER = "pgserver"  # created by pgserver when it first runs as root
TODO_API = Path(sys.executable).parent / "todo-api"


def pgserver_bindir() -> Path:
    import pgserver

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


def system_bindir() -> Path | None:
    """The newest system PostgreSQL's bin directory (Debian layout), if one is installed."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return candidates[-1].parent if candidates else None


def require(thing: object, why: str) -> None:
    """Fail in CI, skip elsewhere: a developer machine may lack a system tool; CI installs it."""
    if thing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide {why}")
    pytest.skip(f"needs {why}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateCluster:
    """initdb into a temporary directory; listens on 127.0.0.1:<free port>, trust auth."""

    def __init__(self, bindir: Path | None = None, conf: dict[str, str] | None = None):
        self.bindir = bindir or pgserver_bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="todo-cluster-"))
        self.data = self.root / "data"
        self.user = self._os_user()
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on",
            **(conf or {}),
        }
        with open(self.data / "postgresql.conf", "a") as conf_file:
            conf_file.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def url(self, database: str = "postgres", user: str = "postgres", **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else ""
        )

    def start(self) -> None:
        log = self.root / "server.log"
        self._run("pg_ctl", "-D", self.data, "-l", log, "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """mode "immediate" is a crash: no checkpoint, recovery from WAL on the next start."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def is_running(self) -> bool:
        status = subprocess.run(
            self._command("pg_ctl", "-D", self.data, "status"), capture_output=True, **self._as()
        )
        return status.returncode == 0

    def destroy(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def file(self, name: str, content: str, mode: int = 0o600) -> Path:
        """Write a file into the data directory, readable by the server only."""
        path = self.data / name
        path.write_text(content)
        path.chmod(mode)
        if self.user:
            shutil.chown(path, self.user, self.user)
        return path

    def _os_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        for name in (PGSERVER_USER, "postgres"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        subprocess.run(["useradd", "--system", "--no-create-home", PGSERVER_USER], check=True)
        return PGSERVER_USER

    def _command(self, program: str, *args: object) -> list[str]:
        return [str(self.bindir / program), *map(str, args)]

    def _as(self) -> dict:
        return {"user": self.user, "group": self.user} if self.user else {}

    def _run(self, program: str, *args: object) -> None:
        subprocess.run(self._command(program, *args), check=True, capture_output=True, **self._as())


@pytest.fixture
def private_cluster():
    """A started private cluster, destroyed after the test."""
    cluster = PrivateCluster()
    cluster.start()
    yield cluster
    cluster.destroy()


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll `check` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


@contextmanager
def migrated_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster, its `postgres` database migrated; destroyed afterwards."""
    from api.cli import migrate

    cluster = PrivateCluster()
    try:
        cluster.start()
        migrate(cluster.url())
        yield cluster
    finally:
        cluster.destroy()


def pgbouncer_config(cluster: PrivateCluster, program: str, port: int, pool_size: int) -> Path:
    """The config file of a PgBouncer in transaction mode on `port` in front of `cluster`,
    trusting `postgres`; written, with its auth file, into the cluster's root directory, which
    belongs to the user PgBouncer runs as (it refuses to run as root)."""
    auth_file = cluster.root / "pgbouncer-users.txt"
    auth_file.write_text('"postgres" ""\n')
    version = subprocess.run([program, "--version"], capture_output=True, text=True, check=True)
    major_minor = tuple(int(part) for part in version.stdout.split()[1].split(".")[:2])
    config = f"""\
[databases]
* = host=127.0.0.1 port={cluster.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {auth_file}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
"""
    # PgBouncer 1.21+ can track prepared statements (1.18 does not know, and refuses, this
    # setting): keep it off, so this is the pooler that DB_PREPARED_STATEMENTS exists for.
    if major_minor >= (1, 21):
        config += "max_prepared_statements = 0\n"
    path = cluster.root / "pgbouncer.ini"
    path.write_text(config)
    return path


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serving(database_url: str, workdir: Path, *args: str, **env: str) -> Iterator["Server"]:
    """A ready `todo-api serve` (see Server), stopped with SIGTERM (then SIGKILL): a graceful
    stop flushes the spans not yet exported and removes the folder serve made for its
    workers' metrics."""
    server = Server(database_url, workdir, *args, **env)
    try:
        wait_until(server.ready, "the server to be ready")
        yield server
    finally:
        stop_process(server.process, timeout=30)
        server.stop()


# Every identity setting: `todo_api` runs without the ones this process may have.
AUTH_VARS = (
    "AUTH_JWKS_URL",
    "AUTH_ISSUER",
    "AUTH_AUDIENCE",
    "AUTH_ALGORITHMS",
    "AUTH_LEEWAY_S",
    "AUTH_JWT_SECRET",
    "AUTH_TRUSTED_HEADER",
    "AUTH_JWKS_WAIT_S",
)


def todo_api(
    *args: str,
    database: str,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = 120,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`todo-api <args>` as a user runs it: a subprocess with only the environment (this
    process's, without AUTH_* settings, plus NEON_DATABASE_URL=`database` and `env`)."""
    clean = {key: value for key, value in os.environ.items() if key not in AUTH_VARS}
    return subprocess.run(
        [str(TODO_API), *args],
        env={**clean, "NEON_DATABASE_URL": database, **env},
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Server:
    """`todo-api serve` as a subprocess on a free port, with `args` added to its command line
    (e.g. "--workers", "4") and `env` added to this process's environment; its output goes to
    a file in `workdir`, which is also its cwd (so no project .env is read). It trusts the
    test identity provider (ISSUER.env()) unless `env` says otherwise (an empty variable
    counts as unset)."""

    def __init__(self, database_url: str, workdir: Path, *args: str, **env: str):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = workdir / "serve.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [TODO_API, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                env={**os.environ, **ISSUER.env(), "NEON_DATABASE_URL": database_url, **env},
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def ready(self) -> bool:
        assert self.process.poll() is None, f"the server exited:\n{self.output()}"
        try:
            return httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
