"""Chaos with database faults: a private PostgreSQL cluster, started by this test (initdb on a
free port; the shared server is never touched), restarted with `pg_ctl restart -m fast` and
killed with kill -9 (postmaster only, then started again: crash recovery) while a `stepwise
server` and two `stepwise worker`s run and a steady client sends events over HTTP, resending
(same ids) whatever got a 5xx or a connection error. The stepwise processes are never
restarted: they must reconnect by themselves.

At the end: every acknowledged event is stored once with exactly one run, every run is
completed, no step body ran again after its result was stored, /healthz never answered
anything but 503 while the database was down (and did answer 503 during the last kill -9,
which keeps PostgreSQL down OUTAGE_S) and 200 after, every event request was answered 200 or
503 (or not at all), and the same processes are still running. How long after PostgreSQL was
back (its log's "ready to accept connections") the first event was acknowledged, /healthz
said 200 and the first step and run completed is printed, and bounded (RESUME_S,
RESUME_RUNS_S).

--chaos-kills is the number of faults (at least 2: restarts and kill -9s alternate, a restart
first; the last kill -9 keeps PostgreSQL down OUTAGE_S); --chaos-events the events sent, spread
over the faults:

    pytest tests/chaos/test_pg_faults.py -s                                    # CI size
    pytest tests/chaos/test_pg_faults.py --chaos-events 10000 --chaos-kills 20 -s  # release

PostgreSQL's binaries: `pg_config --bindir`, else /usr/lib/postgresql/*/bin, else PATH.
Missing, the test skips, or fails when CI=true. As root the cluster runs as the `postgres`
user (else `nobody`): initdb refuses root.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import http.client
import json
import math
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "acceptance"))
from procs import free_port, start, stop, wait_until

#: The app its workers run (copied next to them as a module).
EFFECTS_APP = Path(__file__).parent / "effects_app.py"

#: How long one fault may take to be recovered from (healthz 200, an event acknowledged and a
#: step completed after PostgreSQL is back) before the test fails: generous for a busy CI
#: machine, far below a hang.
RECOVERY_S = 60.0
#: How long the sender keeps resending one batch before it gives up (and the test fails).
RESEND_S = 120.0
#: How long PostgreSQL stays down after the last kill -9: longer than psycopg_pool's first
#: reconnection attempts (about 1, 3, 7 and 15 s after the loss, each +-10%; the next one,
#: unless the pool is told to give up sooner, only about 31 s after it).
OUTAGE_S = 18.0
#: At most this long after PostgreSQL is back (its log's "ready to accept connections"), the
#: server acknowledges an event and /healthz answers 200; the workers complete a step within
#: RESUME_RUNS_S. (Measured: 0.1 to 2 s; 8 to 11 s after the long outage before the pool
#: was told to give up on a reconnection attempt after RECONNECT_S, in storage/postgres.py.)
RESUME_S = 6.0
RESUME_RUNS_S = 15.0


# --- the private cluster -------------------------------------------------------------------

def _pg_bindir() -> Path | None:
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        candidates.append(Path(out))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0), reverse=True)
    candidates += [Path(p) for p in versions]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb") or "").resolve().parent)
    for bindir in candidates:
        if all((bindir / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


class Cluster:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:`port` only
    (its Unix socket in that directory), trust authentication, superuser `postgres`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="stepwise-pgchaos-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self.user = pwd.getpwnam(name)
                    break
            assert self.user is not None, "running as root and no postgres or nobody user"
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.kills_lingering = 0  # backends still alive 15 s after their postmaster's kill -9

    def pg(self, *args: str, timeout: float = 120) -> str:
        as_user: dict[str, Any] = {}
        if self.user is not None:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
               "HOME": str(self.base), "TZ": "UTC"}
        done = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.base, env=env,
                              capture_output=True, text=True, timeout=timeout, **as_user)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): "
                                 f"{done.stdout}{done.stderr}\n{self.log_tail()}")
        return done.stdout

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def init(self) -> None:
        self.pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                "--locale=C", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(textwrap.dedent(f"""
                port = {self.port}
                listen_addresses = '127.0.0.1'
                unix_socket_directories = '{self.base}'
                max_connections = 100
                shared_buffers = 32MB
                # The test kills processes, never the machine: what a committed transaction
                # wrote is in the kernel's cache, fsync adds nothing but time.
                fsync = off
                log_line_prefix = '%m [%p] '
                log_timezone = 'UTC'
                log_min_messages = warning
                log_min_error_statement = panic
            """))

    def start(self) -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def restart(self) -> None:
        self.pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-m",
                "fast", "restart")

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def kill9(self) -> None:
        """kill -9 the postmaster alone, as the OOM killer would, and wait until its
        backends noticed and exited (a new postmaster refuses to start beside them)."""
        pid = self.postmaster()
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, "the killed postmaster to exit")
        try:
            wait_until(lambda: not any(_alive(c) for c in children), 15,
                       "the backends of the killed postmaster to exit")
        except AssertionError:
            self.kills_lingering += 1
            for c in children:
                with contextlib.suppress(OSError):
                    os.kill(c, signal.SIGKILL)
            wait_until(lambda: not any(_alive(c) for c in children), 10, "backends killed")
        # A new postmaster refuses to start while the old one's PID exists, even as a zombie:
        # wait for it to be reaped (init does it within about 2 s here); where nothing reaps
        # orphans, remove its lock file as an operator would (its backends are gone: the
        # lock file's shared memory check is not needed any more).
        try:
            wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "the zombie reaped")
        except AssertionError:
            (self.data / "postmaster.pid").unlink()

    def logged(self, message: str) -> list[float]:
        """When the log said `message`, each time (epoch seconds)."""
        times = []
        for line in self.log.read_text(errors="replace").splitlines():
            if message in line:
                stamp = datetime.datetime.strptime(" ".join(line.split()[:2]),
                                                   "%Y-%m-%d %H:%M:%S.%f")
                times.append(stamp.replace(tzinfo=datetime.UTC).timestamp())
        return times

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "20", "stop")
        with contextlib.suppress(Exception):
            pid = self.postmaster()
            if _alive(pid):  # the postmaster leads its session (pg_ctl's setsid)
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    bindir = _pg_bindir()
    if bindir is None:
        message = "PostgreSQL's binaries (initdb, pg_ctl, postgres) not found"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the database fault chaos test must run)",
                        pytrace=False)
        pytest.skip(message)
    c = Cluster(bindir)
    try:
        c.init()
        c.start()
        yield c
    finally:
        c.destroy()


# --- load: a steady client, and a health watcher -------------------------------------------

def _request(port: int, method: str, path: str, body: Any = None,
             timeout: float = 30) -> tuple[int, Any]:
    """Status and JSON answer; status 0 for a connection error or a timeout."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        conn.close()


class Sender(threading.Thread):
    """Sends `total` events named `job`, `rate` a second (several per request above 20 a
    second), each request resent with the same ids until it is answered 200; after an outage
    it goes on at the same pace (a steady source, not a backlog sent at once)."""

    def __init__(self, port: int, total: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.total = port, total
        self.per_request = max(1, math.ceil(rate / 20))
        self.interval = self.per_request / rate
        self.acked: list[tuple[float, list[str]]] = []  # (time.time(), ids) of each 200
        self.answers: Counter[int] = Counter()  # status (0: no answer) -> requests
        self.odd: list[tuple[int, Any]] = []  # answers neither 200 nor 503 nor none
        self.count = 0  # events acknowledged
        self.gave_up: str | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while n < self.total and not self.halt.wait(max(0.0, next_at - time.monotonic())):
            batch = [{"name": "job", "id": f"ev-{i}"}
                     for i in range(n, min(self.total, n + self.per_request))]
            first = time.monotonic()
            while not self.halt.is_set():
                status, answer = _request(self.port, "POST", "/api/v1/events", batch)
                self.answers[status] += 1
                if status == 200:
                    if not isinstance(answer, dict) or answer.get("ids") != [
                            e["id"] for e in batch]:
                        self.gave_up = f"sent {batch}, acknowledged {answer}"
                        return
                    self.acked.append((time.time(), answer["ids"]))
                    self.count += len(batch)
                    break
                if status not in (0, 503):
                    self.odd.append((status, answer))
                if time.monotonic() - first > RESEND_S:
                    self.gave_up = f"{batch[0]['id']}: no 200 in {RESEND_S:g} s ({status})"
                    return
                time.sleep(0.1)  # a client's retry
            n += len(batch)
            next_at = max(next_at + self.interval, time.monotonic())


class Health(threading.Thread):
    """GET /healthz ten times a second: (sent, answered, status) of each."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.seen: list[tuple[float, float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            sent = time.time()
            status, _ = _request(self.port, "GET", "/healthz", timeout=30)
            self.seen.append((sent, time.time(), status))
            self.halt.wait(0.1)

    def answered_after(self, t: float, status: int) -> float | None:
        """When the first request sent after `t` answered `status`."""
        return next((a for s, a, st in list(self.seen) if s >= t and st == status), None)


# --- the test ------------------------------------------------------------------------------

READY = "database system is ready to accept connections"


@dataclass
class Fault:
    kind: str
    down_at: float  # time.time() just before the fault
    gone_at: float = 0.0  # every PostgreSQL process had exited
    up_at: float = 0.0  # PostgreSQL ready again (from its log)
    ack: float | None = None  # first event acknowledged after up_at (s after up_at)
    healthy: float | None = None  # /healthz 200 (s after up_at)
    step: float | None = None  # a step completed (s after up_at)
    run: float | None = None  # a run completed (s after up_at)
    while_down: list[int] = field(default_factory=list)  # /healthz answers while down


def _first_after(cluster: Cluster, table: str, t: float) -> float | None:
    import psycopg

    try:
        with psycopg.connect(cluster.url, connect_timeout=5) as conn:
            row = conn.execute(f"SELECT min(ended_at) FROM {table} WHERE status = "
                               "'completed' AND ended_at >= %s", (int(t * 1000),)).fetchone()
    except psycopg.OperationalError:
        return None
    return None if row is None or row[0] is None else row[0] / 1000 - t


def _tables(cluster: Cluster) -> dict[str, Any]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(cluster.url, connect_timeout=5, row_factory=dict_row) as conn:
        return {
            "events": [r["id"] for r in conn.execute("SELECT id FROM events").fetchall()],
            "runs": conn.execute("SELECT id, event_id, status FROM runs").fetchall(),
            "steps": conn.execute("SELECT run_id, id, status, ended_at FROM steps").fetchall(),
            "failures": conn.execute("SELECT run_id, step_id, error FROM failures").fetchall(),
        }


def _registered(cluster: Cluster) -> bool:
    import psycopg

    try:
        with psycopg.connect(cluster.url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM functions").fetchone()
            return bool(row and row[0])
    except psycopg.Error:
        return False


def _fault(cluster: Cluster, health: Health, sender: Sender, kind: str, hold: float) -> Fault:
    """Restart PostgreSQL, or kill -9 its postmaster and start it again once it was down
    `hold` seconds and /healthz answered 503; then wait until the load recovered."""
    ready_before = len(cluster.logged(READY))
    fault = Fault(kind, time.time())
    if kind == "restart":
        cluster.restart()
        fault.gone_at = cluster.logged("database system is shut down")[-1]
    else:
        cluster.kill9()
        fault.gone_at = time.time()
        if hold:
            time.sleep(max(0.0, fault.down_at + hold - time.time()))
            with contextlib.suppress(AssertionError):  # asserted below
                wait_until(lambda: health.answered_after(fault.gone_at, 503), 30,
                           "/healthz to answer 503")
        cluster.start()
    readies = cluster.logged(READY)
    assert len(readies) > ready_before, f"no {READY!r} in the log"
    fault.up_at = readies[-1]
    fault.while_down = [st for s, a, st in list(health.seen)
                        if fault.gone_at <= s and a < fault.up_at]

    def recovered() -> bool:
        if fault.healthy is None:
            at = health.answered_after(fault.up_at, 200)
            fault.healthy = None if at is None else at - fault.up_at
        if fault.ack is None:
            acks = [t for t, _ in list(sender.acked) if t >= fault.up_at]
            fault.ack = min(acks) - fault.up_at if acks else None
        if fault.step is None:
            fault.step = _first_after(cluster, "steps", fault.up_at)
        if fault.run is None:
            fault.run = _first_after(cluster, "runs", fault.up_at)
        return None not in (fault.healthy, fault.ack, fault.step, fault.run)

    try:
        wait_until(recovered, RECOVERY_S, f"recovery after the {kind}")
    except AssertionError:
        raise AssertionError(f"no recovery {RECOVERY_S:g} s after the {kind}: {fault}; "
                             f"sender: {sender.answers}, alive {sender.is_alive()}, "
                             f"{sender.gave_up}") from None
    return fault


def _run(cluster: Cluster, cwd: Path, events: int, faults: int) -> None:
    shutil.copy(EFFECTS_APP, cwd / "pgchaos_app.py")
    env = {"CHAOS_DIR": str(cwd), "CHAOS_STEP_PAUSE_S": "0.05"}
    port = free_port()
    server = start(["server", "--insecure", "--db", cluster.url, "--host", "127.0.0.1",
                    "--port", str(port)], cwd, env)
    workers = [start(["worker", "pgchaos_app:app", "--db", cluster.url, "--lease-seconds", "3",
                      "--poll-seconds", "0.2", "--concurrency", "8"], cwd, env)
               for _ in range(2)]
    everyone = [server, *workers]
    kinds = ["restart" if k % 2 else "kill -9" for k in range(1, faults + 1)]
    long_one = len(kinds) - 1 - kinds[::-1].index("kill -9")  # the last kill -9
    health = Health(port)
    # A pace that spreads the events over about 5 s of sending per fault (at least 20/s).
    sender = Sender(port, events, max(20.0, events / (5 * (faults + 1))))
    done: list[Fault] = []
    began = time.monotonic()
    try:
        wait_until(lambda: _request(port, "GET", "/healthz")[0] == 200 or
                   server.poll() is not None, 30, "server health")
        assert server.poll() is None, "the server exited"
        wait_until(lambda: _registered(cluster), 30, "the workers to register the app")
        health.start()
        sender.start()
        for k, kind in enumerate(kinds, 1):
            # Spread over the sending: fault k once k/(faults+1) of the events were
            # acknowledged, and at least 1.5 s of load after the previous recovery.
            wait_until(lambda k=k: sender.count >= events * k // (faults + 1) or
                       not sender.is_alive(), RESEND_S + 60, "the sender's progress")
            time.sleep(1.5)
            done.append(_fault(cluster, health, sender, kind,
                               OUTAGE_S if k - 1 == long_one else 0.0))
            assert all(p.poll() is None for p in everyone), \
                f"a stepwise process exited after the {kind}"
        sender.join(RESEND_S + events / 10)
        assert not sender.is_alive(), "the sender never finished"
        assert sender.gave_up is None, sender.gave_up
        acked = {i for _, ids in sender.acked for i in ids}

        def all_final() -> bool:
            tables = _tables(cluster)
            return len(tables["runs"]) >= len(acked) and all(
                r["status"] == "completed" for r in tables["runs"])
        wait_until(all_final, 120 + events / 50, "every run to complete")
        assert all(p.poll() is None for p in everyone), "a stepwise process exited"
        health.halt.set()
        health.join(35)
        healthz_end = _request(port, "GET", "/healthz")[0]
    finally:
        sender.halt.set()
        health.halt.set()
        for p in everyone:
            stop(p)
    took = time.monotonic() - began
    tables = _tables(cluster)

    stored = tables["events"]
    assert len(stored) == len(set(stored))
    assert acked <= set(stored), f"{len(acked - set(stored))} acknowledged events lost"
    per_event = Counter(r["event_id"] for r in tables["runs"])
    assert set(per_event) == set(stored) and set(per_event.values()) == {1}, \
        f"an event has no run or several: {[e for e, n in per_event.items() if n != 1][:5]}"
    assert {r["status"] for r in tables["runs"]} == {"completed"}

    completed_at = {(s["run_id"], s["id"]): s["ended_at"] for s in tables["steps"]
                    if s["status"] == "completed"}
    assert len(completed_at) == 3 * len(tables["runs"])
    starts = [json.loads(line) for f in cwd.glob("effects-*.jsonl")
              for line in f.read_text().splitlines() if line.strip()]
    reran = [e for e in starts if e["t"] * 1000 > completed_at[(e["run"], e["step"])] + 1]
    assert not reran, f"{len(reran)} steps ran again after their result was stored: {reran[:3]}"

    statuses = Counter(st for _s, _a, st in health.seen)
    print(f"\nPostgreSQL faults: {events} events sent, {len(acked)} acknowledged, "
          f"{len(stored)} stored, {len(tables['runs'])} runs completed, 0 lost, 0 doubled, "
          f"{len(starts) - len(completed_at)} step bodies re-ran before their result was "
          f"stored, 0 after; event requests answered {dict(sorted(sender.answers.items()))} "
          f"(0: no answer); /healthz {dict(sorted(statuses.items()))}; {took:.1f} s")
    for f in done:
        print(f"  {f.kind:8} down {f.up_at - f.down_at:5.2f} s; after PostgreSQL was back: "
              f"first event acknowledged {f.ack:5.2f} s, /healthz 200 {f.healthy:5.2f} s, "
              f"first step completed {f.step:5.2f} s, first run completed {f.run:5.2f} s; "
              f"/healthz while down: {dict(Counter(f.while_down))}")
    # A database error while a step's result is stored stops that execution (StorageLost)
    # and hands the run back: never a failed attempt of the function, which would spend one
    # of its retries (with retries=0 such runs failed for good before).
    failures = Counter((f["step_id"] or "(body)", json.loads(f["error"]).get("message", "")[:90])
                       for f in tables["failures"])
    for (where, message), n in failures.most_common():
        print(f"  failed attempts recorded: {n} x {where}: {message}")
    assert not failures, f"database faults recorded as the function's failures: {failures}"
    if cluster.kills_lingering:
        print(f"  backends outlived their killed postmaster {cluster.kills_lingering} times")

    assert healthz_end == 200
    assert set(statuses) <= {200, 503}, f"/healthz answered {statuses}"
    assert not sender.odd, f"events answered neither 200 nor 503: {sender.odd[:5]}"
    for f in done:
        assert set(f.while_down) <= {503}, f"/healthz answered {f.while_down} while down: {f}"
        if f.up_at - f.gone_at >= OUTAGE_S / 2:
            assert f.while_down, f"/healthz never answered while down: {f}"
        assert (f.ack or 0) <= RESUME_S and (f.healthy or 0) <= RESUME_S, \
            f"no event acknowledged or /healthz 200 within {RESUME_S:g} s: {f}"
        assert (f.step or 0) <= RESUME_RUNS_S, f"no step within {RESUME_RUNS_S:g} s: {f}"


@pytest.mark.timeout(3600)
def test_postgres_restarts_and_kill9_under_load(cluster: Cluster, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    faults = max(2, request.config.getoption("--chaos-kills"))
    _run(cluster, tmp_path, request.config.getoption("--chaos-events"), faults)
