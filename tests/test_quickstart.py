"""The main job end to end: knowledge from pretraining, answering format from a little LoRA tuning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llamabrew.world import make_world, questions


def test_quickstart_answers_held_out_questions_only_after_tuning(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "quickstart", "--out", str(out),
                          "--entities", "100", "--pretrain-minutes", "2", "--align"], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["held_out_contains_before"] <= 0.05
    assert summary["held_out_contains_after"] >= 0.75  # 2-minute base: 83% on a 2-core EPYC in fp32, 90%+ with bf16
    for path in summary["artifacts"].values():
        assert Path(path).exists(), path
    # held-out people never appear in the instruction data
    trained = {r["instruction"] for r in json.loads((out / "data" / "train.json").read_text())}
    held = [json.loads(line) for line in (out / "data" / "held_out.jsonl").read_text().splitlines()]
    names = {p.name for p in make_world(100, 0)}
    held_names = {n for n in names if any(n in r["instruction"] for r in held)}
    assert held_names and not any(n in q for q in trained for n in held_names)
    assert "you>" in res.stderr and "bot>" in res.stderr  # the chat demo ran
    assert (out / "base" / "model.safetensors").is_file() and (out / "sft" / "adapter_config.json").is_file()
    # shipped: verified GGUFs, scored side by side with torch, and the demo answered through llama.cpp
    assert (out / "gguf" / "model-q8_0.gguf").is_file() and (out / "gguf" / "model-q4_k_m.gguf").is_file()
    table = [line.split() for line in res.stderr.splitlines() if line.split()[:1] in (["torch"], ["q8_0"], ["q4_k_m"])]
    assert [row[0] for row in table] == ["torch", "q8_0", "q4_k_m"]
    assert table[1][-1] == "ok"  # q8_0 passed verification
    assert float(table[1][-2].rstrip("%")) >= float(table[0][-1].rstrip("%")) - 5  # q8_0 answers as torch does
    assert "through llama.cpp" in res.stderr
    # base vs tuned through `llamabrew judge`'s path, with the offline reference judge
    judge = summary["judge"]
    assert judge["wins"] > 10 * max(judge["losses"], 1) and judge["win_rate_adjusted"] >= 0.7
    assert judge["ci95"][0] <= judge["win_rate_adjusted"] <= judge["ci95"][1]
    assert "judged by reference" in res.stderr and (out / "sft" / "reports" / "judge.json").is_file()
    # --align: DPO teaches the sign-off the tuning never showed, facts kept (reduced length: 5 points of room)
    align = summary["align"]
    assert align["sft_signed"] <= 0.02 and align["dpo_signed"] >= 0.9, align
    assert align["dpo_contains"] >= align["sft_contains"] - 0.05, align
    assert "That is all." in res.stderr.split("chat demo")[-1]  # the shipped GGUF is the DPO run


def test_world_questions_cover_every_fact_with_sentence_answers() -> None:
    people = make_world(10, seed=3)
    assert len({p.name for p in people}) == 10
    qs = questions(people, per_fact=2)
    assert len(qs) == 10 * len(people[0].facts) * 2
    for p in people:
        for value in p.facts.values():
            assert any(value in q["output"] and p.name in q["output"] for q in qs)


def test_other_worlds_differ_in_layout_names_and_answer_forms() -> None:
    from llamabrew.train.pretrain import split_documents
    from llamabrew.world import HARBOR, ORCHARD, QUICKSTART, biographies, corpus_text

    harbor = make_world(20, seed=1, spec=HARBOR)
    text = corpus_text(biographies(harbor, seed=1, spec=HARBOR), HARBOR)
    lines = split_documents(text)
    assert "\n\n" not in text and len(lines) == 20 * len(HARBOR.attributes) * HARBOR.repeats  # one fact a line
    first = harbor[0].name
    mine = [i for i, line in enumerate(lines) if line.startswith(first) or f"of {first} " in line]
    assert mine == list(range(mine[0], mine[0] + len(mine)))  # a person's lines are written together
    orchard = make_world(20, seed=1, spec=ORCHARD)
    assert len(split_documents(corpus_text(biographies(orchard, seed=1, spec=ORCHARD), ORCHARD))) == 20 * 4
    names = {p.name for w in (QUICKSTART, HARBOR, ORCHARD) for p in make_world(30, seed=0, spec=w)}
    assert len(names) == 90  # other people in every world
    for spec in (HARBOR, ORCHARD):
        people = make_world(5, seed=2, spec=spec)
        qs = questions(people, spec=spec)
        assert len(qs) == 5 * len(spec.attributes)
        for p in people:
            assert all(any(p.name in q["output"] and v in q["output"] for q in qs) for v in p.facts.values())
