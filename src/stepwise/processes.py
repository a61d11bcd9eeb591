"""Child processes that run CPU-bound step code on every core, robust to children that die.

A `ProcessPool` starts up to `size` children (spawn start method: the parent is
multi-threaded, so fork is unsafe) on demand and reuses them. Each child runs one task at
a time over a pipe: the function crosses by reference (pickled: module and name), its
arguments and result as JSON text, so a step behaves the same here as in a thread, and the
result is encoded (and refused when it cannot be stored) in the child.

The blocking exchange for a task runs in a thread of the pool's own, which polls the pipe
with a short timeout so that it notices a child that died, one over the memory bound and a
cancelled task; nothing in it can block forever. A child that dies fails only its own task
(`ChildDied`, always retriable); it is reaped and replaced on demand.

Children ignore SIGINT and SIGTERM (the parent decides when they stop) and die with the
parent: PR_SET_PDEATHSIG on Linux, and a thread that watches their parent's pid elsewhere.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import inspect
import multiprocessing
import multiprocessing.util  # its exit hook (joins children) registered before ours
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

from .errors import ErrorInfo, NonRetriableError, RetryAfterError
from .payloads import MiB, dumps, loads

#: How often the thread running a task looks at its child (memory, death, cancel), seconds.
TICK_S = 0.2
#: How long a child told to stop may take to exit before it is killed, seconds.
STOP_GRACE_S = 2.0
#: How often a child checks that its parent is still there, seconds.
PARENT_CHECK_S = 0.5

_CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                            signal.SIGABRT})


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ProcessOptions:
    """How many children run step code, and when one is replaced by a fresh one."""

    #: Children at most, started on demand.
    size: int = field(default_factory=_cpu_count)
    #: Replace a child after this many tasks (code that leaks memory or state).
    max_tasks_per_child: int | None = None
    #: A child whose resident memory goes over this many MiB is killed (its task fails with
    #: `ChildDied`); checked about every TICK_S while a task runs, and after each task (over
    #: it then: the child is replaced).
    max_memory_mb: int | None = None

    def __post_init__(self) -> None:
        for name in ("size", "max_tasks_per_child", "max_memory_mb"):
            value = getattr(self, name)
            if value is None and name != "size":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ProcessOptions.{name} must be a positive integer, "
                                 f"got {value!r}")


class ChildDied(Exception):
    """The child running the task died or was killed (os._exit, a signal such as SIGSEGV,
    the out-of-memory killer, the memory bound, the pool closing). Always retriable: the code
    may well succeed in a fresh process."""

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        #: The child's exit code: negative for a signal, None when unknown.
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (Exception's keeps args only)
        return (type(self), (str(self), self.exitcode))


class ChildRaised(Exception):
    """The step code raised in the child. The exception cannot cross as itself (its class
    may not even unpickle in the parent), so it crosses as its stored shape."""

    def __init__(self, error: ErrorInfo, non_retriable: bool = False,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{error.get('name')}: {error.get('message')}")
        #: name (the exception's type), message and stack (formatted in the child).
        self.error = error
        #: It was a stepwise.errors.NonRetriableError.
        self.non_retriable = non_retriable
        #: It was a stepwise.errors.RetryAfterError: its delay, seconds.
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error, self.non_retriable, self.retry_after_s))


# --- the child ----------------------------------------------------------------------------

def _child_main(conn: Connection[Any, Any], parent_pid: int) -> None:
    """A child's life: one task at a time until told to stop (None) or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        conn.send(_run_task(*message))


def _die_with_parent(parent_pid: int) -> None:
    """Never outlive the parent, even one killed with SIGKILL (no chance to clean up)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the line above
        os._exit(1)

    def watch() -> None:  # elsewhere, and if the thread that started this child ended
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="stepwise-parent-watch", daemon=True).start()


def _run_task(fn_pickle: bytes, args_json: str, kwargs_json: str, what: str,
              limit: int) -> tuple[Any, ...]:
    """("ok", result JSON) or ("raised", error, non_retriable, retry_after_s)."""
    try:
        fn = pickle.loads(fn_pickle)
        result = fn(*loads(args_json), **loads(kwargs_json))
        if inspect.isawaitable(result):
            result = run_to_end(result)
        return ("ok", dumps(result, what, limit))
    except Exception as exc:
        error = ErrorInfo(name=type(exc).__name__, message=_text(exc, str),
                          stack=_text(exc, lambda e: "".join(traceback.format_exception(e))))
        return ("raised", error, isinstance(exc, NonRetriableError),
                exc.delay if isinstance(exc, RetryAfterError) else None)


def run_to_end(awaitable: Awaitable[Any]) -> Any:
    """What a coroutine made by plain step code gives, run on an event loop of its own in
    this thread (a child's, or a sync function's)."""
    return asyncio.run(_awaited(awaitable))


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _text(exc: Exception, show: Callable[[Exception], str]) -> str:
    """`show(exc)`, or a placeholder when the exception cannot even be shown."""
    try:
        return show(exc)
    except Exception as problem:
        return f"<{type(exc).__name__} could not be shown: {type(problem).__name__}>"


# --- the parent ---------------------------------------------------------------------------

@dataclass(eq=False)
class _Child:
    """A child process and the parent's end of its pipe."""

    proc: SpawnProcess
    conn: Connection[Any, Any]
    pid: int
    stats: Any  # psutil.Process, when memory is bounded
    tasks: int = 0
    #: Why the parent killed it, for the message of its task's ChildDied.
    killed_for: str | None = None

    def kill(self, why: str | None = None) -> None:
        """SIGKILL now (the thread that owns the child reaps it)."""
        if self.killed_for is None:
            self.killed_for = why
        with contextlib.suppress(OSError):
            self.proc.kill()  # nothing once reaped

    def rss(self) -> int | None:
        """Resident memory in bytes; None when it is gone."""
        try:
            return int(self.stats.memory_info().rss)
        except psutil.Error:
            return None


@dataclass(eq=False)
class _Job:
    """One task, shared by the awaiting coroutine and the thread running the exchange."""

    message: tuple[bytes, str, str, str, int]
    child: _Child | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancelled: bool = False
    done: bool = False  # the thread has its outcome: a cancel no longer kills the child


@dataclass(eq=False)
class _Reply:
    """A task's outcome, and whether its child may run another task."""

    child: _Child | None
    result: str | None = None
    failure: BaseException | None = None
    reusable: bool = False
    retire: bool = False

    def outcome(self) -> str:
        if self.failure is not None:
            raise self.failure
        assert self.result is not None
        return self.result


class ProcessPool:
    """Up to `options.size` child processes running plain step code, one task each at a time."""

    def __init__(self, options: ProcessOptions) -> None:
        self.options = options
        self._context = multiprocessing.get_context("spawn")
        self._threads = ThreadPoolExecutor(options.size, thread_name_prefix="stepwise-process")
        self._slots = asyncio.Semaphore(options.size)
        self._idle: list[_Child] = []  # touched on the loop only
        self._children: set[_Child] = set()  # alive or not yet reaped; under _lock
        self._lock = threading.Lock()
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._bound = None if options.max_memory_mb is None else options.max_memory_mb * MiB
        _POOLS.add(self)

    @property
    def pids(self) -> list[int]:
        """The children's pids (those not yet reaped)."""
        with self._lock:
            return sorted(child.pid for child in self._children)

    async def run(self, fn: Callable[..., Any], args_json: str, kwargs_json: str, what: str,
                  limit: int) -> str:
        """`fn(*loads(args_json), **loads(kwargs_json))` in a child: its result as JSON text
        (`payloads.dumps(result, what, limit)`, made in the child). An `async def` runs
        there with asyncio.run.

        Raises ChildRaised (the code raised, or its result cannot be stored), ChildDied (the
        child died, or the pool is closed), or TypeError when `fn` cannot cross by reference.
        Cancelling the caller kills the child at once (it is replaced on demand).
        """
        message = (_by_reference(fn), args_json, kwargs_json, what, limit)
        async with self._slots:
            if self._closed:
                raise ChildDied("the process pool is closed: the step code did not start")
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[_Reply] = loop.create_future()
            job = _Job(message, self._idle.pop() if self._idle else None)
            self._threads.submit(self._work, job, loop, waiter)
            try:
                reply = await waiter
            except asyncio.CancelledError:
                self._cancel(job, waiter)
                raise
            self._reclaim(reply)
            return reply.outcome()

    async def close(self) -> None:
        """Kill every child (running tasks fail with ChildDied) and wait until they exited."""
        if self._closing is None:
            self._closed = True
            self._kill_all("the process pool was closed")
            self._idle.clear()
            self._closing = asyncio.ensure_future(asyncio.to_thread(self._finish))
        await asyncio.shield(self._closing)

    # --- on the loop ----------------------------------------------------------------------

    def _cancel(self, job: _Job, waiter: asyncio.Future[_Reply]) -> None:
        """The caller was cancelled: kill its child, unless the task already ended."""
        with job.lock:
            job.cancelled = True
            done, child = job.done, job.child
        if not done:
            if child is not None:
                child.kill()
        elif waiter.done() and not waiter.cancelled():  # its outcome came, too late
            self._reclaim(waiter.result())

    def _deliver(self, waiter: asyncio.Future[_Reply], reply: _Reply) -> None:
        if waiter.cancelled():
            self._reclaim(reply)
        else:
            waiter.set_result(reply)

    def _reclaim(self, reply: _Reply) -> None:
        """A child that finished its task waits for the next one."""
        if reply.reusable and reply.child is not None and not self._closed:
            self._idle.append(reply.child)

    def _kill_all(self, why: str) -> None:
        with self._lock:
            children = list(self._children)
        for child in children:
            child.kill(why)

    # --- in the pool's threads ------------------------------------------------------------

    def _work(self, job: _Job, loop: asyncio.AbstractEventLoop,
              waiter: asyncio.Future[_Reply]) -> None:
        """Run one task and hand its outcome to the loop; then retire its child if due."""
        try:
            reply = self._exchange(job)
        except BaseException as exc:  # e.g. too many open files: the caller sees it
            if job.child is not None:
                job.child.kill()
                self._reap(job.child)
            reply = _Reply(None, failure=exc)
        with job.lock:
            job.done = True
            cancelled = job.cancelled
        if cancelled and reply.reusable and reply.child is not None:
            reply.child.kill()  # the caller gave up on it just as it ended
            self._reap(reply.child)
        elif not cancelled:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._deliver, waiter, reply)
        if reply.retire and reply.child is not None:
            self._retire(reply.child)

    def _exchange(self, job: _Job) -> _Reply:
        child = job.child
        if child is not None and _died_while_idle(child):
            with job.lock:
                job.child = None
            child.kill()
            self._reap(child)
            child = None
        if child is None:
            if job.cancelled:
                return _Reply(None, failure=asyncio.CancelledError())
            if self._closed:
                return _Reply(None, failure=ChildDied(
                    "the process pool is closed: the step code did not start"))
            try:
                child = self._start()
            except OSError as exc:  # e.g. too many processes: another attempt may start one
                return _Reply(None, failure=ChildDied(
                    f"a process to run step code could not start: {exc}"))
            with job.lock:
                job.child = child
                cancelled = job.cancelled
            if cancelled:
                child.kill()
        with contextlib.suppress(OSError):  # it died: reading the pipe below says so
            child.conn.send(job.message)
        while True:
            if job.cancelled:
                child.kill()
            try:
                ready = child.conn.poll(TICK_S)
            except OSError:
                ready = True
            if ready:
                try:
                    answer = child.conn.recv()
                except (EOFError, OSError):
                    return self._died(child)
                break
            if child.proc.exitcode is not None and not child.conn.poll(0):
                return self._died(child)
            self._check_memory(child)
        child.tasks += 1
        retire = self._worn_out(child)
        if answer[0] == "ok":
            return _Reply(child, result=answer[1], reusable=not retire, retire=retire)
        return _Reply(child, failure=ChildRaised(answer[1], answer[2], answer[3]),
                      reusable=not retire, retire=retire)

    def _start(self) -> _Child:
        parent_end, child_end = self._context.Pipe()
        proc = self._context.Process(target=_child_main, args=(child_end, os.getpid()),
                                     name="stepwise-step-code")
        proc.start()
        child_end.close()  # else the parent never reads EOF when the child dies
        assert proc.pid is not None
        stats = None
        if self._bound is not None:
            with contextlib.suppress(psutil.Error):
                stats = psutil.Process(proc.pid)
        child = _Child(proc, parent_end, proc.pid, stats)
        with self._lock:
            self._children.add(child)
            closed = self._closed
        if closed:
            child.kill("the process pool was closed")
        return child

    def _check_memory(self, child: _Child) -> None:
        if self._bound is None or child.stats is None:
            return
        rss = child.rss()
        if rss is not None and rss > self._bound:
            child.kill(f"it used {rss // MiB} MB, over the bound of "
                       f"{self.options.max_memory_mb} MB per process (max_memory_mb)")

    def _worn_out(self, child: _Child) -> bool:
        """Whether the child should be replaced after this task."""
        most = self.options.max_tasks_per_child
        if most is not None and child.tasks >= most:
            return True
        if self._bound is None or child.stats is None:
            return False
        rss = child.rss()
        return rss is None or rss > self._bound

    def _died(self, child: _Child) -> _Reply:
        exitcode = self._reap(child)
        return _Reply(child, failure=ChildDied(_death(child, exitcode), exitcode))

    def _retire(self, child: _Child) -> None:
        """Ask the child to stop; kill it if it does not within STOP_GRACE_S."""
        with contextlib.suppress(OSError):
            child.conn.send(None)
        child.proc.join(STOP_GRACE_S)
        self._reap(child)

    def _reap(self, child: _Child) -> int | None:
        """Wait for a dead (or dying) child, killing it when it lingers; forget it."""
        child.proc.join(STOP_GRACE_S)
        if child.proc.exitcode is None:
            child.kill()
            child.proc.join()
        with self._lock:
            self._children.discard(child)
        child.conn.close()
        return child.proc.exitcode

    def _finish(self) -> None:
        """The end of close(): the threads end (they reap their children), then the rest."""
        self._threads.shutdown(wait=True)
        with self._lock:
            left = list(self._children)
        for child in left:
            child.kill()
            self._reap(child)


def _died_while_idle(child: _Child) -> bool:
    """An idle child sends nothing: its pipe readable (at EOF) means it is dying or dead."""
    try:
        return child.proc.exitcode is not None or child.conn.poll(0)
    except OSError:
        return True


def _by_reference(fn: Callable[..., Any]) -> bytes:
    """`fn` pickled; a TypeError when it cannot cross to another process."""
    try:
        return pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise TypeError(f"step code that runs in a process must be a module-level function, "
                        f"got {name}: pass its arguments through "
                        "ctx.step.run(step_id, fn, *args)") from exc


def _death(child: _Child, exitcode: int | None) -> str:
    """How the child died, in a sentence for the operator."""
    who = f"the process running step code (pid {child.pid})"
    if child.killed_for is not None:
        return f"{who} was killed: {child.killed_for}"
    if exitcode is None:
        return f"{who} died (its exit status is unknown)"
    if exitcode >= 0:
        return f"{who} exited with status {exitcode} (os._exit or sys.exit in the step code)"
    try:
        sig = signal.Signals(-exitcode)
    except ValueError:
        return f"{who} died from signal {-exitcode}"
    if sig == signal.SIGKILL:
        return f"{who} was killed by SIGKILL (the out-of-memory killer?)"
    if sig in _CRASH_SIGNALS:
        return f"{who} died from signal {sig.name} (a crash in native code)"
    return f"{who} died from signal {sig.name}"


#: Every pool, so that their children die with the interpreter.
_POOLS: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


def _kill_at_exit() -> None:
    """Children ignore SIGTERM, so the interpreter's exit must kill them: before the pools'
    threads are joined (they wait for their child's answer) and before multiprocessing
    joins its children."""
    for pool in list(_POOLS):
        pool._closed = True  # a child starting now is killed as it is registered
        pool._kill_all("the parent process is exiting")


# threading's exit hooks run before non-daemon threads (the pools' threads) are joined, and
# before atexit's (multiprocessing's); atexit (last in, first out) is the fallback.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_kill_at_exit)
else:
    atexit.register(_kill_at_exit)
