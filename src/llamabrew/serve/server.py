"""The HTTP server's runtime behind `llamabrew serve` (`serve.cli`): fair admission, body limit, uvicorn.

An engine runs as many generations at once as it has slots: a llama.cpp engine decodes ``--parallel`` requests
together (`engines.llamacpp_batch`); a torch engine runs one at a time. Beyond the slots, requests wait in
arrival order, up to ``max_waiting`` of them (then 429 with Retry-After); a client that goes away leaves the
line, or stops its generation at the next step, and its place passes on at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from llamabrew.errors import LlamabrewError
from llamabrew.extras import require

if TYPE_CHECKING:  # importing the engines means importing torch: not for `llamabrew --help`
    from llamabrew.engines import Engine, Sampling

_END = object()
STARTED = object()  # yielded when the request's generation begins (after its wait in the queue)


async def _disconnected(request: Any) -> None:
    """Returns when the client hangs up (the body has been read, so only ``http.disconnect`` can come)."""
    with contextlib.suppress(Exception):  # a broken connection counts as a hang-up too
        while (await request.receive())["type"] != "http.disconnect":
            pass


def slots_of(engine: Any) -> tuple[object, int]:
    """What bounds how many generations an engine runs at once, and how many: a llama.cpp engine's batch
    runner (shared by the names served from one model), else the engine's lock (torch: one at a time)."""
    runner = getattr(engine, "runner", None)
    if runner is not None:
        return runner, int(runner.n_slots)
    return getattr(engine, "lock", engine), 1


class FairSlots:
    """An asyncio semaphore that lets waiters in strictly in arrival order."""

    def __init__(self, capacity: int) -> None:
        self.free, self.capacity = capacity, capacity
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as the waiter gave up: pass it on
            else:
                self.waiters.remove(fut)
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class Scheduler:
    """FIFO admission to each engine's slots, generation on worker threads, counts for /health."""

    def __init__(self, max_waiting: int = 256) -> None:
        self.max_waiting = max_waiting
        self.groups: dict[int, tuple[object, FairSlots]] = {}  # id(what bounds it) → (it, its slots)
        self.waiting = self.running = self.completed = self.cancelled = self.rejected = 0
        self.seconds = 0.0  # a moving average of how long a generation takes, for Retry-After
        self._tokenizer = ThreadPoolExecutor(1, thread_name_prefix="llamabrew-tokenize")

    def counts(self) -> dict[str, int]:
        return {"waiting": self.waiting, "running": self.running, "completed": self.completed,
                "cancelled": self.cancelled, "rejected": self.rejected, "slots": self.capacity()}

    def capacity(self) -> int:
        return sum(slots.capacity for _, slots in self.groups.values())

    def full(self) -> bool:
        return self.waiting >= self.max_waiting

    def reject(self) -> int:
        """Count a request turned away; the seconds after which a retry may find room."""
        self.rejected += 1
        per_slot = self.waiting / max(1, self.capacity())
        return max(1, min(60, math.ceil(self.seconds * per_slot)))

    def slots(self, engine: Engine) -> FairSlots:
        key, n = slots_of(engine)
        if id(key) not in self.groups:
            self.groups[id(key)] = (key, FairSlots(n))  # the key is kept alive, so its id stays its own
        return self.groups[id(key)][1]

    async def tokenize(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Prompt checks off the event loop (a 1 MB prompt takes a while), one at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer, fn, *args)

    async def _acquire(self, slots: FairSlots, gone: asyncio.Future[None]) -> bool:
        """Wait for a slot; False when the client left first. Never leaves a slot taken by nobody."""
        self.waiting += 1
        acquire = asyncio.ensure_future(slots.acquire())
        got = False
        try:
            await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
            got = acquire.done() and not acquire.cancelled() and not gone.done()
        finally:  # also when this request is cancelled while it waits
            self.waiting -= 1
            if not got:
                if acquire.done() and not acquire.cancelled():
                    slots.release()
                else:
                    acquire.cancel()
        return got

    def _finish(self, slots: FairSlots, cancelled: bool, seconds: float,
                queue: asyncio.Queue[Any] | None = None) -> None:
        self.running -= 1
        self.cancelled += cancelled
        self.completed += not cancelled
        if not cancelled:
            self.seconds = seconds if self.seconds == 0 else 0.8 * self.seconds + 0.2 * seconds
        slots.release()
        if queue is not None:
            queue.put_nowait(_END)

    def _work(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], slots: FairSlots,
              engine: Engine, messages: list[dict[str, str]], sampling: Sampling, cancel: threading.Event) -> None:
        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
                loop.call_soon_threadsafe(queue.put_nowait, item)

        t0 = time.monotonic()
        try:
            for piece in engine.stream(messages, sampling, cancel=cancel):
                put(piece)
            put(engine.last)
        except BaseException as e:  # handed to the request, which answers with an error
            put(e)
        finally:  # one callback: the slot is free before the request sees the end
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finish, slots, cancel.is_set(), time.monotonic() - t0, queue)

    async def generate(self, request: Any, engine: Engine, messages: list[dict[str, str]],
                       sampling: Sampling) -> AsyncIterator[Any]:
        """`STARTED`, text pieces, then the `GenerationStats` (or the exception the engine raised)."""
        cancel = threading.Event()
        gone = asyncio.ensure_future(_disconnected(request))
        gone.add_done_callback(lambda t: t.cancelled() or cancel.set())
        slots = self.slots(engine)
        try:
            if not await self._acquire(slots, gone):
                self.cancelled += 1
                return
            loop, queue = asyncio.get_running_loop(), asyncio.Queue[Any]()
            self.running += 1
            try:
                threading.Thread(target=self._work, args=(loop, queue, slots, engine, messages, sampling, cancel),
                                 daemon=True, name="llamabrew-generate").start()
            except RuntimeError:
                self._finish(slots, True, 0.0)
                raise
            yield STARTED
            while (item := await queue.get()) is not _END:
                yield item
        finally:
            cancel.set()  # the consumer stopped early (client gone, error): the worker stops at once
            gone.cancel()


class BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes (declared or chunked) get 413 before any handler runs."""

    def __init__(self, app: Any, limit: int, error: Callable[[], dict[str, Any]]) -> None:
        self.app, self.limit, self.error = app, limit, error

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_big = declared.isdigit() and int(declared) > self.limit
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= 16 * self.limit:  # drain a too-big body (up to a point): clients read the 413
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk, more = message.get("body", b""), message.get("more_body", False)
            size += len(chunk)
            too_big = too_big or size > self.limit
            if not too_big:
                chunks.append(chunk)
        if too_big:
            body = json.dumps(self.error()).encode()
            await send({"type": "http.response.start", "status": 413, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # later reads wait for the disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


@contextlib.contextmanager
def run_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, reuse_address: bool = False) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread (tests, benchmarks); yields its base URL.
    ``reuse_address``: a restart may bind the same port at once (as an open page sees a restarted server)."""
    uvicorn = require("serve", "serving over HTTP", "uvicorn")

    sock = socket.socket()
    if reuse_address:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def parse_adapters(specs: list[str] | None) -> dict[str, str]:
    """``["name=dir", ...]`` → ``{name: dir}``."""
    out: dict[str, str] = {}
    for spec in specs or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise LlamabrewError(f"--adapter {spec}: expected NAME=DIR, e.g. --adapter pirate=runs/pirate")
        if name.strip() in out:
            raise LlamabrewError(f"--adapter {spec}: the name '{name.strip()}' is given twice")
        out[name.strip()] = folder.strip()
    return out
