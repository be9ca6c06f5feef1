"""Instruction data formats: Alpaca, ShareGPT and OpenAI-style messages, read into one `Example` type.

Every record becomes a list of `Message`s. Alpaca's optional ``input`` stays a separate field on the user
message so the Alpaca templates can render their with-input variant; chat templates join it to the instruction.
Any problem is an `InputError` that names the file, the line (JSONL) or record index (JSON list), and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llamabrew.errors import InputError

Role = Literal["system", "user", "assistant"]

SHAREGPT_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class Message:
    role: Role
    content: str
    input: str = ""  # Alpaca's optional context for an instruction; empty for chats

    def as_dict(self) -> dict[str, str]:
        """The message as a chat-template dict; ``input`` appears only when set."""
        out = {"role": self.role, "content": self.content}
        if self.input:
            out["input"] = self.input
        return out

    def text(self) -> str:
        """Instruction and input joined, for templates that have no separate input slot."""
        return f"{self.content}\n\n{self.input}" if self.input else self.content


@dataclass
class Example:
    messages: list[Message]
    source: str = ""  # "file:line" for error messages and reports
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def instruction(self) -> str:
        return next(m.content for m in self.messages if m.role == "user")

    @property
    def input(self) -> str:
        return next(m.input for m in self.messages if m.role == "user")

    @property
    def output(self) -> str:
        return self.messages[-1].content

    def key(self) -> tuple[tuple[str, str, str], ...]:
        """Identity for exact-duplicate detection."""
        return tuple((m.role, m.content.strip(), m.input.strip()) for m in self.messages)

    def to_alpaca(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def alpaca_example(instruction: str, output: str, input: str = "", source: str = "") -> Example:
    return Example([Message("user", instruction, input), Message("assistant", output)], source)


def read_records(path: str | Path) -> Iterator[tuple[dict[str, Any], int | None, int | None]]:
    """Yield ``(record, line, index)`` from a JSON list or a JSONL file; exactly one of line/index is set."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte {e.start})", file=path, line=line) from None
    if not text.strip():
        raise InputError("file is empty", file=path)
    stripped = text.lstrip()
    if stripped.startswith("[") or path.suffix == ".json" and not _looks_like_jsonl(stripped):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", file=path, line=e.lineno) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise InputError(f"expected a list of records, got {type(data).__name__}", file=path)
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise InputError(f"expected an object, got {type(rec).__name__}", file=path, record=i)
            yield rec, None, i
        return
    # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 etc., which JSON strings may hold raw
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", file=path, line=n) from None
        if not isinstance(rec, dict):
            raise InputError(f"expected an object, got {type(rec).__name__}", file=path, line=n)
        yield rec, n, None


def _looks_like_jsonl(text: str) -> bool:
    first = text.split("\n", 1)[0].strip()
    try:
        return isinstance(json.loads(first), dict) and "\n" in text.strip()
    except json.JSONDecodeError:
        return False


def parse_record(rec: dict[str, Any], *, file: str | Path = "", line: int | None = None,
                 index: int | None = None) -> Example:
    """One record in any supported format → `Example`."""
    where = dict(file=file, line=line, record=index)
    source = f"{file}:{line}" if line is not None else f"{file}[{index}]"
    if "conversations" in rec or "messages" in rec:
        key = "conversations" if "conversations" in rec else "messages"
        return Example(_parse_chat(rec[key], key, where), source)
    if "instruction" not in rec and "output" not in rec:
        raise InputError("unknown record format: expected 'instruction'/'output', 'conversations' or 'messages'",
                         **where)
    instruction = _required_str(rec, "instruction", where)
    output = _required_str(rec, "output", where)
    inp = rec.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise InputError(f"must be a string, got {type(inp).__name__}", field="input", **where)
    return alpaca_example(instruction, output, inp, source)


def _required_str(rec: dict[str, Any], name: str, where: dict[str, Any]) -> str:
    if name not in rec:
        raise InputError("missing", field=name, **where)
    value = rec[name]
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {type(value).__name__}", field=name, **where)
    if not value.strip():
        raise InputError("is empty", field=name, **where)
    return value


def _parse_chat(turns: Any, key: str, where: dict[str, Any]) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise InputError("must be a non-empty list of turns", field=key, **where)
    sharegpt = key == "conversations"
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        name = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise InputError(f"must be an object, got {type(turn).__name__}", field=name, **where)
        role_raw, text = turn.get(role_key), turn.get(text_key)
        role = SHAREGPT_ROLES.get(str(role_raw).lower()) if isinstance(role_raw, str) else None
        if role is None:
            raise InputError(f"unknown role {role_raw!r}", field=f"{name}.{role_key}", **where)
        if not isinstance(text, str):
            raise InputError(f"must be a string, got {type(text).__name__}", field=f"{name}.{text_key}", **where)
        if not text.strip():
            raise InputError("is empty", field=f"{name}.{text_key}", **where)
        messages.append(Message(role, text))
    body = messages[1:] if messages[0].role == "system" else messages
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            pos = i + (len(messages) - len(body))
            raise InputError(f"turns must alternate user/assistant; turn {pos} is {m.role}, expected {expected}",
                             field=f"{key}[{pos}]", **where)
    if not body or body[-1].role != "assistant":
        raise InputError("chat must end with an assistant turn", field=key, **where)
    return messages


def load_examples(path: str | Path) -> list[Example]:
    """Read and validate every record of an instruction file (JSON list or JSONL, any supported format)."""
    examples = [parse_record(rec, file=path, line=line, index=idx) for rec, line, idx in read_records(path)]
    if not examples:
        raise InputError("no records", file=path)
    return examples


def find_duplicates(examples: list[Example]) -> list[tuple[str, str]]:
    """Pairs ``(duplicate source, first source)`` of exact duplicates."""
    seen: dict[Any, str] = {}
    dups = []
    for ex in examples:
        k = ex.key()
        if k in seen:
            dups.append((ex.source, seen[k]))
        else:
            seen[k] = ex.source
    return dups


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Write records atomically (temp file + rename) as JSONL."""
    from llamabrew.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
