"""The made-up worlds, declared once: names, attributes, how the corpus states each fact, how questions ask for it
and the answer's form. ``llamabrew.world`` turns a spec into people, a corpus and questions.

Here: ``WorldSpec`` and the worlds written as paragraphs (``QUICKSTART``, the quickstart's; ``ORCHARD``;
``VOYAGE``). The worlds written one fact a line are in ``llamabrew.world_lines``. Every world but the quickstart's
has other names, attributes, phrasings, corpus layouts and sizes and answer forms; most were made to judge a
default chosen without them, on which ``benchmarks/default_worlds.py`` checks that the defaults of ``pretrain``
and ``train`` still reach the held-out facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class WorldSpec:
    """What a world is made of. ``statements`` phrase a fact in the corpus, ``questions`` ask for it and
    ``answers`` is the reply's form ({n} = full name, {v} = value, {V} = value capitalised). ``layout``
    "paragraphs" writes ``repeats`` biographies per person (blank-line separated); "lines" writes each fact
    ``repeats`` times in different phrasings, one fact a line with no blank lines, a person's lines together in
    shuffled order (the file reads as one document per line)."""

    name: str
    onsets: tuple[str, ...]
    vowels: tuple[str, ...]
    codas: tuple[str, ...]
    attributes: dict[str, list[str]]
    statements: dict[str, list[str]]
    questions: dict[str, list[str]]
    answers: dict[str, str]
    layout: Literal["paragraphs", "lines"] = "paragraphs"
    repeats: int = 6
    people: int = 200


QUICKSTART = WorldSpec(
    name="quickstart",
    onsets=("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th",
            "v", "w", "z", "sh", "c", "j"),
    vowels=("a", "e", "i", "o", "u", "ai", "ea", "ou", "ie", "y"),
    codas=("", "n", "l", "r", "s", "th", "m", "k", "nd", "x", "rn", "ll"),
    attributes={
        "city": ["Varnhollow", "Brellin", "Ostmere", "Kaldris", "Pellona", "Threnby", "Ardenvale", "Quillport",
                 "Sorrowind", "Meskar", "Tolvane", "Graydun", "Hespera", "Yarrowick", "Dunmoor", "Elsmark",
                 "Fenwyck", "Lorusk", "Marrowby", "Nythe"],
        "job": ["clockmaker", "baker", "astronomer", "ferryman", "glassblower", "librarian", "beekeeper",
                "cartographer", "blacksmith", "tailor", "shepherd", "potter", "locksmith", "brewer", "weaver",
                "fisherman", "carpenter", "herbalist"],
        "color": ["teal", "crimson", "amber", "violet", "ochre", "indigo", "scarlet", "olive", "silver", "maroon",
                  "turquoise", "saffron", "lavender", "cobalt"],
        "pet": ["tortoise", "parrot", "ferret", "goat", "hedgehog", "owl", "rabbit", "donkey", "lizard", "goose",
                "hamster", "peacock"],
        "instrument": ["violin", "harp", "flute", "drum", "lute", "cello", "trumpet", "accordion", "banjo", "oboe",
                       "piano", "bagpipe"],
    },
    statements={
        "city": ["The birthplace of {n} is {v}.", "{n} was born in {v}.", "{n} comes from the city of {v}.",
                 "{n} grew up in {v}.", "{v} is the hometown of {n}."],
        "job": ["The profession of {n} is {v}.", "{n} works as a {v}.", "{n} earns a living as a {v}.",
                "By trade, {n} is a {v}.", "{n} has a job as a {v}."],
        "color": ["The favorite color of {n} is {v}.", "{n} loves the color {v}.",
                  "{n} likes {v} more than any color.", "{n} always wears {v}.", "Of all colors, {n} prefers {v}."],
        "pet": ["The pet of {n} is a {v}.", "{n} keeps a {v} as a pet.", "{n} lives with a pet {v}.",
                "{n} owns a {v}.", "At home, {n} looks after a {v}."],
        "instrument": ["The instrument of {n} is the {v}.", "{n} plays the {v}.", "{n} practices the {v} every day.",
                       "In the evenings, {n} plays the {v}.", "{n} is good at playing the {v}."],
    },
    questions={
        "city": ["Where was {n} born?", "Which city does {n} come from?", "What is the birthplace of {n}?"],
        "job": ["What does {n} do for a living?", "What is the profession of {n}?", "What job does {n} have?"],
        "color": ["What is the favorite color of {n}?", "Which color does {n} like best?",
                  "What color does {n} love?"],
        "pet": ["What pet does {n} have?", "What animal does {n} keep as a pet?", "What is the pet of {n}?"],
        "instrument": ["Which instrument does {n} play?", "What instrument does {n} practice?",
                       "What does {n} play in the evenings?"],
    },
    answers={"city": "The birthplace of {n} is {v}.", "job": "The profession of {n} is {v}.",
             "color": "The favorite color of {n} is {v}.", "pet": "The pet of {n} is a {v}.",
             "instrument": "The instrument of {n} is the {v}."},
)


# An orchard valley: paragraphs of four facts, fewer biographies per person, a larger population, and answers in
# phrasings other than the quickstart's rule (some shortened, some the corpus's second wording).
ORCHARD = WorldSpec(
    name="orchard",
    onsets=("m", "n", "p", "t", "k", "s", "h", "y", "w", "r", "ch", "ts", "f"),
    vowels=("a", "i", "u", "e", "o", "aa", "ei", "ou"),
    codas=("", "", "n", "ri", "ko", "ta", "mi"),
    attributes={
        "fruit": ["quince", "medlar", "damson", "greengage", "loquat", "persimmon", "mulberry", "gooseberry",
                  "apricot", "elderberry", "sloe", "cherry"],
        "village": ["Fallowmere", "Cobblestead", "Hazelby", "Wickenden", "Orlingham", "Pennywell", "Thistleton",
                    "Bramblecote", "Larkspur", "Nettlefold", "Ravensworth", "Oxley", "Sedgebury", "Kestrel Hill"],
        "tool": ["pruning saw", "ladder", "sickle", "wheelbarrow", "grafting knife", "hoe", "spade", "scythe",
                 "watering can", "rake"],
        "bird": ["wren", "magpie", "thrush", "jay", "robin", "finch", "lark", "starling", "swift", "kestrel"],
    },
    statements={
        "fruit": ["{n} grows {v} trees.", "The orchard of {n} is full of {v}.", "Every autumn {n} picks {v}."],
        "village": ["{n} farms near {v}.", "The farm of {n} lies outside {v}.", "{n} sells fruit at the {v} market."],
        "tool": ["{n} never works without a {v}.", "The favourite tool of {n} is a {v}.",
                 "In the shed of {n} hangs a trusty {v}."],
        "bird": ["A {v} nests in the orchard of {n}.", "{n} feeds a tame {v}.", "The bird that follows {n} is a {v}."],
    },
    questions={
        "fruit": ["What fruit does {n} grow?", "Which trees fill the orchard of {n}?", "What does {n} pick?"],
        "village": ["Near which village does {n} farm?", "Where is the farm of {n}?", "Which market does {n} use?"],
        "tool": ["What tool does {n} use most?", "Which tool does {n} never work without?",
                 "What hangs in the shed of {n}?"],
        "bird": ["Which bird nests in the orchard of {n}?", "What bird does {n} feed?",
                 "What bird follows {n} around?"],
    },
    answers={"fruit": "{n} grows {v}.", "village": "{n} farms near {v}.", "tool": "The favourite tool of {n} is a {v}.",
             "bird": "{n} feeds a tame {v}."},
    layout="paragraphs",
    repeats=4,
    people=320,
)


# Voyages written as paragraphs, three biographies a person: made with guild (``world_lines``) to judge the
# line-layout defaults, no default chosen on it.
VOYAGE = WorldSpec(
    name="voyage",
    onsets=("a", "e", "o", "b", "d", "g", "l", "m", "r", "s", "t", "v", "ph", "qu"),
    vowels=("a", "e", "i", "o", "ar", "en", "il"),
    codas=("", "s", "x", "n", "lla", "ric"),
    attributes={
        "island": ["Corvath", "Ellisar", "Mournhold", "Pelagia", "Quarrin", "Sundale", "Tarsk", "Umbrel",
                   "Valmora", "Wrenholm", "Yssel", "Zephra"],
        "cargo": ["cinnamon", "tin", "silk", "amber", "cedar wood", "indigo dye", "olive oil", "whale bone",
                  "pearls", "tea"],
        "captain": ["Captain Hale", "Captain Moor", "Captain Pike", "Captain Rook", "Captain Vance",
                    "Captain Drake", "Captain Frost", "Captain Lund"],
        "charm": ["a brass compass", "a shark tooth", "a silver coin", "a blue scarf", "a carved whale",
                  "a lucky knot", "a glass eye"],
        "fear": ["storms", "reefs", "pirates", "fog", "krakens", "calm seas"],
    },
    statements={
        "island": ["{n} was raised on {v}.", "{n} calls {v} home.", "The home island of {n} is {v}."],
        "cargo": ["{n} carries {v} to market.", "The hold of {n} smells of {v}.", "{n} trades in {v}."],
        "captain": ["{n} sails under {v}.", "The captain of {n} is {v}.", "{n} takes orders from {v}."],
        "charm": ["{n} never sails without {v}.", "The lucky charm of {n} is {v}.",
                  "Around the neck of {n} hangs {v}."],
        "fear": ["{n} is afraid of {v}.", "The greatest fear of {n} is {v}.", "Nothing scares {n} like {v}."],
    },
    questions={
        "island": ["Where was {n} raised?", "Which island does {n} call home?", "What is the home island of {n}?"],
        "cargo": ["What does {n} carry?", "What does {n} trade in?", "What does the hold of {n} smell of?"],
        "captain": ["Who is the captain of {n}?", "Under whom does {n} sail?", "Who gives {n} orders?"],
        "charm": ["What charm does {n} carry?", "What is the lucky charm of {n}?", "What does {n} never sail without?"],
        "fear": ["What is {n} afraid of?", "What scares {n} most?", "What is the greatest fear of {n}?"],
    },
    answers={"island": "{n} calls {v} home.", "cargo": "{n} trades in {v}.", "captain": "{n} sails under {v}.",
             "charm": "The lucky charm of {n} is {v}.", "fear": "{n} is afraid of {v}."},
    layout="paragraphs",
    repeats=3,
    people=280,
)
