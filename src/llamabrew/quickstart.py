"""`llamabrew quickstart`: the whole job offline, on a made-up world, through the public stage entry points.

It is a miniature of the Alpaca finding: knowledge comes from pretraining, the answering format from a little
instruction tuning. The held-out questions ask about people whose facts appeared only in the pretraining corpus.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from llamabrew import evaluate, train
from llamabrew.data.formats import write_jsonl
from llamabrew.engines import GREEDY, Engine, generate_text
from llamabrew.engines.torch_engine import open_torch_engine
from llamabrew.evaluate.compare import AnswerSettings, Comparison, compare
from llamabrew.evaluate.judge_report import summary_view
from llamabrew.evaluate.questions import Question
from llamabrew.evaluate.reference_judge import URL as REFERENCE_URL
from llamabrew.extras import require
from llamabrew.io import atomic_write_text, read_jsonl
from llamabrew.progress import terminal as console
from llamabrew.recipe import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PreferenceConfig,
    PretrainOptimConfig,
    PretrainRecipe,
    Recipe,
    save_recipe,
)
from llamabrew.world import biographies, make_world, questions

BIOS_PER_PERSON = 6
GGUF_QUANTS = ["q8_0", "q4_k_m"]
GGUF_EVAL_LIMIT = 100  # held-out questions asked of each GGUF (the torch model answers all of them too)
JUDGED_QUESTIONS = 80  # held-out questions the offline judge compares base and tuned on
# --align: the answer form preference pairs teach (the tuning never shows it), in words of the world's corpus: the
# toy base's tokenizer learnt nothing else (measured: "Hope that helps!", 10 sub-word pieces for this tokenizer,
# reached 97.5% at DPO's default rate on a 1.5M base but came out garbled on a 1.0M one; this one: 100%, 5 pieces)
SIGN_OFF = "That is all."
ALIGN_PAIRS = 500
ALIGN_EVAL_LIMIT = 200


@dataclass
class QuickstartResult:
    held_out_before: float
    held_out_after: float
    exact_after: float
    artifacts: dict[str, Path] = field(default_factory=dict)
    minutes: float = 0.0


def sft_recipe(base: Path, train_file: Path, out: Path, seed: int) -> Recipe:
    """Quickstart's fine-tuning recipe: `llamabrew train`'s own defaults (learning rate from the base's width,
    steps sized for the data), Alpaca's template, a time limit."""
    return Recipe(
        model=ModelConfig(base=str(base)),
        data=DataConfig(train_files=[train_file], template="alpaca", cutoff_len=160),
        optim=OptimConfig(seed=seed, max_minutes=3),
        out=out,
    )


def run(out: Path, entities: int = 200, pretrain_minutes: float = 4.0, seed: int = 0,
        gguf: bool = True, align: bool = False) -> QuickstartResult:
    started = time.monotonic()
    if gguf:  # said now, not after minutes of training
        require("llamacpp", "llamabrew quickstart's GGUF step (--no-gguf skips it)")
    out = Path(out)
    people = make_world(entities, seed)
    rng = random.Random(seed)
    rng.shuffle(people)
    tuned_on, held_out = people[: entities // 2], people[entities // 2 :]

    console.rule("[bold]1/6 a made-up world, and a base model pretrained on it")
    world_dir = out / "world"
    corpus = world_dir / "corpus.txt"
    atomic_write_text(corpus, "\n\n".join(biographies(people, BIOS_PER_PERSON, seed)) + "\n")
    atomic_write_text(world_dir / "facts.json", json.dumps([p.__dict__ for p in people], indent=1))
    console.print(f"{entities} people × {len(people[0].facts)} facts, each told {BIOS_PER_PERSON} ways → {corpus}")
    base = train.pretrain(PretrainRecipe(
        corpus=[corpus], out=out / "base",
        optim=PretrainOptimConfig(max_minutes=pretrain_minutes, seed=seed),
    ))

    console.rule("[bold]2/6 instruction data about half of the people")
    data_dir = out / "data"
    train_file, held_file = data_dir / "train.json", data_dir / "held_out.jsonl"
    atomic_write_text(train_file, json.dumps(questions(tuned_on, seed, per_fact=3), indent=1))
    write_jsonl(held_file, questions(held_out, seed, per_fact=1))
    console.print(f"train: questions about {len(tuned_on)} people → {train_file}\n"
                  f"held out: questions about the other {len(held_out)} (seen only in pretraining) → {held_file}")

    console.rule("[bold]3/6 LoRA fine-tuning")
    recipe = sft_recipe(base, train_file, out / "sft", seed)
    result = train.run(recipe)

    console.rule("[bold]4/6 held-out questions, before and after tuning; then base vs tuned through the judge")
    scores = evaluate.run(str(result.out), held_file, compare=True, max_new_tokens=32, batch_size=32)
    assert scores.base is not None
    write_jsonl(out / "held_out_answers.jsonl", scores.tuned.samples)
    held = read_jsonl(held_file)[:JUDGED_QUESTIONS]
    judged = judge_base_and_tuned(base, result.out, [(r["instruction"], r["output"]) for r in held], out / "judge")
    shipped = result.out
    aligned: dict[str, float] = {}
    if align:
        console.rule("[bold]4b DPO: preference pairs prefer answers that end with a sign-off")
        shipped, aligned = align_step(result.out, json.loads(train_file.read_text()), held_file, out, seed)

    console.rule("[bold]5/6 ship: " + ("GGUF q8_0 and q4_k_m, verified against torch and scored on held-out "
                                        "questions" if gguf else "skipped (--no-gguf)"))
    ggufs: dict[str, Path] = {}
    if gguf:
        from llamabrew.export import export_gguf

        report = export_gguf(str(shipped), GGUF_QUANTS, out / "gguf" / "model.gguf", eval_file=held_file,
                             eval_limit=GGUF_EVAL_LIMIT, max_new_tokens=32, verbose=False)
        console.print("\n".join(report.lines()), highlight=False)
        ggufs = {r.quant: r.path for r in report.results}

    console.rule("[bold]6/6 chat demo" + (" through llama.cpp (q4_k_m)" if ggufs else ""))
    if ggufs:
        from llamabrew.export import open_llamacpp_engine

        engine: Engine = open_llamacpp_engine(str(ggufs["q4_k_m"]), announce=False, parallel=1)
    else:
        engine = open_torch_engine(str(shipped))
    for person in held_out[:3]:
        q = questions([person], seed)[rng.randrange(len(person.facts))]
        reply = generate_text(engine, [{"role": "user", "content": q["instruction"]}], GREEDY)
        console.print(f"[bold]you>[/] {q['instruction']}\n[bold]bot>[/] {reply.strip()}   "
                      f"[dim](truth: {q['output']}; {engine.last.tokens_per_second:.0f} tok/s)[/]", highlight=False)

    res = QuickstartResult(scores.base.contains, scores.tuned.contains, scores.tuned.exact_match, {
        "world corpus": corpus, "base model": base, "instruction data": train_file, "held-out questions": held_file,
        "LoRA adapter": result.out, "loss curve": result.out / "loss.png",
        **({"DPO adapter": shipped, "preference pairs": out / "data" / "pairs.jsonl"} if align else {}),
        "held-out answers": out / "held_out_answers.jsonl", "judge verdicts (base vs tuned)": judged.verdicts_path,
        **{f"GGUF {q} (+ Modelfile)": p for q, p in ggufs.items()},
    }, (time.monotonic() - started) / 60)
    save_recipe(recipe, out)
    _summary(res, scores.base, scores.tuned)
    atomic_write_text(out / "summary.json", json.dumps({
        "held_out_contains_before": res.held_out_before, "held_out_contains_after": res.held_out_after,
        "held_out_exact_after": res.exact_after, "minutes": res.minutes,
        "judge": {k: judged.summary[k] for k in ("wins", "ties", "losses", "win_rate_adjusted", "ci95")},
        **({"align": aligned} if align else {}),
        "artifacts": {k: str(v) for k, v in res.artifacts.items()}}, indent=2))
    return res


def align_step(sft: Path, tuned_on: list[dict[str, str]], held_file: Path, out: Path, seed: int,
               ) -> tuple[Path, dict[str, float]]:
    """DPO from the SFT adapter: pairs whose chosen answer adds a sign-off the tuning never showed, on questions
    about the tuned people; then held-out questions about the others, before and after: the share signed off
    and the share whose fact is right (it must not fall)."""
    pairs = [{"prompt": r["instruction"], "chosen": f"{r['output']} {SIGN_OFF}", "rejected": r["output"]}
             for r in random.Random(seed + 5).sample(tuned_on, min(ALIGN_PAIRS, len(tuned_on)))]
    write_jsonl(out / "data" / "pairs.jsonl", pairs)
    console.print(f"{len(pairs)} pairs (chosen: the answer + \"{SIGN_OFF}\"; rejected: the answer alone) → "
                  f"{out / 'data' / 'pairs.jsonl'}", highlight=False)
    recipe = Recipe(model=ModelConfig(adapter=str(sft)), method="dpo", out=out / "dpo",
                    data=DataConfig(train_files=[out / "data" / "pairs.jsonl"], cutoff_len=160),
                    preference=PreferenceConfig(nll_weight=1.0), optim=OptimConfig(seed=seed, max_minutes=3))
    dpo = train.run(recipe).out
    figures: dict[str, float] = {}
    table = Table(title=f"held-out questions (first {ALIGN_EVAL_LIMIT}) before and after DPO")
    for col in ("model", "ends with the sign-off", "fact right (contains)"):
        table.add_column(col)
    for name, run_dir in (("sft", sft), ("dpo", dpo)):
        report = evaluate.run(str(run_dir), held_file, max_new_tokens=48, batch_size=32, limit=ALIGN_EVAL_LIMIT,
                              save=name == "dpo").tuned
        figures[f"{name}_signed"] = sum(s["answer"].strip().endswith(SIGN_OFF) for s in report.samples) / report.n
        figures[f"{name}_contains"] = report.contains
        table.add_row(f"{name} ({run_dir.name})", f"{figures[f'{name}_signed']:.1%}", f"{report.contains:.1%}")
    console.print(table)
    return dpo, figures


def judge_base_and_tuned(base: Path, tuned: Path, asked: list[tuple[str, str]], out: Path,
                         template: str = "alpaca", max_new_tokens: int = 32) -> Comparison:
    """The comparison `llamabrew judge` makes, with the offline judge: ``asked`` is (question, reference)
    pairs whose reference it knows (the world's facts, the persona's greeting): ``--judge-url builtin:reference``."""
    qs = [Question(i + 1, "held-out", (q,), (ref,)) for i, (q, ref) in enumerate(asked)]
    atomic_write_text(out / "questions.jsonl", "".join(json.dumps(q.as_dict()) + "\n" for q in qs))
    console.print(f"llamabrew judge --questions {out / 'questions.jsonl'} --a {base} --b {tuned} --judge-url "
                  f"{REFERENCE_URL} --template {template} --max-new-tokens {max_new_tokens} --out {out}",
                  style="dim", highlight=False)
    judged = compare(qs, str(base), str(tuned), judge_url=REFERENCE_URL, out=out,
                     answering=AnswerSettings(max_new_tokens=max_new_tokens, batch_size=32, template=template))
    for part in summary_view(judged.summary):
        console.print(part, highlight=False)
    return judged


def _summary(res: QuickstartResult, before: evaluate.EvalReport, after: evaluate.EvalReport) -> None:
    table = Table(title=f"held-out questions ({after.n}) about people seen only in pretraining")
    for col in ("model", "contains", "exact match", "loss"):
        table.add_column(col)
    table.add_row("base (before tuning)", f"{before.contains:.1%}", f"{before.exact_match:.1%}", f"{before.loss:.3f}")
    table.add_row("base + LoRA (after)", f"{after.contains:.1%}", f"{after.exact_match:.1%}", f"{after.loss:.3f}")
    console.print(table)
    print_artifacts(res.artifacts, res.minutes)


def print_artifacts(artifacts: dict[str, Path], minutes: float) -> None:
    table = Table(title=f"artifacts ({minutes:.1f} minutes in all)", show_header=False)
    for name, path in artifacts.items():
        table.add_row(name, str(path))
    console.print(table)
