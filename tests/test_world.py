"""The synthetic worlds: every fact is in the corpus in the stated layout, and every answer carries its fact."""

from __future__ import annotations

import re

import pytest

from llamabrew.world import WORLDS, biographies, corpus_text, make_world, questions


@pytest.mark.parametrize("name", sorted(WORLDS))
def test_each_fact_is_in_the_corpus_and_each_answer_names_its_person_and_value(name: str) -> None:
    spec = WORLDS[name]
    people = make_world(seed=1, spec=spec)
    assert len(people) == spec.people and len({p.name for p in people}) == spec.people
    docs = biographies(people, seed=1, spec=spec)
    text = corpus_text(docs, spec)
    assert ("\n\n" in text) == (spec.layout == "paragraphs")  # a lines corpus reads as one document per line
    sentences = [s for line in text.splitlines() for s in re.split(r"(?<=\.) ", line) if s]
    for person in people[:20]:
        for attr, value in person.facts.items():
            phrasings = [s.format(n=person.name, v=value) for s in spec.statements[attr]]
            found = [s for s in sentences if s in phrasings]
            if spec.layout == "lines":  # `repeats` different phrasings, each once, one a line
                assert len(found) == len(set(found)) == min(spec.repeats, len(phrasings))
                assert all(s + "\n" in text for s in found)
            else:  # one phrasing in each of the person's biographies
                assert len(found) == spec.repeats
    records = questions(people[:10], seed=1, per_fact=2, spec=spec)
    assert len(records) == 10 * len(spec.attributes) * 2
    for rec, (person, attr) in zip(records[::2], [(p, a) for p in people[:10] for a in p.facts], strict=True):
        assert person.name in rec["instruction"] and person.name in rec["output"]
        assert person.facts[attr] in rec["output"]
