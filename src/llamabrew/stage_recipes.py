"""Typed recipe sections for the commands that had only flags: ``data generate / translate / curate / convert``,
``judge``, and the made-up world the quickstart writes. A pipeline stage of that kind takes exactly these fields
(`llamabrew.pipeline`); field names follow the commands' flags (``--budget-chars`` → ``budget_chars``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from llamabrew.recipe import Section


class TeacherSection(Section):
    """An OpenAI-compatible endpoint: the teacher of generate / translate, or the judge."""

    url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible base URL, default "
                     "https://api.openai.com/v1 (a judge may also be builtin:reference, the offline judge)")
    model: str | None = Field(None, description="model name the endpoint knows")
    key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (never written)")
    concurrency: int = Field(4, ge=1, description="requests in flight at once")
    budget_usd: float | None = Field(None, ge=0, description="stop cleanly before spending more (needs a price)")
    price_in: float | None = Field(None, ge=0, description="USD per 1M prompt tokens")
    price_out: float | None = Field(None, ge=0, description="USD per 1M completion tokens")
    prices: Path | None = Field(None, description="JSON price table")
    timeout: float = Field(120.0, gt=0, description="seconds per request before a retry")
    max_retries: int = Field(6, ge=0, description="retries on 429/5xx/timeouts")


class GenerateRecipe(Section):
    """`llamabrew data generate`: self-instruct."""

    out: Path | None = Field(None, description="JSONL of kept tasks (appended; a rerun resumes)")
    num: int = Field(..., ge=1, description="how many tasks to keep in all")
    seeds: Path | None = Field(None, description="seed tasks (default: llamabrew's own)")
    teacher: TeacherSection = TeacherSection()
    per_request: int = Field(10, ge=1, description="new tasks asked for per request")
    prompt_seeds: int = Field(3, ge=0, description="seed tasks shown per request")
    prompt_generated: int = Field(2, ge=0, description="generated tasks shown per request")
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="reject a task whose ROUGE-L F1 to any kept "
                                   "instruction is above this")
    temperature: float = Field(1.0, ge=0, description="the teacher's sampling temperature")
    max_tokens: int = Field(3072, ge=16, description="max tokens per reply")
    seed: int = Field(0, description="seed for choosing the examples shown")


class TranslateRecipe(Section):
    """`llamabrew data translate`."""

    input: Path = Field(..., description="instruction file (Alpaca, ShareGPT or messages)")
    out: Path | None = Field(None, description="translated JSONL")
    to: str = Field(..., description="target language code, e.g. zh")
    budget_chars: int | None = Field(None, ge=0, description="translate at most this many source characters")
    shortest_first: bool = Field(False, description="within the budget, take the shortest records")
    teacher: TeacherSection = TeacherSection()


class CurateRecipe(Section):
    """`llamabrew data curate`."""

    inputs: list[Path] = Field(..., min_length=1, description="instruction files")
    out_dir: Path | None = Field(None, description="gets train.jsonl, val.jsonl, report.json, lengths.png")
    near_dup_threshold: float = Field(0.7, ge=0, le=1, description="0 turns the near-duplicate filter off")
    tokenizer: str | None = Field(None, description="tokenizer for lengths in tokens (default: words)")
    min_length: int = Field(1, ge=0, description="drop examples shorter than this (tokens or words)")
    max_length: int | None = Field(None, ge=1, description="drop examples longer than this")
    lang: str | None = Field(None, description="keep examples mostly in this language's script")
    script: list[str] = Field(default_factory=list, description="keep examples mostly in this script (latin, han, "
                              "cyrillic, ...)")
    min_script_share: float = Field(0.5, ge=0, le=1, description="share of letters in the wanted script(s)")
    sort_by_length: bool = Field(False, description="sort each split by length, shortest first")
    val_fraction: float = Field(0.05, ge=0, le=0.9, description="share held out as val.jsonl")
    seed: int = Field(0, description="seed of the train/val split")


class ConvertRecipe(Section):
    """`llamabrew data convert`."""

    input: Path = Field(..., description="Alpaca, ShareGPT, messages or OpenAssistant JSONL")
    out: Path | None = Field(None, description="the converted file")
    to: Literal["alpaca", "sharegpt", "messages", "pairs"] = Field(..., description="alpaca, sharegpt, messages, "
                                                                   "or pairs (OpenAssistant ranked replies)")
    lang: str | None = Field(None, description="OpenAssistant: keep only messages in this language")


class JudgeRecipe(Section):
    """`llamabrew judge`: is B better than A?"""

    questions: str = Field("builtin:brew80", description="questions JSONL (FastChat layout) or builtin:brew80")
    a: str = Field(..., description="the reference: an answers JSONL or a model")
    b: str = Field(..., description="the candidate: an answers JSONL or a model")
    judge: TeacherSection = TeacherSection()
    mode: Literal["pairwise", "single"] = Field("pairwise", description="pairwise (both orders) or single (1-10 "
                                                "grades)")
    out: Path | None = Field(None, description="folder for answers, verdicts and the summary (default: judgments)")
    use_reference: bool = Field(True, description="show reference answers to the judge")
    pairs: Path | None = Field(None, description="also write the verdicts as preference pairs (JSONL: prompt/"
                               "chosen/rejected, ties left out) for DPO")
    max_new_tokens: int = Field(256, ge=1, description="longest answer per turn, in tokens")
    temperature: float = Field(0.0, ge=0, description="answer sampling temperature (0 = greedy)")
    batch_size: int = Field(16, ge=1, description="prompts a local model answers together")
    template: str | None = Field(None, description="chat template of a local model (default: the one it was "
                                "trained with)")
    threads: int | None = Field(None, gt=0, description="CPU threads for a local model")
    seed: int = Field(0, description="bootstrap seed")


class WorldRecipe(Section):
    """The quickstart's made-up world: a pretraining corpus of biographies, Alpaca questions about half of the
    people, held-out questions (and judge questions with references) about the other half."""

    out: Path | None = None
    entities: int = Field(200, ge=4, description="made-up people")
    seed: int = 0
    bios_per_person: int = Field(6, ge=1, description="ways each person's facts are told in the corpus")
    per_fact: int = Field(3, ge=1, description="training questions per fact")
    judged_questions: int = Field(80, ge=1, description="held-out questions for the judge")
    sign_off: str | None = Field(None, description="also write preference pairs whose chosen answer ends so")
    pairs: int = Field(500, ge=1, description="preference pairs (with sign_off)")
