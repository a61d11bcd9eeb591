"""Overload and database outages against a real server: prompt 503s, then recovery."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from procs import free_port, start, stop, wait_healthy, wait_until


class Proxy:
    """A TCP relay to PostgreSQL that the test can cut and restore, like a network outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown wakes the thread blocked in accept(); close alone would not
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.close()


def post_event(base: str, timeout: float = 20.0) -> tuple[int, dict[str, str], dict[str, str]]:
    request = urllib.request.Request(base + "/api/v1/events", method="POST",
                                     data=json.dumps({"name": "x"}).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_database_outage_answers_503_quickly_and_recovers(pg_schema: str, tmp_path: Path
                                                          ) -> None:
    parts = urlsplit(pg_schema)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.up()
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else \
        f"127.0.0.1:{proxy.port}"
    url = urlunsplit(parts._replace(netloc=netloc))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["server", "--insecure", "--db", url, "--port", str(port), "--host",
                  "127.0.0.1"], tmp_path)
    try:
        wait_healthy(base, proc)
        assert post_event(base)[0] == 200
        proxy.down()
        for _ in range(2):
            began = time.monotonic()
            status, headers, body = post_event(base)
            took = time.monotonic() - began
            assert status == 503 and "storage unavailable" in body["error"], body
            assert headers.get("retry-after") or headers.get("Retry-After")
            assert took < 8, f"the 503 took {took:.1f} s"
            print(f"503 during the outage after {took:.2f} s")
        try:
            urllib.request.urlopen(base + "/healthz", timeout=20)
            raise AssertionError("healthz said ok during the outage")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and "storage unavailable" in json.loads(exc.read())["error"]
        proxy.up()
        wait_until(lambda: post_event(base)[0] == 200, 60, "recovery after the outage")
        assert proc.poll() is None
    finally:
        stop(proc)
        proxy.down()


def test_overload_is_refused_promptly_and_nothing_unacknowledged_is_stored(tmp_path: Path
                                                                            ) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "o.db"
    proc = start(["server", "--insecure", "--db", str(db), "--port", str(port), "--host",
                  "127.0.0.1", "--max-in-flight", "4"], tmp_path)
    try:
        wait_healthy(base, proc)
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda _: post_event(base, 60), range(400)))
    finally:
        stop(proc)
    statuses = [a[0] for a in answers]
    refused = [a for a in answers if a[0] == 503]
    assert set(statuses) <= {200, 503}, statuses
    assert refused, "64 clients at once against --max-in-flight 4 were never refused"
    assert all(a[1].get("retry-after") == "1" or a[1].get("Retry-After") == "1"
               for a in refused)
    assert all("busy" in a[2]["error"] for a in refused)
    import sqlite3
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stored == statuses.count(200), "an event was stored without being acknowledged"
    print(f"400 requests from 64 clients, --max-in-flight 4: {statuses.count(200)} stored, "
          f"{len(refused)} refused with 503")
