"""Live updates (`GET /api/v1/live`) against real processes: a change reaches an open stream
within a bound on both backends (an event, a run starting, a step finishing, a run ending)
and nothing is said while nothing changes; servers on one PostgreSQL hear of each other's
changes; open streams take no admission slot; and open streams do not hold up a stop."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path

from procs import free_port, http, start, stop, wait_healthy, wait_until

#: Each run's second step waits until the file its event names exists.
APP = textwrap.dedent('''
    import os
    import time

    import stepwise

    app = stepwise.App("gates")

    def wait_for(path):
        while not os.path.exists(path):
            time.sleep(0.02)
        return "opened"

    @app.function(id="gated", trigger=stepwise.on_event("gate.open"), retries=0)
    def gated(ctx):
        ctx.step.run("first", lambda: 1)
        return ctx.step.run("through-the-gate", wait_for, ctx.event.data["gate"])
''')

#: How soon a change must be told (the feed reads the mark every second).
BOUND_S = 3.0
#: How long a stream must stay silent while nothing changes.
QUIET_S = 2.5


class Stream:
    """One open `GET /api/v1/live`, its messages read by a thread: (event, data), or
    ("comment", text), then ("end", None) when the server closes it."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = HTTPConnection(host, int(port), timeout=60)
        self.conn.request("GET", "/api/v1/live",
                          headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.messages: queue.Queue[tuple[str, object]] = queue.Queue()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event, data = "message", ""
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.messages.put(("comment", line[1:].strip()))
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif not line and data:
                    self.messages.put((event, json.loads(data)))
                    event, data = "message", ""
        except (OSError, ValueError, AttributeError):  # closed by the test meanwhile
            pass
        self.messages.put(("end", None))

    def next(self, timeout: float) -> tuple[str, object] | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def changes_within(self, seconds: float) -> list[list[str]]:
        """The `change` messages (their topics) that arrive within `seconds`."""
        found: list[list[str]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self.next(left)
            if message and message[0] == "change":
                found.append(list(message[1]["changed"]))  # type: ignore[index]
        return found

    def told(self, *topics: str, within: float = BOUND_S) -> float:
        """Seconds until `change` messages named all of `topics` (fails past `within`)."""
        began = time.monotonic()
        missing = set(topics)
        while missing:
            message = self.next(max(0.0, began + within - time.monotonic()))
            assert message is not None, f"no change of {sorted(missing)} within {within} s"
            if message[0] == "change":
                missing -= set(message[1]["changed"])  # type: ignore[index]
        return time.monotonic() - began

    def close(self) -> None:
        if self.conn.sock is not None:  # ends the reader's read first (it holds the reader)
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def _opened(base: str, headers: dict[str, str] | None = None) -> Stream:
    stream = Stream(base, headers)
    assert stream.status == 200
    assert stream.response.getheader("content-type", "").startswith("text/event-stream")
    assert stream.next(5) == ("ready", {})
    return stream


@contextmanager
def _processes(*procs: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            stop(proc)


def _send(base: str, gate: Path) -> None:
    http("POST", base + "/api/v1/events", {"name": "gate.open", "data": {"gate": str(gate)}})


def test_a_change_reaches_an_open_stream_and_nothing_is_said_meanwhile(
        db: str, tmp_path: Path) -> None:
    (tmp_path / "gates_app.py").write_text(APP)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "gates_app:app", "--port", str(port), "--db", db], tmp_path)
    with _processes(proc):
        wait_healthy(base, proc)
        wait_until(lambda: http("GET", base + "/api/v1/functions")["functions"], 30,
                   "the app's registration")
        stream = _opened(base)
        assert stream.changes_within(QUIET_S) == []

        gate = tmp_path / "gate"
        _send(base, gate)
        took = stream.told("events", "runs", "steps")  # stored, started, its first step
        print(f"event, run start and first step told within {took:.2f} s")
        assert stream.changes_within(QUIET_S) == []  # the run waits at its gate: quiet

        gate.touch()
        took = stream.told("runs", "steps")
        print(f"last step and run end told within {took:.2f} s")
        assert [r["status"] for r in http("GET", base + "/api/v1/runs")["runs"]] == [
            "completed"]
        stream.close()


def test_servers_on_one_postgresql_hear_of_each_others_changes(
        pg_schema: str, tmp_path: Path) -> None:
    (tmp_path / "gates_app.py").write_text(APP)
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    servers = [start(["server", "--db", pg_schema, "--port", str(p), "--insecure"], tmp_path)
               for p in ports]
    worker = start(["worker", "gates_app:app", "--db", pg_schema, "--poll-seconds", "0.2"],
                   tmp_path)
    with _processes(*servers, worker):
        for base, proc in zip(bases, servers, strict=True):
            wait_healthy(base, proc)
        wait_until(lambda: http("GET", bases[1] + "/api/v1/functions")["functions"], 30,
                   "the worker's registration")
        first, second = _opened(bases[0]), _opened(bases[1])
        assert second.changes_within(QUIET_S) == []

        gate = tmp_path / "gate"
        _send(bases[0], gate)  # through the first server; a worker process runs it
        took = second.told("events", "runs", "steps")
        first.told("events", "runs", "steps")
        print(f"the other server's stream was told within {took:.2f} s")
        gate.touch()
        second.told("runs", "steps")
        first.told("runs", "steps")
        first.close()
        second.close()


def test_the_stream_is_behind_the_api_key(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["server", "--db", str(tmp_path / "s.db"), "--port", str(port),
                  "--api-key", "api-key-for-live", "--event-key", "event-key-for-live"],
                 tmp_path)
    with _processes(proc):
        wait_healthy(base, proc)
        for headers in ({}, {"Authorization": "Bearer event-key-for-live"},
                        {"Authorization": "Bearer wrong"}):
            refused = Stream(base, headers)
            assert refused.status == 401, headers
            assert "API key" in json.loads(refused.response.read())["error"]
            refused.close()
        _opened(base, {"Authorization": "Bearer api-key-for-live"}).close()


def test_open_streams_take_no_admission_slot(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["server", "--db", str(tmp_path / "s.db"), "--port", str(port), "--insecure",
                  "--max-in-flight", "2"], tmp_path)
    with _processes(proc):
        wait_healthy(base, proc)
        streams = [_opened(base) for _ in range(4)]  # twice the in-flight bound
        assert http("GET", base + "/api/v1/runs")["runs"] == []  # not refused (503)
        for stream in streams:
            stream.close()


def test_open_streams_end_at_once_when_the_server_stops(tmp_path: Path) -> None:
    """uvicorn's graceful stop waits for responses in progress (here up to the server's
    10 s grace); the streams see the stop, say `bye` and end, so the server stops as it
    would with no tab open."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["server", "--db", str(tmp_path / "s.db"), "--port", str(port), "--insecure"],
                 tmp_path)
    with _processes(proc):
        wait_healthy(base, proc)
        streams = [_opened(base) for _ in range(3)]
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - began
        print(f"stopped {took:.2f} s after SIGTERM with {len(streams)} streams open")
        assert took < 4.0, f"the server took {took:.1f} s to stop"
        for stream in streams:
            assert stream.next(5) == ("bye", {"reason": "server stopping"})
            assert stream.next(5) == ("end", None)
            stream.close()
