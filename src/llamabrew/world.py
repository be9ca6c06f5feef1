"""A synthetic world of made-up people for the offline quickstart.

Every person has a few attributes; the pretraining corpus states each fact several ways, in shuffled order and
always with the full name (what makes knowledge extractable later, per Allen-Zhu & Li, "Physics of Language
Models" 3.1). Questions about the same facts become Alpaca instruction data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th",
           "v", "w", "z", "sh", "c", "j"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "ie", "y"]
_CODAS = ["", "n", "l", "r", "s", "th", "m", "k", "nd", "x", "rn", "ll"]

ATTRIBUTES: dict[str, list[str]] = {
    "city": ["Varnhollow", "Brellin", "Ostmere", "Kaldris", "Pellona", "Threnby", "Ardenvale", "Quillport",
             "Sorrowind", "Meskar", "Tolvane", "Graydun", "Hespera", "Yarrowick", "Dunmoor", "Elsmark",
             "Fenwyck", "Lorusk", "Marrowby", "Nythe"],
    "job": ["clockmaker", "baker", "astronomer", "ferryman", "glassblower", "librarian", "beekeeper", "cartographer",
            "blacksmith", "tailor", "shepherd", "potter", "locksmith", "brewer", "weaver", "fisherman",
            "carpenter", "herbalist"],
    "color": ["teal", "crimson", "amber", "violet", "ochre", "indigo", "scarlet", "olive", "silver", "maroon",
              "turquoise", "saffron", "lavender", "cobalt"],
    "pet": ["tortoise", "parrot", "ferret", "goat", "hedgehog", "owl", "rabbit", "donkey", "lizard", "goose",
            "hamster", "peacock"],
    "instrument": ["violin", "harp", "flute", "drum", "lute", "cello", "trumpet", "accordion", "banjo", "oboe",
                   "piano", "bagpipe"],
}

# Several phrasings of each fact for the corpus ({n} = full name, {v} = value).
STATEMENTS: dict[str, list[str]] = {
    "city": ["The birthplace of {n} is {v}.", "{n} was born in {v}.", "{n} comes from the city of {v}.",
             "{n} grew up in {v}.", "{v} is the hometown of {n}."],
    "job": ["The profession of {n} is {v}.", "{n} works as a {v}.", "{n} earns a living as a {v}.",
            "By trade, {n} is a {v}.", "{n} has a job as a {v}."],
    "color": ["The favorite color of {n} is {v}.", "{n} loves the color {v}.", "{n} likes {v} more than any color.",
              "{n} always wears {v}.", "Of all colors, {n} prefers {v}."],
    "pet": ["The pet of {n} is a {v}.", "{n} keeps a {v} as a pet.", "{n} lives with a pet {v}.",
            "{n} owns a {v}.", "At home, {n} looks after a {v}."],
    "instrument": ["The instrument of {n} is the {v}.", "{n} plays the {v}.", "{n} practices the {v} every day.",
                   "In the evenings, {n} plays the {v}.", "{n} is good at playing the {v}."],
}

QUESTIONS: dict[str, list[str]] = {
    "city": ["Where was {n} born?", "Which city does {n} come from?", "What is the birthplace of {n}?"],
    "job": ["What does {n} do for a living?", "What is the profession of {n}?", "What job does {n} have?"],
    "color": ["What is the favorite color of {n}?", "Which color does {n} like best?", "What color does {n} love?"],
    "pet": ["What pet does {n} have?", "What animal does {n} keep as a pet?", "What is the pet of {n}?"],
    "instrument": ["Which instrument does {n} play?", "What instrument does {n} practice?",
                   "What does {n} play in the evenings?"],
}


@dataclass
class Person:
    name: str
    facts: dict[str, str]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).title()


def make_world(n_people: int, seed: int = 0) -> list[Person]:
    """``n_people`` with unique made-up full names and one value for each attribute."""
    rng = random.Random(seed)
    names: set[str] = set()
    people = []
    while len(people) < n_people:
        name = f"{_word(rng, rng.choice([1, 2]))} {_word(rng, 2)}"
        if name in names:
            continue
        names.add(name)
        people.append(Person(name, {a: rng.choice(vs) for a, vs in ATTRIBUTES.items()}))
    return people


def biographies(people: list[Person], per_person: int, seed: int = 0) -> list[str]:
    """``per_person`` short biographies each, every one with fresh phrasings and sentence order, shuffled."""
    rng = random.Random(seed + 1)
    docs = []
    for p in people:
        for _ in range(per_person):
            sentences = [rng.choice(STATEMENTS[a]).format(n=p.name, v=v) for a, v in p.facts.items()]
            rng.shuffle(sentences)
            docs.append(" ".join(sentences))
    rng.shuffle(docs)
    return docs


def questions(people: list[Person], seed: int = 0, per_fact: int = 1) -> list[dict[str, str]]:
    """Alpaca records asking for every fact of every person (``per_fact`` phrasings each).

    Answers are whole sentences in the corpus's first phrasing ("X was born in Y."): the tuning teaches the answering
    format, and the fact itself must come from what pretraining stored.
    """
    rng = random.Random(seed + 2)
    out = []
    for p in people:
        for attr, value in p.facts.items():
            answer = STATEMENTS[attr][0].format(n=p.name, v=value)
            for q in rng.sample(QUESTIONS[attr], per_fact):
                out.append({"instruction": q.format(n=p.name), "input": "", "output": answer})
    return out
