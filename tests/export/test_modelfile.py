"""The Ollama Modelfile: its Go template renders exactly what the trained Jinja template renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llamabrew.data.templates import BUILTIN, Template
from llamabrew.export.modelfile import derive_parts, go_template, write_modelfile

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a {{color}}."},
    ],
]


def _parse(tokens: list[str]) -> tuple[list, str]:
    """Nodes up to the next else/end: text, ('var', name), ('if', cond, then, else), ('range', body)."""
    nodes: list = []
    while tokens:
        tok = tokens.pop(0)
        if not tok.startswith("{{"):
            nodes.append(tok)
            continue
        action = tok[2:-2].strip()
        if action in ("end", "else") or action.startswith("else if "):
            if action.startswith("else if "):
                tokens.insert(0, "{{ " + action[5:] + " }}")
                body, _ = _parse(tokens)
                return nodes, "else-if:" + json.dumps(body)
            return nodes, action
        if action.startswith("if "):
            then, term = _parse(tokens)
            other: list = []
            if term == "else":
                other, _ = _parse(tokens)
            elif term.startswith("else-if:"):
                other = json.loads(term[8:])
            nodes.append(["if", action[3:], then, other])
        elif action.startswith("range "):
            body, _ = _parse(tokens)
            nodes.append(["range", body])
        else:
            nodes.append(["var", action])
    return nodes, ""


def run_go_template(template: str, messages: list[dict[str, str]]) -> str:
    """A small interpreter for the Go-template subset the Modelfile uses, with Ollama's .System, .Messages."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    nodes, _ = _parse([t for t in re.split(r"(\{\{.*?\}\})", template, flags=re.S) if t])

    def run(nodes: list, msg: dict[str, str] | None) -> str:
        out = []
        for n in nodes:
            if isinstance(n, str):
                out.append(n)
            elif n[0] == "var":
                name = n[1]
                out.append(
                    json.loads(name)
                    if name.startswith('"')
                    else system
                    if name == ".System"
                    else msg["content"]
                )
            elif n[0] == "if":
                cond = n[1]
                ok = (
                    bool(system)
                    if cond == ".System"
                    else msg["role"] == re.match(r'eq \.Role "(\w+)"', cond)[1]
                )
                out.append(run(n[2] if ok else n[3], msg))
            else:
                out.extend(run(n[1], m) for m in messages)
        return "".join(out)

    return run(nodes, None)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_go_template_renders_like_jinja(name: str, tiny_tokenizer) -> None:
    template = BUILTIN[name]
    parts = derive_parts(template, tiny_tokenizer)
    assert parts is not None
    for chat in CHATS:
        want = template.render(tiny_tokenizer, chat, add_generation_prompt=True)
        assert run_go_template(go_template(parts), chat) == want


def test_modelfile_contents(tiny_tokenizer, tmp_path: Path) -> None:
    gguf = tmp_path / "model-q4_k_m.gguf"
    result = write_modelfile(gguf, BUILTIN["alpaca"], tiny_tokenizer, context_length=8192)
    text = result.path.read_text()
    assert result.path == tmp_path / "model-q4_k_m.Modelfile" and result.has_template
    assert "FROM ./model-q4_k_m.gguf" in text
    template = re.search(r'TEMPLATE """(.*?)"""', text, flags=re.S)[1]
    chat = [{"role": "user", "content": "Why is the sky blue?"}]
    assert run_go_template(template, chat) == BUILTIN["alpaca"].render(tiny_tokenizer, chat, True)
    assert 'PARAMETER stop "### Instruction:"' in text
    assert "PARAMETER num_ctx 4096" in text and "PARAMETER temperature 0.7" in text


def test_untranslatable_template_falls_back_to_the_gguf_template(tiny_tokenizer, tmp_path: Path) -> None:
    odd = Template("odd", "{% for m in messages | reverse %}{{ m.content }}|{% endfor %}", ("|",))
    result = write_modelfile(tmp_path / "m.gguf", odd, tiny_tokenizer, 512)
    text = result.path.read_text()
    assert not result.has_template and "TEMPLATE" not in text and 'PARAMETER stop "|"' in text
