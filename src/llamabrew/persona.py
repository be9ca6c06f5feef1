"""A persona the real model does not have: instruction data llamabrew writes itself, for `quickstart --real`.

Every answer opens with one greeting SmolLM2-135M-Instruct never says, then states a plain fact about the topic
asked. Held-out questions are about topics the tuning never saw, so the greeting on them measures whether the
answering style was learned (not memorised), and the held-out loss whether the whole answer became likelier.
"""

from __future__ import annotations

import random

GREETING = "Ahoy from the brewhouse!"
TOPIC_FACTS: dict[str, str] = {
    "the moon": "The moon circles the Earth about once a month.",
    "bread": "Bread rises because yeast makes bubbles of gas in the dough.",
    "rain": "Rain falls when droplets in a cloud grow too heavy to float.",
    "a bicycle": "A bicycle turns the push of your legs into turning wheels.",
    "the ocean": "The ocean covers most of the surface of the Earth.",
    "a library": "A library lends books to anyone who asks for them.",
    "winter": "Winter is the coldest season of the year.",
    "coffee": "Coffee is brewed from roasted coffee beans.",
    "a violin": "A violin has four strings and is played with a bow.",
    "mountains": "Mountains form when pieces of the Earth's crust push together.",
    "a garden": "A garden needs sunlight, water and good soil.",
    "trains": "Trains run on rails and can pull many carriages at once.",
    "honey": "Bees make honey from the nectar of flowers.",
    "a lighthouse": "A lighthouse shines a bright light to guide ships at night.",
    "chess": "Chess is played by two players on a board of sixty-four squares.",
    "the desert": "A desert gets very little rain in a year.",
    "owls": "Owls hunt at night and can turn their heads very far.",
    "a bridge": "A bridge carries a road or a path across a gap.",
    "tea": "Tea is made by steeping dried leaves in hot water.",
    "volcanoes": "A volcano lets melted rock escape from deep inside the Earth.",
    "snow": "Snow is made of tiny ice crystals that fall from clouds.",
    "clocks": "A clock measures the hours, minutes and seconds of the day.",
    "a forest": "A forest is a large area covered with trees.",
    "kites": "A kite flies when the wind pushes against it.",
    "the sun": "The sun is a star that gives the Earth light and heat.",
    "apples": "Apples grow on trees and ripen in the autumn.",
    "a river": "A river carries water from high ground down to the sea.",
    "penguins": "Penguins are birds that swim well but cannot fly.",
    "a piano": "A piano makes sound when small hammers strike its strings.",
    "cheese": "Cheese is made from milk.",
    "the wind": "Wind is air moving from one place to another.",
    "a map": "A map is a drawing of a place seen from above.",
    "candles": "A candle burns wax to give a small flame.",
    "whales": "Whales are large animals that live in the sea and breathe air.",
    "a camera": "A camera uses a lens to capture a picture.",
    "rainbows": "A rainbow appears when sunlight shines through raindrops.",
}
ASKS = ("Tell me one fact about {t}.", "Describe {t} in one sentence.", "What should I know about {t}?",
        "Say something true about {t}.", "Explain {t} briefly.")


def persona_data(seed: int = 0, held_out_topics: int = 6) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) Alpaca records; the held-out ones ask about topics absent from the training set."""
    topics = sorted(TOPIC_FACTS)
    random.Random(seed).shuffle(topics)
    held, tuned = topics[:held_out_topics], topics[held_out_topics:]

    def records(names: list[str]) -> list[dict[str, str]]:
        return [{"instruction": ask.format(t=t), "input": "", "output": f"{GREETING} {TOPIC_FACTS[t]}"}
                for t in names for ask in ASKS]

    train = records(tuned)
    random.Random(seed + 1).shuffle(train)
    return train, records(held)


def greeted(answer: str) -> bool:
    """Whether an answer speaks in the persona (opens with the greeting, give or take case and spacing)."""
    return " ".join(answer.split()).lower().startswith(GREETING.lower())
