"""Clients that send their bodies a byte at a time (slowloris) do not hold the server: with
more of them than request slots, events are still accepted and reads still answered, and each
slow body is cut off with a JSON 408 within seconds (before, they held every slot and every
request got 503 for as long as they went on)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from procs import free_port, http, start, stop, wait_healthy

SLOTS = 8


def _slow_body(port: int, answers: list[bytes], stop_at: float) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 10000\r\n\r\n{")
        conn.settimeout(1.0)
        answer = b""
        while time.monotonic() < stop_at:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                try:
                    conn.sendall(b" ")  # one more byte a second
                except OSError:
                    break
                continue
            if not chunk:
                break
            answer += chunk
        answers.append(answer)


def test_slow_bodies_do_not_hold_the_server(tmp_path: Path) -> None:
    (tmp_path / "empty_app.py").write_text(
        "import stepwise\napp = stepwise.App('empty')\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["dev", "empty_app:app", "--port", str(port), "--db", str(tmp_path / "s.db"),
                  "--max-in-flight", str(SLOTS)], tmp_path)
    try:
        wait_healthy(base, proc)
        answers: list[bytes] = []
        stop_at = time.monotonic() + 30
        clients = [threading.Thread(target=_slow_body, args=(port, answers, stop_at))
                   for _ in range(4 * SLOTS)]
        for client in clients:
            client.start()
        time.sleep(2)  # every slow client has sent its headers and is trickling
        for i in range(20):  # meanwhile: events accepted, reads answered
            assert http("POST", base + "/api/v1/events", {"name": "e", "id": f"e{i}"})["ids"]
            assert http("GET", base + "/api/v1/events?limit=1")["events"]
        for client in clients:
            client.join(40)
        assert len(answers) == 4 * SLOTS
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer[:200]
            assert "did not arrive in time" in json.loads(body)["error"]
    finally:
        stop(proc)
