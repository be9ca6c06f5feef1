"""Do the defaults work on worlds they were not tuned on? The README's commands, with no tuning flags, per world.

For each world (``llamabrew.world.WORLDS``): write its corpus as a .txt file and Alpaca questions about half of the
people, then run exactly what the README shows a new user:

    llamabrew pretrain --corpus corpus.txt --out base
    llamabrew train --base base --data train.json --out sft
    llamabrew eval --base sft --data held_out.jsonl --compare --json

and print held-out contains / exact match before and after tuning, the plans the commands printed, and minutes.
Held-out questions ask about people whose facts appeared only in the pretraining corpus.

    python benchmarks/default_worlds.py                       # every world
    python benchmarks/default_worlds.py --world harbor --keep runs/worlds
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llamabrew.world import WORLDS, Person, biographies, corpus_text, make_world, questions

# questions per fact: data sizes differ by world
TRAIN_PHRASINGS = {"quickstart": 3, "harbor": 2, "orchard": 1, "market": 2, "guild": 2, "voyage": 1, "caravan": 2,
                   "observatory": 2, "apiary": 2}


def split_people(name: str, seed: int) -> tuple[list[Person], list[Person]]:
    """The people the tuning data asks about, and the held-out ones (known from the corpus alone)."""
    people = make_world(seed=seed, spec=WORLDS[name])
    random.Random(seed).shuffle(people)
    return people[: len(people) // 2], people[len(people) // 2:]


def write_world(name: str, folder: Path, seed: int) -> tuple[Path, Path, Path]:
    spec = WORLDS[name]
    tuned, held_people = split_people(name, seed)
    people = tuned + held_people
    half = len(tuned)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text(corpus_text(biographies(people, seed=seed, spec=spec), spec))
    train = folder / "train.json"
    train.write_text(json.dumps(questions(people[:half], seed, TRAIN_PHRASINGS.get(name, 1), spec), indent=1))
    held = folder / "held_out.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in questions(people[half:], seed, 1, spec)))
    return corpus, train, held


def base_recall(base: Path, corpus: Path, held: list[Person], people: int = 60) -> float:
    """Storage, apart from extraction: the share of held-out facts the base completes greedily from its own corpus
    text (a document's words up to the value, for the first document with the value after the person's name)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamabrew.train.pretrain import read_corpus, running_text

    as_read = running_text if read_corpus([corpus]).lines_of_text else str  # as pretraining read the text

    tok, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base).eval()
    docs = [d for d in re.split(r"\n\s*\n|\n", corpus.read_text()) if d.strip()]
    hits = total = 0
    for person in held[:people]:
        mine = [d for d in docs if person.name in d]
        for value in person.facts.values():
            doc = next((d for d in mine if value in d[d.index(person.name):]), None)
            if doc is None:
                continue
            start = doc.index(person.name)
            prefix = doc[: start + doc[start:].index(value)].rstrip()
            ids = tok(as_read(prefix[-400:]), return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
            hits += value.lower() in tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).lower()
            total += 1
    return hits / max(1, total)


def llamabrew(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"llamabrew {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res


def plan_line(stderr: str) -> str:
    line = next((ln for ln in stderr.splitlines() if ln.startswith("plan")), "")
    return re.sub(r"\s+", " ", line)


def run_world(name: str, folder: Path, seed: int) -> dict:
    corpus, train, held = write_world(name, folder, seed)
    t0 = time.monotonic()
    pre = llamabrew("pretrain", "--corpus", str(corpus), "--out", str(folder / "base"))
    t1 = time.monotonic()
    sft = llamabrew("train", "--base", str(folder / "base"), "--data", str(train), "--out", str(folder / "sft"))
    t2 = time.monotonic()
    ev = llamabrew("eval", "--base", str(folder / "sft"), "--data", str(held), "--compare", "--json",
                   "--max-new-tokens", "32")
    scores = json.loads(ev.stdout)
    recall = base_recall(folder / "base", corpus, split_people(name, seed)[1])
    warnings = [ln for ln in sft.stderr.splitlines() if "not learning" in ln or "has not fallen" in ln]
    return {"world": name, "held_out": scores["n"], "base_recall": recall, "before": scores["base"]["contains"],
            "after": scores["contains"], "exact_after": scores["exact_match"],
            "pretrain_min": (t1 - t0) / 60, "train_min": (t2 - t1) / 60,
            "pretrain_plan": plan_line(pre.stderr), "train_plan": plan_line(sft.stderr), "warnings": warnings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", action="append", choices=sorted(WORLDS), help="default: every world")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="keep each world's files and runs here")
    ap.add_argument("--recall-of", type=Path, help="only measure the base recall of the worlds kept in this folder")
    args = ap.parse_args()
    if args.recall_of:
        for name in args.world or list(WORLDS):
            if (folder := args.recall_of / name / "base").is_dir():
                held = split_people(name, args.seed)[1]
                print(f"{name}: base recall {base_recall(folder, folder.parent / 'corpus.txt', held):.1%}")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for name in args.world or list(WORLDS):
            row = run_world(name, root / name, args.seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| world | held-out questions | base recall | contains before | contains after | exact after | "
          "pretrain min | train min |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['world']} | {r['held_out']} | {r['base_recall']:.1%} | {r['before']:.1%} | {r['after']:.1%} | "
              f"{r['exact_after']:.1%} | {r['pretrain_min']:.1f} | {r['train_min']:.1f} |")


if __name__ == "__main__":
    main()
