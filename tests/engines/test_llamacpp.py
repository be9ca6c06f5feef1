"""The llama.cpp engine: streams with the stored template, stops, agrees with torch, sizes its memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from llamabrew.data.encode import encode_text  # noqa: E402
from llamabrew.data.templates import BUILTIN  # noqa: E402
from llamabrew.engines import ContextLengthError, Sampling  # noqa: E402
from llamabrew.engines.llamacpp import LlamaCppEngine  # noqa: E402
from llamabrew.export import open_llamacpp_engine  # noqa: E402
from llamabrew.gguf.reader import MemoryEstimate, estimate_memory, read_gguf_info  # noqa: E402

GREEDY = Sampling(max_new_tokens=10, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
CHAT = [{"role": "user", "content": "Where does Mira Lanthorn live?"}]


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full fine-tune run directory: the tiny model + recipe.yaml naming the chatml template."""
    from llamabrew.recipe import Recipe, save_recipe

    run = tmp_path_factory.mktemp("serve") / "run"
    shutil.copytree(tiny_model_dir, run)
    save_recipe(Recipe.model_validate({"data": {"template": "chatml"}, "method": "full"}), run)
    return run


@pytest.fixture(scope="module")
def engine(run_dir: Path):
    """An f16 export of the run (near-exact, so greedy text can be compared with torch)."""
    from llamabrew.export import export_gguf

    path = export_gguf(run_dir, "f16", run_dir.parent / "f16.gguf", verbose=False).results[0].path
    eng = LlamaCppEngine(path, threads=1, ctx=256, announce=False)
    yield eng
    eng.close()


def test_template_and_prompt_tokens_match_training(engine: LlamaCppEngine, run_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir)
    assert engine.template is BUILTIN["chatml"] and engine.context_length == 256
    assert engine.prompt_ids(CHAT) == encode_text(tok, BUILTIN["chatml"].render(tok, CHAT, True))


def test_streams_greedy_text_like_torch(engine: LlamaCppEngine, run_dir: Path) -> None:
    from llamabrew.engines.torch_engine import open_torch_engine

    pieces = list(engine.stream(CHAT, GREEDY))
    stats = engine.last
    assert 0 < stats.completion_tokens <= 10 and stats.prompt_tokens == engine.count_prompt_tokens(CHAT)
    assert stats.tokens_per_second > 0 and stats.finish_reason in ("stop", "length")
    torch_engine = open_torch_engine(str(run_dir))
    assert "".join(pieces) == "".join(torch_engine.stream(CHAT, GREEDY))
    assert "".join(engine.stream(CHAT, GREEDY)) == "".join(pieces)  # the cached prompt prefix changes nothing


def test_seeded_sampling_and_stop_strings(engine: LlamaCppEngine) -> None:
    sampled = Sampling(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=40, seed=3)
    first = "".join(engine.stream(CHAT, sampled))
    assert "".join(engine.stream(CHAT, sampled)) == first
    text = "".join(engine.stream(CHAT, GREEDY))
    stop = text.strip()[1:3]
    cut = "".join(engine.stream(CHAT, Sampling(**{**GREEDY.__dict__, "stop": [stop]})))
    assert cut == text[: text.find(stop)] and engine.last.finish_reason == "stop"


def test_prompt_longer_than_context_is_refused(engine: LlamaCppEngine) -> None:
    with pytest.raises(ContextLengthError, match="context is 256"):
        list(engine.stream([{"role": "user", "content": "fox " * 400}], GREEDY))


def test_memory_estimate_and_warning(engine: LlamaCppEngine, caplog: pytest.LogCaptureFixture) -> None:
    info = read_gguf_info(engine.path)
    est = estimate_memory(info, 1024)
    assert est.kv_cache == 2 * 1024 * 2 * 2 * 8 * 2  # K and V, 2 layers, 2 KV heads of 8 dims, f16
    assert 0 < est.weights < engine.path.stat().st_size and est.total > est.weights + est.kv_cache
    assert est.warning() is None  # a tiny model fits
    pi = MemoryEstimate(weights=3 * 2**30, kv_cache=2**30, compute=2**28, available=2 * 2**30)
    assert "only 2.0 GiB of RAM is free" in pi.warning()
    with caplog.at_level("INFO", logger="llamabrew"):
        LlamaCppEngine(engine.path, threads=1, ctx=128).close()
    assert "needs ~" in caplog.text


def test_run_directory_is_exported_on_the_fly_once(run_dir: Path) -> None:
    eng = open_llamacpp_engine(run_dir, threads=1, ctx=128, announce=False)
    path = run_dir / "gguf" / "model-q8_0.gguf"
    assert eng.path == path and path.is_file() and (run_dir / "gguf" / "model-q8_0.Modelfile").is_file()
    eng.close()
    stamp = path.stat().st_mtime_ns
    open_llamacpp_engine(run_dir, threads=1, ctx=128, announce=False).close()
    assert path.stat().st_mtime_ns == stamp
