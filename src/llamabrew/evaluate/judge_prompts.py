"""What the judge is asked, in llamabrew's own words, and how its verdict is read back.

The section markers are declared once here: the prompt builders write them and the offline reference judge
(`reference_judge`) reads them, so the two cannot drift apart (gguf-py's idea: one declaration of a format).
"""

from __future__ import annotations

import re

from llamabrew.evaluate.questions import Question

QUESTION = "### Question"
REFERENCE = "### Reference answer"
ANSWER = "### Answer of assistant {name}"
CONVERSATION = "### Conversation with assistant {name}"
END = "### End"
VERDICTS = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "C"}
RATING = re.compile(r"Rating:\s*\[\[(\d+(?:\.\d+)?)\]\]")
VERDICT = re.compile(r"\[\[([ABC])\]\]")

PAIR_SYSTEM = (
    "You compare two AI assistants' replies to the same user request and decide which reply serves the user "
    "better. Weigh correctness first, then how fully and directly the reply answers, then clarity. Length is not "
    "a merit in itself, and the order in which the replies are shown must not sway you. {focus}Explain your "
    "reasons in a few sentences, then end with exactly one verdict on its own line: [[A]] if assistant A's reply "
    "is better, [[B]] if assistant B's is better, [[C]] if neither is better."
)
SINGLE_SYSTEM = (
    "You grade one AI assistant's reply to a user request on a scale of 1 (useless or wrong) to 10 (correct, "
    "complete and clear). {focus}Explain your grade in a few sentences, then end with the grade in exactly this "
    "form on its own line: Rating: [[5]]"
)
FOCUS_REFERENCE = ("A reference answer is given: a reply that contradicts it is wrong, however well it is "
                   "written. ")
FOCUS_SECOND_TURN = "Judge only the assistant's reply to the user's second message. "


def _section(title: str, body: str) -> str:
    return f"{title}\n{body.strip()}\n"


def _dialogue(question: Question, answers: tuple[str, ...], upto: int) -> str:
    lines = []
    for k in range(upto):
        lines += [f"User: {question.turns[k].strip()}", f"Assistant: {answers[k].strip()}"]
    return "\n\n".join(lines)


def _focus(reference: bool, turn: int) -> str:
    return (FOCUS_REFERENCE if reference else "") + (FOCUS_SECOND_TURN if turn > 0 else "")


def _reference_block(question: Question, turn: int, use_reference: bool) -> str:
    if not (use_reference and question.reference and question.reference[turn].strip()):
        return ""
    return _section(REFERENCE, question.reference[turn])


def pairwise_messages(question: Question, turn: int, first: tuple[str, ...], second: tuple[str, ...],
                      use_reference: bool) -> list[dict[str, str]]:
    """The judge's messages for one order: ``first`` is shown as assistant A, ``second`` as B. From the second
    turn on, each assistant's whole conversation is shown (its own earlier answers included)."""
    ref = _reference_block(question, turn, use_reference)
    if turn == 0:
        body = (_section(QUESTION, question.turns[0]) + ref + _section(ANSWER.format(name="A"), first[0])
                + _section(ANSWER.format(name="B"), second[0]))
    else:
        body = (ref + _section(CONVERSATION.format(name="A"), _dialogue(question, first, turn + 1))
                + _section(CONVERSATION.format(name="B"), _dialogue(question, second, turn + 1)))
    system = PAIR_SYSTEM.format(focus=_focus(bool(ref), turn))
    return [{"role": "system", "content": system}, {"role": "user", "content": body + END}]


def single_messages(question: Question, turn: int, answers: tuple[str, ...],
                    use_reference: bool) -> list[dict[str, str]]:
    ref = _reference_block(question, turn, use_reference)
    if turn == 0:
        body = _section(QUESTION, question.turns[0]) + ref + _section(ANSWER.format(name="A"), answers[0])
    else:
        body = ref + _section(CONVERSATION.format(name="A"), _dialogue(question, answers, turn + 1))
    system = SINGLE_SYSTEM.format(focus=_focus(bool(ref), turn))
    return [{"role": "system", "content": system}, {"role": "user", "content": body + END}]


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "C" when the reply names exactly one verdict (repeating it is fine); None for none or several."""
    found = set(VERDICT.findall(reply))
    return found.pop() if len(found) == 1 else None


def parse_rating(reply: str) -> float | None:
    """The 1–10 grade when the reply gives exactly one; None otherwise (no grade, several, or out of range)."""
    found = {float(x) for x in RATING.findall(reply)}
    if len(found) != 1:
        return None
    value = found.pop()
    return value if 1 <= value <= 10 else None


def sections(prompt: str) -> dict[str, str]:
    """A prompt written by this module, split back into its sections (title → body)."""
    titles = {QUESTION, REFERENCE, END} | {t.format(name=n) for t in (ANSWER, CONVERSATION) for n in "AB"}
    out: dict[str, str] = {}
    title = None
    for line in prompt.split("\n"):
        if line in titles:  # only our own titles: an answer may hold markdown headings
            title = line
            out[title] = ""
        elif title is not None:
            out[title] += line + "\n"
    out.pop(END, None)
    return {k: v.strip() for k, v in out.items()}
