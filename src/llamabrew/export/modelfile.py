"""An Ollama Modelfile beside the GGUF: the trained chat format as a Go template, stop strings, sane defaults.

Ollama does not run Jinja, so the template is translated by rendering it with marker messages and cutting the
text around them into the pieces every turn-based format has (system wrapper, user prefix/suffix, assistant
prefix/suffix). The pieces are re-assembled the way the Go template will and compared with the Jinja rendering
of several chats; when a template is not turn-based in that sense, the Modelfile leaves TEMPLATE out (Ollama
then falls back to the GGUF's own ``tokenizer.chat_template``) and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamabrew.data.templates import Template
from llamabrew.engines import Sampling
from llamabrew.io import atomic_write_text

_S, _U1, _A1, _U2 = "SYS\u2063MARK", "USER\u2063ONE", "BOT\u2063ONE", "USER\u2063TWO"


@dataclass(frozen=True)
class ChatParts:
    head: str  # before the first user turn when there is no system message
    system_prefix: str | None  # None: the template ignores system messages
    system_suffix: str
    user_prefix: str
    user_suffix: str  # after a user turn; ends with the generation prompt
    assistant_prefix: str  # before a past assistant answer, after user_suffix
    assistant_suffix: str


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n :]


def derive_parts(template: Template, tokenizer: Any) -> ChatParts | None:
    """Cut the template's renderings around marker messages; None when it does not split into turn pieces."""

    def render(messages: list[tuple[str, str]]) -> str:
        return template.render(tokenizer, [{"role": r, "content": c} for r, c in messages], True)

    try:
        one = render([("user", _U1)])
        two = render([("user", _U1), ("assistant", _A1), ("user", _U2)])
        pre, _, user_suffix = one.partition(_U1)
        _, _, rest = two.partition(_U1)
        between, _, rest = rest.partition(_A1)
        turn_gap, _, tail = rest.partition(_U2)
        if not between.startswith(user_suffix) or tail != user_suffix:
            return None
        user_prefix = _common_suffix(pre, turn_gap)
        system_prefix, system_suffix = None, ""
        with_sys = render([("system", _S), ("user", _U1)])
        if _S in with_sys:
            system_prefix, _, after = with_sys.partition(_S)
            between_sys = after.partition(_U1)[0]
            if not between_sys.endswith(user_prefix):
                return None
            system_suffix = between_sys[: len(between_sys) - len(user_prefix)]
        return ChatParts(
            pre[: len(pre) - len(user_prefix)],
            system_prefix,
            system_suffix,
            user_prefix,
            user_suffix,
            between[len(user_suffix) :],
            turn_gap[: len(turn_gap) - len(user_prefix)],
        )
    except Exception:  # a model's own template may reject marker chats
        return None


def render_parts(parts: ChatParts, messages: list[dict[str, str]]) -> str:
    """What the generated Go template produces for ``messages`` (the last one from the user)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    out = [
        parts.head
        if system is None or parts.system_prefix is None
        else parts.system_prefix + system + parts.system_suffix
    ]
    for m in messages:
        if m["role"] == "user":
            out.append(parts.user_prefix + m["content"] + parts.user_suffix)
        elif m["role"] == "assistant":
            out.append(parts.assistant_prefix + m["content"] + parts.assistant_suffix)
    return "".join(out)


def parts_match(parts: ChatParts, template: Template, tokenizer: Any) -> bool:
    """Whether the pieces reproduce the Jinja template on chats with and without a system message."""
    chats = [
        [{"role": "user", "content": "Hi there."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
        [
            {"role": "user", "content": "One?"},
            {"role": "assistant", "content": "1"},
            {"role": "user", "content": "Two?"},
        ],
    ]
    for chat in chats:
        if parts.system_prefix is None and chat[0]["role"] == "system":
            continue
        if render_parts(parts, chat) != template.render(tokenizer, chat, add_generation_prompt=True):
            return False
    return True


def _lit(text: str) -> str:
    """Literal text for a Go template; a quoted action where it would clash with ``{{`` or triple quotes."""
    if not text:
        return ""
    return "{{ " + json.dumps(text) + " }}" if "{{" in text or '"""' in text or text.endswith('"') else text


def go_template(parts: ChatParts) -> str:
    """Ollama's Go-template form of the pieces (no whitespace-trimming actions: every character counts)."""
    if parts.system_prefix is None:
        head = _lit(parts.head)
    else:
        head = (
            f"{{{{ if .System }}}}{_lit(parts.system_prefix)}{{{{ .System }}}}{_lit(parts.system_suffix)}"
            f"{{{{ else }}}}{_lit(parts.head)}{{{{ end }}}}"
        )
    return (
        f"{head}{{{{ range .Messages }}}}"
        f'{{{{ if eq .Role "user" }}}}{_lit(parts.user_prefix)}{{{{ .Content }}}}{_lit(parts.user_suffix)}'
        f'{{{{ else if eq .Role "assistant" }}}}{_lit(parts.assistant_prefix)}{{{{ .Content }}}}'
        f"{_lit(parts.assistant_suffix)}{{{{ end }}}}{{{{ end }}}}"
    )


def stop_strings(template: Template, parts: ChatParts | None) -> list[str]:
    """The template's own stop strings, else the next user turn's start (what a runaway answer writes)."""
    stops = list(template.stop)
    if not stops and parts is not None:
        stops = [s for s in (parts.user_prefix.strip(), parts.assistant_suffix.strip()) if s]
    return [s for s in dict.fromkeys(stops) if "\n" not in s]


@dataclass
class ModelfileResult:
    path: Path
    has_template: bool  # False: the format could not be translated; Ollama uses the GGUF's chat template
    stops: list[str]


def write_modelfile(
    gguf_path: str | Path,
    template: Template,
    tokenizer: Any,
    context_length: int,
    out: str | Path | None = None,
) -> ModelfileResult:
    """Write ``<gguf stem>.Modelfile`` beside the GGUF (``ollama create NAME -f that-file``)."""
    gguf_path = Path(gguf_path)
    out = Path(out) if out else gguf_path.with_suffix(".Modelfile")
    parts = derive_parts(template, tokenizer)
    if parts is not None and not parts_match(parts, template, tokenizer):
        parts = None
    defaults = Sampling()
    lines = [
        f"# Written by llamabrew for {gguf_path.name}, trained with the '{template.name}' chat format.",
        f"# ollama create my-model -f {out.name}",
        f"FROM ./{gguf_path.name}",
        "",
    ]
    if parts is not None:
        lines += [f'TEMPLATE """{go_template(parts)}"""', ""]
    else:
        lines += [
            "# The chat format could not be translated to Ollama's template language exactly;",
            "# Ollama will use the chat template stored in the GGUF file.",
            "",
        ]
    stops = stop_strings(template, parts)
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    lines += [
        f"PARAMETER num_ctx {min(context_length, 4096)}",
        f"PARAMETER temperature {defaults.temperature}",
        f"PARAMETER top_p {defaults.top_p}",
        f"PARAMETER top_k {defaults.top_k}",
        f"PARAMETER repeat_penalty {defaults.repetition_penalty}",
        "",
    ]
    atomic_write_text(out, "\n".join(lines))
    return ModelfileResult(out, parts is not None, stops)
