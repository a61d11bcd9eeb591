"""An unexpected error is answered 500 and the client's kept-alive connection stays usable:
the next request on it is answered (before, the server closed it after every 500)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from stepwise.engine import Engine
from stepwise.server import create_server
from stepwise.storage import open_storage


@pytest.fixture
def broken_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real uvicorn server whose run listing fails unexpectedly."""
    async def fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the listing")

    monkeypatch.setattr(Engine, "search_runs", fails)  # what GET /api/v1/runs calls
    storage = open_storage(f"sqlite:///{tmp_path / 'k.db'}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_server(storage), host="127.0.0.1", port=port,
                                           log_level="critical", lifespan="off"))

    def serve() -> None:
        import asyncio

        async def main() -> None:
            await storage.open()
            try:
                await server.serve()
            finally:
                await storage.close()
        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_a_500_keeps_the_connection(broken_server: str) -> None:
    with httpx.Client(base_url=broken_server) as client:
        for _ in range(5):
            failed = client.get("/api/v1/runs")
            assert failed.status_code == 500
            assert "internal error (RuntimeError)" in failed.json()["error"]
            assert client.get("/healthz").status_code == 200  # on the same connection
