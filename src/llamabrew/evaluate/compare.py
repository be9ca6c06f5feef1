"""`llamabrew.evaluate.compare`: is model B better than model A? Answers (made first if a model is named), a
judge (any OpenAI-compatible URL, or the offline reference judge), verdicts, and the summary a person reads.

Layout under ``out``: ``answers/<model>.jsonl`` for models answered here, ``<mode>-<judge>-<a>-vs-<b>.jsonl``
(the verdicts, appended) and the same name with ``.summary.json``. When B (or else A) is a run directory, the
summary is also saved in it (``reports/judge.json``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamabrew.data.preference import write_pairs
from llamabrew.data.teacher import Teacher, TeacherConfig, Usage, read_summary
from llamabrew.engines import Sampling
from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.answers import greedy
from llamabrew.evaluate.judge import JudgeBackend, judge_answers
from llamabrew.evaluate.judge_report import pairwise_games, pairwise_summary, single_summary
from llamabrew.evaluate.pairs import pairs_from_games
from llamabrew.evaluate.questions import Answer, Question, answer_questions, load_answers, model_id_of
from llamabrew.evaluate.reference_judge import URL as REFERENCE_URL
from llamabrew.evaluate.reference_judge import ReferenceJudge
from llamabrew.io import atomic_write_text
from llamabrew.progress import progress_bar
from llamabrew.run import Run
from llamabrew.stage_recipes import JudgeRecipe


@dataclass
class AnswerSettings:
    """How a model named as --a/--b is asked (its answers are cached with these settings)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    batch_size: int = 16
    threads: int | None = None
    template: str | None = None

    def sampling(self) -> Sampling:
        if self.temperature <= 0:
            return greedy(self.max_new_tokens)
        return Sampling(max_new_tokens=self.max_new_tokens, temperature=self.temperature, repetition_penalty=1.0)


@dataclass
class Comparison:
    summary: dict[str, Any]
    verdicts_path: Path
    summary_path: Path
    answers: dict[str, Path] = field(default_factory=dict)


def safe_name(text: str) -> str:
    """A model or judge name as a file-name part: nothing from it can point outside ``out``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def is_answers_file(spec: str) -> bool:
    return spec.endswith(".jsonl") and Path(spec).is_file()


def answer_model(model: str, questions: list[Question], out: Path, settings: AnswerSettings,
                 model_id: str | None = None, label: str = "answering") -> Path:
    """Answer ``questions`` with ``model`` (a run, model dir, hub id, .gguf or openai:URL#MODEL) into ``out``."""
    from llamabrew.engines import open_engine
    from llamabrew.models import set_threads

    set_threads(settings.threads)
    engine = open_engine(model, template=settings.template, threads=settings.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar(transient=True) as bar:
        task = bar.add_task(label, total=len(questions), unit="q", info="")
        answer_questions(engine, questions, out, settings.sampling(), model_id=model_id or model_id_of(model),
                         batch_size=settings.batch_size, advance=lambda k: bar.advance(task, k))
    return out


def answers_for(spec: str, questions: list[Question], out: Path, settings: AnswerSettings,
                ) -> tuple[str, dict[int | str, Answer], Path]:
    """(model id, answers, file) for an --a/--b value: an answers file as it is, or a model answered first."""
    if is_answers_file(spec):
        path = Path(spec)
    else:
        if spec.endswith(".jsonl"):
            raise LlamabrewError(f"{spec}: no such answers file")
        path = answer_model(spec, questions, out / "answers" / f"{safe_name(model_id_of(spec))}.jsonl", settings,
                            label=f"answering with {model_id_of(spec)}")
    answers = load_answers(path, questions)
    return next(iter(answers.values())).model_id, answers, path


def open_judge(url: str, model: str | None, config: TeacherConfig | None, usage: Usage) -> tuple[JudgeBackend, str]:
    """The judge backend and its name: the offline reference judge, or any OpenAI-compatible endpoint."""
    if url == REFERENCE_URL:
        return ReferenceJudge(usage), "reference"
    if not model:
        raise LlamabrewError("--judge-model is required with an HTTP judge (the model name the endpoint knows)")
    if config is None:
        config = TeacherConfig(url=url, model=model)
    config.temperature = 0.0
    return Teacher(config, usage), model


def compare(questions: list[Question], a: str, b: str, *, judge_url: str, judge_model: str | None = None,
            judge_config: TeacherConfig | None = None, mode: str = "pairwise", out: str | Path = "judgments",
            answering: AnswerSettings | None = None, use_reference: bool = True,
            seed: int = 0, pairs_out: str | Path | None = None) -> Comparison:
    """Judge B against A (each an answers file or a model) on ``questions``; resumes a stopped comparison.
    ``pairs_out``: also write the decided pairwise games as preference pairs (winner chosen, ties dropped)."""
    out = Path(out)
    answering = answering or AnswerSettings()
    if judge_url == REFERENCE_URL:
        bare = [q.question_id for q in questions if not (q.reference and all(r.strip() for r in q.reference))]
        if bare:
            raise LlamabrewError(f"the reference judge needs a reference answer for every turn; question "
                                 f"{bare[0]} has none ({len(bare)} such): use an LLM judge (--judge-url URL)")
    model_a, answers_a, path_a = answers_for(a, questions, out, answering)
    model_b, answers_b, path_b = answers_for(b, questions, out, answering)
    judge_name = "reference" if judge_url == REFERENCE_URL else (judge_model or "judge")
    stem = f"{mode}-{safe_name(judge_name)}-{safe_name(model_a)}-vs-{safe_name(model_b)}"
    verdicts_path, summary_path = out / f"{stem}.jsonl", out / f"{stem}.summary.json"
    out.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves nothing behind
    usage = Usage.from_dict(read_summary(summary_path).get("usage", {}))  # a resumed run keeps counting
    backend, judge_name = open_judge(judge_url, judge_model, judge_config, usage)
    answers = {model_a: answers_a, model_b: answers_b}
    total = sum(len(q.turns) for q in questions) * 2  # two orders (pairwise) or two models graded (single)
    with progress_bar(transient=True) as bar:
        task = bar.add_task(f"judging ({mode})", total=total, unit="verdict", info="")
        run = judge_answers(backend, questions, answers, model_a, model_b, verdicts_path, mode=mode,
                            judge=judge_name, use_reference=use_reference,
                            concurrency=getattr(getattr(backend, "cfg", None), "concurrency", 4),
                            advance=lambda k: bar.advance(task, k))
    summary = (pairwise_summary(run.verdicts, questions, answers, model_a, model_b, seed) if mode == "pairwise"
               else single_summary(run.verdicts, questions, answers, model_a, model_b))
    summary |= {"judge": judge_name, "questions": len(questions), "complete": run.pending == 0,
                "pending": run.pending, "stopped": run.stopped, "usage": run.usage.as_dict(),
                "answers": {model_a: str(path_a), model_b: str(path_b)}, "verdicts": str(verdicts_path)}
    if pairs_out is not None:
        if mode != "pairwise":
            raise LlamabrewError("preference pairs come from pairwise verdicts: --mode pairwise")
        pairs, skipped = pairs_from_games([g for g, _ in pairwise_games(run.verdicts)[0]], questions, answers)
        write_pairs(pairs_out, pairs)
        summary["pairs"] = {"path": str(pairs_out), "written": len(pairs), "skipped": dict(skipped)}
    atomic_write_text(summary_path, json.dumps(summary, indent=2, ensure_ascii=False))
    for spec in (b, a):
        if not is_answers_file(spec) and Run.is_run(spec):
            Run(spec).save_report("judge", summary)
            break
    return Comparison(summary, verdicts_path, summary_path, {model_a: path_a, model_b: path_b})


def run_judge(recipe: JudgeRecipe) -> Comparison:
    """`llamabrew judge` (and a pipeline's judge stage): `compare` with the settings of a `JudgeRecipe`."""
    from llamabrew.data.teacher import teacher_config_of
    from llamabrew.evaluate.questions import load_questions

    r = recipe
    questions = load_questions(r.questions)
    config = None
    if r.judge.url != REFERENCE_URL and r.judge.model:
        config = teacher_config_of(r.judge, temperature=0.0, max_tokens=1024)
    return compare(questions, r.a, r.b, judge_url=r.judge.url, judge_model=r.judge.model, judge_config=config,
                   mode=r.mode, out=r.out or "judgments", use_reference=r.use_reference, seed=r.seed,
                   pairs_out=r.pairs, answering=AnswerSettings(max_new_tokens=r.max_new_tokens,
                                                               temperature=r.temperature, batch_size=r.batch_size,
                                                               threads=r.threads, template=r.template))
