"""The benchmark, in one command (docs/performance.md explains what it measures):

    .venv/bin/python -m bench [--duration 10] [--out bench/results.md]

It starts a private PostgreSQL on 127.0.0.1 (tests/cluster.py), migrates and seeds it,
starts the service (`todo-api serve`, 1 worker) in the production configuration: bearer
tokens verified against the JWKS of tests/issuer.py, logs, metrics, and OTLP traces of one
request in ten to a receiver in this process (tests/otlp_sink.py). Three more services
differ in one thing each: a trusted header instead of tokens ("get, header"), no traces
("get, no traces"), every request traced. It measures round trips through
bench/delay_proxy.py, throughput with wrk and pgbench against the baseline
(bench/baseline.py), scale out on the same machine (`--workers 2`, and two instances behind
a PgBouncer in transaction mode), scale at 1M todos, the list query's plan and peak memory.
It prints a markdown report, writes it to --out, and stops everything it started, also on
failure. Needs wrk and pgbouncer (Debian packages).
"""

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from uuid import UUID

import httpx
import psutil
import psycopg

from api.cli import migrate
from db import todos

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' modules import each other by name
from cluster import PrivateCluster, free_port, pgbouncer_config  # noqa: E402
from issuer import ISSUER  # noqa: E402
from otlp_sink import otlp_sink  # noqa: E402

BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent
TODOS = "/api/v1/todos"

# Todo n (1..todos) belongs to user (n - 1) % users + 1; ids are a prefix and n in 12 digits.
USER_PREFIX = "10000000-0000-4000-8000-"
TODO_PREFIX = "20000000-0000-4000-8000-"
SMALL = (200, 10_000)  # users, todos: 50 todos each, the list endpoint's 50 items
LARGE = (10_000, 1_000_000)  # 100 each

CONNECTIONS = 64  # wrk, at once
PGBENCH_CLIENTS = 10  # the service's pool: DB_POOL_MAX_SIZE
SEQUENTIAL = 20  # requests per endpoint through the delay proxy, after as many warm-ups
WARMUP_S = 2
GET_ROUNDS = 3  # get and get without traces, alternately (their median runs are reported)
PGBOUNCER_POOL = 20  # its server connections: the two instances' pools together
# Traces as in production: one request in ten, and any whose caller sampled it
# (docs/operations.md); with OTEL_EXPORTER_OTLP_ENDPOINT, the production configuration.
SAMPLED = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
NO_TRACES, EVERY_REQUEST = "get, no traces", "get, every request traced"
# Targets against the framework's ceiling: req/s at least this fraction of trivial's.
OF_TRIVIAL = {"get": 0.5, "list": 0.35, "create": 0.4}


def user_id(n: int) -> str:
    return f"{USER_PREFIX}{n:012d}"


def todo_id(n: int) -> str:
    return f"{TODO_PREFIX}{n:012d}"


def write_tokens(path: Path, users: int) -> None:
    """One bearer token per seeded user, line n for user n: Better Auth's shape (EdDSA)."""
    path.write_text(
        "".join(ISSUER.token(user_id(n), ttl_s=3600) + "\n" for n in range(1, users + 1))
    )


def verify_every_token(port: int, tokens: Path) -> None:
    """One request per user first, as in steady state: a client reuses its token for its
    whole lifetime, so the service verifies it once and then remembers it."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client, ThreadPoolExecutor(8) as pool:
        for response in pool.map(
            lambda token: client.get(
                TODOS, params={"limit": 1}, headers={"Authorization": f"Bearer {token}"}
            ),
            tokens.read_text().split(),
        ):
            response.raise_for_status()


def bearer(n: int) -> dict[str, str]:
    return ISSUER.headers(user_id(n), ttl_s=3600)


def seed(url: str, users: int, todos: int) -> None:
    """Replace all data; as a superuser, which RLS does not restrain."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE users CASCADE")
        conn.execute(
            "INSERT INTO users (id) SELECT (%s || lpad(u::text, 12, '0'))::uuid"
            " FROM generate_series(1, %s) u",
            (USER_PREFIX, users),
        )
        conn.execute(
            """
            INSERT INTO todos
                (id, user_id, title, description, is_completed, created_at, updated_at)
            SELECT (%(todo)s || lpad(n::text, 12, '0'))::uuid,
                   (%(user)s || lpad(((n - 1) %% %(users)s + 1)::text, 12, '0'))::uuid,
                   'Todo number ' || n,
                   CASE WHEN n %% 3 > 0 THEN 'A description of todo ' || n END,
                   n %% 2 = 0,
                   at, at
            FROM generate_series(1, %(todos)s) n,
                 LATERAL (SELECT now() - n * interval '1 second' AS at) t
            """,
            {"todo": TODO_PREFIX, "user": USER_PREFIX, "users": users, "todos": todos},
        )
        conn.execute("VACUUM ANALYZE users, todos")


@dataclass
class Shares:
    """Fractions of the machine's CPU (all cores) used during a run."""

    workers: list[float]  # by each process that serves requests
    others: dict[str, float]  # by PostgreSQL, PgBouncer, wrk: those measured


@dataclass
class Load:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    cpu_ms: float | None = None  # the server's CPU time per request, all its processes
    shares: Shares | None = None


def wrk(
    port: int,
    endpoint: str,
    data: tuple[int, int],
    duration: int,
    tokens: Path | None,
    connections: int = CONNECTIONS,
) -> Load:
    """`tokens`: a file of bearer tokens, one per user; without it, X-User-ID headers."""
    users, todos = data
    env = {
        **os.environ,
        "BENCH_TOKENS": str(tokens or ""),
        "BENCH_ENDPOINT": endpoint,
        "BENCH_USERS": str(users),
        "BENCH_TODOS": str(todos),
        "BENCH_USER_PREFIX": USER_PREFIX,
        "BENCH_TODO_PREFIX": TODO_PREFIX,
    }
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s"]
    command += ["-s", str(BENCH / "wrk.lua"), f"http://127.0.0.1:{port}"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    stats = json.loads(out.strip().splitlines()[-1])
    return Load(
        requests=stats["requests"],
        rps=stats["requests"] / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        errors=stats["errors"],
    )


def pgbench(
    cluster: PrivateCluster, url: str, script: str, data: tuple[int, int], duration: int
) -> Load:
    """The endpoint's transaction straight to PostgreSQL: the database's ceiling."""
    users, todos = data
    with tempfile.TemporaryDirectory() as logs:
        command = [str(cluster.bindir / "pgbench"), "-n", "-M", "prepared"]
        command += ["-c", str(PGBENCH_CLIENTS), "-j", "2", "-T", str(duration)]
        command += ["-f", str(BENCH / "pgbench" / f"{script}.sql")]
        for name, value in [("users", users), ("todos", todos)]:
            command += ["-D", f"{name}={value}"]
        command += ["-D", f"user_prefix={USER_PREFIX}", "-D", f"todo_prefix={TODO_PREFIX}"]
        command += ["-l", "--log-prefix", f"{logs}/tx", url]
        subprocess.run(command, capture_output=True, text=True, check=True)
        # One line per transaction: client, number, latency in µs, script, epoch s, µs.
        lines = [line.split() for log in Path(logs).iterdir() for line in log.open()]
    started = min(int(fields[4]) + int(fields[5]) / 1e6 for fields in lines)
    ended = max(int(fields[4]) + int(fields[5]) / 1e6 for fields in lines)
    latencies = sorted(int(fields[2]) / 1000 for fields in lines)
    return Load(
        requests=len(lines),
        rps=len(lines) / (ended - started),
        p50_ms=latencies[len(latencies) // 2],
        p99_ms=latencies[int(len(latencies) * 0.99)],
    )


def timed(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.request(method, path, **kwargs)
    assert response.is_success, (method, path, response.status_code, response.text)
    return time.perf_counter() - started, response


def median_ms(times: list[float]) -> float:
    """The median after the first SEQUENTIAL, the warm-ups."""
    return statistics.median(times[SEQUENTIAL:]) * 1000


def round_trip_latencies(service: int, baseline: int) -> dict[str, float]:
    """Median latency in ms of each endpoint, sequentially, on servers behind the proxy."""
    n = 2 * SEQUENTIAL
    owner = bearer(1)  # owns todo 1 and 49 others
    writer = bearer(2)  # creates todos, then deletes them
    one, page = f"{TODOS}/{todo_id(1)}", f"{TODOS}?limit=50"
    baseline_owner = {"X-User-ID": user_id(1)}  # the baseline trusts the header
    medians = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{service}") as client:
        body = {"title": "Through the delay"}
        created = [timed(client, "POST", TODOS, json=body, headers=writer) for _ in range(n)]
        medians["create"] = median_ms([t for t, _ in created])
        medians["list"] = median_ms(
            [timed(client, "GET", page, headers=owner)[0] for _ in range(n)]
        )
        medians["get"] = median_ms([timed(client, "GET", one, headers=owner)[0] for _ in range(n)])
        patch = {"json": {"is_completed": True}, "headers": owner}
        medians["patch"] = median_ms([timed(client, "PATCH", one, **patch)[0] for _ in range(n)])
        deletes = [f"{TODOS}/{response.json()['id']}" for _, response in created]
        medians["delete"] = median_ms(
            [timed(client, "DELETE", path, headers=writer)[0] for path in deletes]
        )
    with httpx.Client(base_url=f"http://127.0.0.1:{baseline}") as client:
        for name, path in [("get", one), ("list", page)]:
            times = [timed(client, "GET", path, headers=baseline_owner)[0] for _ in range(n)]
            medians[f"baseline {name}"] = median_ms(times)
    return medians


def list_plan(url: str) -> list[str]:
    """EXPLAIN ANALYZE of the service's list query, as todo_app for one user: RLS active."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "SELECT set_config('role', 'todo_app', true), set_config('app.user_id', %s, true)",
            (user_id(1),),
        )
        _, query, params = todos.list_statement(UUID(user_id(1)), todos.Page(limit=50))
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query}", params)
        return [line for (line,) in rows]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of a process and all its descendants, all threads,
    those that have exited too (a process that waits for its child gains the child's time)."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):  # a child that exited meanwhile
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def exited_children_cpu_seconds() -> float:
    """This process's children that have exited: during a run, the wrk processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def postgres_pid(cluster: PrivateCluster) -> int:
    """The postmaster: every backend, the service's connections included, is its child."""
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    tokens: Path | None = None  # bearer tokens to send, one per user; else X-User-ID

    def cpu_seconds(self) -> float:
        """User and system CPU time so far, all threads and worker processes."""
        return cpu_seconds(self.process.pid)

    def workers(self) -> list[int]:
        """The processes that serve requests: uvicorn's worker processes (children of the
        one started), or with one worker the one started."""
        children = psutil.Process(self.process.pid).children()
        spawned = [child.pid for child in children if "spawn_main" in " ".join(child.cmdline())]
        return spawned or [self.process.pid]

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        [kib] = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
        return int(kib) / 1024


class Processes(ExitStack):
    """Starts servers and stops each of them, by its own pid, when the block ends."""

    def __init__(self, logs: Path):
        super().__init__()
        self.logs = logs

    def start(
        self, name: str, command: list[str], port: int, *, as_user: str | None = None, **env: str
    ) -> subprocess.Popen:
        """Runs `command` (as `as_user`, if given), its output to <logs>/<name>.log, and waits
        until it listens on `port`."""
        # This checkout's code, whichever checkout the venv's editable install points to.
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, **env}
        with open(self.logs / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=as_user,
                group=as_user,
            )
        self.callback(stop, process)
        self.wait(name, process, lambda: listens(port))  # each server listens once it is ready
        return process

    def wait(self, name: str, process: subprocess.Popen, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        while not ready():
            if process.poll() is not None:
                sys.exit(f"bench: {name} exited; see {self.logs / name}.log")
            if time.monotonic() > deadline:
                sys.exit(f"bench: {name} did not start; see {self.logs / name}.log")
            time.sleep(0.1)

    def service(
        self, name: str, url: str, tokens: Path | None, *, workers: int = 1, **env: str
    ) -> Server:
        """Verifying bearer tokens when given `tokens`, else behind a trusted X-User-ID."""
        port = free_port()
        command = [str(BIN / "todo-api"), "serve", "--port", str(port), "--workers", str(workers)]
        identity = ISSUER.env() if tokens else {"AUTH_TRUSTED_HEADER": "X-User-ID"}
        env = {"NEON_DATABASE_URL": url, **identity, **env}
        process = self.start(name, command, port, **env)
        if workers > 1:  # uvicorn listens before its worker processes are ready: wait for each
            log = self.logs / f"{name}.log"
            started = "Application startup complete"
            self.wait(name, process, lambda: log.read_text().count(started) >= workers)
        return Server(process, port, tokens)

    def baseline(self, name: str, url: str) -> Server:
        port = free_port()
        command = [str(BIN / "uvicorn"), "bench.baseline:create_app", "--factory"]
        command += ["--port", str(port)]
        return Server(self.start(name, command, port, NEON_DATABASE_URL=url), port)

    def pgbouncer(self, name: str, cluster: PrivateCluster, database: str) -> tuple[int, str]:
        """PgBouncer in front of `cluster` (tests/cluster.py's config, as tests/test_pgbouncer.py
        runs it), as the cluster's OS user. Its pid and the URL of `database` through it."""
        program = shutil.which("pgbouncer")
        if not program:
            sys.exit("bench: needs pgbouncer (apt-get install -y pgbouncer)")
        port = free_port()
        config = pgbouncer_config(cluster, program, port, PGBOUNCER_POOL)
        process = self.start(name, [program, str(config)], port, as_user=cluster.user)
        return process.pid, f"postgresql://postgres@127.0.0.1:{port}/{database}"


def listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(
    servers: Server | list[Server],
    endpoint: str,
    data: tuple[int, int],
    duration: int,
    others: dict[str, int] | None = None,
) -> Load:
    """wrk against each of `servers` at once, CONNECTIONS in all, after a warm-up; with
    several, p50 and p99 are the highest of their wrk processes'. Also the servers' CPU time
    per request, and each worker process's share of the machine's CPU, each of `others`'
    (name: pid, its children included) and wrk's."""
    servers = servers if isinstance(servers, list) else [servers]
    connections = CONNECTIONS // len(servers)

    def run(seconds: int) -> list[Load]:
        with ThreadPoolExecutor(len(servers)) as pool:
            args = (endpoint, data, seconds)
            runs = [pool.submit(wrk, s.port, *args, s.tokens, connections) for s in servers]
            return [run.result() for run in runs]

    run(WARMUP_S)
    # CPU seconds so far: of the servers in all, of each worker process, of the others, of wrk.
    workers = [pid for server in servers for pid in server.workers()]
    counters: dict[str, Callable[[], float]] = {
        "servers": lambda: sum(server.cpu_seconds() for server in servers),
        **{f"worker {n}": partial(cpu_seconds, pid) for n, pid in enumerate(workers)},
        **{name: partial(cpu_seconds, pid) for name, pid in (others or {}).items()},
        "wrk": exited_children_cpu_seconds,
    }
    before = {name: count() for name, count in counters.items()}
    started = time.monotonic()
    loads = run(duration)
    machine_s = (time.monotonic() - started) * (os.cpu_count() or 1)
    used = {name: count() - before[name] for name, count in counters.items()}
    requests = sum(load.requests for load in loads)
    load = Load(
        requests=requests,
        rps=sum(load.rps for load in loads),
        p50_ms=max(load.p50_ms for load in loads),
        p99_ms=max(load.p99_ms for load in loads),
        errors=sum(load.errors for load in loads),
        cpu_ms=used.pop("servers") * 1000 / requests,
        shares=Shares(
            workers=[used.pop(f"worker {n}") / machine_s for n in range(len(workers))],
            others={name: seconds / machine_s for name, seconds in used.items()},
        ),
    )
    ports = ", ".join(f":{server.port}" for server in servers)
    print(f"bench: {endpoint} on {ports}: {load}", file=sys.stderr)
    return load


def render(args, large, latency, load, scale_out, plan, memory, spans) -> str:
    rtt = 2 * args.delay_ms
    service, baseline = load["get"], load["baseline get"]
    lines = [
        "# Benchmark results",
        "",
        f"`python -m bench --duration {args.duration}` on {os.cpu_count()} cores,"
        f" {time.strftime('%Y-%m-%d %H:%M')}. Service and baseline: 1 uvicorn worker each,"
        f" a pool of 10 connections; wrk: {CONNECTIONS} connections, 1 thread;"
        f" pgbench: {PGBENCH_CLIENTS} clients, prepared statements, one pipeline per transaction."
        " Server, database and load generator share the machine.",
        "",
        f"## Round trips: sequential requests through a {args.delay_ms:g} ms-each-way link",
        "",
        f"Median of {SEQUENTIAL} requests after {SEQUENTIAL} warm-ups; round trips ="
        f" median / RTT ({rtt:g} ms).",
        "",
        "| endpoint | service median (ms) | round trips | baseline median (ms) | round trips |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for endpoint in ("create", "list", "get", "patch", "delete"):
        row = f"| {endpoint} | {latency[endpoint]:.1f} | {latency[endpoint] / rtt:.2f} |"
        base = latency.get(f"baseline {endpoint}")
        row += f" {base:.1f} | {base / rtt:.2f} |" if base else " | |"
        lines.append(row)
    lines += [
        "",
        f"## Throughput and latency: {SMALL[1]:,} todos, {SMALL[0]} users",
        "",
        "The service runs in the production configuration: it verifies a bearer token"
        " (EdDSA, JWKS) on every request, writes a JSON access line, counts it in /metrics and"
        " exports traces over OTLP to a receiver on this machine, sampling one request in ten"
        " as docs/operations.md recommends (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`,"
        " `OTEL_TRACES_SAMPLER_ARG=0.1`). Three more services differ in one thing each:"
        " `get, header` trusts an X-User-ID header instead of tokens, `get, no traces` has no"
        " OTLP endpoint (logs and metrics as ever; measured alternately with `get`,"
        f" {GET_ROUNDS} runs each, and each row is the median run), and `get, every request"
        f" traced` samples all requests ({spans[EVERY_REQUEST]:,} spans received from it, and"
        f" {spans['production']:,} from the services in the production configuration over"
        " the whole run). `trivial` is `GET /healthz` on the service: the framework's"
        " ceiling. `pgbench` runs the endpoint's transaction straight to PostgreSQL: the"
        " database's ceiling. Server CPU per request is the server's CPU time (all its"
        " processes) over the run divided by its requests: steadier than req/s when other work"
        " shares the machine.",
        "",
        "| run | req/s | p50 (ms) | p99 (ms) | errors | server CPU per request (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in load.items():
        if not name.startswith("large"):
            cpu = f"{result.cpu_ms:.2f}" if result.cpu_ms is not None else ""
            lines.append(
                f"| {name} | {result.rps:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f}"
                f" | {result.errors} | {cpu} |"
            )
    lines += [
        "",
        "Ours as a fraction of each ceiling and as a ratio to the baseline, by req/s and,"
        " in the last two columns, by server CPU per request:",
        "",
        "| endpoint | of trivial | of pgbench | vs baseline | of trivial, CPU | vs baseline, CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    trivial = load["trivial"]
    for endpoint in ("get", "list", "create", "patch"):
        ours, base = load[endpoint], load.get(f"baseline {endpoint}")
        by_rps = f"{ours.rps / base.rps:.2f}x" if base else ""
        by_cpu = f"{base.cpu_ms / ours.cpu_ms:.2f}x" if base else ""
        lines.append(
            f"| {endpoint} | {ours.rps / trivial.rps:.0%}"
            f" | {ours.rps / load[f'pgbench {endpoint}'].rps:.0%} | {by_rps}"
            f" | {trivial.cpu_ms / ours.cpu_ms:.0%} | {by_cpu} |"
        )
    single, cores = load["get"], os.cpu_count()
    lines += [
        "",
        f"## Scale out: get, {SMALL[1]:,} todos, {SMALL[0]} users",
        "",
        "The service in the production configuration run three ways on this machine, each"
        f" loaded by {CONNECTIONS} wrk connections in all for as long as the runs above:"
        " `1 worker` is the `get` run above; `--workers 2` is one `todo-api serve --workers 2`"
        " (two worker processes on one port); `2 instances` are two `todo-api serve"
        " --workers 1`, each on its own port, connected to PostgreSQL through one PgBouncer"
        f" (`pool_mode = transaction`, {PGBOUNCER_POOL} server connections), loaded at once"
        f" by two wrk processes of {CONNECTIONS // 2} connections each (p50 and p99: the"
        " higher of the two). Behind PgBouncer the service detects the pooler and prepares"
        " no statements (`DB_PREPARED_STATEMENTS=auto`). CPU columns: user and system time"
        f" over the run as a fraction of the whole machine's (wall time times {cores} cores):"
        " the service's worker processes together and each, PgBouncer, PostgreSQL (all its"
        " processes), wrk, and all of these; the rest is idle or other work.",
        "",
        "| run | req/s | vs 1 worker | p50 (ms) | p99 (ms) | errors | service | each worker"
        " | PgBouncer | PostgreSQL | wrk | all |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in [("1 worker", single), *scale_out.items()]:
        shares = result.shares
        bouncer = shares.others.get("PgBouncer")
        lines.append(
            f"| {name} | {result.rps:,.0f} | {result.rps / single.rps:.2f}x"
            f" | {result.p50_ms:.2f} | {result.p99_ms:.2f} | {result.errors}"
            f" | {sum(shares.workers):.0%}"
            f" | {' + '.join(f'{share:.0%}' for share in shares.workers)}"
            f" | {f'{bouncer:.0%}' if bouncer is not None else ''}"
            f" | {shares.others['PostgreSQL']:.0%} | {shares.others['wrk']:.0%}"
            f" | {sum(shares.workers) + sum(shares.others.values()):.0%} |"
        )
    lines += [
        "",
        f"## Scale: {SMALL[1]:,} todos vs {large[1]:,} todos across {large[0]:,} users",
        "",
        "| endpoint | p50 small (ms) | p50 large (ms) | change | req/s small | req/s large |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for endpoint in ("get", "list"):
        small, big = load[endpoint], load[f"large {endpoint}"]
        lines.append(
            f"| {endpoint} | {small.p50_ms:.2f} | {big.p50_ms:.2f}"
            f" | {big.p50_ms / small.p50_ms - 1:+.0%} | {small.rps:,.0f} | {big.rps:,.0f} |"
        )
    index_scan = any("Index Scan" in line and "todos_user_created_idx" in line for line in plan)
    init_plan = any("InitPlan" in line for line in plan)
    lines += [
        "",
        f"The list query at {large[1]:,} todos, as `todo_app` with a user set (RLS active):",
        "",
        "```",
        *plan,
        "```",
        "",
        "## Memory",
        "",
        f"Peak RSS (VmHWM) after all the runs above: service worker {memory['service']:.0f} MiB,"
        f" baseline {memory['baseline']:.0f} MiB.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    by_header, untraced = load["get, header"], load[NO_TRACES]
    targets = [
        (
            "get: req/s at least 90% of get with no traces",
            f"{service.rps / untraced.rps:.0%} (by CPU: {untraced.cpu_ms / service.cpu_ms:.0%})",
            service.rps >= 0.9 * untraced.rps,
        ),
        (
            "get with bearer tokens: req/s at least 90% of get behind a trusted header",
            f"{service.rps / by_header.rps:.0%} (by CPU: {by_header.cpu_ms / service.cpu_ms:.0%})",
            service.rps >= 0.9 * by_header.rps,
        ),
        (
            "get: req/s at least 1.5x the baseline's",
            f"{service.rps / baseline.rps:.2f}x (by CPU: {baseline.cpu_ms / service.cpu_ms:.2f}x)",
            service.rps >= 1.5 * baseline.rps,
        ),
    ]
    for endpoint, fraction in OF_TRIVIAL.items():
        ours = load[endpoint]
        name = "list of 50" if endpoint == "list" else endpoint
        targets.append(
            (
                f"{name}: req/s at least {fraction:.0%} of the trivial ceiling",
                f"{ours.rps / trivial.rps:.0%} (by CPU: {trivial.cpu_ms / ours.cpu_ms:.0%})",
                ours.rps >= fraction * trivial.rps,
            )
        )
    for endpoint in ("get", "list"):
        ratio = latency[f"baseline {endpoint}"] / latency[endpoint]
        targets.append(
            (
                f"{endpoint}: p50 through the link at least 3x lower than the baseline's",
                f"{ratio:.2f}x lower",
                ratio >= 3,
            )
        )
    for endpoint in ("get", "list"):
        change = load[f"large {endpoint}"].p50_ms / load[endpoint].p50_ms - 1
        targets.append(
            (f"{endpoint}: p50 at {large[1]:,} todos within 20%", f"{change:+.0%}", change <= 0.2)
        )
    targets += [
        ("list plan: index scan on todos_user_created_idx", "", index_scan),
        ("list plan: current_app_user() once per statement (InitPlan)", "", init_plan),
    ]
    lines += [f"| {name} | {shown} | {'yes' if met else 'NO'} |" for name, shown, met in targets]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk/pgbench run")
    parser.add_argument("--delay-ms", type=float, default=10, help="the proxy's delay, each way")
    parser.add_argument("--large", type=int, default=LARGE[1], help="todos in the scale run")
    parser.add_argument("--out", type=Path, default=BENCH / "results.md")
    args = parser.parse_args()
    large = (LARGE[0], args.large)
    duration = args.duration

    logs = Path(tempfile.mkdtemp(prefix="todo-bench-"))  # kept: the servers' logs
    cluster = PrivateCluster(conf={"shared_buffers": "'512MB'"})
    with Processes(logs) as processes:
        processes.callback(cluster.destroy)
        cluster.start()
        # Receives the traces of every service in the production configuration; closed
        # after they have stopped (and sent their last spans).
        sink = processes.enter_context(otlp_sink())
        production = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, **SAMPLED}
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = cluster.url("bench")
        migrate(url)
        seed(url, *SMALL)
        database = {"PostgreSQL": postgres_pid(cluster)}
        print(f"bench: seeded {SMALL[1]} todos; logs in {logs}", file=sys.stderr)

        # Round trips: a service and a baseline whose database is a fixed delay away.
        port = free_port()
        proxy = [sys.executable, str(BENCH / "delay_proxy.py"), "--listen", f"127.0.0.1:{port}"]
        proxy += ["--target", f"127.0.0.1:{cluster.port}", "--delay-ms", str(args.delay_ms)]
        processes.start("delay-proxy", proxy, port)
        distant = f"postgresql://postgres@127.0.0.1:{port}/bench"
        small_tokens, large_tokens = logs / "tokens-small", logs / "tokens-large"
        write_tokens(small_tokens, SMALL[0])
        write_tokens(large_tokens, large[0])
        with Processes(logs) as distant_servers:
            service = distant_servers.service(
                "service-distant", distant, small_tokens, **production
            )
            baseline = distant_servers.baseline("baseline-distant", distant)
            latency = round_trip_latencies(service.port, baseline.port)
        print(f"bench: sequential medians {latency}", file=sys.stderr)

        # Throughput: one worker each, on the database directly. First the services that
        # differ from production in one thing each, one at a time.
        load: dict[str, Load] = {}
        with Processes(logs) as server:
            by_header = server.service("service-header", url, None, **production)
            load["get, header"] = measure(by_header, "get", SMALL, duration)
        with otlp_sink() as every_sink, Processes(logs) as server:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": every_sink.endpoint}
            traced = server.service("service-every-request-traced", url, small_tokens, **env)
            load[EVERY_REQUEST] = measure(traced, "get", SMALL, duration)
        spans = {EVERY_REQUEST: len(every_sink.spans)}
        service = processes.service("service", url, small_tokens, **production)
        untraced = processes.service("service-no-traces", url, small_tokens)
        baseline = processes.baseline("baseline", url)
        load = {"trivial": measure(service, "trivial", SMALL, duration), **load}
        # Tracing costs less than this machine drifts from one run to the next: get with and
        # without traces alternately, GET_ROUNDS times each, and each one's median run.
        gets: dict[str, list[Load]] = {"get": [], NO_TRACES: []}
        for _ in range(GET_ROUNDS):
            gets["get"].append(measure(service, "get", SMALL, duration, database))
            gets[NO_TRACES].append(measure(untraced, "get", SMALL, duration, database))
        for name, runs in gets.items():
            load[name] = sorted(runs, key=lambda run: run.rps)[len(runs) // 2]
        load["baseline get"] = measure(baseline, "get", SMALL, duration)
        load["pgbench get"] = pgbench(cluster, url, "get", SMALL, duration)
        load["list"] = measure(service, "list", SMALL, duration, database)
        load["baseline list"] = measure(baseline, "list", SMALL, duration)
        load["pgbench list"] = pgbench(cluster, url, "list", SMALL, duration)

        # Scale out, before the writes change the data: get on two worker processes of one
        # service, then on two single-worker instances through one PgBouncer.
        scale_out: dict[str, Load] = {}
        with Processes(logs) as server:
            two = server.service("service-2-workers", url, small_tokens, workers=2, **production)
            scale_out["--workers 2"] = measure(two, "get", SMALL, duration, database)
        with Processes(logs) as servers:
            bouncer, pooled = servers.pgbouncer("pgbouncer", cluster, "bench")
            instances = [
                servers.service(f"service-instance-{n}", pooled, small_tokens, **production)
                for n in (1, 2)
            ]
            others = {"PgBouncer": bouncer, **database}
            scale_out["2 instances"] = measure(instances, "get", SMALL, duration, others)

        for endpoint in ("create", "patch"):  # last: they change the data
            load[endpoint] = measure(service, endpoint, SMALL, duration)
            load[f"pgbench {endpoint}"] = pgbench(cluster, url, endpoint, SMALL, duration)

        # Scale: the same reads with many more todos and users.
        seed(url, *large)
        print(f"bench: seeded {large[1]} todos", file=sys.stderr)
        service.tokens = large_tokens
        verify_every_token(service.port, large_tokens)
        for endpoint in ("get", "list"):
            load[f"large {endpoint}"] = measure(service, endpoint, large, duration)
        plan = list_plan(url)
        memory = {"service": service.peak_rss_mib(), "baseline": baseline.peak_rss_mib()}
    spans["production"] = len(sink.spans)

    report = render(args, large, latency, load, scale_out, plan, memory, spans)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
