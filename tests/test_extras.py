"""Optional parts: the extras table agrees with pyproject.toml, and every command whose extra is missing says
which one to install in one line (exit code 2, no traceback), checked in subprocesses that cannot import it."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llamabrew.errors import LlamabrewError
from llamabrew.extras import BUNDLES, EXTRAS, MissingExtra, extra_of, require

ROOT = Path(__file__).resolve().parents[1]
# Runs `llamabrew ARGS...` with the modules named in argv[1] (comma-separated) made unimportable, as when
# their extra was never installed: a finder ahead of all others refuses them and their submodules.
RUNNER = """\
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["llamabrew", *sys.argv[2:]]
from llamabrew.cli import app
app(prog_name="llamabrew")
"""


def optional_dependencies() -> dict[str, list[Requirement]]:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {extra: [Requirement(r) for r in reqs] for extra, reqs in table.items()}


def test_table_matches_pyproject():
    declared = optional_dependencies()
    for name, extra in EXTRAS.items():
        assert {canonicalize_name(r.name) for r in declared[name]} == {canonicalize_name(p) for p in extra.packages}
        assert len(extra.modules) == len(extra.packages)
    for bundle, parts in BUNDLES.items():  # the same packages with the same pins as the extras it bundles
        assert sorted(map(str, declared[bundle])) == sorted(str(r) for p in parts for r in declared[p]), bundle


def test_readme_installs_every_cpu_feature_and_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert '-e ".[cpu]"' in readme
    test_line = next(ln for ln in readme.split("## Tests", 1)[1].splitlines() if ln.startswith("pip install"))
    assert test_line in (ROOT / ".ci" / "run").read_text().splitlines()
    extras = test_line.split('".[', 1)[1].split("]", 1)[0].split(",")
    assert "cpu" in extras and "dev" in extras


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now fails as if not installed
    with pytest.raises(MissingExtra) as caught:
        require("serve", "llamabrew serve")
    assert isinstance(caught.value, LlamabrewError) and caught.value.exit_code == 2
    assert str(caught.value) == "llamabrew serve needs the 'serve' extra: pip install \"llamabrew[serve]\""
    assert caught.value.extra == "serve" and caught.value.missing == "uvicorn"


def test_require_returns_the_module():
    fastapi = pytest.importorskip("fastapi")
    assert require("serve", "x", "fastapi") is fastapi


def test_extra_of_knows_submodules_and_nothing_else():
    assert extra_of("llama_cpp.llama_cpp") == "llamacpp" and extra_of("fastapi.responses") == "serve"
    assert extra_of("liger_kernel") == "gpu" and extra_of("openai") is None and extra_of(None) is None


def test_friendly_errors_turns_a_stray_missing_extra_module_into_one_line():
    import typer
    from typer.testing import CliRunner

    from llamabrew.cli_common import friendly_errors

    app = typer.Typer()

    @app.command()
    @friendly_errors
    def web(module: str) -> None:
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    @app.command()
    def other() -> None:  # keeps `web` a subcommand, as in the real app
        pass

    result = CliRunner().invoke(app, ["web", "fastapi.responses"], prog_name="whatever")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: llamabrew web needs the 'serve' extra: pip install \"llamabrew[serve]\""
    result = CliRunner().invoke(app, ["web", "not_an_extra"])  # a real bug stays visible
    assert isinstance(result.exception, ModuleNotFoundError) and result.exit_code == 1


def run_without(blocked: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    runner = cwd / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(runner), blocked, *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120)


SERVE = 'needs the \'serve\' extra: pip install "llamabrew[serve]"'
LLAMACPP = 'needs the \'llamacpp\' extra: pip install "llamabrew[llamacpp]"'
GPU = 'the \'gpu\' extra: pip install "llamabrew[gpu]"'


@pytest.mark.parametrize("blocked, args, expected", [
    ("fastapi,uvicorn", ["serve", "model.gguf"], f"llamabrew serve {SERVE}"),
    ("uvicorn", ["serve", "runs/x", "--engine", "torch"], f"llamabrew serve {SERVE}"),
    ("starlette", ["serve", "model.gguf"], f"llamabrew serve {SERVE} (starlette is missing)"),
    ("llama_cpp", ["serve", "model.gguf"], f"running a model in llama.cpp {LLAMACPP}"),
    ("fastapi,uvicorn", ["arena", "--questions", "builtin:brew80", "--a", "a.jsonl", "--b", "b.jsonl"],
     f"llamabrew arena {SERVE}"),
    ("llama_cpp", ["chat", "model.gguf"], f"running a model in llama.cpp {LLAMACPP}"),
    ("llama_cpp", ["chat", "runs/x", "--engine", "llamacpp"], f"running a model in llama.cpp {LLAMACPP}"),
    ("llama_cpp", ["export", "runs/x"], f"verifying a GGUF in llama.cpp (--no-verify skips it) {LLAMACPP}"),
    ("llama_cpp", ["export", "runs/x", "--adapter-only", "-o", "a.gguf"],
     f"verifying a GGUF in llama.cpp (--no-verify skips it) {LLAMACPP}"),
    ("llama_cpp", ["export", "runs/x", "--no-verify", "-q", "q4_k_m"],
     f"q4_k_m export (llama.cpp's quantizer) {LLAMACPP}"),
    ("llama_cpp", ["quickstart", "--out", "qs"], f"llamabrew quickstart's GGUF step (--no-gguf skips it) {LLAMACPP}"),
    ("bitsandbytes", ["train", "--qlora", "--base", "runs/x", "--data", "d.json"], "4-bit loading (--qlora) needs "),
    ("wandb", ["train", "--base", "runs/x", "--data", "d.json", "--log-to", "wandb"],
     "--log-to wandb needs the 'wandb' extra"),
    ("tensorboard", ["pretrain", "--corpus", "c.txt", "--log-to", "tensorboard"],
     "--log-to tensorboard needs the 'tensorboard' extra"),
])
def test_a_missing_extra_is_one_line_exit_2(tmp_path: Path, blocked: str, args: list[str], expected: str):
    done = run_without(blocked, *args, cwd=tmp_path)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {expected}"), lines[0]
    assert "pip install \"llamabrew[" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runner.py"]  # failed before writing anything


def test_qlora_without_cuda_names_the_gpu_extra(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the missing-bitsandbytes case is checked instead")
    done = run_without("", "train", "--qlora", "--base", "runs/x", "--data", "d.json", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: 4-bit loading (--qlora) needs a CUDA GPU and "
                                   f"{GPU}; on a CPU train without --qlora")


def test_qlora_on_cuda_without_bitsandbytes_names_the_gpu_extra(tmp_path: Path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA (on a CPU the CUDA line comes first)")
    done = run_without("bitsandbytes", "train", "--qlora", "--base", "runs/x", "--data", "d.json", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: 4-bit loading (--qlora) needs {GPU}"


def test_help_needs_no_extra(tmp_path: Path):
    every = ",".join(m for extra in EXTRAS.values() for m in extra.modules)
    done = run_without(every, "--help", cwd=tmp_path)
    assert done.returncode == 0 and "serve" in done.stdout and "export" in done.stdout, done.stderr
    done = run_without(every, "serve", "runs/x", "--print-vllm-command", cwd=tmp_path)  # vLLM, not fastapi
    assert done.returncode == 0 and done.stdout.startswith("vllm serve "), done.stderr
