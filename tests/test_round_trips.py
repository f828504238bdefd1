"""Database round trips and statements per request, read off the wire.

A proxy between the app and PostgreSQL reads the messages the client sends. A round trip
is the client asking for results: a Sync, a simple Query, or a Flush after new commands
(the server sends nothing back before one of these). A statement is an Execute, whose SQL
comes from the Parse and Bind before it, or a simple Query. In steady state every endpoint
is one round trip that sets the RLS context and runs its own statements: a write is one
statement that also checks If-Match and reads or records its Idempotency-Key, and a keyed
write first forgets the key if it expired. Nothing here is timed.
"""

import socket
import socketserver
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from conftest import app_client, new_user
from fastapi.testclient import TestClient
from httpx import Response
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

TODOS = "/api/v1/todos"


@dataclass
class Wire:
    """What clients asked of PostgreSQL, over all connections."""

    round_trips: int = 0
    statements: list[str] = field(default_factory=list)  # the SQL of each, in order


class ClientMessages:
    """Reads one connection's client-to-server bytes into `wire`."""

    def __init__(self, wire: Wire):
        self.wire = wire
        self.buffer = bytearray()
        self.started = False
        self.pending = False  # commands sent whose results were not asked for yet
        self.prepared: dict[bytes, str] = {}  # statement name -> SQL
        self.portals: dict[bytes, str] = {}  # portal name -> SQL

    def feed(self, data: bytes) -> None:
        self.buffer += data
        # The startup message has no type byte: an Int32 length (itself included), the body.
        if not self.started and len(self.buffer) >= 4:
            length = int.from_bytes(self.buffer[:4])
            if len(self.buffer) >= length:
                del self.buffer[:length]
                self.started = True
        # Every later message: a type byte, an Int32 length (itself included), the body.
        while self.started and len(self.buffer) >= 5:
            length = int.from_bytes(self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            kind, body = bytes(self.buffer[:1]), bytes(self.buffer[5 : 1 + length])
            del self.buffer[: 1 + length]
            self.read(kind, body)

    def read(self, kind: bytes, body: bytes) -> None:
        names = body.split(b"\0")  # Parse: name, SQL, ...; Bind: portal, statement, ...
        if kind == b"P":
            self.prepared[names[0]] = names[1].decode()
        elif kind == b"B":
            self.portals[names[0]] = self.prepared[names[1]]
        elif kind == b"E":
            self.wire.statements.append(self.portals[names[0]])
        elif kind == b"Q":
            self.wire.statements.append(names[0].decode())
        if kind in (b"S", b"Q") or (kind == b"H" and self.pending):
            self.wire.round_trips += 1
            self.pending = False
        elif kind not in (b"H", b"X"):  # X: terminate
            self.pending = True


def connect_to(url: str) -> socket.socket:
    """A socket to the database of `url`: TCP, or a unix socket (`?host=/dir`)."""
    params = conninfo_to_dict(url)
    host, port = params.get("host") or "localhost", int(params.get("port") or 5432)
    if host.startswith("/"):
        unix = socket.socket(socket.AF_UNIX)
        unix.connect(f"{host}/.s.PGSQL.{port}")
        return unix
    return socket.create_connection((host, port))


def reading_proxy(url: str, wire: Wire) -> socketserver.ThreadingTCPServer:
    """A proxy on 127.0.0.1 to the database of `url` that reads what clients send."""

    class Connection(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            upstream = connect_to(url)
            threading.Thread(target=self.answer, args=(upstream,), daemon=True).start()
            messages = ClientMessages(wire)
            while data := self.request.recv(65536):
                messages.feed(data)  # before forwarding: counted before the server answers
                upstream.sendall(data)
            upstream.close()

        def answer(self, upstream: socket.socket) -> None:
            while data := upstream.recv(65536):
                self.request.sendall(data)
            self.request.close()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Connection)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def is_context(sql: str) -> bool:
    """The transaction's frame: BEGIN, COMMIT, and the set_config of the RLS context."""
    return sql.strip().upper() in ("BEGIN", "BEGIN READ ONLY", "COMMIT") or "set_config(" in sql


@dataclass
class Counted:
    url: str  # the database, through the proxy
    wire: Wire
    client: TestClient  # the app, on that url
    last: Response | None = None  # the last request's response
    began: list[str] = field(default_factory=list)  # the last request's BEGIN statements

    def request(self, method: str, path: str, status: int, **kwargs) -> tuple[int, list[str]]:
        """The round trips of one request, and the first word of each of its own statements."""
        round_trips, statements = self.wire.round_trips, len(self.wire.statements)
        response = self.client.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        self.last = response
        sent = self.wire.statements[statements:]
        assert any("set_config(" in sql for sql in sent), "the RLS context was not set"
        self.began = [
            sql.strip().upper() for sql in sent if sql.strip().upper().startswith("BEGIN")
        ]
        own = [sql.split()[0].upper() for sql in sent if not is_context(sql)]
        return self.wire.round_trips - round_trips, own


@pytest.fixture(scope="module")
def counted(database_url: str) -> Iterator[Counted]:
    wire = Wire()
    proxy = reading_proxy(database_url, wire)
    # No TLS or GSS negotiation: the proxy reads plain protocol messages.
    url = (
        make_url(database_url)
        .set(
            host="127.0.0.1",
            port=proxy.server_address[1],
            query={"sslmode": "disable", "gssencmode": "disable"},
        )
        .render_as_string(hide_password=False)
    )
    with app_client(url) as client:
        yield Counted(url, wire, client)
    proxy.shutdown()
    proxy.server_close()


def test_every_endpoint_is_one_round_trip(counted: Counted) -> None:
    user = new_user()
    todo_id = counted.client.post(TODOS, json={"title": "warm"}, headers=user).json()["id"]
    todo = f"{TODOS}/{todo_id}"
    someone_elses = f"{TODOS}/{uuid.uuid4()}"
    # (method, path, body, status, the endpoint's own statements)
    requests = [
        ("POST", TODOS, {"title": "Buy milk"}, 201, ["INSERT", "WITH"]),  # user row, todo
        ("GET", TODOS, None, 200, ["WITH"]),
        ("GET", f"{TODOS}?limit=1", None, 200, ["WITH"]),
        ("GET", todo, None, 200, ["SELECT"]),
        ("PATCH", todo, {"is_completed": True}, 200, ["WITH"]),
        ("PATCH", todo, {}, 200, ["WITH"]),
        ("GET", someone_elses, None, 404, ["SELECT"]),
        ("PATCH", someone_elses, {"title": "x"}, 404, ["WITH"]),
    ]
    # Past psycopg's prepare threshold (5 runs), so prepared statements are read too.
    for _ in range(7):
        for method, path, body, status, own in requests:
            sent = counted.request(method, path, status, json=body, headers=user)
            assert sent == (1, own), f"{method} {path} {body}"
            # As PostgREST does: a read runs in a transaction that cannot write.
            assert counted.began == ["BEGIN READ ONLY" if method == "GET" else "BEGIN"]
    assert counted.request("DELETE", todo, 204, headers=user) == (1, ["WITH"])
    assert counted.request("DELETE", todo, 404, headers=user) == (1, ["WITH"])


def test_safe_retries_and_conditions_are_one_round_trip(counted: Counted) -> None:
    user = new_user()
    todo = counted.client.post(TODOS, json={"title": "warm"}, headers=user).headers["Location"]
    for _ in range(7):
        etag = {"ETag": counted.client.get(todo, headers=user).headers["ETag"]}
        keyed = {**user, "Idempotency-Key": str(uuid.uuid4())}
        create = {"json": {"title": "Once"}, "headers": keyed}
        # A keyed create: forget the key if expired, the user row, the write and its record.
        assert counted.request("POST", TODOS, 201, **create) == (1, ["DELETE", "INSERT", "WITH"])
        assert "Idempotent-Replayed" not in counted.last.headers
        # Its replay: the same statements, which find the recorded answer and write nothing.
        assert counted.request("POST", TODOS, 201, **create) == (1, ["DELETE", "INSERT", "WITH"])
        assert counted.last.headers["Idempotent-Replayed"] == "true"

        if_none_match = {**user, "If-None-Match": etag["ETag"]}
        assert counted.request("GET", todo, 304, headers=if_none_match) == (1, ["SELECT"])
        if_match = {**user, "If-Match": etag["ETag"]}
        change = {"json": {"is_completed": True}, "headers": if_match}
        assert counted.request("PATCH", todo, 200, **change) == (1, ["WITH"])
        assert counted.request("PATCH", todo, 412, **change) == (1, ["WITH"])  # now stale
        assert counted.request("DELETE", todo, 412, headers=if_match) == (1, ["WITH"])

        another_key = {**user, "Idempotency-Key": str(uuid.uuid4())}
        keyed_change = {"json": {"title": "Twice?"}, "headers": another_key}
        assert counted.request("PATCH", todo, 200, **keyed_change) == (1, ["DELETE", "WITH"])


def test_the_reader_sees_every_round_trip(counted: Counted) -> None:
    """The proxy is not blind: unpipelined statements are a round trip each."""
    wire = counted.wire
    with psycopg.connect(counted.url, autocommit=True) as conn:
        before = wire.round_trips, len(wire.statements)
        for number in range(3):
            conn.execute("SELECT %s::int", (number,))
        assert wire.round_trips - before[0] == 3
        assert wire.statements[before[1] :] == ["SELECT $1::int"] * 3
        before = wire.round_trips
        with conn.pipeline():
            for number in range(3):
                conn.execute("SELECT %s::int", (number,))
        assert wire.round_trips - before == 1
