"""The llama.cpp engine: a GGUF file on the CPU, with the chat template and stop strings stored in it.

Before loading it says how much memory the model will take (weights + KV cache + compute buffers) and warns
when that is more than the machine has free: on a Raspberry Pi-class board that means swapping, not answering.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import functools
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llamabrew.cli_common import console
from llamabrew.data.templates import BUILTIN, Template
from llamabrew.errors import LlamabrewError
from llamabrew.extras import require
from llamabrew.models import free_cores
from llamabrew.serve.engines import ContextLengthError, GenerationStats, Sampling, StopScanner

DEFAULT_CTX = 4096  # capped by the model's training context
# llama.cpp's AMX q4_0 / q8_0 kernels (0.3.36) give wrong logits when a row is a single 32-value block: export
# verification caught it on a 32-wide test model (top-1 agreement 7-9%); 64 and wider agree with plain buffers
# (tests/serve/test_llamacpp.py checks that on a 128-wide model).
EXTRA_BUFFERS_MIN_WIDTH = 64
DEFAULT_QUANT = "q8_0"  # for on-the-fly exports: near-lossless and still ~2x smaller than f16
_GiB = 1024**3
GGUF_USE = "running a model in llama.cpp"  # what needs the 'llamacpp' extra, in its error line


def default_threads() -> int:
    """The free cores (oversubscribed OpenMP threads collapse llama.cpp's speed), at most OMP_NUM_THREADS."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return min(free_cores(), int(env)) if env.isdigit() and int(env) > 0 else free_cores()


def _probe_child(folder: str) -> None:
    """Run a tiny q4_0 / q8_0 model on a multi-token batch with llama.cpp's extra weight buffers on."""
    import llama_cpp

    from llamabrew.export.gguf_writer import write_probe_gguf

    llm = llama_cpp.Llama(str(write_probe_gguf(Path(folder) / "probe.gguf")), n_ctx=64,
                          n_threads=default_threads(), verbose=False)
    llm.eval(list(range(3, 35)))
    llm.close()


@functools.lru_cache(maxsize=1)
def extra_buffers_work() -> bool:
    """Whether llama.cpp's AMX / repacked weight buffers run here. A llama.cpp built by GCC 12 without
    ``-fno-dse`` has AMX kernels whose tile shapes were optimised away: they die with SIGILL on batched prompts.
    Then weights stay in plain buffers (about half as fast, still correct). Probed once in a child process,
    remembered per llama.cpp build and CPU."""
    import hashlib

    import llama_cpp

    env = os.environ.get("LLAMABREW_LLAMACPP_EXTRA_BUFFERS")
    if env is not None:
        return env not in ("0", "false", "no")
    if b"AMX" not in llama_cpp.llama_print_system_info():
        return True
    cpu = Path("/proc/cpuinfo").read_text(errors="ignore") if Path("/proc/cpuinfo").is_file() else ""
    flags = next((line for line in cpu.splitlines() if line.startswith("flags")), "")
    libs = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                  for f in Path(llama_cpp.__file__).parent.rglob("*.so*"))
    key = hashlib.sha1(f"{llama_cpp.__version__} {libs} {flags}".encode()).hexdigest()[:16]  # a rebuild re-probes
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamabrew" / f"bufs-{key}"
    if cache.is_file():
        return _warn_unless(cache.read_text().strip() == "ok")
    with tempfile.TemporaryDirectory() as tmp:
        code = f"from llamabrew.serve.llamacpp import _probe_child; _probe_child({tmp!r})"
        try:
            child = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
            ok = child.returncode == 0
        except subprocess.TimeoutExpired:
            return False
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text("ok" if ok else "crashed")
    return _warn_unless(ok)


def _warn_unless(ok: bool) -> bool:
    if not ok:
        console.print("[yellow]warning:[/] this llama.cpp build's AMX kernels crash on this CPU, so its weights stay "
                      "in plain buffers (about half as fast). Rebuild llama-cpp-python with "
                      "CMAKE_ARGS=\"-DCMAKE_C_FLAGS=-fno-dse -DCMAKE_CXX_FLAGS=-fno-dse\" (see the README).",
                      highlight=False)
    return ok


def load_llama(path: str | Path, n_ctx: int, threads: int | None = None, logits_all: bool = False,
               lora_path: str | Path | None = None, width: int | None = None) -> Any:
    """A quiet `llama_cpp.Llama` on the free cores, avoiding AMX kernels that cannot run here or that go wrong
    on the model's ``width`` (its embedding length; read from the file when not given, which takes a while)."""
    llama_cpp = require("llamacpp", GGUF_USE)
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params
    if not extra_buffers_work() or (width or read_gguf_info(path).n_embd) < EXTRA_BUFFERS_MIN_WIDTH:
        def plain_buffers() -> Any:
            params = original()
            params.use_extra_bufts = False
            return params

        low.llama_model_default_params = plain_buffers
    n = threads or default_threads()
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=n, n_threads_batch=n, logits_all=logits_all,
                               lora_path=str(lora_path) if lora_path else None, verbose=False)
    except ValueError as e:
        raise LlamabrewError(f"{path}: llama.cpp could not load it ({e}); is it a complete GGUF file?") from e
    finally:
        low.llama_model_default_params = original


def stock_tokenize(llm: Any, text: str) -> list[int]:
    """``text`` tokenized by llama.cpp alone: special tokens parsed, BOS where the file's ``add_bos_token`` says,
    no llamabrew-only rule (export verification and the engine both read prompts through this). A text that
    already starts with BOS (a template writing ``bos_token``) keeps just that one, as training does."""
    data = text.encode("utf-8")
    own = llm.tokenize(data, add_bos=False, special=True)
    return own if own[:1] == [llm.token_bos()] else llm.tokenize(data, add_bos=True, special=True)


@dataclass
class GGUFInfo:
    """What a GGUF header says about the model, its tokenizer and its chat format."""

    path: Path
    arch: str
    tokenizer_model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    context_length: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv: int
    head_dim: int
    n_vocab: int
    weight_bytes: int
    add_bos: bool
    bos_text: str
    eos_text: str
    chat_template: str | None
    template_name: str | None
    stop: tuple[str, ...]

    def template(self) -> Template:
        """The chat format stored in the file: a built-in one when the Jinja matches, else the file's own."""
        if self.chat_template is None:
            console.print(f"[yellow]warning:[/] {self.path.name} has no chat template; using alpaca")
            return BUILTIN["alpaca"]
        same = [t for t in BUILTIN.values() if t.jinja == self.chat_template]
        return same[0] if same else Template(self.template_name or "gguf", self.chat_template, self.stop)


def read_gguf_info(path: str | Path) -> GGUFInfo:
    """Read a GGUF header and check the file is complete; a clear error for anything else."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise LlamabrewError(f"{path}: no such file")
    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:
        raise LlamabrewError(f"{path}: not a valid GGUF file (corrupt or truncated: {e})") from e
    if end > path.stat().st_size or not reader.tensors:
        raise LlamabrewError(f"{path}: GGUF file is truncated (tensor data ends past the end of the file)")

    def get(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    arch = get("general.architecture", "")
    n_head, n_embd = int(get(f"{arch}.attention.head_count", 1)), int(get(f"{arch}.embedding_length", 0))
    tokens = get("tokenizer.ggml.tokens", [])

    def text_of(key: str) -> str:
        tid = get(key)
        return tokens[tid] if tid is not None and tid < len(tokens) else ""

    return GGUFInfo(
        path, arch, get("tokenizer.ggml.model", ""), int(get(f"{arch}.context_length", DEFAULT_CTX)),
        int(get(f"{arch}.block_count", 0)), n_embd, n_head,
        int(get(f"{arch}.attention.head_count_kv", n_head)),
        int(get(f"{arch}.attention.key_length", n_embd // max(n_head, 1))), len(tokens),
        sum(int(t.n_bytes) for t in reader.tensors), bool(get("tokenizer.ggml.add_bos_token", True)),
        text_of("tokenizer.ggml.bos_token_id"), text_of("tokenizer.ggml.eos_token_id"),
        get("tokenizer.chat_template"), get("llamabrew.template"), tuple(get("llamabrew.stop", ())))


@dataclass
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    available: int | None  # MemAvailable: what the machine can give without swapping

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def describe(self) -> str:
        free = f", {self.available / _GiB:.1f} GiB free" if self.available else ""
        return (f"needs ~{self.total / _GiB:.2f} GiB (weights {self.weights / _GiB:.2f} + KV cache "
                f"{self.kv_cache / _GiB:.2f} + compute {self.compute / _GiB:.2f}){free}")

    def warning(self) -> str | None:
        if self.available is None or self.total <= self.available:
            return None
        return (f"the model needs ~{self.total / _GiB:.1f} GiB but only {self.available / _GiB:.1f} GiB of "
                "RAM is free; it will swap and crawl. Use a smaller quant (q4_k_m), --ctx or model")


def _available_ram() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def estimate_memory(info: GGUFInfo, n_ctx: int) -> MemoryEstimate:
    """Weights as stored + f16 K and V for every layer and position + compute buffers (estimated)."""
    kv = 2 * n_ctx * info.n_layer * info.n_kv * info.head_dim * 2
    compute = 4 * min(512, n_ctx) * (info.n_vocab + 12 * info.n_embd + n_ctx * info.n_head)
    return MemoryEstimate(info.weight_bytes, kv, compute, _available_ram())


class _JinjaRenderer:
    """Stands in for a HF tokenizer in `Template.render`: renders the GGUF's Jinja as transformers does."""

    def __init__(self, bos: str, eos: str) -> None:
        self.bos_token, self.eos_token = bos, eos

    def apply_chat_template(self, messages: list[dict[str, str]], chat_template: str, tokenize: bool = False,
                            add_generation_prompt: bool = False) -> str:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = raise_exception
        return env.from_string(chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
            eos_token=self.eos_token)


class LlamaCppEngine:
    """Streams answers from a GGUF model through llama-cpp-python; an `llamabrew.serve.engines.Engine`."""

    name = "llama.cpp"

    def __init__(self, path: str | Path, threads: int | None = None, ctx: int | None = None,
                 template: Template | None = None, lora: str | Path | None = None, logits_all: bool = False,
                 announce: bool = True) -> None:
        llama_cpp = require("llamacpp", GGUF_USE)
        self.path = Path(path)
        self.info = read_gguf_info(self.path)
        self.context_length = min(ctx or DEFAULT_CTX, self.info.context_length or DEFAULT_CTX)
        self.threads = threads or default_threads()
        self.memory = estimate_memory(self.info, self.context_length)
        if announce:
            console.print(f"[dim]{self.path.name}: {self.memory.describe()}[/]", highlight=False)
            if warning := self.memory.warning():
                console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        self.template = template or self.info.template()
        self.llm = load_llama(self.path, self.context_length, self.threads, logits_all, lora, self.info.n_embd)
        self._lib, self.vocab, self.bos = llama_cpp, self.llm._model.vocab, self.llm.token_bos()
        self._renderer = _JinjaRenderer(self.info.bos_text, self.info.eos_text)
        self._pieces: dict[int, bytes] = {}
        self.last = GenerationStats()
        self.lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        """Rendered template text as stock llama.cpp reads it (`stock_tokenize`), so a prompt here is the prompt
        Ollama or llama-server would run."""
        return stock_tokenize(self.llm, text)

    def piece(self, token: int) -> bytes:
        """The bytes of one token (cached; llama-cpp-python's own helper truncates long tokens)."""
        if (cached := self._pieces.get(token)) is not None:
            return cached
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, size, 0, False)
            if n >= 0:
                self._pieces[token] = buf.raw[:n]
                return self._pieces[token]
            size = -n

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.template.render(self._renderer, messages, add_generation_prompt=True))

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self.prompt_ids(messages))

    def logits(self, ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of ``ids`` (needs ``logits_all=True``), for verification."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling,
               cancel: threading.Event | None = None) -> Iterator[str]:
        yield from self.stream_ids(self.prompt_ids(messages), sampling, cancel)

    def stream_ids(self, ids: list[int], sampling: Sampling,
                   cancel: threading.Event | None = None) -> Iterator[str]:
        """Sample from ``ids`` on; ends at an end-of-generation token, a stop string or the token limit."""
        if len(ids) >= self.context_length:
            raise ContextLengthError(
                f"prompt is {len(ids)} tokens; the context is {self.context_length} (--ctx)")
        max_new = max(1, min(sampling.max_new_tokens, self.context_length - len(ids)))
        scanner = StopScanner([*self.template.stop, *sampling.stop])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        greedy = sampling.temperature <= 0
        with self.lock:
            self.llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
            t0, n, finish = time.monotonic(), 0, "length"
            tokens = self.llm.generate(ids, top_k=0 if greedy else sampling.top_k, min_p=0.0,
                                       top_p=1.0 if greedy else sampling.top_p,
                                       temp=0.0 if greedy else sampling.temperature,
                                       repeat_penalty=sampling.repetition_penalty)
            try:
                for tok in tokens:
                    eog = self._lib.llama_vocab_is_eog(self.vocab, tok)
                    if eog or (cancel is not None and cancel.is_set()):
                        finish = "stop"
                        break
                    n += 1
                    text = decoder.decode(self.piece(tok))
                    if n == 1 and self.info.tokenizer_model == "llama":
                        text = text.removeprefix(" ")  # SentencePiece's word-start space, dropped as HF does
                    if out := scanner.feed(text):
                        yield out
                    if scanner.stopped or n >= max_new:
                        finish = "stop" if scanner.stopped else "length"
                        break
                if not scanner.stopped and (out := scanner.feed(decoder.decode(b"", True)) + scanner.flush()):
                    yield out
            finally:
                tokens.close()
                self.last = GenerationStats(len(ids), n, time.monotonic() - t0, finish)

    def close(self) -> None:
        self.llm.close()


def open_llamacpp_engine(model_or_run: str | Path, threads: int | None = None, ctx: int | None = None,
                         quant: str = DEFAULT_QUANT, template: str | None = None, verify: bool = True,
                         announce: bool = True) -> LlamaCppEngine:
    """An engine for a ``.gguf`` file, or a run / model directory exported on the fly (and cached)."""
    from llamabrew.data.templates import get_template

    require("llamacpp", GGUF_USE)  # before exporting a run for minutes
    path = Path(model_or_run)
    if path.suffix != ".gguf":
        from llamabrew.export import cached_gguf

        path = cached_gguf(str(model_or_run), quant, verify=verify, threads=threads)
    elif not path.is_file():
        raise LlamabrewError(f"{path}: no such GGUF file")
    tmpl = get_template(template) if template and template != "auto" else None  # default: the file's own
    return LlamaCppEngine(path, threads=threads, ctx=ctx, template=tmpl, announce=announce)
