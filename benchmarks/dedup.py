"""ROUGE-L novelty filter: llamabrew's exact pruned filter vs. a plain rouge_score loop (Alpaca's method).

Real Alpaca instructions cannot be downloaded here, so the benchmark makes Alpaca-like ones: a word-bigram
model trained on the 175 Self-Instruct seed tasks (../shared/data) writes instructions of 3-40 words, and one
in six is a light edit (1-3 words changed) of an earlier one, so the filter has true near-duplicates to
reject.

The fast filter runs on all N instructions. The naive loop (rouge_score's tokenizer and ``_score_lcs``, one
process) runs on the first ``--sample`` of them; both must give identical decisions there. Its full-run time
is extrapolated from its measured time per pair and the exact number of pairs a naive run compares (the sum of
the kept-set sizes seen by each instruction, known from the fast run).

    python benchmarks/dedup.py [--n 52000] [--sample 600]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections import defaultdict
from pathlib import Path

from llamabrew.data.rouge import RougeFilter, rouge_tokens

SEEDS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "self_instruct_seed_tasks.jsonl"


def synthetic_instructions(n: int, seed: int = 0) -> list[str]:
    """Alpaca-like instructions from a bigram model of the seed tasks, with one in six a near-copy."""
    texts = []
    for line in SEEDS.read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        texts.append(task["instruction"])
        texts += [inst["input"] for inst in task["instances"] if inst["input"]]
    follow: dict[str, list[str]] = defaultdict(list)
    starts = []
    for text in texts:
        words = text.split()
        if words:
            starts.append(words[0])
        for a, b in zip(words, words[1:] + ["</s>"], strict=True):
            follow[a].append(b)
    rng = random.Random(seed)
    vocab = sorted(follow)
    out: list[str] = []
    while len(out) < n:
        if out and rng.random() < 1 / 6:
            words = rng.choice(out).split()
            for _ in range(rng.randint(1, 3)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
        else:
            words = [rng.choice(starts)]
            target = rng.randint(3, 40)
            while len(words) < target:
                nxt = rng.choice(follow.get(words[-1]) or ["</s>"])
                if nxt == "</s>":
                    nxt = rng.choice(starts)
                words.append(nxt)
        out.append(" ".join(words))
    return out


def naive_rouge_score(texts: list[str], threshold: float) -> tuple[list[bool], int]:
    """Alpaca's loop: rouge_score's tokenizer, ``_score_lcs`` against every kept instruction (all of them, as
    Alpaca's pool.map does), then the max against the threshold."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept: list[list[str]] = []
    decisions, pairs = [], 0
    for text in texts:
        tokens = scorer._tokenizer.tokenize(text)
        pairs += len(kept)
        ok = max((rouge_scorer._score_lcs(tokens, k).fmeasure for k in kept), default=0.0) <= threshold
        decisions.append(ok)
        if ok:
            kept.append(tokens)
    return decisions, pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=52_000)
    ap.add_argument("--sample", type=int, default=600)
    ap.add_argument("--threshold", type=float, default=0.7)
    args = ap.parse_args()

    texts = synthetic_instructions(args.n)
    words = sum(len(rouge_tokens(t)) for t in texts) / len(texts)

    t0 = time.perf_counter()
    filt = RougeFilter(args.threshold, hint=texts)
    fast, kept_before = [], []
    for text in texts:
        kept_before.append(len(filt))
        fast.append(filt.check_and_add(text)[0])
    fast_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    naive, sample_pairs = naive_rouge_score(texts[: args.sample], args.threshold)
    naive_sample_s = time.perf_counter() - t0
    assert naive == fast[: args.sample], "fast filter disagrees with rouge_score on the sample"
    total_pairs = sum(kept_before)
    naive_full_s = naive_sample_s / max(sample_pairs, 1) * total_pairs

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        "1 process"
    )
    print(
        f"data: {args.n} synthetic Alpaca-like instructions, {words:.1f} tokens on average, threshold "
        f"{args.threshold}"
    )
    print(f"kept {sum(fast)} / {args.n} ({args.n - sum(fast)} rejected as near-duplicates)")
    print(f"{'method':<40}{'instructions':>14}{'seconds':>12}")
    print(f"{'llamabrew RougeFilter (exact, pruned)':<40}{args.n:>14}{fast_s:>12.1f}")
    print(f"{'rouge_score loop, measured':<40}{args.sample:>14}{naive_sample_s:>12.1f}")
    print(
        f"{'rouge_score loop, extrapolated':<40}{args.n:>14}{naive_full_s:>12.0f}"
        f"   ({total_pairs:,} pairs at {naive_sample_s / max(sample_pairs, 1) * 1e6:.1f} us/pair)"
    )
    print(
        f"speed-up: {naive_full_s / fast_s:.0f}x; decisions identical on the {args.sample}-instruction sample"
    )


if __name__ == "__main__":
    main()
