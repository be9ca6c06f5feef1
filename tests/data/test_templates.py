"""Built-in prompt templates: exact renderings, generation-prompt prefixes, and `auto` resolution."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llamabrew.data.templates import (
    ALPACA_NO_INPUT,
    ALPACA_WITH_INPUT,
    BUILTIN,
    TEMPLATE_NAMES,
    VICUNA_SYSTEM,
    Template,
    get_template,
)
from llamabrew.errors import LlamabrewError

# The wording of the original Stanford Alpaca prompts, written out here independently of the code.
ORIGINAL_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                       "further context. Write a response that appropriately completes the request.")
ORIGINAL_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                     "completes the request.")

ONE = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Teal."}]
ONE_INPUT = [{"role": "user", "content": "Translate.", "input": "cat"},
             {"role": "assistant", "content": "chat"}]
MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]
CHATS = {"one": ONE, "one_input": ONE_INPUT, "multi": MULTI, "multi_no_system": MULTI[1:]}


@pytest.fixture
def fresh_tokenizer(tiny_model_dir):
    """A private copy: tests that set chat_template must not touch the session tokenizer."""
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_tiny_tokenizer_has_no_template_of_its_own(tiny_tokenizer):
    assert not tiny_tokenizer.chat_template


def test_alpaca_wording_is_the_original():
    assert ALPACA_WITH_INPUT == ORIGINAL_WITH_INPUT
    assert ALPACA_NO_INPUT == ORIGINAL_NO_INPUT


def test_alpaca_without_input(tiny_tokenizer):
    text = BUILTIN["alpaca"].render(tiny_tokenizer, ONE)
    assert text == f"{ORIGINAL_NO_INPUT}\n\n### Instruction:\nName a color.\n\n### Response:\nTeal.</s>"


def test_alpaca_inline_puts_the_answer_on_the_header_line(tiny_tokenizer):
    t = BUILTIN["alpaca_inline"]
    assert t.render(tiny_tokenizer, ONE) == (
        f"{ORIGINAL_NO_INPUT}\n\n### Instruction:\nName a color.\n\n### Response: Teal.</s>")
    assert t.render(tiny_tokenizer, ONE[:1], add_generation_prompt=True).endswith("### Response:")
    assert t.render(tiny_tokenizer, MULTI[1:]).endswith("### Response: Hello.</s>\n\n### Instruction:\nBye\n\n"
                                                       "### Response: Goodbye.</s>")


def test_alpaca_inline_answer_starts_with_running_text_tokens(tiny_tokenizer):
    """The point of the inline layout: the answer's first word is the token it is inside a sentence."""
    t = BUILTIN["alpaca_inline"]
    chat = [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Teal"}]
    prompt_ids = tiny_tokenizer(t.render(tiny_tokenizer, chat[:1], True), add_special_tokens=False)["input_ids"]
    full_ids = tiny_tokenizer(t.render(tiny_tokenizer, chat), add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    in_sentence = tiny_tokenizer("a Teal", add_special_tokens=False)["input_ids"][1:]
    assert full_ids[len(prompt_ids) : len(prompt_ids) + len(in_sentence)] == in_sentence
    on_own_line = BUILTIN["alpaca"].render(tiny_tokenizer, chat)
    assert "### Response:\nTeal" in on_own_line


def test_alpaca_with_input(tiny_tokenizer):
    text = BUILTIN["alpaca"].render(tiny_tokenizer, ONE_INPUT)
    assert text == (f"{ORIGINAL_WITH_INPUT}\n\n### Instruction:\nTranslate.\n\n### Input:\ncat\n\n"
                    "### Response:\nchat</s>")
    assert ORIGINAL_NO_INPUT not in text


def test_alpaca_multi_turn_uses_the_system_prompt_and_repeats_blocks(tiny_tokenizer):
    assert BUILTIN["alpaca"].render(tiny_tokenizer, MULTI) == (
        "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello.</s>\n\n"
        "### Instruction:\nBye\n\n### Response:\nGoodbye.</s>"
    )
    no_system = BUILTIN["alpaca"].render(tiny_tokenizer, MULTI[1:])
    assert no_system.startswith(ORIGINAL_NO_INPUT + "\n\n### Instruction:\nHi\n\n")
    assert no_system.count("### Instruction:") == 2 and no_system.count("</s>") == 2


def test_alpaca_short(tiny_tokenizer):
    t = BUILTIN["alpaca_short"]
    assert t.render(tiny_tokenizer, ONE) == "### Instruction:\nName a color.\n\n### Response:\nTeal.</s>"
    assert t.render(tiny_tokenizer, ONE_INPUT) == (
        "### Instruction:\nTranslate.\n\n### Input:\ncat\n\n### Response:\nchat</s>")
    assert t.render(tiny_tokenizer, MULTI).startswith("Be brief.\n\n### Instruction:\nHi\n\n")
    assert "Below is an instruction" not in t.render(tiny_tokenizer, MULTI[1:])


def test_vicuna(tiny_tokenizer):
    t = BUILTIN["vicuna"]
    assert VICUNA_SYSTEM.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert t.render(tiny_tokenizer, ONE) == f"{VICUNA_SYSTEM} USER: Name a color. ASSISTANT: Teal.</s>"
    assert t.render(tiny_tokenizer, ONE_INPUT) == (
        f"{VICUNA_SYSTEM} USER: Translate.\n\ncat ASSISTANT: chat</s>")
    assert t.render(tiny_tokenizer, MULTI) == (
        "Be brief. USER: Hi ASSISTANT: Hello.</s>USER: Bye ASSISTANT: Goodbye.</s>")
    prompt = t.render(tiny_tokenizer, ONE[:1], add_generation_prompt=True)
    assert prompt.endswith("USER: Name a color. ASSISTANT:")


def test_chatml(tiny_tokenizer):
    t = BUILTIN["chatml"]
    assert t.render(tiny_tokenizer, ONE) == (
        "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\nTeal.<|im_end|>\n")
    assert t.render(tiny_tokenizer, ONE_INPUT).startswith("<|im_start|>user\nTranslate.\n\ncat<|im_end|>\n")
    assert t.render(tiny_tokenizer, MULTI) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\nGoodbye.<|im_end|>\n"
    )
    assert t.render(tiny_tokenizer, ONE[:1], add_generation_prompt=True).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("name", list(BUILTIN))
@pytest.mark.parametrize("chat", list(CHATS))
def test_generation_prompt_is_a_prefix_of_the_full_rendering(tiny_tokenizer, name: str, chat: str):
    messages = CHATS[chat]
    t = BUILTIN[name]
    full = t.render(tiny_tokenizer, messages)
    prompt = t.render(tiny_tokenizer, messages[:-1], add_generation_prompt=True)
    assert full.startswith(prompt)
    # what a model should generate after the prompt, cut where generation stops (EOS or a stop string),
    # is exactly the answer
    generated = full[len(prompt):].split(tiny_tokenizer.eos_token)[0]
    for stop in t.stop:
        generated = generated.split(stop)[0]
    assert generated.strip() == messages[-1]["content"]


def test_auto_without_own_template_is_alpaca(tiny_tokenizer):
    assert get_template("auto", tiny_tokenizer) is BUILTIN["alpaca"]
    assert get_template("auto") is BUILTIN["alpaca"]


def test_auto_uses_the_tokenizers_own_template(fresh_tokenizer):
    own = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
           "{% if add_generation_prompt %}<assistant>{% endif %}")
    fresh_tokenizer.chat_template = own
    t = get_template("auto", fresh_tokenizer)
    assert (t.name, t.jinja, t.stop) == ("auto", own, ())
    assert t.render(fresh_tokenizer, ONE) == "<user>Name a color.</user><assistant>Teal.</assistant>"
    prompt = t.render(fresh_tokenizer, ONE[:1], add_generation_prompt=True)
    assert prompt == "<user>Name a color.</user><assistant>"


@pytest.mark.parametrize("name", list(BUILTIN))
def test_auto_recognises_a_saved_builtin(fresh_tokenizer, name: str):
    """A run saves the built-in's Jinja as the tokenizer's chat_template; `auto` then finds the built-in."""
    fresh_tokenizer.chat_template = BUILTIN[name].jinja
    t = get_template("auto", fresh_tokenizer)
    assert t.name == name
    assert t.stop == BUILTIN[name].stop and t.stop


def test_named_template_ignores_the_tokenizers_own(fresh_tokenizer):
    fresh_tokenizer.chat_template = "{{ messages[0].content }}"
    assert get_template("chatml", fresh_tokenizer) is BUILTIN["chatml"]


def test_unknown_name_lists_the_choices():
    with pytest.raises(LlamabrewError) as info:
        get_template("llama9")
    msg = str(info.value)
    assert "llama9" in msg and "\n" not in msg
    for name in TEMPLATE_NAMES:
        assert name in msg


def test_broken_template_fails_with_a_llamabrew_error(tiny_tokenizer):
    broken = Template("mine", "{{ messages[0].content | no_such_filter }}")
    with pytest.raises(LlamabrewError, match="template 'mine' failed to render"):
        broken.render(tiny_tokenizer, ONE)
