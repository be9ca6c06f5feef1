"""Each stage kind's run: the recipe section in, one call into its stage's public entry point, a small JSON
result out (kept in ``pipeline.json``, read by the report). ``resume`` is set when the same stage was
interrupted with the same settings; stages whose command resumes by itself (teacher data, the judge) always do.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llamabrew.io import atomic_write_text
from llamabrew.pipeline.config import Stage
from llamabrew.run import Run

Result = dict[str, Any]


def run_world(stage: Stage, resume: bool) -> Result:
    from llamabrew.data.formats import write_jsonl
    from llamabrew.evaluate.questions import Question
    from llamabrew.world import biographies, make_world, questions

    r, out = stage.section, stage.outputs
    people = make_world(r.entities, r.seed)
    random.Random(r.seed).shuffle(people)
    tuned_on, held_out = people[: r.entities // 2], people[r.entities // 2 :]
    atomic_write_text(out["corpus"], "\n\n".join(biographies(people, r.bios_per_person, r.seed)) + "\n")
    atomic_write_text(out["facts"], json.dumps([p.__dict__ for p in people], indent=1))
    train = questions(tuned_on, r.seed, per_fact=r.per_fact)
    held = questions(held_out, r.seed, per_fact=1)
    atomic_write_text(out["train"], json.dumps(train, indent=1))
    write_jsonl(out["held_out"], held)
    asked = [Question(i + 1, "held-out", (q["instruction"],), (q["output"],)).as_dict()
             for i, q in enumerate(held[: r.judged_questions])]
    write_jsonl(out["questions"], asked)
    result = {"people": len(people), "facts_per_person": len(people[0].facts), "train": len(train),
              "held_out": len(held), "judge_questions": len(asked)}
    if r.sign_off:
        pairs = [{"prompt": q["instruction"], "chosen": f"{q['output']} {r.sign_off}", "rejected": q["output"]}
                 for q in random.Random(r.seed + 5).sample(train, min(r.pairs, len(train)))]
        write_jsonl(out["pairs"], pairs)
        result["pairs"] = len(pairs)
    return result


def run_generate(stage: Stage, resume: bool) -> Result:
    from llamabrew.data.generate import generate, generate_job

    return generate(*generate_job(stage.section))


def run_translate(stage: Stage, resume: bool) -> Result:
    from llamabrew.data.translate import translate, translate_job

    return translate(*translate_job(stage.section))


def run_curate(stage: Stage, resume: bool) -> Result:
    from llamabrew.data.curate import curate, curate_options

    report = curate(curate_options(stage.section))
    return {k: v for k, v in report.items() if k != "top_verb_objects"}


def run_convert(stage: Stage, resume: bool) -> Result:
    from llamabrew.data.convert import convert

    r = stage.section
    return convert(r.input, Path(r.out), r.to, r.lang)


def _summary(run_dir: Path) -> Result:
    from dataclasses import asdict

    summary = Run(run_dir).summary()
    return asdict(summary) if summary else {}


def run_pretrain(stage: Stage, resume: bool) -> Result:
    from llamabrew import train

    train.pretrain(stage.section.model_copy(update={"resume": resume or stage.section.resume}))
    return _summary(Path(stage.section.out))


def run_train(stage: Stage, resume: bool) -> Result:
    from llamabrew import train

    result = train.run(stage.section.model_copy(update={"resume": resume or stage.section.resume}))
    return _summary(result.out)


def run_eval(stage: Stage, resume: bool) -> Result:
    from llamabrew import evaluate
    from llamabrew.data.formats import write_jsonl

    r = stage.section
    result = evaluate.run_recipe(r)
    write_jsonl(stage.outputs["answers"], result.tuned.samples)
    report = {"model": r.model or r.adapter, "data": str(r.data), "max_new_tokens": r.max_new_tokens,
              **result.as_dict()}
    atomic_write_text(stage.outputs["report"], json.dumps(report, indent=2))
    return report


def run_judge(stage: Stage, resume: bool) -> Result:
    from llamabrew.evaluate.compare import run_judge as judge

    judged = judge(stage.section)
    atomic_write_text(stage.outputs["summary"], json.dumps(judged.summary, indent=2, ensure_ascii=False))
    return judged.summary


def run_export(stage: Stage, resume: bool) -> Result:
    from llamabrew.export import export_recipe

    report = export_recipe(stage.section, verbose=False)
    return {**report.as_dict(), "lines": report.lines()}


def serve_command(stage: Stage) -> str:
    """The `llamabrew serve` command for a serve stage: the pipeline only says it, a server is yours to start."""
    import shlex

    r, defaults = stage.section, type(stage.section)()
    parts = ["llamabrew", "serve", str(r.model)]
    for name in ("host", "port", "name", "template", "engine", "quant", "ctx", "threads", "max_tokens"):
        value = getattr(r, name)
        if value != getattr(defaults, name):
            parts += [f"--{name.replace('_', '-')}", str(value)]
    parts += [f"--adapter={n}={d}" for n, d in r.adapters.items()]
    return shlex.join(parts)


def run_serve(stage: Stage, resume: bool) -> Result:
    return {"command": serve_command(stage)}


RUNNERS: dict[str, Callable[[Stage, bool], Result]] = {
    "world": run_world, "generate": run_generate, "translate": run_translate, "curate": run_curate,
    "convert": run_convert, "pretrain": run_pretrain, "train": run_train, "eval": run_eval, "judge": run_judge,
    "export": run_export, "serve": run_serve,
}
RESUMABLE = ("pretrain", "train")  # checkpointed: an interrupted stage continues inside
