"""Continuous batching on llama.cpp: several requests decoded together, one KV-cache sequence per slot.

Decoding on a CPU is bound by memory bandwidth (every token reads every weight), so one `llama_decode` carrying
the next token of every active sequence costs little more than one carrying a single token. A `BatchRunner`
owns a llama.cpp context with ``slots`` sequences and a thread that repeats one step:

1. requests waiting in line take free slots: the one holding their conversation (a next turn reuses the turns
   already computed, as llama.cpp's server does with its prompt cache), else the one used least recently;
2. every slot that is generating feeds its last token, all in one call, and samples its next one with its own
   sampler chain (temperature, top-k/p, repetition penalty, seed), stop strings and token limit;
3. one slot still reading its prompt feeds the next chunk of it (32 tokens), so a long prompt stalls the others
   for one chunk at a time (with no one generating, every reading slot feeds a chunk).

A cancelled request leaves at the start of the next step. Same answers under load: measured on llama.cpp as
built into llama-cpp-python 0.3.36, a row's logits are bitwise the same whatever else shares its call *if* no
call carries 64 or more tokens of one sequence (flash attention's CPU kernel changes there, so prompts go in
chunks of 32), every sequence has its own KV stream (``kv_unified`` off), prompt chunks and decode steps go
in separate calls (llama.cpp splits a mixed batch into equal per-sequence pieces, which can leave a row alone),
and, where 1-row products take another kernel (f16 weights here), no product has a single row: a lone token
gets a throwaway partner and a call wanting one row's logits asks for a second row's too (that costs a lone
request about a third of its speed, so it is done only where needed). "Lone" is per piece: with one KV stream
per sequence, llama.cpp cuts a step into pieces of consecutive sequence ids (slots 0, 2 and 3 decode as {0} and
{2, 3}), so a slot without a generating neighbour gets its partner too. Repacked / AMX weight buffers may
compute rows in groups with another kernel for the leftover rows. `batch_invariant` measures all this at
load; the engine pads only where it must, and falls back to plain weight buffers where padding is not enough.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from llamabrew.engines.llamacpp_slots import PENALTY_LAST_N, Job, Slot, choose_slot, common_prefix, make_sampler
from llamabrew.errors import LlamabrewError

log = logging.getLogger(__name__)
DECODE_LOCK = threading.Lock()  # one llama_decode at a time in this process: models served side by side share cores
PREFILL_CHUNK = 32  # prompt tokens per call: flash attention's CPU kernel takes another path from 64 queries on
Row = tuple[int, int, int, bool]  # token, position, sequence, whether its logits are wanted


def lone_partners(rows: list[Row]) -> list[Row]:
    """A throwaway row at the next position for each sequence that llama.cpp would compute alone: one row of
    its own, and no one-row sequence with an id next to its own (one KV stream per sequence: a step is cut into
    pieces of consecutive sequence ids)."""
    count: dict[int, int] = {}
    for _, _, seq, _ in rows:
        count[seq] = count.get(seq, 0) + 1
    single = {seq for seq, n in count.items() if n == 1}
    return [(token, pos + 1, seq, True) for token, pos, seq, _ in rows
            if seq in single and seq - 1 not in single and seq + 1 not in single]


class DecodeError(LlamabrewError):
    """llama_decode refused a batch (no room in the KV cache, or an internal error)."""


class BatchRunner:
    """A llama.cpp context of ``slots`` sequences of ``ctx_per_slot`` tokens each, and the thread that decodes."""

    def __init__(self, model: Any, slots: int, ctx_per_slot: int, threads: int,
                 lora: Any = None, all_logits: bool = False, chunk: int = PREFILL_CHUNK,
                 prompt_cache: bool = True) -> None:
        import llama_cpp

        self._lib, self.model = llama_cpp, model
        self.n_slots, self.ctx_per_slot, self.chunk, self.prompt_cache = slots, ctx_per_slot, chunk, prompt_cache
        self.n_batch = max(min(512, ctx_per_slot), 2 * slots)  # a step's rows and their partners
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.kv_unified = slots * ctx_per_slot, slots, False
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED if all_logits  # as `Llama` verified
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO)
        if all_logits:
            params.n_outputs_max_per_seq = 0  # every position's logits (export verification)
        else:  # a step's logits: one row per slot, or the two rows of a prompt chunk's end
            params.n_outputs_max, params.n_outputs_max_per_seq = 2 * slots, 2
        self.ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self.ctx:
            raise LlamabrewError(f"llama.cpp could not make a context of {slots} x {ctx_per_slot} tokens "
                                 "(out of memory? try a smaller --ctx or --parallel)")
        if lora is not None:
            adapters, scales = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora), (ctypes.c_float * 1)(1.0)
            if llama_cpp.llama_set_adapters_lora(self.ctx, adapters, 1, scales):
                llama_cpp.llama_free(self.ctx)
                raise LlamabrewError("llama.cpp could not apply the LoRA adapter")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = model.n_vocab()
        self.slots = [Slot(i, []) for i in range(slots)]
        self.pending: deque[Job] = deque()
        self.calls: deque[Callable[[], None]] = deque()
        self.cond = threading.Condition()
        self.closing, self.error = False, None
        self.pad = True  # no 1-row products (see `batch_invariant`; the engine turns it off where they agree)
        self._clock = itertools.count(1)
        self.thread = threading.Thread(target=self._run, daemon=True, name="llamabrew-batch")
        self.thread.start()

    # --- the caller's side ------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.closing or self.error is not None:
                raise LlamabrewError("the llama.cpp engine has stopped" + (f": {self.error}" if self.error else ""))
            self.pending.append(job)
            self.cond.notify()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the decoding thread between two steps and return what it returned."""
        done, box = threading.Event(), {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # raised in the caller's thread
                box["error"] = e
            finally:
                done.set()

        with self.cond:
            if self.closing or self.error is not None:
                raise LlamabrewError("the llama.cpp engine has stopped")
            self.calls.append(run)
            self.cond.notify()
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def busy(self) -> int:
        return sum(s.job is not None for s in self.slots) + len(self.pending)

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(60)
        if self.thread.is_alive():
            log.warning("the llama.cpp decoding thread did not stop; its context is left allocated")
            return
        self._lib.llama_batch_free(self.batch)
        self._lib.llama_free(self.ctx)

    # --- the decoding thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        error: BaseException = LlamabrewError("the llama.cpp engine was closed")
        try:
            while True:
                with self.cond:
                    while not (self.closing or self.pending or self.calls or self.busy()):
                        self.cond.wait()
                    if self.closing:
                        break
                    calls = list(self.calls)
                    self.calls.clear()
                    self._admit()
                for run in calls:
                    run()
                self._step()
        except BaseException as e:
            log.exception("the llama.cpp decoding loop failed")
            self.error = error = e
        with self.cond:
            jobs = [*self.pending, *(s.job for s in self.slots if s.job is not None)]
            self.pending.clear()
            for run in self.calls:  # their callers are waiting
                run()
        for job in jobs:
            job.finish("stop", error)

    def _admit(self) -> None:
        while self.pending:
            job = self.pending[0]
            if job.cancelled():
                self.pending.popleft().finish("stop")
                continue
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            self.pending.popleft()
            self._start(choose_slot(free, job.ids), job)

    def _start(self, slot: Slot, job: Job) -> None:
        keep = min(common_prefix(slot.cached, job.ids), len(job.ids) - 1) if self.prompt_cache else 0
        # (the last prompt token is always fed again, for its logits)
        if not self._lib.llama_memory_seq_rm(self.memory, slot.seq, keep, -1):
            keep = 0
            self._lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
        del slot.cached[keep:]
        slot.job, slot.next_token, slot.used = job, None, next(self._clock)
        slot.sampler = make_sampler(job.sampling, self.n_vocab)
        if job.sampling.repetition_penalty != 1.0:
            for token in job.ids[-PENALTY_LAST_N:]:
                self._lib.llama_sampler_accept(slot.sampler.sampler, token)
        job.started, job.reused = time.monotonic(), keep

    def _step(self) -> None:
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled():
                self._release(slot, "stop")
        generating = [s for s in self.slots if s.job is not None and s.next_token is not None]
        if generating:
            rows = [(s.next_token, len(s.cached), s.seq, True) for s in generating]
            if self._feed(rows, generating):
                for i, slot in enumerate(generating):
                    token = self._lib.llama_sampler_sample(slot.sampler.sampler, self.ctx, i)
                    slot.cached.append(slot.next_token)  # type: ignore[arg-type]
                    self._advance(slot, token)
        reading = sorted((s for s in self.slots if s.job is not None and s.next_token is None), key=lambda s: s.used)
        for slot in reading if not generating else reading[:1]:  # the earliest first; all when no one waits
            self._read_chunk(slot)

    def _read_chunk(self, slot: Slot) -> None:
        job, start = slot.job, len(slot.cached)
        assert job is not None
        chunk = job.ids[start : start + self.chunk]
        last = start + len(chunk) == len(job.ids)
        rows = [(t, start + j, slot.seq, last and j == len(chunk) - 1) for j, t in enumerate(chunk)]
        if self._feed(rows, [slot]):
            slot.cached.extend(chunk)
            if last:
                self._advance(slot, self._lib.llama_sampler_sample(slot.sampler.sampler, self.ctx, len(rows) - 1))

    def _advance(self, slot: Slot, token: int) -> None:
        assert slot.job is not None
        if reason := slot.job.take(token):
            self._release(slot, reason)
        else:
            slot.next_token = token

    def _release(self, slot: Slot, reason: str, error: BaseException | None = None) -> None:
        assert slot.job is not None
        slot.job.finish(reason, error)
        slot.sampler.close()
        slot.job = slot.sampler = slot.next_token = None

    def _feed(self, rows: list[Row], slots: list[Slot]) -> bool:
        """One llama_decode; on failure the slots' requests end with the error and their caches are dropped."""
        try:
            self._decode(rows)
            return True
        except DecodeError as e:
            for slot in slots:
                self._lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
                slot.cached.clear()
                self._release(slot, "stop", e)
            return False

    def _decode(self, rows: list[Row]) -> None:
        pads = lone_partners(rows) if self.pad else []
        if pads:  # throwaway partners at the next positions (after the rows, so row i's logits stay at i)
            rows = [*rows, *pads]
        elif self.pad and sum(r[3] for r in rows) == 1:  # the same for the output layer: a second row's logits
            i = 1 if rows[0][3] else 0
            rows = [*rows[:i], (*rows[i][:3], True), *rows[i + 1 :]]
        b = self.batch
        b.n_tokens = len(rows)
        for i, (token, pos, seq, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        with DECODE_LOCK:
            rc = self._lib.llama_decode(self.ctx, b)
            self._lib.llama_synchronize(self.ctx)  # the graph may still run: finish it before touching the cache
        for _, pos, seq, _ in pads:
            self._lib.llama_memory_seq_rm(self.memory, seq, pos, -1)
        if rc != 0:
            raise DecodeError(f"llama_decode returned {rc} for {len(rows)} tokens")

    def _logits(self, i: int) -> np.ndarray:
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()

    def _clear(self) -> None:
        for slot in self.slots:
            self._lib.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            slot.cached.clear()

    # --- on the decoding thread, through `call` -----------------------------------------------------------

    def all_logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids`` in slot 0 (needs ``all_logits``)."""
        self._clear()
        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)
        for start in range(0, len(ids), self.n_batch):
            chunk = ids[start : start + self.n_batch]
            self._decode([(t, start + j, 0, True) for j, t in enumerate(chunk)])
            for j in range(len(chunk)):
                out[start + j] = self._logits(j)
        self._clear()
        return out

    def batch_invariant(self) -> bool:
        """Whether a sequence's logits are bitwise the same whatever shares its call: a 33-token prompt read as
        the engine reads it (32 + 1) and in chunks of 2, 3, 5, 7, and its next token alone, beside 1 to slots-1
        others, and in slots with gaps between them."""
        n = 33
        ids = [(7919 * i + 13) % self.n_vocab for i in range(1, n + 2)]

        def read(seq: int, size: int) -> np.ndarray:
            for start in range(0, n, size):
                chunk = ids[start : min(n, start + size)]
                self._decode([(t, start + j, seq, start + j == n - 1) for j, t in enumerate(chunk)])
            return self._logits(len(chunk) - 1)

        self._clear()
        whole = read(0, self.chunk)
        same = all(np.array_equal(read(seq, (2, 3, 5, 7)[seq % 4]), whole) for seq in range(1, self.n_slots))
        self._decode([(ids[n], n, 0, True)])
        alone = self._logits(0)
        self._lib.llama_memory_seq_rm(self.memory, 0, n, -1)
        spread = [list(range(0, self.n_slots, 2)), [0, *range(2, self.n_slots)]]  # gaps between the slots
        for seqs in [list(range(k)) for k in range(2, self.n_slots + 1)] + [s for s in spread if len(s) > 1]:
            self._decode([(ids[n], n, seq, True) for seq in seqs])
            same = same and all(np.array_equal(self._logits(i), alone) for i in range(len(seqs)))
            for seq in seqs:
                self._lib.llama_memory_seq_rm(self.memory, seq, n, -1)
        self._clear()
        return same
