"""The HTTP executor: runs the functions of one SDK app for a `Worker`, which leases their runs
like any (same leases, takeovers and fencing); each run executes by calling the app's serve URL,
and every answer becomes engine outcomes. A step's result is applied at once and the app is
called again with it memoized, until the app answers with the run's end or a step that parks
the run (a retry, a sleep, a wait). An SDK that checkpoints (inngest-js 4.x) runs several steps
within one call, storing each through `POST /v1/checkpoint/{run}/async` under the call's lease
(`remote.checkpoint`), and answers only what it could not run inline."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

from .. import signing
from ..definition import FunctionDefinition
from ..engine import Engine, Lease, RunState, definitions
from ..engine.outcomes import Outcome, RunCompleted, RunFailed, StepCompleted, StepFailed
from ..executor import Job
from ..payloads import dumps, new_id
from ..storage import Storage
from ..worker import Worker
from . import checkpoint, protocol
from .gateway import Gateway, GatewayCall

log = logging.getLogger("stepwise.remote")
#: Calls to one app at once from one process.
MAX_CALLS_PER_APP = 16
DEFAULT_CALL_TIMEOUT_S = protocol.DEFAULT_CALL_TIMEOUT_S


class HttpExecutor:
    """Executes the functions an SDK app registered (`stepwise.remote.registration`): an
    `executor.Executor`."""

    def __init__(self, app_id: str, engine: Engine, *, signing_key: str | None = None,
                 signing_fallback: str | None = None, max_calls: int = MAX_CALLS_PER_APP,
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 allowed_hosts: frozenset[str] | None = None,
                 client: httpx.AsyncClient | None = None,
                 gateway: Gateway | None = None, sdk: str | None = None) -> None:
        if call_timeout_s <= 0:
            raise ValueError("call_timeout_s must be positive")
        self.app_id = app_id
        self.engine = engine
        self.call_timeout_s = call_timeout_s
        #: At most this many calls to the app at once from this process (runs times their
        #: parallel steps could be far more); the others wait their turn.
        self.calls = asyncio.Semaphore(max_calls)
        #: With a key (outside dev mode), calls are signed and answers must be.
        self.signing_key = signing_key
        #: While keys rotate: an answer signed with this key is accepted too.
        self.signing_fallback = signing_fallback
        #: Host names this worker calls SDK apps at (`--sdk-allow-host`; None: any). The URLs
        #: come from stored syncs, which an older server, or one without the list, accepted.
        self.allowed_hosts = allowed_hosts
        self.definitions: dict[str, FunctionDefinition] = {}
        self.client = client or httpx.AsyncClient(follow_redirects=False)
        #: Makes the requests of `step.fetch` and `step.ai.infer` (public hosts only, unless
        #: the process was given a policy: `RemoteApps` shares one).
        self.gateway = gateway or Gateway()
        self._own_gateway = gateway is None
        self.version = -1
        #: Discovery calls offer checkpointing (`ctx.fn_id`, `ctx.qi_id`): the app's last sync
        #: named an SDK that checkpoints (`checkpoint.offered`).
        self.checkpointing = checkpoint.offered(sdk)
        self._functions: list[str] = []

    def functions(self) -> list[str]:
        return self._functions

    async def prepare(self) -> None:
        await self.refresh()

    async def refresh(self, functions: list[dict[str, Any]] | None = None,
                      sdk: str | None = None) -> None:
        """Take the app's functions as last synced (a re-sync may add or remove some), from
        `functions` (this app's stored definitions) when the caller has read them already,
        and the SDK it synced with (`sdk`, when given)."""
        if sdk is not None:
            self.checkpointing = checkpoint.offered(sdk)
        if functions is None:
            functions = await self.engine.storage.read(definitions.app_functions, self.app_id)
        self.definitions = {f["id"]: FunctionDefinition.from_json(f) for f in functions
                            if f["app_id"] == self.app_id and f.get("url")}
        self._functions = sorted(self.definitions)

    def serves(self, function_id: str) -> bool:
        definition = self.definitions.get(function_id)
        return definition is not None and definition.url is not None

    async def execute(self, job: Job) -> None:
        """Call the app until it answers the run's end or a step that parks the run."""
        state = job.state
        definition = self.definitions[state.run["function_id"]]
        if definition.problems:  # synced with options this server cannot honour
            await self.engine.apply(job.lease, [RunFailed({
                "name": "FunctionNotRunnable", "message": (
                    f"function {definition.id!r} cannot run on this server as its app synced "
                    f"it: {'; '.join(definition.problems)}")}, retriable=False)], last=True)
            return
        host = host_refused(str(definition.url), self.allowed_hosts)
        if host is not None:  # no run data goes there; a re-sync at an allowed host fixes it
            log.warning("run %s of %s not sent: host %r is not allowed (--sdk-allow-host)",
                        state.run["id"], definition.id, host)
            await self.engine.apply(job.lease, [RunFailed({
                "name": "AppHostNotAllowed", "message": (
                    f"function {definition.id!r} is synced at host {host!r}, which is not "
                    "among the hosts this worker calls SDK apps at (--sdk-allow-host): sync "
                    "the app at an allowed host, then replay the run")}, retriable=False)],
                last=True)
            return
        calls = protocol.memo(state)
        while not job.abandoned:
            answer = await self._call(definition, state, calls)
            while isinstance(answer, protocol.Planned) and answer.race:
                raced = await self._race(job, definition, calls, answer)
                if raced is None:
                    return
                answer = raced
            if isinstance(answer, protocol.Planned):  # parallel steps: one call each
                answer = await self._run_planned(definition, state, calls, answer)
            if answer and all(isinstance(o, StepCompleted) for o in answer):
                if not await self._memoize(job.lease, calls, answer):
                    return
                continue
            # The run's end, or steps that park it (a retry, a sleep, a wait, an invoke), with
            # the steps that completed beside them.
            await self.engine.apply(job.lease, answer, last=True)
            return

    def expired(self, job: Job, now: float) -> list[Outcome]:
        return []  # each call has its own limit (`call_timeout`, an HTTP timeout)

    async def timed_out(self, job: Job) -> list[Job]:
        return []  # nothing to free: cancelling its task ends its calls

    @property
    def stuck_threads(self) -> int:
        return 0

    async def stop(self) -> None:
        await self.client.aclose()
        if self._own_gateway:
            await self.gateway.aclose()

    async def _memoize(self, lease: Lease, calls: protocol.CallState,
                       completed: list[Outcome]) -> bool:
        """Store completed steps and add what is stored to the memo map; False when one was
        not settled by this call (the run then starts again from what is stored)."""
        applied = await self.engine.apply(lease, completed, last=False)
        for outcome in completed:
            assert isinstance(outcome, StepCompleted)
            sid = outcome.step_id
            if sid in applied.outputs:  # what is stored (the first result)
                calls.steps[sid] = protocol.memo_of("run", applied.outputs[sid])
            elif sid in applied.failed:
                calls.steps[sid] = {"error": applied.failed[sid]}
            else:
                await self.engine.apply(lease, [], last=True)
                return False
            calls.stack.append(sid)
            calls.attempts.pop(sid, None)
        calls.attempt = 0  # the next discovery is a new step's first attempt
        return True

    async def _race(self, job: Job, definition: FunctionDefinition,
                    calls: protocol.CallState, planned: protocol.Planned
                    ) -> list[Outcome] | protocol.Planned | None:
        """Planned steps in race mode (`parallelMode: "race"`), see `_Race`."""
        race = _Race(self, job, definition, calls)
        race.start(planned)
        if not race.tasks:  # nothing new to run: the steps are called as in the default mode
            return replace(planned, race=False)
        try:
            return await race.run()
        finally:
            for task in race.tasks.values():
                task.cancel()

    async def _run_planned(self, definition: FunctionDefinition, state: RunState,
                           calls: protocol.CallState, planned: protocol.Planned
                           ) -> list[Outcome]:
        """Call the app once for each planned step, at once; each answer is that step's
        outcome, applied with the answer's other opcodes (`planned.others`). A call that
        failed (the app unreachable, an error answer, anything but the step's result) fails
        the body after the other steps' results are kept."""
        answers = await asyncio.gather(*(
            self._call(definition, state, calls, step_id=sid, seq=seq)
            for sid, seq in zip(planned.step_ids, planned.seqs, strict=True)))
        steps, failure = _step_outcomes(dict(zip(planned.step_ids, answers, strict=True)))
        others = cast(list[Outcome], planned.others)  # gateway requests made by `_call`
        return [*steps, *others, *([] if failure is None else [failure])]

    async def _call(self, definition: FunctionDefinition, state: RunState,
                    calls: protocol.CallState, step_id: str | None = None,
                    seq: int | None = None) -> list[Outcome] | protocol.Planned:
        async with self.calls:  # signed once its turn came: a signature is good for minutes
            answer = await self._call_now(definition, state, calls, step_id, seq)
        # Gateway steps' requests are made here, out of the app's turn: each becomes its
        # step's outcome, handled as if the app had answered it.
        if isinstance(answer, protocol.Planned):
            if any(isinstance(o, GatewayCall) for o in answer.others):
                answer = replace(answer, others=list(await self._gateways(definition,
                                                                          answer.others)))
            return answer
        return await self._gateways(definition, answer)

    async def _gateways(self, definition: FunctionDefinition,
                        answer: list[Outcome | GatewayCall]) -> list[Outcome]:
        """The answer with every gateway request made (at once) and replaced by its step's
        outcome; each may take the function's call timeout."""
        requests = [o for o in answer if isinstance(o, GatewayCall)]
        if not requests:
            return cast(list[Outcome], answer)
        limit = self.call_timeout(definition)
        made = iter(await asyncio.gather(*(
            self.gateway.call(r, limit, self.engine.clock.now_ms) for r in requests)))
        return [next(made) if isinstance(o, GatewayCall) else o for o in answer]

    async def _call_now(self, definition: FunctionDefinition, state: RunState,
                        calls: protocol.CallState, step_id: str | None = None,
                        seq: int | None = None
                        ) -> list[Outcome | GatewayCall] | protocol.Planned:
        """One call to the app (for one planned step: `step_id`), as outcomes (a failure to
        reach it is a retried failure)."""
        # `stepId=step` asks the app to discover; a step's id runs that planned step alone.
        url = protocol.targeted(str(definition.url), step_id or "step")
        offer = self.checkpointing and step_id is None and not calls.force_plan and \
            state.lease is not None
        body, headers = self._request(definition, state, calls, step_id, offer)
        started = self.engine.clock.now_ms()
        limit = self.call_timeout(definition)
        try:
            response = await self.client.post(url, content=body, headers=headers,
                                              timeout=httpx.Timeout(limit, connect=10.0))
        except httpx.TimeoutException as exc:
            return [RunFailed({"name": "CallTimeout", "message": (
                f"the app at {url} did not answer within {limit:g} s ({type(exc).__name__}); "
                "the limit is the server's SDK call timeout (--sdk-call-timeout), or the "
                "function's timeouts.finish when shorter")})]
        except httpx.HTTPError as exc:
            return [RunFailed({"name": "AppUnreachable", "message": (
                f"could not call the app at {url}: {type(exc).__name__}: {exc}")})]
        unsigned = self._unsigned(url, response)
        if unsigned is not None:
            return [unsigned]
        version = response.headers.get("x-inngest-req-version", "")
        if version.lstrip("-").isdigit():
            self.version = int(version)
        ended = self.engine.clock.now_ms()
        answered = {k.lower(): v for k, v in response.headers.items()}
        try:
            answer = protocol.outcomes(response.status_code, answered, response.content,
                                       calls, started, ended, seq)
            # Steps the app checkpointed during the call are stored: what it answered
            # besides comes after them (its positions, the attempts it counts from).
            if offer and _placed(answer) and await self._checkpointed(state, calls):
                answer = protocol.outcomes(response.status_code, answered, response.content,
                                           calls, started, ended, seq)
            return answer
        except protocol.ProtocolError as exc:
            return [RunFailed({"name": "ProtocolError", "message": (
                f"the app at {url} answered outside the protocol: {exc}")}, retriable=False)]

    def call_timeout(self, definition: FunctionDefinition) -> float:
        """Seconds one call of this function may take: the server's SDK call timeout, or
        less when the function's attempt timeout or `timeouts.finish` is shorter."""
        limits = [self.call_timeout_s, definition.attempt_timeout_ms / 1000]
        timeouts = definition.flow.timeouts
        if timeouts is not None and timeouts.finish_ms is not None:
            limits.append(timeouts.finish_ms / 1000)
        return min(limits)

    async def _checkpointed(self, state: RunState, calls: protocol.CallState) -> bool:
        """Read the run's steps again after a call that offered checkpointing: the steps the
        app checkpointed meanwhile join the memo (True when there were some)."""
        fresh = await self.engine.load(state.run["id"])
        if fresh is None:
            return False
        stored = protocol.memo(fresh)
        if stored.stack == calls.stack:
            return False
        state.steps = fresh.steps
        calls.steps, calls.stack, calls.attempts = stored.steps, stored.stack, stored.attempts
        calls.attempt = stored.attempt
        return True

    def _request(self, definition: FunctionDefinition, state: RunState,
                 calls: protocol.CallState, step_id: str | None, offer: bool = False
                 ) -> tuple[bytes, dict[str, str]]:
        """A call's body and headers, signed with a signing key; `offer`: the call offers
        checkpointing."""
        request = protocol.request_body(
            state, calls, definition.retry.retries + 1, self.version, step_id,
            checkpoint.context(definition.id, state.lease)
            if offer and state.lease is not None else None)
        # Signed calls carry canonical (JCS) JSON, which is what the SDKs check the signature
        # against; unsigned ones (dev mode) plain compact JSON, several times faster to make.
        body = signing.canonical(request) if self.signing_key is not None else \
            dumps(request, "call body").encode()
        # As Inngest's executor sends them: the SDKs read `ctx.requestId` and `ctx.jobId` from
        # these. A job is one step's execution (its retries share it), as a queue item is.
        job = f"{state.run['id']}:{len(calls.stack)}:{step_id or 'step'}"
        headers = {"Content-Type": "application/json", "X-Run-ID": state.run["id"],
                   "X-Inngest-Server-Kind": "dev" if self.signing_key is None else "cloud",
                   "X-Request-ID": new_id(), "X-Inngest-Job-ID": job,
                   "X-Inngest-Step-ID": step_id or "step"}
        if self.signing_key is not None:
            headers["X-Inngest-Signature"] = signing.sign(body, self.signing_key,
                                                          self.engine.clock.now_ms() // 1000)
        if self.version != -1:
            headers["X-Inngest-Req-Version"] = str(self.version)
        return body, headers

    def _unsigned(self, url: str, response: httpx.Response) -> RunFailed | None:
        """With a signing key, a (retried) failure when the answer is not signed by it."""
        if self.signing_key is None:
            return None
        unsigned = signing.verify(response.content, response.headers.get("x-inngest-signature"),
                                  self.signing_key, self.engine.clock.now_ms() // 1000,
                                  self.signing_fallback)
        if unsigned is None:
            return None
        # Not the app's answer, or the keys differ.
        return RunFailed({"name": "AnswerNotSigned", "message": (
            f"the app at {url} answered HTTP {response.status_code} and {unsigned}; " +
            ("it refused this server's signature: " if response.status_code == 401 else "") +
            "the app's INNGEST_SIGNING_KEY (or INNGEST_SIGNING_KEY_FALLBACK) must be this "
            "server's --signing-key (or --signing-key-fallback)")})


def _placed(answer: list[Outcome | GatewayCall] | protocol.Planned) -> bool:
    """Whether an answer holds steps, which are placed after the steps stored before them;
    the run's end or a failed call is not."""
    return isinstance(answer, protocol.Planned) or \
        any(not isinstance(o, RunCompleted | RunFailed) for o in answer)


def host_refused(url: str, hosts: frozenset[str] | None) -> str | None:
    """The host of `url` when it is not among `hosts` (None: every host is allowed)."""
    if hosts is None:
        return None
    host = (urlsplit(url).hostname or "").lower()
    return None if host in hosts else host


class _Race:
    """Planned steps in race mode (`parallelMode: "race"`): as soon as one completes it is
    stored and the app is asked again (the others still running: it only plans), and only
    the steps it plans that are not running yet are started. `run` returns the app's answer
    once no step is running, to be handled as any; a step that does not complete (or an
    opcode that parks the run) ends the race: the steps running are awaited and everything
    is applied together. None: the run was lost."""

    def __init__(self, executor: HttpExecutor, job: Job, definition: FunctionDefinition,
                 calls: protocol.CallState) -> None:
        self.executor = executor
        self.job = job
        self.definition = definition
        self.calls = calls
        self.tasks: dict[str, asyncio.Task[list[Outcome] | protocol.Planned]] = {}
        self.others: list[Outcome] = []  # the plans' other opcodes, applied at the end

    def start(self, plan: protocol.Planned) -> None:
        self.others.extend(cast(list[Outcome], plan.others))  # gateways made by `_call`
        for sid, seq in zip(plan.step_ids, plan.seqs, strict=True):
            if sid not in self.tasks and sid not in self.calls.steps:
                self.tasks[sid] = asyncio.create_task(self.executor._call(
                    self.definition, self.job.state, self.calls, step_id=sid, seq=seq))

    async def run(self) -> list[Outcome] | None:
        answer: list[Outcome] | protocol.Planned = []
        while self.tasks:
            done, _ = await asyncio.wait(self.tasks.values(),
                                         return_when=asyncio.FIRST_COMPLETED)
            answers = {sid: self.tasks.pop(sid).result() for sid in list(self.tasks)
                       if self.tasks[sid] in done}
            steps, failure = _step_outcomes(answers)
            if failure is not None or self.others or \
                    not all(isinstance(o, StepCompleted) for o in steps):
                return await self.settle_all(steps, failure, [])
            if not await self.executor._memoize(self.job.lease, self.calls, steps):
                return None
            self.calls.force_plan = bool(self.tasks)  # steps are running: the app only plans
            answer = await self.executor._call(self.definition, self.job.state, self.calls)
            self.calls.force_plan = False
            if isinstance(answer, protocol.Planned):
                self.start(answer)
            elif self.tasks and any(isinstance(o, RunCompleted) for o in answer):
                return answer  # the function finished: the steps still running lose
            elif self.tasks:
                return await self.settle_all([], None, answer)
        if isinstance(answer, protocol.Planned):  # it planned only steps already done
            return [RunFailed({"name": "ProtocolError", "message": (
                "the app planned only steps that had completed")}, retriable=False)]
        return answer

    async def settle_all(self, steps: list[Outcome], failure: RunFailed | None,
                         ending: list[Outcome]) -> list[Outcome]:
        """The race ends: wait for the steps running and put every outcome together."""
        answers = dict(zip(self.tasks, await asyncio.gather(*self.tasks.values()),
                           strict=True))
        self.tasks.clear()
        more, late = _step_outcomes(answers)
        last = None if any(isinstance(o, RunCompleted | RunFailed) for o in ending) else \
            failure or late  # the run ends once
        return [*steps, *more, *self.others, *ending, *([last] if last is not None else [])]


def _step_outcomes(answers: dict[str, list[Outcome] | protocol.Planned]
                   ) -> tuple[list[Outcome], RunFailed | None]:
    """Planned steps' own calls' answers: each step's outcome, and the first failure of a
    call that answered something else (the app unreachable, an error, a plan)."""
    steps: list[Outcome] = []
    failure: RunFailed | None = None
    for sid, answer in answers.items():
        first = None if isinstance(answer, protocol.Planned) else answer[0]
        if isinstance(first, StepCompleted | StepFailed):
            steps.append(first)
        elif failure is None:
            failure = first if isinstance(first, RunFailed) else RunFailed(
                {"name": "ProtocolError", "message": (
                    f"the planned step {sid} answered something other than its result")},
                retriable=False)
    return steps, failure


class RemoteApps:
    """Keeps one `Worker` with an `HttpExecutor` per synced SDK app, refreshed as apps re-sync
    (`signing_key`, `signing_fallback`, `max_calls`, `allowed_hosts`: the executors';
    `worker_options`: the workers'). In
    `stepwise dev` it also asks the apps at `urls` to sync (a `PUT` to its serve URL makes an
    SDK register itself with this server) at start and every `resync_every` seconds after, so
    an app that restarted with other functions is re-synced (an unchanged sync writes
    nothing)."""

    def __init__(self, storage: Storage, urls: tuple[str, ...] = (), *,
                 check_every: float = 1.0, resync_every: float = 5.0,
                 signing_key: str | None = None, signing_fallback: str | None = None,
                 max_calls: int = MAX_CALLS_PER_APP,
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 allowed_hosts: frozenset[str] | None = None,
                 gateway: Gateway | None = None,
                 **worker_options: Any) -> None:
        self.storage = storage
        #: One for every app's executor: `step.fetch` and `step.ai.infer` requests.
        self.gateway = gateway or Gateway()
        self.call_timeout_s = call_timeout_s
        self.allowed_hosts = allowed_hosts
        self.engine = Engine(storage)
        self.urls = list(urls)
        self.check_every = check_every
        self.resync_every = resync_every
        self.signing_key = signing_key
        self.signing_fallback = signing_fallback
        self.max_calls = max_calls
        self.worker_options = worker_options
        self.workers: dict[str, Worker] = {}
        self.executors: dict[str, HttpExecutor] = {}
        self._synced_at: dict[str, float] = {}  # URL -> when it last answered a sync
        #: app -> its definitions' change time and SDK, as loaded
        self._changed: dict[str, tuple[int, str | None]] = {}
        self._down: set[str] = set()  # URLs that did not answer since they last did

    async def tick(self) -> None:
        """One round: sync the apps that are due, start or refresh the apps' workers."""
        now = asyncio.get_running_loop().time()
        due = [url for url in self.urls
               if now - self._synced_at.get(url, -self.resync_every) >= self.resync_every]
        if due:
            async with httpx.AsyncClient(timeout=10.0) as client:
                await asyncio.gather(*(self._sync(client, url, now) for url in due))
        # Only the apps whose definitions changed are read again: with thousands of functions
        # stored, reading and decoding them all every second held the process's loop (and
        # the HTTP server sharing it, in `stepwise dev`) for seconds.
        changes = await self.storage.read(definitions.app_changes)
        for app_id in sorted(changes):
            if self._changed.get(app_id) == changes[app_id]:
                continue
            sdk = changes[app_id][1]
            functions = await self.storage.read(definitions.app_functions, app_id)
            executor = self.executors.get(app_id)
            if executor is None and not any(f.get("url") for f in functions):
                self._changed[app_id] = changes[app_id]
                continue  # a Python app's, or an SDK app with no function
            if executor is None:
                executor = HttpExecutor(app_id, Engine(self.storage),
                                        signing_key=self.signing_key,
                                        signing_fallback=self.signing_fallback,
                                        max_calls=self.max_calls,
                                        call_timeout_s=self.call_timeout_s,
                                        allowed_hosts=self.allowed_hosts,
                                        gateway=self.gateway, sdk=sdk)
                worker = Worker(executor, self.storage, **self.worker_options)
                await worker.start()
                self.executors[app_id] = executor
                self.workers[app_id] = worker
                log.info("serving SDK app %s: %s", app_id, ", ".join(executor.definitions))
            else:
                await executor.refresh(functions, sdk=sdk)
            self._changed[app_id] = changes[app_id]

    async def _sync(self, client: httpx.AsyncClient, url: str, now: float) -> None:
        try:
            answer = await client.put(url)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            if url not in self._down:
                log.warning("SDK app at %s %s (%s); trying again", url,
                            "is not reachable" if url in self._synced_at else
                            "did not sync yet", exc)
                self._down.add(url)
            return
        if url not in self._synced_at:
            log.info("asked the SDK app at %s to sync", url)
        elif url in self._down:
            log.info("SDK app at %s is back and synced", url)
        self._down.discard(url)
        self._synced_at[url] = now

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("SDK apps: refresh failed; trying again")
            await asyncio.sleep(self.check_every)

    async def stop(self, grace: float) -> None:
        for worker in self.workers.values():
            await worker.stop(grace)
        await self.gateway.aclose()

