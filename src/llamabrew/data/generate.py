"""Self-instruct: grow a few seed tasks into many, with any OpenAI-compatible teacher (Alpaca's method).

Each request shows a few seed tasks and a few already generated ones, and asks for a numbered batch of new
tasks. Every parsed task must pass the filters (see `task_problem` and the ROUGE-L novelty check) to be kept.
Kept tasks are appended to the output JSONL one by one (flushed), and counters go to ``OUT.summary.json``, so
a killed run resumes from the file: the kept set is rebuilt from it, so nothing is lost or duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.formats import parse_record, read_records
from llamabrew.data.rouge import RougeFilter
from llamabrew.data.teacher import (
    BudgetExhausted,
    Completion,
    Teacher,
    TeacherConfig,
    Usage,
    read_summary,
    teacher_config_of,
)
from llamabrew.errors import InputError, LlamabrewError
from llamabrew.io import append_jsonl, atomic_write_text, read_jsonl
from llamabrew.stage_recipes import GenerateRecipe

DEFAULT_SEEDS = Path(__file__).parent / "seeds" / "seed_tasks.jsonl"
Task = dict[str, str]

PROMPT = """You are helping to build a varied set of tasks that will teach a text-only assistant to follow \
instructions. Below are {k} example tasks. Write {n} new tasks, numbered {first} to {last}, each unlike the \
examples and unlike each other.

Guidelines:
- Mix kinds of task: questions, explanations, rewriting, summarising, classifying, extracting, \
brainstorming, planning, arithmetic, code, advice, creative writing.
- Vary the wording. Do not start most instructions with the same verb; use questions as well as commands.
- The assistant only reads and writes text. No task may need it to see images, hear audio, open files or \
links, browse the web, draw, or act in the world.
- An instruction is one or two sentences of English.
- Give an input only when the task needs material to work on (a passage, a list, code, a table, a dialogue), \
and make it real content, not a description of content. Otherwise write <noinput>.
- An output is the complete, correct answer an expert would write, under 200 words.

Use exactly the layout of the examples, with ### on its own line between tasks.

{examples}
Now write tasks {first} to {last}."""

# a text-only model cannot do tasks that mention these (whole words, any case)
NOT_TEXT_ONLY = re.compile(
    r"\b(images?|pictures?|photos?|photographs?|videos?|audio|recordings?|music|listen|watch|files?|"
    r"attach(ed|ment)|upload|download|links?|urls?|go to|visit|browse|click|draw|drawing|sketch|paint|"
    r"plot|graphs?|diagrams?|flowcharts?|maps?|screenshots?)\b",
    re.IGNORECASE,
)
_LABEL = r"^[ \t]*(?:#+[ \t]*)?\**[ \t]*(?:\d+[ \t]*[.):][ \t]*)?\**[ \t]*{}[ \t]*\**[ \t]*:[ \t]*\**"
_INSTRUCTION, _INPUT, _OUTPUT = (
    re.compile(_LABEL.format(w), re.IGNORECASE | re.MULTILINE) for w in ("instruction", "input", "output")
)
_NO_INPUT = {"<noinput>", "<no input>", "noinput", "none", "n/a", "<none>", ""}


def load_seed_tasks(path: str | Path | None = None) -> list[Task]:
    """Seed tasks: llamabrew's own by default; also the Self-Instruct format (``instruction``, ``instances``)
    or any instruction format `parse_record` reads."""
    path = Path(path) if path else DEFAULT_SEEDS
    tasks = []
    for rec, line, idx in read_records(path):
        where = dict(file=path, line=line, record=idx)
        if "instances" in rec:
            inst = rec["instances"]
            if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
                raise InputError("must be a non-empty list of {input, output}", field="instances", **where)
            rec = {"instruction": rec.get("instruction"), **inst[0]}
        tasks.append(parse_record(rec, file=path, line=line, index=idx).to_alpaca())
    if not tasks:
        raise InputError("no seed tasks", file=path)
    return tasks


def format_task(number: int, task: Task) -> str:
    return (
        f"{number}. Instruction: {task['instruction'].strip()}\n{number}. Input:\n"
        f"{task['input'].strip() or '<noinput>'}\n{number}. Output:\n{task['output'].strip()}\n###\n"
    )


def build_prompt(examples: list[Task], n: int) -> str:
    k = len(examples)
    body = "".join(format_task(i + 1, t) for i, t in enumerate(examples))
    return PROMPT.format(k=k, n=n, first=k + 1, last=k + n, examples=body)


def parse_batch(text: str, finish_reason: str = "stop") -> list[Task]:
    """Tasks from a teacher reply: a JSON list, or Alpaca's numbered layout (``N. Instruction:``,
    ``N. Input:`` with ``<noinput>``, ``N. Output:``, ``###`` between tasks; numbers, bold, ``###`` optional).
    A task missing its output gets ``problem: malformed``; the last of a reply cut by max_tokens gets
    ``truncated``."""
    tasks = _parse_json(text)
    if tasks is None:
        tasks = []
        starts = [m.start() for m in _INSTRUCTION.finditer(text)] + [len(text)]
        for a, b in zip(starts, starts[1:], strict=False):
            tasks.append(_parse_numbered(text[a:b]))
    if tasks and finish_reason == "length":
        tasks[-1]["problem"] = "truncated"
    return tasks


def _parse_json(text: str) -> list[Task] | None:
    a, b = text.find("["), text.rfind("]")
    if a < 0 or b < a:
        return None
    try:
        data = json.loads(text[a : b + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        return None
    out = []
    for d in data:
        task = {k: d.get(k) if isinstance(d.get(k), str) else "" for k in ("instruction", "input", "output")}
        task["input"] = "" if task["input"].strip().lower() in _NO_INPUT else task["input"].strip()
        if not task["instruction"].strip() or not task["output"].strip():
            task["problem"] = "malformed"
        out.append(task)
    return out


def _parse_numbered(chunk: str) -> Task:
    head = _INSTRUCTION.match(chunk)
    inp, out = _INPUT.search(chunk), _OUTPUT.search(chunk)
    if head is None or out is None or (inp is not None and inp.start() > out.start()):
        return {"instruction": "", "input": "", "output": "", "problem": "malformed"}
    instruction = chunk[head.end() : inp.start() if inp else out.start()].strip()
    given = chunk[inp.end() : out.start()].strip() if inp else ""
    output = re.sub(r"\s*#{3,}\s*$", "", chunk[out.end() :]).strip()
    task = {
        "instruction": instruction,
        "input": "" if given.lower() in _NO_INPUT else given,
        "output": output,
    }
    if not instruction or not output:
        task["problem"] = "malformed"
    return task


def task_problem(task: Task) -> str | None:
    """Why a parsed task is unusable (the filters that need no other task), or None."""
    if task.get("problem"):
        return task["problem"]
    inst = task["instruction"].strip()
    words = len(inst.split())
    if words < 3:
        return "too_short"
    if words > 150:
        return "too_long"
    if NOT_TEXT_ONLY.search(inst):
        return "not_text_only"
    if not inst[0].isalnum():
        return "starts_with_punctuation"
    return None


@dataclass
class GenerateOptions:
    out: Path
    num: int
    seeds: Path | None = None
    prompt_seeds: int = 3
    prompt_generated: int = 2
    per_request: int = 10  # new tasks asked for in each request
    rouge_threshold: float = 0.7
    max_stale: int = 20  # stop after this many replies in a row with nothing kept
    seed: int = 0


def generate_job(r: GenerateRecipe) -> tuple[GenerateOptions, TeacherConfig]:
    """A `GenerateRecipe` (``llamabrew data generate`` or a pipeline's generate stage) as options and teacher."""
    if r.out is None:
        raise LlamabrewError("pass --out (the JSONL of kept tasks)")
    opts = GenerateOptions(out=Path(r.out), num=r.num, seeds=r.seeds, prompt_seeds=r.prompt_seeds,
                           prompt_generated=r.prompt_generated, per_request=r.per_request,
                           rouge_threshold=r.rouge_threshold, seed=r.seed)
    return opts, teacher_config_of(r.teacher, temperature=r.temperature, max_tokens=r.max_tokens)


def summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


class SelfInstruct:
    """One run over ``opts.out``: rebuilds its state from the file, then asks until ``num`` are kept."""

    def __init__(self, opts: GenerateOptions, teacher_cfg: TeacherConfig) -> None:
        self.opts, self.cfg = opts, teacher_cfg
        self.seeds = load_seed_tasks(opts.seeds)
        self.generated: list[Task] = [
            {k: str(r.get(k) or "") for k in ("instruction", "input", "output")}
            for r in read_jsonl(opts.out)
            if isinstance(r, dict) and r.get("instruction")
        ]
        state = read_summary(summary_path(opts.out))
        self.rejected: Counter[str] = Counter(state.get("rejected", {}))
        self.usage = Usage.from_dict(state.get("usage", {}))
        self.requests_made = self.usage.requests
        self.filter = RougeFilter(opts.rouge_threshold)
        self.seen: set[str] = set()
        for task in self.seeds + self.generated:
            self.filter.add(task["instruction"])
            self.seen.add(_norm(task["instruction"]))
        self.kept_before = len(self.generated)
        self.stopped = ""

    def summary(self) -> dict[str, Any]:
        return {
            "out": str(self.opts.out),
            "target": self.opts.num,
            "kept": len(self.generated),
            "kept_this_run": len(self.generated) - self.kept_before,
            "rejected": dict(self.rejected),
            "stopped": self.stopped,
            "priced": self.cfg.price is not None,
            "usage": self.usage.as_dict(),
        }

    def _save_state(self) -> None:
        atomic_write_text(summary_path(self.opts.out), json.dumps(self.summary(), indent=2) + "\n")

    def _prompt(self) -> list[dict[str, str]]:
        rng = random.Random(f"{self.opts.seed}:{self.requests_made}")
        self.requests_made += 1
        shown = rng.sample(self.generated, min(self.opts.prompt_generated, len(self.generated)))
        shown = (
            rng.sample(
                self.seeds,
                min(len(self.seeds), self.opts.prompt_seeds + self.opts.prompt_generated - len(shown)),
            )
            + shown
        )
        return [{"role": "user", "content": build_prompt(shown, self.opts.per_request)}]

    def accept(self, completion: Completion) -> int:
        """Filter one reply's tasks; append the kept ones. Returns how many were kept."""
        kept = 0
        tasks = parse_batch(completion.text, completion.finish_reason)
        if not tasks:
            self.rejected["unparseable_reply"] += 1
        for task in tasks:
            if len(self.generated) >= self.opts.num:
                break
            reason = task_problem(task)
            if reason is None and _norm(task["instruction"]) in self.seen:
                reason = "duplicate"
            if reason is None and not self.filter.check_and_add(task["instruction"])[0]:
                reason = "similar"
            if reason:
                self.rejected[reason] += 1
                continue
            record = {k: task[k].strip() for k in ("instruction", "input", "output")}
            append_jsonl(self.opts.out, record)
            self.generated.append(record)
            self.seen.add(_norm(record["instruction"]))
            kept += 1
        return kept

    def _use(self, completion: Completion, on_kept: Callable[[int], None] | None) -> int:
        kept = self.accept(completion)
        if on_kept and kept:
            on_kept(kept)
        return kept

    async def run(self, on_kept: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Ask the teacher until ``num`` tasks are kept, the budget is spent, or replies stop adding tasks."""
        self.opts.out.parent.mkdir(parents=True, exist_ok=True)
        stale, pending = 0, set()
        async with Teacher(self.cfg, self.usage, seed=self.opts.seed) as teacher:
            try:
                while not self.stopped:
                    while len(pending) < self.cfg.concurrency and len(self.generated) < self.opts.num:
                        pending.add(asyncio.ensure_future(teacher.chat(self._prompt())))
                    if not pending:
                        self.stopped = "done"
                        break
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    failure = None
                    for fut in done:  # use every paid reply before raising a failure
                        if isinstance(fut.exception(), BudgetExhausted):
                            self.stopped = "budget"
                        elif fut.exception() is not None:
                            failure = failure or fut.exception()
                        else:
                            kept = self._use(fut.result(), on_kept)
                            stale = 0 if kept else stale + 1
                    self._save_state()
                    if failure is not None:
                        raise failure
                    if len(self.generated) >= self.opts.num:
                        self.stopped = "done"
                    elif stale >= self.opts.max_stale:
                        self.stopped = "stalled"
                    if self.stopped == "budget":  # requests already in flight are paid for: use them
                        for fut in asyncio.as_completed(pending):
                            with contextlib.suppress(BudgetExhausted):
                                self._use(await fut, on_kept)
                        pending = set()
            finally:
                for fut in pending:
                    fut.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                self.stopped = self.stopped or "error"
                self._save_state()
        return self.summary()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def generate(
    opts: GenerateOptions, teacher_cfg: TeacherConfig, on_kept: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) self-instruct generation into ``opts.out``; returns the summary."""
    return asyncio.run(SelfInstruct(opts, teacher_cfg).run(on_kept))
