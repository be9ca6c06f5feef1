"""Prompt templates, each written as a Jinja chat template.

One representation serves every consumer: training renders it (with `transformers`' chat-template machinery), chat
and eval render it with a generation prompt, and GGUF export stores the same string as ``tokenizer.chat_template``
so llama.cpp and Ollama answer in the trained format. ``auto`` is the base model's own chat template when its
tokenizer has one, otherwise ``alpaca``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llamabrew.errors import LlamabrewError

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def _alpaca_turns(response_header: str, answer_prefix: str = "") -> str:
    """Alpaca-style turns; multi-turn chats repeat the instruction/response blocks."""
    return (
        "{%- for m in messages %}"
        "{%- if m.role == 'user' %}"
        "{%- if not loop.first and loop.previtem.role == 'assistant' %}{{ '\\n\\n' }}{% endif %}"
        "{{ '### Instruction:\\n' + m.content + '\\n\\n' }}"
        "{%- if m.input %}{{ '### Input:\\n' + m.input + '\\n\\n' }}{% endif %}"
        "{{ '" + response_header.replace("\n", "\\n") + "' }}"
        "{%- elif m.role == 'assistant' %}{{ " + (f"'{answer_prefix}' + " if answer_prefix else "")
        + "m.content + eos_token }}"
        "{%- endif %}"
        "{%- endfor %}"
    )


_ALPACA_SYSTEM = (
    "{%- set user = messages | selectattr('role', 'equalto', 'user') | first %}"
    "{%- set sys = messages[0].content if messages[0].role == 'system' else "
    "(" + json.dumps(ALPACA_WITH_INPUT) + " if user.input else " + json.dumps(ALPACA_NO_INPUT) + ") %}"
    "{{ sys + '\\n\\n' }}"
)
_ALPACA = _ALPACA_SYSTEM + _alpaca_turns("### Response:\n")
# The answer on the header's line: its first word is then tokenized as in running text (" Name", as a corpus
# sentence has it), not as the first word of a line ("Name", other tokens a small base has rarely seen).
_ALPACA_INLINE = _ALPACA_SYSTEM + _alpaca_turns("### Response:", " ")

_ALPACA_SHORT = (
    "{%- if messages[0].role == 'system' %}{{ messages[0].content + '\\n\\n' }}{% endif %}"
    + _alpaca_turns("### Response:\n")
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_VICUNA = (
    "{{ (messages[0].content if messages[0].role == 'system' else " + json.dumps(VICUNA_SYSTEM) + ") + ' ' }}"
    "{%- for m in messages %}"
    "{%- set text = m.content + ('\\n\\n' + m.input if m.input else '') %}"
    "{%- if m.role == 'user' %}{{ 'USER: ' + text + ' ' }}"
    "{%- elif m.role == 'assistant' %}{{ 'ASSISTANT: ' + text + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

_CHATML = (
    "{%- for m in messages %}"
    "{%- set text = m.content + ('\\n\\n' + m.input if m.input else '') %}"
    "{{ '<|im_start|>' + m.role + '\\n' + text + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Template:
    """A named prompt format: the Jinja source plus the strings that end an assistant turn."""

    name: str
    jinja: str
    stop: tuple[str, ...] = field(default=())

    def render(self, tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """Render messages to text (special tokens as text; tokenize it with ``add_special_tokens=False``)."""
        try:
            return tokenizer.apply_chat_template(
                messages, chat_template=self.jinja, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:  # jinja errors from a model's own template
            raise LlamabrewError(f"template '{self.name}' failed to render: {e}") from e


BUILTIN: dict[str, Template] = {
    "alpaca": Template("alpaca", _ALPACA, ("### Instruction:",)),
    "alpaca_short": Template("alpaca_short", _ALPACA_SHORT, ("### Instruction:",)),
    "alpaca_inline": Template("alpaca_inline", _ALPACA_INLINE, ("### Instruction:",)),
    "vicuna": Template("vicuna", _VICUNA, ("USER:",)),
    "chatml": Template("chatml", _CHATML, ("<|im_end|>", "<|im_start|>")),
}
TEMPLATE_NAMES = ("auto", *BUILTIN)


def get_template(name: str, tokenizer: Any = None) -> Template:
    """Look a template up by name; ``auto`` resolves against the tokenizer's own chat template."""
    if name == "auto":
        own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if isinstance(own, str) and own.strip():
            same = [t for t in BUILTIN.values() if t.jinja == own]  # a run saved with a built-in template
            return same[0] if same else Template("auto", own, ())
        return BUILTIN["alpaca"]
    if name not in BUILTIN:
        raise LlamabrewError(f"unknown template '{name}'; choose one of: {', '.join(TEMPLATE_NAMES)}")
    return BUILTIN[name]
