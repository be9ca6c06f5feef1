"""The llama.cpp runtime: load a GGUF in llama-cpp-python on the free cores, tokenize as stock llama.cpp does,
and probe once whether this build's AMX kernels can run here."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from llamabrew.errors import LlamabrewError
from llamabrew.extras import require
from llamabrew.gguf.reader import read_gguf_info
from llamabrew.models import free_cores

log = logging.getLogger(__name__)
# llama.cpp's AMX q4_0 / q8_0 kernels (0.3.36) give wrong logits when a row is a single 32-value block: export
# verification caught it on a 32-wide test model (top-1 agreement 7-9%); 64 and wider agree with plain buffers
# (tests/gguf/test_runtime.py checks that on a 128-wide model).
EXTRA_BUFFERS_MIN_WIDTH = 64
GGUF_USE = "running a model in llama.cpp"  # what needs the 'llamacpp' extra, in its error line


def default_threads() -> int:
    """The free cores (oversubscribed OpenMP threads collapse llama.cpp's speed), at most OMP_NUM_THREADS."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return min(free_cores(), int(env)) if env.isdigit() and int(env) > 0 else free_cores()


def _probe_child(folder: str) -> None:
    """Run a tiny q4_0 / q8_0 model on a multi-token batch with llama.cpp's extra weight buffers on."""
    import llama_cpp

    from llamabrew.gguf.writer import write_probe_gguf

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
        code = f"from llamabrew.gguf.runtime import _probe_child; _probe_child({tmp!r})"
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
        log.warning("this llama.cpp build's AMX kernels crash on this CPU, so its weights stay in plain buffers "
                    "(about half as fast). Rebuild llama-cpp-python with "
                    "CMAKE_ARGS=\"-DCMAKE_C_FLAGS=-fno-dse -DCMAKE_CXX_FLAGS=-fno-dse\" (see the README).")
    return ok


def uses_extra_buffers(path: str | Path, width: int | None = None) -> bool:
    """Whether llamabrew lets llama.cpp put this model's weights in its repacked / AMX buffers here."""
    return extra_buffers_work() and (width or read_gguf_info(path).n_embd) >= EXTRA_BUFFERS_MIN_WIDTH


def load_llama(path: str | Path, n_ctx: int, threads: int | None = None, logits_all: bool = False,
               lora_path: str | Path | None = None, width: int | None = None) -> Any:
    """A quiet `llama_cpp.Llama` on the free cores, avoiding AMX kernels that cannot run here or that go wrong
    on the model's ``width`` (its embedding length; read from the file when not given, which takes a while)."""
    llama_cpp = require("llamacpp", GGUF_USE)
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params
    if not uses_extra_buffers(path, width):
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


def load_model(path: str | Path, width: int | None = None, extra_buffers: bool = True) -> Any:
    """The weights alone (``llama_cpp._internals.LlamaModel``), for an engine that makes its own contexts.
    ``extra_buffers`` False keeps them in plain buffers even where llama.cpp's repacked / AMX ones would run."""
    require("llamacpp", GGUF_USE)
    import llama_cpp
    import llama_cpp._logger
    from llama_cpp._internals import LlamaModel

    llama_cpp._logger.set_verbose(False)
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = extra_buffers and uses_extra_buffers(path, width)
    try:
        return LlamaModel(path_model=str(path), params=params, verbose=False)
    except ValueError as e:
        raise LlamabrewError(f"{path}: llama.cpp could not load it ({e}); is it a complete GGUF file?") from e


def stock_tokenize(llm: Any, text: str) -> list[int]:
    """``text`` tokenized by llama.cpp alone: special tokens parsed, BOS where the file's ``add_bos_token`` says,
    no llamabrew-only rule (export verification and the engine both read prompts through this). A text that
    already starts with BOS (a template writing ``bos_token``) keeps just that one, as training does."""
    data = text.encode("utf-8")
    own = llm.tokenize(data, add_bos=False, special=True)
    return own if own[:1] == [llm.token_bos()] else llm.tokenize(data, add_bos=True, special=True)
