"""Conversions between instruction formats, and OpenAssistant message trees to conversations and ranked pairs.

Alpaca ⇄ ShareGPT ⇄ OpenAI messages go through `Example`. Alpaca has one turn and no system prompt, so chats
with more turns or a system prompt are skipped (and counted) when converting to it. OpenAssistant data is a
forest of messages (``message_id``, ``parent_id``, ``role`` prompter/assistant, ``text``, ``rank`` with 0
best): flat JSONL, or nested trees with ``replies``. Each tree gives its best path (best-ranked reply at every
step) as one chat, and every prompt with several ranked replies gives (better, worse) pairs in TRL's
conversational preference format: ``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llamabrew.data.formats import Example, Message, parse_record, read_records, write_jsonl
from llamabrew.errors import InputError

Format = Literal["alpaca", "sharegpt", "messages", "pairs"]
FORMATS = ("alpaca", "sharegpt", "messages", "pairs")
_OA_ROLES = {"prompter": "user", "user": "user", "human": "user", "assistant": "assistant"}
_SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


class Skip(Exception):
    """This example cannot be expressed in the target format (the reason is the message)."""


def to_record(ex: Example, fmt: str) -> dict[str, Any]:
    """One example in ``fmt`` ("alpaca", "sharegpt" or "messages")."""
    if fmt == "alpaca":
        if ex.messages[0].role == "system":
            raise Skip("has_system_prompt")
        if len(ex.messages) != 2:
            raise Skip("multi_turn")
        return ex.to_alpaca()
    if fmt == "sharegpt":
        return {"conversations": [{"from": _SHAREGPT_FROM[m.role], "value": m.text()} for m in ex.messages]}
    if fmt == "messages":
        return {"messages": [{"role": m.role, "content": m.text()} for m in ex.messages]}
    raise ValueError(f"unknown format {fmt!r}")


@dataclass
class OANode:
    id: str
    parent: str | None
    role: str
    text: str
    rank: int | None
    order: int
    children: list[OANode] = field(default_factory=list)

    def best_first(self) -> list[OANode]:
        """Replies by rank (0 best); unranked ones after, in file order."""
        return sorted(self.children, key=lambda c: (c.rank is None, c.rank or 0, c.order))


def is_oasst(rec: dict[str, Any]) -> bool:
    return "message_id" in rec or isinstance(rec.get("prompt"), dict) and "replies" in rec["prompt"]


def load_oasst(path: str | Path, lang: str | None = None) -> tuple[list[OANode], Counter[str]]:
    """Trees from flat or nested OpenAssistant JSONL; deleted messages (and their replies) are dropped."""
    nodes: dict[str, OANode] = {}
    skipped: Counter[str] = Counter()
    for rec, line, idx in read_records(path):
        stack = (
            [(rec["prompt"], None)] if isinstance(rec.get("prompt"), dict) else [(rec, rec.get("parent_id"))]
        )
        while stack:
            msg, parent = stack.pop()
            node = _oa_node(msg, parent, len(nodes), dict(file=path, line=line, record=idx))
            if node.id in nodes:
                raise InputError(
                    f"duplicate message_id {node.id!r}", file=path, line=line, record=idx, field="message_id"
                )
            if msg.get("deleted") or (lang and msg.get("lang") not in (None, lang)):
                skipped["deleted" if msg.get("deleted") else "other_language"] += 1
                continue
            nodes[node.id] = node
            stack += [(r, node.id) for r in reversed(msg.get("replies") or [])]
    roots = []
    for node in sorted(nodes.values(), key=lambda n: n.order):
        if node.parent is None:
            roots.append(node)
        elif node.parent in nodes:
            nodes[node.parent].children.append(node)
        else:
            skipped["orphan"] += 1  # its parent was deleted, filtered out or is not in this file
    return roots, skipped


def _oa_node(msg: dict[str, Any], parent: str | None, order: int, where: dict[str, Any]) -> OANode:
    mid, role, text, rank = msg.get("message_id"), msg.get("role"), msg.get("text"), msg.get("rank")
    if not isinstance(mid, str) or not mid:
        raise InputError("missing or not a string", field="message_id", **where)
    if role not in _OA_ROLES:
        raise InputError(f"unknown role {role!r} (expected prompter or assistant)", field="role", **where)
    if not isinstance(text, str):
        raise InputError("missing or not a string", field="text", **where)
    if rank is not None and not isinstance(rank, int):
        raise InputError(f"must be an integer or null, got {rank!r}", field="rank", **where)
    return OANode(
        mid, parent if isinstance(parent, str) and parent else None, _OA_ROLES[role], text, rank, order
    )


def best_path(root: OANode) -> list[Message] | None:
    """The conversation along the best-ranked replies, ending on an assistant turn; None if it has none."""
    path, node = [], root
    while True:
        path.append(Message(node.role, node.text))  # type: ignore[arg-type]
        if not node.children:
            break
        node = node.best_first()[0]
    while path and path[-1].role != "assistant":
        path.pop()
    ok = (
        path
        and path[0].role == "user"
        and all(m.role == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(path))
    )
    return path if ok else None


def ranked_pairs(root: OANode) -> list[dict[str, Any]]:
    """(better, worse) reply pairs under every prompt with two or more distinctly ranked assistant replies."""
    pairs = []
    stack: list[tuple[OANode, list[dict[str, str]]]] = [(root, [])]
    while stack:
        node, history = stack.pop()
        here = history + [{"role": node.role, "content": node.text}]
        ranked = [c for c in node.best_first() if c.rank is not None and c.role == "assistant"]
        if node.role == "user":
            for i, better in enumerate(ranked):
                for worse in ranked[i + 1 :]:
                    if worse.rank != better.rank:
                        pairs.append(
                            {
                                "prompt": here,
                                "chosen": [{"role": "assistant", "content": better.text}],
                                "rejected": [{"role": "assistant", "content": worse.text}],
                            }
                        )
        stack += [(c, here) for c in node.children]
    return pairs


def convert(inp: Path, out: Path, to: str, lang: str | None = None) -> dict[str, Any]:
    """Convert a file; OpenAssistant input is detected by its ``message_id`` / ``prompt.replies`` fields."""
    if to not in FORMATS:
        raise InputError(f"unknown target format {to!r}; choose one of {', '.join(FORMATS)}")
    first = next(read_records(inp))[0]
    skipped: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    if is_oasst(first):
        roots, skipped = load_oasst(inp, lang)
        if to == "pairs":
            records = [p for r in roots for p in ranked_pairs(r)]
            examples = []
        else:
            paths = [best_path(r) for r in roots]
            skipped["no_assistant_reply"] += paths.count(None)
            examples = [Example(p, f"{inp}:tree{i}") for i, p in enumerate(paths) if p]
    else:
        if to == "pairs":
            raise InputError(
                "ranked pairs need OpenAssistant-style trees (message_id, parent_id, rank)", file=inp
            )
        examples = [parse_record(rec, file=inp, line=line, index=idx) for rec, line, idx in read_records(inp)]
    for ex in examples:
        try:
            records.append(to_record(ex, to))
        except Skip as reason:
            skipped[str(reason)] += 1
    write_jsonl(out, records)
    return {"in": str(inp), "out": str(out), "to": to, "written": len(records), "skipped": dict(skipped)}
