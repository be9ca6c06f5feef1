"""The real quickstart's data: a persona whose held-out questions are about topics the tuning never saw."""

from __future__ import annotations

from llamabrew.persona import ASKS, GREETING, TOPIC_FACTS, greeted, persona_data


def test_held_out_topics_never_appear_in_training() -> None:
    train, held = persona_data(seed=0)
    assert len(train) + len(held) == len(TOPIC_FACTS) * len(ASKS)
    topic_of = {ask.format(t=t): t for t in TOPIC_FACTS for ask in ASKS}
    held_topics = {topic_of[r["instruction"]] for r in held}
    assert held_topics and held_topics.isdisjoint(topic_of[r["instruction"]] for r in train)
    assert all(r["output"].startswith(GREETING) for r in train + held)
    assert persona_data(seed=1)[1] != held  # the split follows the seed


def test_greeted_reads_the_persona_loosely_but_not_anywhere() -> None:
    assert greeted(f"  {GREETING.lower()}  Bees make honey.")
    assert greeted(GREETING.replace(" ", "\n "))
    assert not greeted(f"Sure! {GREETING}")
    assert not greeted("Honey is made by bees.")
