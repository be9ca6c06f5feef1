"""`llamabrew quickstart`: the whole job offline, on a made-up world: the pipeline file shipped with llamabrew
(``pipeline/pipelines/quickstart.yaml``; ``--align`` adds DPO: ``quickstart-align.yaml``) run through
`llamabrew.pipeline` as ``llamabrew run`` runs any pipeline, then a summary and a chat demo.

It is a miniature of the Alpaca finding: knowledge comes from pretraining, the answering format from a little
instruction tuning. The held-out questions ask about people whose facts appeared only in the pretraining corpus.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from llamabrew import pipeline as pipelines
from llamabrew.engines import GREEDY, Engine, generate_text
from llamabrew.engines.torch_engine import open_torch_engine
from llamabrew.evaluate.compare import AnswerSettings, Comparison, compare
from llamabrew.evaluate.judge_report import summary_view
from llamabrew.evaluate.questions import Question
from llamabrew.evaluate.reference_judge import URL as REFERENCE_URL
from llamabrew.extras import require
from llamabrew.io import atomic_write_text, read_jsonl
from llamabrew.pipeline.views import event_view
from llamabrew.progress import terminal as console
from llamabrew.world import make_world, questions

# --align: the answer form preference pairs teach (the tuning never shows it), in words of the world's corpus: the
# toy base's tokenizer learnt nothing else (measured: "Hope that helps!", 10 sub-word pieces for this tokenizer,
# reached 97.5% at DPO's default rate on a 1.5M base but came out garbled on a 1.0M one; this one: 100%, 5 pieces).
# The pipeline files say it (the world stage's sign_off); the figures below read the answers for it.
SIGN_OFF = "That is all."


@dataclass
class QuickstartResult:
    held_out_before: float
    held_out_after: float
    exact_after: float
    artifacts: dict[str, Path] = field(default_factory=dict)
    minutes: float = 0.0


def show(event: pipelines.StageEvent) -> None:
    for part in event_view(event):
        console.print(part, highlight=False)


def quickstart_pipeline(out: Path, entities: int, pretrain_minutes: float, seed: int, gguf: bool,
                        align: bool) -> pipelines.Pipeline:
    """The shipped pipeline with the command's settings (its ``vars``); without GGUFs, no export or serve stage."""
    sets = [f"out={out}", f"vars.seed={seed}", f"vars.entities={entities}", f"vars.pretrain_minutes={pretrain_minutes}",
            *([] if gguf else ["stages.gguf=null", "stages.chat=null"])]
    return pipelines.load_pipeline(pipelines.builtin("quickstart-align" if align else "quickstart"), sets)


def run(out: Path, entities: int = 200, pretrain_minutes: float = 4.0, seed: int = 0,
        gguf: bool = True, align: bool = False) -> QuickstartResult:
    started = time.monotonic()
    if gguf:  # said now, not after minutes of training
        require("llamacpp", "llamabrew quickstart's GGUF step (--no-gguf skips it)")
    out = Path(out)
    job = quickstart_pipeline(out, entities, pretrain_minutes, seed, gguf, align)
    done = pipelines.run(job, on_event=show)
    state = json.loads((job.out / "pipeline.json").read_text(encoding="utf-8"))["stages"]
    scores, judged = state["held_out"]["result"], state["judge"]["result"]
    shipped = job.stage("dpo" if align else "sft").output
    aligned = align_figures(job) if align else {}
    ggufs = dict(job.stage("gguf").outputs) if gguf else {}

    console.rule("[bold]chat demo" + (" through llama.cpp (q4_k_m)" if ggufs else ""))
    if ggufs:
        from llamabrew.export import open_llamacpp_engine

        engine: Engine = open_llamacpp_engine(str(ggufs["q4_k_m"]), announce=False, parallel=1)
    else:
        engine = open_torch_engine(str(shipped))
    people = make_world(entities, seed)  # as the world stage made it: the second half was held out
    rng = random.Random(seed)
    rng.shuffle(people)
    for person in people[entities // 2 :][:3]:
        q = questions([person], seed)[rng.randrange(len(person.facts))]
        reply = generate_text(engine, [{"role": "user", "content": q["instruction"]}], GREEDY)
        console.print(f"[bold]you>[/] {q['instruction']}\n[bold]bot>[/] {reply.strip()}   "
                      f"[dim](truth: {q['output']}; {engine.last.tokens_per_second:.0f} tok/s)[/]", highlight=False)

    data = job.stage("data").outputs
    sft = job.stage("sft").output
    assert sft is not None
    res = QuickstartResult(scores["base"]["contains"], scores["contains"], scores["exact_match"], {
        "world corpus": data["corpus"], "base model": job.stage("base").output, "instruction data": data["train"],
        "held-out questions": data["held_out"], "LoRA adapter": sft, "loss curve": sft / "loss.png",
        **({"DPO adapter": shipped, "preference pairs": data["pairs"]} if align else {}),
        "held-out answers": job.stage("held_out").outputs["answers"],
        "judge verdicts (base vs tuned)": Path(judged["verdicts"]),
        **{f"GGUF {q} (+ Modelfile)": p for q, p in ggufs.items()}, "report": done.report,
    }, (time.monotonic() - started) / 60)
    _summary(res, scores)
    atomic_write_text(out / "summary.json", json.dumps({
        "held_out_contains_before": res.held_out_before, "held_out_contains_after": res.held_out_after,
        "held_out_exact_after": res.exact_after, "minutes": res.minutes,
        "judge": {k: judged[k] for k in ("wins", "ties", "losses", "win_rate_adjusted", "ci95")},
        **({"align": aligned} if align else {}),
        "artifacts": {k: str(v) for k, v in res.artifacts.items()}}, indent=2))
    return res


def align_figures(job: pipelines.Pipeline) -> dict[str, float]:
    """Held-out answers of the SFT and the DPO run (the align_* eval stages): the share that ends with the
    sign-off the pairs taught, and the share whose fact is right (it must not fall)."""
    figures: dict[str, float] = {}
    table = Table(title="held-out questions before and after DPO")
    for col in ("model", "ends with the sign-off", "fact right (contains)"):
        table.add_column(col)
    for name in ("sft", "dpo"):
        stage = job.stage(f"align_{name}")
        answers = read_jsonl(stage.outputs["answers"])
        report = json.loads(stage.outputs["report"].read_text(encoding="utf-8"))
        figures[f"{name}_signed"] = sum(a["answer"].strip().endswith(SIGN_OFF) for a in answers) / len(answers)
        figures[f"{name}_contains"] = report["contains"]
        table.add_row(f"{name} ({job.stage(name).output})", f"{figures[f'{name}_signed']:.1%}",
                      f"{report['contains']:.1%}")
    console.print(table)
    return figures


def judge_base_and_tuned(base: Path, tuned: Path, asked: list[tuple[str, str]], out: Path,
                         template: str = "auto", max_new_tokens: int = 32) -> Comparison:
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


def _summary(res: QuickstartResult, scores: dict[str, Any]) -> None:
    table = Table(title=f"held-out questions ({scores['n']}) about people seen only in pretraining")
    for col in ("model", "contains", "exact match", "loss"):
        table.add_column(col)
    for name, r in (("base (before tuning)", scores["base"]), ("base + LoRA (after)", scores)):
        table.add_row(name, f"{r['contains']:.1%}", f"{r['exact_match']:.1%}", f"{r['loss']:.3f}")
    console.print(table)
    print_artifacts(res.artifacts, res.minutes)


def print_artifacts(artifacts: dict[str, Path], minutes: float) -> None:
    table = Table(title=f"artifacts ({minutes:.1f} minutes in all)", show_header=False)
    for name, path in artifacts.items():
        table.add_row(name, str(path))
    console.print(table)
