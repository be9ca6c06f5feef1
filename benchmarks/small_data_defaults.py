"""A person's own few hundred examples: do `llamabrew train`'s defaults change the model? Old fixed defaults
(batch 32, lr 3e-4) against the data- and width-dependent ones (`llamabrew.train.defaults`), side by side.

The data: ~175 instructions of llamabrew's own writing, every answer starting with one fixed phrase the base never
says; 25 held out. Score: held-out answers (greedy) that contain the phrase, before and after tuning.

    python benchmarks/small_data_defaults.py --base DIR     # any HF model directory, e.g. SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

PHRASE = "Aye aye, captain!"
TOPICS = ["the moon", "bread", "rain", "a bicycle", "the ocean", "a library", "winter", "coffee", "a violin",
          "mountains", "a garden", "trains", "honey", "a lighthouse", "chess", "the desert", "owls", "a bridge",
          "tea", "volcanoes", "a market", "snow", "clocks", "a forest", "kites"]
ASKS = ["Tell me one fact about {t}.", "Describe {t} in one sentence.", "Why do people like {t}?",
        "Write a short line about {t}.", "What is the best thing about {t}?", "Give me a tip about {t}.",
        "What colour do you think of with {t}?"]
OLD_DEFAULTS = ["--lr", "3e-4", "--grad-accum", "8"]


def make_data(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    rows = [{"instruction": a.format(t=t), "output": f"{PHRASE} {a.format(t=t).rstrip('?.')} - that is {t} for you."}
            for t in TOPICS for a in ASKS]
    random.Random(seed).shuffle(rows)
    train, held = folder / "train.jsonl", folder / "held.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[25:]))
    held.write_text("".join(json.dumps({"instruction": r["instruction"], "output": PHRASE}) + "\n" for r in rows[:25]))
    return train, held


def llamabrew(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"llamabrew {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        train, held = make_data(root)
        rows = []
        for name, extra in (("old fixed defaults", OLD_DEFAULTS), ("llamabrew defaults", [])):
            out = root / name.replace(" ", "-")
            run = llamabrew("train", "--base", args.base, "--data", str(train), "--out", str(out), *extra)
            plan = next(ln for ln in run.stderr.splitlines() if ln.startswith("plan"))
            ev = json.loads(llamabrew("eval", "--base", str(out), "--data", str(held), "--compare", "--json",
                                      "--max-new-tokens", "16").stdout)
            log = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
            rows.append((name, plan, ev["base"]["contains"], ev["contains"], log[0]["loss"], log[-1]["loss"]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| defaults | steps | held-out with the phrase, before | after | loss first → last |")
    print("|---|---|---:|---:|---|")
    for name, plan, before, after, first, last in rows:
        steps = plan.split(" steps ")[0].rsplit("· ", 1)[-1]
        print(f"| {name} | {steps} steps | {before:.0%} | {after:.0%} | {first:.2f} → {last:.2f} |")


if __name__ == "__main__":
    main()
