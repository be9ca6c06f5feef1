"""Curation: fewer, cleaner examples train better than more, noisier ones.

Steps, in order: exact duplicates, script/language, length (tokens of the base model's tokenizer, or words),
near-duplicates (ROUGE-L between requests: the instruction plus input, or a chat's user turns), then a seeded
train/val split, each part optionally sorted by length. Records are written back unchanged. The report has the
counts removed at each step, a length histogram (PNG) and the top leading verbs of instructions with their
first object word: the diversity view of the Alpaca/Self-Instruct papers, by a first-word heuristic (no
parser).
"""

from __future__ import annotations

import functools
import json
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamabrew.data.formats import Example, parse_record, read_records, write_jsonl
from llamabrew.data.rouge import RougeFilter
from llamabrew.errors import LlamabrewError
from llamabrew.io import atomic_write_text
from llamabrew.stage_recipes import CurateRecipe

SCRIPTS = ("latin", "han", "kana", "hangul", "cyrillic", "arabic", "devanagari", "greek", "hebrew", "thai")
_NAME_PREFIX = {"CJK": "han", "HIRAGANA": "kana", "KATAKANA": "kana"} | {s.upper(): s for s in SCRIPTS}
LANG_SCRIPTS: dict[str, set[str]] = {
    **{lang: {"latin"} for lang in "en fr de es it pt nl vi id tr pl sv da no fi cs ro hu ms sw".split()},
    **{lang: {"cyrillic"} for lang in ("ru", "uk", "bg")},
    **{lang: {"arabic"} for lang in ("ar", "fa", "ur")},
    **{lang: {"devanagari"} for lang in ("hi", "mr", "ne")},
    "zh": {"han"}, "ja": {"han", "kana"}, "ko": {"hangul", "han"}, "sr": {"cyrillic", "latin"},
    "el": {"greek"}, "he": {"hebrew"}, "th": {"thai"},
}  # fmt: skip
# words before an instruction's verb; first words of questions and the like; words skipped to find the object
_LEAD = set("please kindly now then also just and so ok okay".split())
_QUESTION = set(
    "what how why who whom whose when where which is are was were do does did can could would will should "
    "shall may might have has i my if in the a an this there given for as you".split()
)
_FILLER = set(
    "a an the me us some few this that these those my your our of to for with about on in and or its their "
    "his her short brief new list following given up out down one two three five".split()
)


@functools.lru_cache(maxsize=65536)
def char_script(ch: str) -> str | None:
    """The script of a letter (by its Unicode name), or None for non-letters and other scripts."""
    if not ch.isalpha():
        return None
    if ch < "\x80":
        return "latin"
    return _NAME_PREFIX.get(unicodedata.name(ch, "").split(" ", 1)[0])


def letter_scripts(text: str) -> dict[str, float]:
    """Share of the letters of ``text`` in each script."""
    counts: Counter[str] = Counter()
    for ch, n in Counter(text).items():
        script = char_script(ch)
        if script or ch.isalpha():
            counts[script or "other"] += n
    total = sum(counts.values())
    return {s: n / total for s, n in counts.items()} if total else {}


def instruction_verb(instruction: str) -> tuple[str, str] | None:
    """(leading verb, first object word) of an imperative instruction; None for questions and the like."""
    words = re.findall(r"[a-z][a-z'-]*", instruction.lower())
    while words and words[0] in _LEAD:
        words.pop(0)
    if not words or words[0] in _QUESTION or words[0].endswith(("ing", "ly", "'s")):
        return None
    noun = next((w for w in words[1:6] if w not in _FILLER and len(w) > 2), "")
    return words[0], noun


@dataclass
class CurateOptions:
    inputs: list[Path]
    out_dir: Path
    near_dup_threshold: float | None = 0.7
    tokenizer: str | None = None  # name or folder for AutoTokenizer; lengths are in words without one
    min_length: int = 1
    max_length: int | None = None
    lang: str | None = None  # keep examples written mostly in this language's script(s)
    scripts: set[str] = field(default_factory=set)  # ...or in these scripts
    min_script_share: float = 0.5
    sort_by_length: bool = False
    val_fraction: float = 0.05
    seed: int = 0
    top_verbs: int = 20


def curate_options(r: CurateRecipe) -> CurateOptions:
    """A `CurateRecipe` (``llamabrew data curate`` or a pipeline's curate stage) as options."""
    if r.out_dir is None:
        raise LlamabrewError("pass --out-dir (gets train.jsonl, val.jsonl, report.json, lengths.png)")
    bad = [s for s in r.script if s not in SCRIPTS]
    if bad:
        raise LlamabrewError(f"unknown script {bad[0]!r}; choose from {', '.join(SCRIPTS)}")
    return CurateOptions(inputs=list(r.inputs), out_dir=Path(r.out_dir),
                         near_dup_threshold=r.near_dup_threshold or None, tokenizer=r.tokenizer,
                         min_length=r.min_length, max_length=r.max_length, lang=r.lang, scripts=set(r.script),
                         min_script_share=r.min_script_share, sort_by_length=r.sort_by_length,
                         val_fraction=r.val_fraction, seed=r.seed)


def _norm(text: str) -> str:
    return " ".join(text.split())


def example_text(ex: Example) -> str:
    return "\n".join(m.text() for m in ex.messages)


def request_text(ex: Example) -> str:
    """What the user asked: instruction and input, or all user turns."""
    return "\n".join(m.text() for m in ex.messages if m.role == "user")


def length_fn(tokenizer: str | None) -> tuple[Callable[[list[str]], list[int]], str]:
    """A batch length function and its unit: the tokenizer's tokens, or whitespace words."""
    if tokenizer is None:
        return (lambda texts: [len(t.split()) for t in texts]), "words"
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as e:
        raise LlamabrewError(f"cannot load tokenizer {tokenizer!r}: {str(e).splitlines()[0]}") from None
    return (lambda texts: [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]), "tokens"


def curate(
    opts: CurateOptions, progress: Callable[[str, int], Callable[[], None]] | None = None
) -> dict[str, Any]:
    """Run every step and write ``train.jsonl``, ``val.jsonl``, ``report.json`` and ``lengths.png``."""
    items: list[tuple[dict[str, Any], Example]] = []
    for path in opts.inputs:
        for rec, line, idx in read_records(path):
            items.append((rec, parse_record(rec, file=path, line=line, index=idx)))
    if not items:
        raise LlamabrewError("no examples to curate")
    report: dict[str, Any] = {"inputs": [str(p) for p in opts.inputs], "read": len(items), "removed": {}}
    removed = report["removed"]

    seen: set[Any] = set()
    kept = []
    for rec, ex in items:
        key = tuple((m.role, _norm(m.content), _norm(m.input)) for m in ex.messages)
        if key not in seen:
            seen.add(key)
            kept.append((rec, ex))
    removed["exact_duplicate"], items = len(items) - len(kept), kept

    wanted = set(opts.scripts) | (LANG_SCRIPTS.get(opts.lang.split("-")[0], set()) if opts.lang else set())
    if opts.lang and not wanted:
        raise LlamabrewError(f"unknown language {opts.lang!r}; use --script with one of {', '.join(SCRIPTS)}")
    if wanted:
        kept = [
            (r, e)
            for r, e in items
            if sum(letter_scripts(example_text(e)).get(s, 0.0) for s in wanted) >= opts.min_script_share
        ]
        removed["script"], items = len(items) - len(kept), kept

    measure, unit = length_fn(opts.tokenizer)
    lengths = measure([example_text(e) for _, e in items]) if items else []
    ok = [opts.min_length <= n and (opts.max_length is None or n <= opts.max_length) for n in lengths]
    removed["length"] = ok.count(False)
    items, lengths = (
        [it for it, k in zip(items, ok, strict=True) if k],
        [n for n, k in zip(lengths, ok, strict=True) if k],
    )

    if opts.near_dup_threshold is not None and items:
        texts = [request_text(e) for _, e in items]
        filt = RougeFilter(opts.near_dup_threshold, hint=texts)
        tick = progress("near-duplicates", len(texts)) if progress else None
        keep = []
        for t in texts:
            keep.append(filt.check_and_add(t)[0])
            if tick:
                tick()
        removed["near_duplicate"] = keep.count(False)
        items = [it for it, k in zip(items, keep, strict=True) if k]
        lengths = [n for n, k in zip(lengths, keep, strict=True) if k]

    order = list(range(len(items)))
    random.Random(opts.seed).shuffle(order)
    n_val = round(len(items) * opts.val_fraction) if len(items) > 1 else 0
    if opts.val_fraction > 0 and len(items) > 1:
        n_val = max(1, n_val)
    parts = {"val": sorted(order[:n_val]), "train": sorted(order[n_val:])}
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    for name, idx in parts.items():
        if opts.sort_by_length:
            idx = sorted(idx, key=lengths.__getitem__)
        write_jsonl(opts.out_dir / f"{name}.jsonl", [items[i][0] for i in idx])
        report[name] = len(idx)

    verbs = Counter(v for v in (instruction_verb(e.instruction) for _, e in items) if v)
    report.update(
        {
            "kept": len(items),
            "length_unit": unit,
            "length": _length_stats(lengths),
            "top_verbs": Counter(v for v, _ in verbs.elements()).most_common(opts.top_verbs),
            "top_verb_objects": [(f"{v} {o}".strip(), n) for (v, o), n in verbs.most_common(opts.top_verbs)],
            "no_leading_verb": len(items) - verbs.total(),
        }
    )
    if lengths:
        _histogram(lengths, unit, opts.out_dir / "lengths.png")
        report["histogram"] = str(opts.out_dir / "lengths.png")
    atomic_write_text(opts.out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def _length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    s = sorted(lengths)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {
        "min": s[0],
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": s[-1],
        "mean": round(sum(s) / len(s), 1),
    }


def _histogram(lengths: list[int], unit: str, path: Path) -> None:
    """Length histogram as a PNG, written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llamabrew.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#8a5a2b")
    ax.set_xlabel(f"example length ({unit})")
    ax.set_ylabel("examples")
    ax.set_title(f"{len(lengths)} examples, median {sorted(lengths)[len(lengths) // 2]} {unit}")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
