"""Continuous batching in the llama.cpp engine: the same answers under load as alone (greedy and seeded), prompt
caching per slot, cancellation, chunked prefill."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from llamabrew.engines import GenerationStats, Sampling  # noqa: E402
from llamabrew.engines.llamacpp import LlamaCppEngine  # noqa: E402
from llamabrew.engines.llamacpp_batch import lone_partners  # noqa: E402

GREEDY = Sampling(max_new_tokens=24, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
SEEDED = Sampling(max_new_tokens=24, temperature=0.9, top_p=0.95, top_k=40, repetition_penalty=1.1)
QUESTIONS = ["hi", "What is the capital of Oskenland?", "Tell me a story about a fox.", "Write a haiku about rain.",
             "Who is Mira Lanthorn? She was born in Varnhollow and works as a clockmaker, they say.",
             "Varnhollow", "The city of Varnhollow lies on the river Esk. " * 4, "Soft rain on the roof"]
LENGTHS = [3, 8, 40, 16, 24, 60, 12, 30]  # max_new_tokens of request i


def chat(i: int) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": QUESTIONS[i]}]
    if i % 3 == 2:  # some carry a history
        messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "Hi there."}, *messages]
    return messages


def export(model_dir: Path, out: Path, quant: str) -> Path:
    from llamabrew.export import export_gguf
    from llamabrew.recipe import Recipe, save_recipe

    run = out.parent / f"run-{out.stem}"
    shutil.copytree(model_dir, run)
    save_recipe(Recipe.model_validate({"data": {"template": "chatml"}, "method": "full"}), run)
    return export_gguf(run, quant, out, verify=False, modelfile=False, verbose=False).results[0].path


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 256-wide random LLaMA with an 8k-token vocabulary (its top random logits nearly tie, so greedy text
    shows the smallest numeric difference: without the engine's batch-invariance rules the f16 tests fail here)
    in f16 and q4_0 (whose repacked kernels some CPUs use)."""
    import random

    from tinymodels import CORPUS, build_tiny_model

    from llamabrew.train.tokenizer import train_bpe_tokenizer

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(6000)]
    tok = train_bpe_tokenizer(CORPUS + [" ".join(rng.sample(words, 12)) for _ in range(3000)], vocab_size=8192)
    tmp = tmp_path_factory.mktemp("batch")
    wide = build_tiny_model(tmp / "wide", hidden=256, seed=1, tokenizer=tok)
    return {"f16": export(wide, tmp / "wide-f16.gguf", "f16"), "q4_0": export(wide, tmp / "wide-q4_0.gguf", "q4_0")}


@pytest.mark.parametrize("model", ["f16", "q4_0"])
def test_a_requests_logits_do_not_depend_on_what_shares_its_step(ggufs: dict[str, Path], model: str) -> None:
    """Bitwise, as loaded (the engine has measured which of its rules this CPU needs: on an AVX-512 EPYC, f16
    needs no 1-row products, q4_0 needs nothing more): a prompt read in chunks of 32 or of 2-7 tokens, a next
    token alone or beside 1-7 others."""
    engine = LlamaCppEngine(ggufs[model], threads=2, ctx=256, announce=False, parallel=8)
    try:
        assert engine.runner.call(engine.runner.batch_invariant)
    finally:
        engine.close()


def test_a_slot_without_a_generating_neighbour_gets_a_partner() -> None:
    """llama.cpp cuts a step into pieces of consecutive sequence ids; a piece of one row takes the 1-row kernel."""
    step = [(11, 40, 0, True), (12, 90, 2, True), (13, 7, 3, True), (14, 60, 5, True)]
    assert lone_partners(step) == [(11, 41, 0, True), (14, 61, 5, True)]
    assert lone_partners([(11, 40, 1, True), (12, 9, 2, True)]) == []
    assert lone_partners([(11, 40, 4, True)]) == [(11, 41, 4, True)]
    chunk = [(5, 0, 3, False), (6, 1, 3, False), (7, 2, 3, True)]  # a prompt chunk: one piece of 3 rows
    assert lone_partners(chunk) == []


def run_alone(engine: LlamaCppEngine, sampling: list[Sampling]) -> list[tuple[str, GenerationStats]]:
    out = []
    for i, s in enumerate(sampling):
        text = "".join(engine.stream(chat(i), s))
        out.append((text, engine.last))
    return out


def run_together(engine: LlamaCppEngine, sampling: list[Sampling]) -> tuple[list[tuple[str, GenerationStats]], int]:
    """All requests at once from their own threads; also the most slots that decoded in one step."""
    results: list = [None] * len(sampling)
    widest, decode = [0], engine.runner._decode

    def counting(rows):  # a decode step asks for logits on every row; a prompt chunk on its last one only
        widest[0] = max(widest[0], sum(r[3] for r in rows) if all(r[3] for r in rows) else 0)
        decode(rows)

    start = threading.Barrier(len(sampling))

    def ask(i: int) -> None:
        start.wait()
        results[i] = ("".join(engine.stream(chat(i), sampling[i])), engine.last)

    engine.runner._decode = counting
    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(sampling))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        del engine.runner._decode
    return results, widest[0]


def same(a: tuple[str, GenerationStats], b: tuple[str, GenerationStats]) -> bool:
    (ta, sa), (tb, sb) = a, b
    return (ta, sa.completion_tokens, sa.finish_reason) == (tb, sb.completion_tokens, sb.finish_reason)


@pytest.mark.parametrize(("model", "parallel"), [("f16", 4), ("q4_0", 8)])
def test_eight_concurrent_greedy_requests_get_their_answers_alone(ggufs: dict[str, Path], model: str,
                                                                  parallel: int) -> None:
    engine = LlamaCppEngine(ggufs[model], threads=2, ctx=256, announce=False, parallel=parallel)
    try:
        sampling = [replace(GREEDY, max_new_tokens=n) for n in LENGTHS]
        plain = run_alone(engine, sampling)
        assert len({text for text, _ in plain}) >= 6 and sum(len(t) for t, _ in plain) > 100  # real, varied text
        for i in (2, 5, 7):  # stop strings cut where the plain answer would go on
            text = plain[i][0]
            sampling[i] = replace(sampling[i], stop=[text[len(text) // 3 : len(text) // 3 + 2], "\x00never"])
        alone = run_alone(engine, sampling)
        for i in (2, 5, 7):
            assert alone[i][1].finish_reason == "stop" and len(alone[i][0]) < len(plain[i][0])
        together, widest = run_together(engine, sampling)
        assert widest >= 3  # requests really shared decode steps
        assert [same(a, b) for a, b in zip(alone, together, strict=True)] == [True] * 8
        short = replace(GREEDY, max_new_tokens=8)
        batched = engine.generate_batch([chat(i) for i in range(8)], short)
        assert batched == [t for t, _ in run_alone(engine, [short] * 8)]
    finally:
        engine.close()


@pytest.mark.parametrize("model", ["f16", "q4_0"])
def test_seeded_sampling_is_reproducible_per_request_under_load(ggufs: dict[str, Path], model: str) -> None:
    """Requests arrive from threads at random moments, so the slots that decode together differ from run to run
    (on f16, before lone slots got partners, about 1 run in 6 differed from alone)."""
    engine = LlamaCppEngine(ggufs[model], threads=2, ctx=256, announce=False, parallel=4)
    try:
        sampling = [replace(SEEDED, seed=100 + i, max_new_tokens=n) for i, n in enumerate(LENGTHS)]
        alone = run_alone(engine, sampling)
        together, widest = run_together(engine, sampling)
        assert widest >= 2 and [same(a, b) for a, b in zip(alone, together, strict=True)] == [True] * 8
        reseeded = run_alone(engine, [replace(s, seed=7) for s in sampling])
        assert sum(a[0] != b[0] for a, b in zip(alone, reseeded, strict=True)) >= 4  # the seed matters
    finally:
        engine.close()


def test_a_follow_up_turn_reuses_its_conversation_s_cache(ggufs: dict[str, Path]) -> None:
    engine = LlamaCppEngine(ggufs["f16"], threads=2, ctx=256, announce=False, parallel=2)
    try:
        first = [{"role": "user", "content": QUESTIONS[4]}]
        answer = "".join(engine.stream(first, GREEDY))
        assert engine.last.cached_tokens == 0
        "".join(engine.stream([{"role": "user", "content": QUESTIONS[6]}], GREEDY))  # another conversation
        follow = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
        cached = "".join(engine.stream(follow, GREEDY))
        stats = engine.last
        assert stats.cached_tokens >= engine.count_prompt_tokens(first)  # its slot was kept for it
        assert stats.cached_tokens < stats.prompt_tokens
        engine.runner.call(engine.runner._clear)
        assert "".join(engine.stream(follow, GREEDY)) == cached and engine.last.cached_tokens == 0
        again = "".join(engine.stream(follow, GREEDY))  # the very same prompt: all but its last token
        assert again == cached and engine.last.cached_tokens == engine.last.prompt_tokens - 1
        engine.runner.prompt_cache = False  # --no-prompt-cache
        assert "".join(engine.stream(follow, GREEDY)) == cached and engine.last.cached_tokens == 0
    finally:
        engine.close()


def test_a_reader_that_leaves_frees_its_slot_at_the_next_step(ggufs: dict[str, Path]) -> None:
    engine = LlamaCppEngine(ggufs["f16"], threads=2, ctx=256, announce=False, parallel=1)
    long, short = replace(GREEDY, max_new_tokens=200), replace(GREEDY, max_new_tokens=6)
    try:
        expected = "".join(engine.stream(chat(0), short))
        calls, decode = [0], engine.runner._decode

        def counting(rows):
            calls[0] += 1
            decode(rows)

        engine.runner._decode = counting
        cancel = threading.Event()
        pieces = engine.stream(chat(1), long, cancel)
        next(pieces)
        cancel.set()  # the server's signal that the client hung up
        at_cancel = calls[0]
        list(pieces)
        assert engine.last.finish_reason == "stop" and engine.last.completion_tokens < 200
        assert calls[0] - at_cancel <= 1  # at most the step already under way
        del engine.runner._decode
        abandoned = engine.stream(chat(2), long)
        next(abandoned)
        abandoned.close()  # the reader drops the generator mid-answer
        deadline = time.monotonic() + 10
        while engine.runner.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.runner.busy() == 0
        assert "".join(engine.stream(chat(0), short)) == expected  # the one slot serves the next request
    finally:
        engine.close()


def test_a_long_prompt_is_read_in_chunks_between_the_others_steps(ggufs: dict[str, Path]) -> None:
    engine = LlamaCppEngine(ggufs["f16"], threads=2, ctx=256, announce=False, parallel=2)
    engine.runner.chunk = 8
    talk = replace(GREEDY, max_new_tokens=80)
    try:
        talker, answer = next((i, text) for i in range(8) if (text := "".join(engine.stream(chat(i), talk)))
                              and engine.last.finish_reason == "length")  # a question answered at length
        long_chat = [{"role": "user", "content": QUESTIONS[6] * 2}]
        n_long = engine.count_prompt_tokens(long_chat)
        assert n_long > 100
        steps: list[int] = []  # how many tokens the talker had when each llama_decode started
        decode = engine.runner._decode

        def counting(rows):
            steps.append(len(seen))
            decode(rows)

        seen: list[str] = []
        pieces = engine.stream(chat(talker), talk)
        seen.append(next(pieces))
        reader = threading.Thread(target=lambda: seen.extend(pieces))
        reader.start()
        engine.runner._decode = counting
        before = len(seen)
        next(engine.stream(long_chat, replace(GREEDY, max_new_tokens=2)))
        during = len(seen) - before
        del engine.runner._decode
        reader.join(120)
        assert "".join(seen) == answer  # unchanged by the newcomer
        assert during >= n_long // 8 // 2  # it kept talking while the long prompt went in, chunk by chunk
    finally:
        engine.close()
