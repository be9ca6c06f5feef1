"""Synthetic worlds of made-up people: a pretraining corpus of facts, and Alpaca questions about them.

Each world is a ``WorldSpec`` in ``llamabrew.world_specs`` or ``llamabrew.world_lines`` (re-exported here, with
``WORLDS`` by name). Every fact is stated with the full name (what makes knowledge extractable later, per Allen-Zhu
& Li, "Physics of Language Models" 3.1); questions about the same facts become instruction data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llamabrew.world_lines import APIARY, CARAVAN, GUILD, HARBOR, MARKET, OBSERVATORY
from llamabrew.world_specs import ORCHARD, QUICKSTART, VOYAGE, WorldSpec

WORLDS = {w.name: w for w in (QUICKSTART, HARBOR, ORCHARD, MARKET, GUILD, VOYAGE, CARAVAN, OBSERVATORY, APIARY)}

__all__ = ["APIARY", "CARAVAN", "GUILD", "HARBOR", "MARKET", "OBSERVATORY", "ORCHARD", "QUICKSTART", "VOYAGE",
           "WORLDS", "WorldSpec", "Person", "biographies", "corpus_text", "make_world", "questions"]


@dataclass
class Person:
    name: str
    facts: dict[str, str]


def _word(spec: WorldSpec, rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(spec.onsets) + rng.choice(spec.vowels) + rng.choice(spec.codas)
                   for _ in range(syllables)).title()


def make_world(n_people: int | None = None, seed: int = 0, spec: WorldSpec = QUICKSTART) -> list[Person]:
    """``n_people`` (default: the world's own count) with unique made-up full names, one value per attribute."""
    rng = random.Random(seed)
    names: set[str] = set()
    people = []
    while len(people) < (n_people or spec.people):
        name = f"{_word(spec, rng, rng.choice([1, 2]))} {_word(spec, rng, 2)}"
        if name in names:
            continue
        names.add(name)
        people.append(Person(name, {a: rng.choice(vs) for a, vs in spec.attributes.items()}))
    return people


def biographies(people: list[Person], per_person: int | None = None, seed: int = 0,
                spec: WorldSpec = QUICKSTART) -> list[str]:
    """The corpus documents: biographies (fresh phrasings and sentence order each) or single fact lines."""
    rng = random.Random(seed + 1)
    repeats = per_person or spec.repeats
    docs = []
    for p in people:
        if spec.layout == "lines":
            lines = [s.format(n=p.name, v=v) for a, v in p.facts.items()
                     for s in rng.sample(spec.statements[a], min(repeats, len(spec.statements[a])))]
            rng.shuffle(lines)
            docs.append("\n".join(lines))  # one person's lines together, as a list of facts is written
            continue
        for _ in range(repeats):
            sentences = [rng.choice(spec.statements[a]).format(n=p.name, v=v) for a, v in p.facts.items()]
            rng.shuffle(sentences)
            docs.append(" ".join(sentences))
    rng.shuffle(docs)
    return docs


def corpus_text(docs: list[str], spec: WorldSpec = QUICKSTART) -> str:
    """The corpus as a .txt file: blank lines between paragraphs, or (layout "lines") no blank line at all."""
    return ("\n" if spec.layout == "lines" else "\n\n").join(docs) + "\n"


def questions(people: list[Person], seed: int = 0, per_fact: int = 1,
              spec: WorldSpec = QUICKSTART) -> list[dict[str, str]]:
    """Alpaca records asking for every fact of every person (``per_fact`` phrasings each), answered in the
    world's answer form: the tuning teaches the form, the fact itself must come from what pretraining stored."""
    rng = random.Random(seed + 2)
    out = []
    for p in people:
        for attr, value in p.facts.items():
            answer = spec.answers[attr].format(n=p.name, v=value, V=value[:1].upper() + value[1:])
            for q in rng.sample(spec.questions[attr], per_fact):
                out.append({"instruction": q.format(n=p.name), "input": "", "output": answer})
    return out
