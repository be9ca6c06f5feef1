"""The fast ROUGE-L filter must decide exactly as the naive pairwise filter (and as rouge_score) does."""

from __future__ import annotations

import json
import random

import pytest
from scripted_teacher import SELF_INSTRUCT_SEEDS as SEED_TASKS

from llamabrew.data.generate import load_seed_tasks
from llamabrew.data.rouge import (
    RougeFilter,
    f1_from_lcs,
    filter_novel,
    lcs_length,
    naive_filter,
    rouge_l,
    rouge_tokens,
)

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def reference_filter(texts: list[str], threshold: float) -> list[bool]:
    """Alpaca's loop: rouge_score tokens and _score_lcs against every kept instruction."""
    kept, out = [], []
    for text in texts:
        tokens = SCORER._tokenizer.tokenize(text)
        ok = all(rouge_scorer._score_lcs(tokens, k).fmeasure <= threshold for k in kept)
        out.append(ok)
        if ok:
            kept.append(tokens)
    return out


def random_texts(rng: random.Random, n: int, vocab: int, max_len: int) -> list[str]:
    words = [f"w{i}" for i in range(vocab)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, max_len))) for _ in range(n)]


def test_tokenizer_matches_rouge_score():
    for text in [
        "Hello, World! It's 3.14 — déjà vu",
        "ÀÉÎ İstanbul straße",
        "snake_case and CamelCase",
        "数学 math 123abc",
        "",
        "   \n\t",
        "a-b/c\\d",
        "ﬁne Ｆｕｌｌ",
    ]:
        assert rouge_tokens(text) == SCORER._tokenizer.tokenize(text), text


def test_lcs_and_score_match_rouge_score_exactly():
    rng = random.Random(1)
    for _ in range(400):
        a, b = (random_texts(rng, 1, rng.choice([2, 4, 30]), rng.choice([5, 20, 90]))[0] for _ in range(2))
        ta, tb = rouge_tokens(a), rouge_tokens(b)
        if ta and tb:
            assert lcs_length(ta, tb) == rouge_scorer._lcs_table(ta, tb)[-1][-1]
        assert rouge_l(a, b) == SCORER.score(a, b)["rougeL"].fmeasure  # bit-for-bit, so thresholds agree
        assert rouge_l(a, b) == rouge_l(b, a)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_filter_equals_rouge_score_loop(threshold: float):
    rng = random.Random(int(threshold * 10))
    texts = random_texts(rng, 250, vocab=6, max_len=12)  # small vocabulary: many pairs near the threshold
    expected = reference_filter(texts, threshold)
    assert 0 < sum(expected) < len(texts)
    assert filter_novel(texts, threshold) == expected


@pytest.mark.parametrize("vocab,max_len", [(3, 8), (8, 14), (40, 30), (400, 20)])
def test_filter_equals_naive_filter_with_and_without_hint(vocab: int, max_len: int):
    rng = random.Random(vocab)
    texts = random_texts(rng, 600, vocab, max_len)
    existing = random_texts(rng, 30, vocab, max_len)
    expected = naive_filter(texts, 0.7, existing)
    assert filter_novel(texts, 0.7, existing) == expected
    online = RougeFilter(0.7)  # no hint: the rarity order is re-derived as it grows (256, 512 kept...)
    for text in existing:
        online.add(text)
    assert [online.check_and_add(t)[0] for t in texts] == expected


def test_scores_exactly_at_the_threshold():
    # LCS 7 of 10 and 10 tokens: F1 is 0.7 up to float rounding; both sides must round the same way
    base = [f"t{i}" for i in range(10)]
    near = base[:7] + ["x", "y", "z"]
    f = f1_from_lcs(7, 10, 10)
    assert rouge_l(" ".join(base), " ".join(near)) == f
    texts = [" ".join(base), " ".join(near), " ".join(base[:7] + ["q"] * 3)]
    assert filter_novel(texts, 0.7) == reference_filter(texts, 0.7) == naive_filter(texts, 0.7)
    assert filter_novel(texts, f) == reference_filter(texts, f)
    # 7 tokens inside 13: 2*7/20 is exactly 0.7, but rouge_score's float expression gives 0.7000000000000001,
    # so the reference rejects it; a filter using 2*lcs/(m+n) would keep it
    long = [f"u{i}" for i in range(13)]
    texts = [" ".join(long), " ".join(long[::2])]
    assert f1_from_lcs(7, 7, 13) > 0.7 and 2 * 7 / 20 == 0.7
    assert filter_novel(texts, 0.7) == reference_filter(texts, 0.7) == [True, False]


def edited(seeds: list[str], rng: random.Random) -> list[str]:
    """Each seed with 0-4 words replaced: from exact duplicates to new enough instructions."""
    out = []
    for s in seeds:
        words = s.split()
        for _ in range(rng.randint(0, 4)):
            words[rng.randrange(len(words))] = rng.choice(["new", "the", "a", "quick", "list"])
        out.append(" ".join(words))
    return out


def test_seed_tasks_and_their_edits():
    seeds = [t["instruction"] for t in load_seed_tasks()]  # llamabrew's own
    rng = random.Random(7)
    texts = seeds + edited(seeds, rng) + edited(seeds, rng)
    rng.shuffle(texts)
    expected = reference_filter(texts, 0.7)
    assert len(seeds) < sum(expected) < len(texts)  # some edits are near-duplicates, some are not
    assert filter_novel(texts, 0.7) == expected


@pytest.mark.skipif(not SEED_TASKS.is_file(), reason="needs ../shared/data/self_instruct_seed_tasks.jsonl")
def test_self_instruct_seed_tasks_and_their_edits():
    seeds = [json.loads(line)["instruction"] for line in SEED_TASKS.read_text().splitlines()]
    rng = random.Random(7)
    texts = seeds[:100] + edited(seeds, rng)[:100]
    rng.shuffle(texts)
    expected = reference_filter(texts, 0.7)
    assert 100 < sum(expected) < 200
    assert filter_novel(texts, 0.7) == expected


def test_non_ascii_text_has_no_tokens_and_is_always_kept():
    f = RougeFilter()
    assert f.check_and_add("解释光合作用的过程")[0] and f.check_and_add("解释光合作用的过程")[0]
    assert rouge_l("解释", "解释") == 0.0  # as rouge_score: no tokens, score 0


def test_most_similar_points_at_the_match():
    f = RougeFilter(0.7)
    f.add("Write a poem about the sea at night")
    f.add("Explain how vaccines train the immune system")
    score, where = f.most_similar("Explain how vaccines train our immune system")
    assert where == 1 and score > 0.7
    assert f.most_similar("Name three rivers in Africa") == (0.0, None)
    with pytest.raises(ValueError):
        RougeFilter(0.0)
