"""`llamabrew serve --engine vllm`: the command it builds, and the child process it starts, waits for and stops.

There is no CUDA here, so `vllm` is a stand-in script first on PATH: it records its arguments, environment and
the signals it gets, and serves a minimal OpenAI-compatible ``/v1/models`` on 127.0.0.1 (with the names it was
given, behind VLLM_API_KEY as vLLM does). The real vLLM awaits a CUDA machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from export.conftest import make_lora_run

from llamabrew.serve.registry import served_name
from llamabrew.serve.vllm import stop_child, vllm_args

FAKE_VLLM = """\
#!{python}
import http.server, json, os, signal, sys, threading, time
argv = sys.argv[1:]
record = os.environ["FAKE_VLLM_RECORD"]
def note(kind, value):
    with open(record, "a") as f:
        f.write(json.dumps([kind, value]) + "\\n")
note("argv", argv)
note("key", os.environ.get("VLLM_API_KEY"))
note("pid", os.getpid())
if os.environ.get("FAKE_VLLM_EXIT"):
    sys.exit(int(os.environ["FAKE_VLLM_EXIT"]))
def after(flag):
    return argv[argv.index(flag) + 1]
names = [after("--served-model-name")]
if "--lora-modules" in argv:
    for item in argv[argv.index("--lora-modules") + 1:]:
        if item.startswith("--"):
            break
        names.append(item.split("=", 1)[0])
key = os.environ.get("VLLM_API_KEY")
class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if key and self.headers.get("Authorization") != "Bearer " + key:
            self.send_response(401); self.end_headers(); return
        if self.path != "/v1/models":
            self.send_response(404); self.end_headers(); return
        body = json.dumps({{"object": "list", "data": [
            {{"id": n, "object": "model", "created": 0, "owned_by": "vllm"}} for n in names]}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((after("--host"), int(after("--port"))), Models)
serving = False
def stop(signum, frame):
    note("signal", signum)
    if os.environ.get("FAKE_VLLM_IGNORE"):
        return
    if not serving:  # still "loading the model"
        note("stopped", 0)
        os._exit(0)
    threading.Thread(target=server.shutdown).start()
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0")))
serving = True
server.serve_forever()
note("stopped", 0)
"""


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm-runs")
    return {"pirate": make_lora_run(tiny_model_dir, root / "pirate", seed=1, template="chatml"),
            "poet": make_lora_run(tiny_model_dir, root / "poet", seed=2, template="chatml")}


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "vllm"
    script.write_text(FAKE_VLLM.format(python=sys.executable))
    script.chmod(0o755)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(path: Path) -> list[tuple[str, object]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def serve(args: list[str], fake_bin: Path | None, record: Path, log: Path, **env: str) -> subprocess.Popen:
    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}" if fake_bin else str(record.parent / "empty")
    full_env = {**os.environ, "PATH": path, "FAKE_VLLM_RECORD": str(record), "COLUMNS": "200", **env}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "llamabrew.cli", "serve", "--engine", "vllm", *args],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT)


def invoke(args: list[str], fake_bin: Path | None, record: Path, **env: str):
    """`llamabrew serve --engine vllm` in this process (for the cases that need no signal from outside)."""
    from typer.testing import CliRunner

    from llamabrew.cli import app

    path = f"{fake_bin}{os.pathsep}{os.environ['PATH']}" if fake_bin else str(record.parent / "empty")
    return CliRunner().invoke(app, ["serve", "--engine", "vllm", *args],
                              env={"PATH": path, "FAKE_VLLM_RECORD": str(record), "COLUMNS": "200", **env})


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_vllm_command_serves_the_same_names_with_the_trained_template(runs: dict[str, Path],
                                                                           tiny_model_dir: Path) -> None:
    cmd, names, notes = vllm_args(str(runs["pirate"]), {"poet": str(runs["poet"])})
    assert cmd == ["vllm", "serve", str(tiny_model_dir.resolve()), "--served-model-name", served_name(str(
        tiny_model_dir)), "--enable-lora", "--lora-modules", f"pirate={runs['pirate'].resolve()}",
        f"poet={runs['poet'].resolve()}", "--max-loras", "2", "--max-lora-rank", "8", "--chat-template",
        str((runs["pirate"] / "chat_template.jinja").resolve())]
    assert names == [served_name(str(tiny_model_dir)), "pirate", "poet"] and notes == []


def test_serve_engine_vllm_waits_until_it_answers_then_forwards_ctrl_c(runs: dict[str, Path], fake_bin: Path,
                                                                       tiny_model_dir: Path, tmp_path: Path) -> None:
    port, key = free_port(), "k-" + "5" * 20
    record, log = tmp_path / "record.jsonl", tmp_path / "serve.log"
    proc = serve([str(runs["pirate"]), "--adapter", f"poet={runs['poet']}", "--port", str(port)], fake_bin, record,
                 log, LLAMABREW_API_KEY=key, FAKE_VLLM_DELAY="1.5")
    try:
        wait_for(lambda: "OpenAI API" in log.read_text() or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=10)
        base = served_name(str(tiny_model_dir))
        assert [m.id for m in client.models.list()] == [base, "pirate", "poet"]  # as `llamabrew serve` names them
        assert f"{base}, pirate, poet" in log.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0, log.read_text()
    seen = records(record)
    argv = next(v for k, v in seen if k == "argv")
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == str(port)
    assert key not in json.dumps(argv) and key not in log.read_text()  # the key travels in the environment
    assert ("key", key) in seen
    assert ("signal", signal.SIGINT) in seen and ("stopped", 0) in seen  # Ctrl-C forwarded, and it stopped
    assert not alive(next(v for k, v in seen if k == "pid"))


def test_a_vllm_that_never_answers_is_stopped_after_the_timeout(runs: dict[str, Path], fake_bin: Path,
                                                               tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    done = invoke([str(runs["pirate"]), "--port", str(free_port()), "--start-timeout", "2"], fake_bin, record,
                  FAKE_VLLM_DELAY="120")
    assert done.exit_code == 2 and "did not answer" in done.output and "--start-timeout" in done.output
    seen = records(record)
    assert ("signal", signal.SIGTERM) in seen and ("stopped", 0) in seen  # stopped, not killed
    assert not alive(next(v for k, v in seen if k == "pid"))


def test_sigterm_while_vllm_starts_stops_it_too(runs: dict[str, Path], fake_bin: Path, tmp_path: Path) -> None:
    record, log = tmp_path / "record.jsonl", tmp_path / "serve.log"
    proc = serve([str(runs["pirate"]), "--port", str(free_port())], fake_bin, record, log, FAKE_VLLM_DELAY="120")
    wait_for(lambda: any(k == "pid" for k, _ in records(record)))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()
    seen = records(record)
    assert ("signal", signal.SIGTERM) in seen and ("stopped", 0) in seen
    assert not alive(next(v for k, v in seen if k == "pid"))


def test_a_vllm_that_exits_early_is_one_error_line(runs: dict[str, Path], fake_bin: Path, tmp_path: Path) -> None:
    done = invoke([str(runs["pirate"]), "--port", str(free_port())], fake_bin, tmp_path / "record.jsonl",
                  FAKE_VLLM_EXIT="3")
    assert done.exit_code == 2 and "vLLM exited with code 3 before it answered" in done.output


def test_without_vllm_it_names_the_extra(runs: dict[str, Path], tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    done = invoke([str(runs["pirate"])], None, record)
    lines = [ln for ln in done.output.splitlines() if ln.strip()]
    assert done.exit_code == 2 and len(lines) == 1 and 'pip install "llamabrew[vllm]"' in lines[0], lines
    assert not record.exists()


def test_a_vllm_that_ignores_sigterm_is_killed(fake_bin: Path, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    env = {**os.environ, "FAKE_VLLM_RECORD": str(record), "FAKE_VLLM_IGNORE": "1"}
    argv = [str(fake_bin / "vllm"), "serve", "m", "--served-model-name", "m", "--host", "127.0.0.1", "--port",
            str(free_port())]
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    wait_for(lambda: any(k == "pid" for k, _ in records(record)))
    time.sleep(0.3)  # its handlers are installed
    t0 = time.monotonic()
    stop_child(proc, grace_s=1.0)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - t0 < 10
    assert ("signal", signal.SIGTERM) in records(record)

