"""TLS to the database: the `sslmode=require`, `sslmode=verify-full` and
`channel_binding=require` that Neon connection strings carry reach libpq and work end to end,
and a server without TLS is refused.

The TLS cluster runs the system PostgreSQL (pgserver's binaries have no TLS) with a
self-signed certificate for localhost and 127.0.0.1. Its pg_hba.conf admits TCP only over TLS
with SCRAM, so every TCP connection that succeeds here is TLS, authenticated with a password.
"""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cluster import PrivateCluster, migrated_cluster, require, system_bindir
from conftest import app_client, new_user

from api.cli import migrate, print_checks
from api.settings import get_settings

TODOS = "/api/v1/todos"
ROLE, PASSWORD = "neon_owner", "correct-horse"  # a plain-SQL owner with a SCRAM password
HBA = """\
local    all  all                 trust
hostssl  all  all  127.0.0.1/32   scram-sha-256
"""
SSL_IN_USE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key; the certificate is its own CA."""
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        [
            *(shutil.which("openssl"), "req", "-x509", "-nodes", "-days", "2"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(system_bindir(), "a system PostgreSQL built with OpenSSL")
    require(shutil.which("openssl"), "openssl")
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def tls_cluster(cert_dir: Path) -> Iterator[PrivateCluster]:
    """A started cluster with TLS on, a database `todo` owned by ROLE."""
    cert, key = self_signed(cert_dir)
    conf = {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"}
    cluster = PrivateCluster(bindir=system_bindir(), conf=conf)
    try:
        cluster.file("server.crt", cert.read_text())
        cluster.file("server.key", key.read_text())
        cluster.file("pg_hba.conf", HBA)
        cluster.start()
        local = f"postgresql://postgres@/postgres?host={cluster.root}&port={cluster.port}"
        with psycopg.connect(local, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN CREATEROLE PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE todo OWNER {ROLE}")
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def plain_cluster() -> Iterator[PrivateCluster]:
    """A started, migrated cluster without TLS (pgserver's binaries), trust auth."""
    with migrated_cluster() as cluster:
        yield cluster


@pytest.fixture
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """print_checks gives up on an unreachable database after 1 s, not 30."""
    monkeypatch.setenv("DB_RECONNECT_TIMEOUT_S", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def tls_url(cluster: PrivateCluster, **params: str) -> str:
    """ROLE's URL, its password in it as in a Neon connection string."""
    return cluster.url("todo", f"{ROLE}:{PASSWORD}", **params)


def mode_params(mode: str, cert_dir: Path) -> dict[str, str]:
    return {
        "require": {"sslmode": "require"},
        "verify-full": {"sslmode": "verify-full", "sslrootcert": str(cert_dir / "server.crt")},
        "channel_binding": {"sslmode": "require", "channel_binding": "require"},
    }[mode]


@pytest.mark.parametrize("mode", ["require", "verify-full", "channel_binding"])
def test_neon_style_url_works_end_to_end(
    tls_cluster: PrivateCluster, cert_dir: Path, mode: str
) -> None:
    url = tls_url(tls_cluster, **mode_params(mode, cert_dir))
    with psycopg.connect(url) as conn:
        assert conn.execute(SSL_IN_USE).fetchone() == (True,)
    migrate(url)
    assert print_checks(url)
    with app_client(url) as client:
        user = new_user()
        created = client.post(TODOS, json={"title": f"over TLS, {mode}"}, headers=user)
        assert created.status_code == 201, created.text
        fetched = client.get(f"{TODOS}/{created.json()['id']}", headers=user)
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == created.json()


def test_verify_full_with_localhost(tls_cluster: PrivateCluster, cert_dir: Path) -> None:
    """The certificate names localhost as well as 127.0.0.1; verify-full matches either."""
    url = tls_url(tls_cluster, **mode_params("verify-full", cert_dir)).replace(
        "@127.0.0.1:", "@localhost:"
    )
    with psycopg.connect(url) as conn:
        assert conn.execute(SSL_IN_USE).fetchone() == (True,)


def test_verify_full_refuses_a_certificate_it_cannot_verify(
    tls_cluster: PrivateCluster, tmp_path: Path, quick_checks: None
) -> None:
    other_ca, _ = self_signed(tmp_path)  # not the server's certificate
    url = tls_url(tls_cluster, sslmode="verify-full", sslrootcert=str(other_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(url)
    assert not print_checks(url)


@pytest.mark.parametrize("param", ["sslmode", "channel_binding"])
def test_server_without_tls_is_refused(
    plain_cluster: PrivateCluster, param: str, quick_checks: None
) -> None:
    assert print_checks(plain_cluster.url())  # without the parameter, all is well
    url = plain_cluster.url(**{param: "require"})
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url)
    assert not print_checks(url)
