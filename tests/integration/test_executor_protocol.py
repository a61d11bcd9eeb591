"""A `Worker` drives any `Executor`: it leases the executor's functions, has it execute each run
and, when the executor says an attempt expired, reports its outcomes, cancels the execution and
tells the executor so."""

from __future__ import annotations

import asyncio
import json
import time

import stepwise
from stepwise.engine import Engine
from stepwise.engine.outcomes import Outcome, RunCompleted, RunFailed
from stepwise.events import StoredEvent
from stepwise.executor import Job
from stepwise.storage import open_storage
from stepwise.worker import Worker


class ToyExecutor:
    """`double` answers twice its event's `n` at once; `hang` never returns and expires after
    0.2 s."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.app_id = "toy"
        self.started: dict[str, float] = {}
        self.cancelled: list[str] = []
        self.timed_out_runs: list[str] = []

    def functions(self) -> list[str]:
        return ["double", "hang"]

    async def prepare(self) -> None:
        app = stepwise.App("toy")

        def unused(ctx: stepwise.Context) -> None:
            """Never called: the code is the executor's."""

        for name in self.functions():
            app.function(id=name, trigger=stepwise.on_event(name), retries=0)(unused)
        await self.engine.register("toy", [f.definition() for f in app.functions.values()])

    def serves(self, function_id: str) -> bool:
        return function_id in self.functions()

    async def execute(self, job: Job) -> None:
        self.started[job.run_id] = time.monotonic()
        if job.state.run["function_id"] == "double":
            assert job.state.event is not None
            output = str(2 * json.loads(job.state.event["data"])["n"])
            await self.engine.apply(job.lease, [RunCompleted(output)], last=True)
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(job.run_id)
            raise

    def expired(self, job: Job, now: float) -> list[Outcome]:
        began = self.started.get(job.run_id)
        if job.state.run["function_id"] != "hang" or began is None or now - began < 0.2:
            return []
        return [RunFailed({"name": "AttemptTimeout", "message": "hang hung"})]

    async def timed_out(self, job: Job) -> list[Job]:
        self.timed_out_runs.append(job.run_id)
        return []

    @property
    def stuck_threads(self) -> int:
        return 0

    async def stop(self) -> None:
        pass


async def test_a_worker_drives_any_executor(db: str) -> None:
    storage = open_storage(db)
    await storage.open()
    engine = Engine(storage)
    executor = ToyExecutor(engine)
    worker = Worker(executor, storage, concurrency=2, poll_interval=0.01)
    try:
        await worker.start()
        now = engine.clock.now_ms()
        await engine.ingest([StoredEvent("e1", "double", '{"n": 21}', now),
                             StoredEvent("e2", "hang", "{}", now)])
        for _ in range(500):
            runs = {r["function_id"]: r for r in await engine.list_runs({}, 10)}
            if {r["status"] for r in runs.values()} == {"completed", "failed"}:
                break
            await asyncio.sleep(0.01)
        assert runs["double"]["status"] == "completed" and runs["double"]["output"] == "42"
        assert runs["hang"]["status"] == "failed"
        hung = runs["hang"]["id"]
        for _ in range(100):
            if executor.cancelled:
                break
            await asyncio.sleep(0.01)
        assert executor.timed_out_runs == [hung] and executor.cancelled == [hung]
        # Idle: it holds no job. (`busy` is also true for the moment a poll for work is in
        # flight, which this worker, polling every 10 ms, often is: look a few times.)
        for _ in range(200):
            if not worker.busy:
                break
            await asyncio.sleep(0.005)
        assert not worker.busy and worker.stuck_threads == 0
    finally:
        await worker.stop()
        await storage.close()
