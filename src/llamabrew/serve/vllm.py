"""Serving at scale on vLLM: `llamabrew serve --engine vllm RUN --adapter NAME=RUN2`.

vLLM (the ``vllm`` extra, CUDA) runs as a child process: ``vllm serve`` on the run's base with the adapters as
LoRA modules, under the names llamabrew's own server gives them (`serve.registry.plan_adapters`) and with the
chat template the run was trained on, so a client written against `llamabrew serve` needs no change. The parent
waits until ``/v1/models`` answers with every name, forwards SIGINT and SIGTERM to the child, and stops it
(SIGTERM, then SIGKILL) however it ends itself; on Linux the child also gets SIGTERM if the parent is killed.
The API key reaches vLLM through its environment (``VLLM_API_KEY``), never its command line (``ps`` shows that).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from llamabrew.errors import LlamabrewError
from llamabrew.extras import MissingExtra

log = logging.getLogger(__name__)

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts
STOP_GRACE_S = 15.0  # how long a stopped vLLM may take to exit before it is killed
POLL_S = 0.25


def vllm_args(model_or_run: str, adapters: dict[str, str], name: str | None = None
              ) -> tuple[list[str], list[str], list[str]]:
    """(the ``vllm serve`` arguments serving the same base and adapters under the same names, the served names,
    caveats)."""
    from llamabrew.serve.registry import lora_rank, plan_adapters

    if Path(model_or_run).suffix == ".gguf":
        raise LlamabrewError("vLLM serves the Hugging Face base + adapters: pass a run or model directory, "
                             "not a .gguf file")
    base, base_name, runs = plan_adapters(model_or_run, adapters, name)

    def where(p: str) -> str:
        return str(Path(p).resolve()) if Path(p).exists() else p

    cmd, notes = ["vllm", "serve", where(base), "--served-model-name", base_name], []
    if runs:
        rank = max(lora_rank(d) for d in runs.values())
        cmd += ["--enable-lora", "--lora-modules", *(f"{n}={where(d)}" for n, d in runs.items()),
                "--max-loras", str(len(runs)),
                "--max-lora-rank", str(next((r for r in VLLM_LORA_RANKS if r >= rank), rank))]
        files = [Path(d) / "chat_template.jinja" for d in runs.values()]
        if all(f.is_file() for f in files) and len({f.read_text(encoding="utf-8") for f in files}) == 1:
            cmd += ["--chat-template", where(str(files[0]))]
        else:
            notes.append("the adapters were trained with different chat templates and vLLM renders chats "
                         "with one template per server: run one vLLM server per template")
    return cmd, [base_name, *runs], notes


def vllm_command(model_or_run: str, adapters: dict[str, str], name: str | None = None) -> tuple[str, list[str]]:
    """The ``vllm serve`` line (`serve --print-vllm-command`), and any caveats."""
    cmd, _, notes = vllm_args(model_or_run, adapters, name)
    return shlex.join(cmd), notes


def vllm_executable() -> str:
    """vLLM's ``vllm`` command: beside this Python (the extra installed in its environment), else on PATH."""
    beside = Path(sys.executable).parent / "vllm"
    found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("vllm")
    if found is None:
        raise MissingExtra("vllm", "serving on vLLM (--engine vllm, a CUDA machine)", "vllm")
    return found


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM to the child when the parent dies, even of SIGKILL (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _forwarded_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `_Stop` in the main thread while the child runs (then handlers as before)."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signum)

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def stop_child(proc: subprocess.Popen, signum: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> None:
    """``signum`` to the child (and its process group), SIGKILL after ``grace_s``; returns once it is gone."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)  # vLLM's engine workers are in its group
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        log.warning(f"vLLM did not stop within {grace_s:g} s of {signal.Signals(signum).name}: killed")
        _kill_group(proc)
        proc.wait()


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_until_serving(proc: subprocess.Popen, url: str, names: list[str], api_key: str | None,
                       timeout_s: float) -> list[str]:
    """Poll ``url``/v1/models until it lists every one of ``names``; the served ids. Fails at once if the child
    exits, and after ``timeout_s``."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while True:
        if (code := proc.poll()) is not None:
            raise LlamabrewError(f"vLLM exited with code {code} before it answered (its own messages are above)")
        try:
            r = httpx.get(f"{url}/v1/models", headers=headers, timeout=5)
            if r.status_code == 200:
                ids = [m.get("id") for m in r.json().get("data", [])]
                if missing := [n for n in names if n not in ids]:
                    raise LlamabrewError(f"vLLM at {url} serves {ids}, not {missing}: is another server on that "
                                         "port?")
                return ids
            if r.status_code == 401:
                raise LlamabrewError(f"vLLM at {url} refused llamabrew's API key: is another server on that port?")
        except (httpx.TransportError, ValueError):
            pass  # not listening yet, or not answering JSON yet
        if time.monotonic() > deadline:
            raise LlamabrewError(f"vLLM did not answer on {url}/v1/models within {timeout_s:g} s (raise "
                                 "--start-timeout for a large model)")
        time.sleep(POLL_S)


def serve_vllm(model_or_run: str, adapters: dict[str, str], *, name: str | None = None, host: str = "127.0.0.1",
               port: int = 8000, api_key: str | None = None, start_timeout_s: float = 900.0,
               extra_args: list[str] | None = None, on_ready: Any = None) -> int:
    """Run vLLM's OpenAI server until it exits or this process is told to stop; vLLM's exit code (0 when
    stopped by SIGINT / SIGTERM). ``on_ready(url, ids)`` is called once it answers (the CLI's banner)."""
    executable = vllm_executable()
    cmd, names, notes = vllm_args(model_or_run, adapters, name)
    for note in notes:
        log.warning(note)
    argv = [executable, *cmd[1:], "--host", host, "--port", str(port), *(extra_args or [])]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    log.info(f"starting {shlex.join([Path(executable).name, *argv[1:]])}")
    with _forwarded_signals():
        proc = subprocess.Popen(argv, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        stopped_by: int | None = None
        try:
            ids = wait_until_serving(proc, url, names, api_key, start_timeout_s)
            if on_ready is not None:
                on_ready(url, ids)
            proc.wait()
        except _Stop as e:
            stopped_by = e.signum
        finally:  # a second Ctrl-C while vLLM stops kills it
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, lambda *_: _kill_group(proc))
            stop_child(proc, stopped_by or signal.SIGTERM)
    return 0 if stopped_by is not None else proc.returncode
