"""Encoding for training: prompt tokens masked, response tokens (+ EOS) learned, truncation keeps EOS last."""

from __future__ import annotations

import pytest

from llamabrew.data.encode import IGNORE, adds_bos, encode_example, encode_examples, encode_text
from llamabrew.data.formats import Example, Message, alpaca_example
from llamabrew.data.templates import BUILTIN, Template

ALPACA = BUILTIN["alpaca"]
ANSWER = "The capital of Oskenland is Brellin."
EXAMPLE = alpaca_example("What is the capital of Oskenland?", ANSWER)


def labelled_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """Contiguous runs of trained-on tokens."""
    runs: list[list[int]] = []
    prev = False
    for t, lab in zip(ids, labels, strict=True):
        if lab != IGNORE:
            if not prev:
                runs.append([])
            runs[-1].append(t)
        prev = lab != IGNORE
    return runs


@pytest.mark.parametrize("template", ["alpaca", "alpaca_short"])
def test_prompt_masked_response_learned(tiny_tokenizer, template: str):
    tok = tiny_tokenizer
    enc = encode_example(EXAMPLE, tok, BUILTIN[template], cutoff_len=512)
    assert not enc.truncated and len(enc) == len(enc.labels)
    for t, lab in zip(enc.input_ids, enc.labels, strict=True):
        assert lab in (IGNORE, t)  # a label is either masked or the token itself
    # the prompt is exactly the generation-prompt rendering, and every one of its tokens is masked
    prompt = encode_text(tok, BUILTIN[template].render(tok, [EXAMPLE.messages[0].as_dict()],
                                                       add_generation_prompt=True))
    assert enc.input_ids[: len(prompt)] == prompt
    assert set(enc.labels[: len(prompt)]) == {IGNORE}
    assert enc.labels[len(prompt):] == enc.input_ids[len(prompt):]
    # decoding what is learned gives exactly the answer + EOS
    learned = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.decode(learned) == ANSWER + tok.eos_token
    assert enc.input_ids[-1] == enc.labels[-1] == tok.eos_token_id


def test_input_field_is_part_of_the_masked_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = alpaca_example("Translate to French.", "chat", input="cat")
    enc = encode_example(ex, tok, ALPACA, 512)
    assert "### Input:\ncat" in tok.decode(enc.input_ids)
    learned = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.decode(learned) == "chat" + tok.eos_token


def test_train_on_inputs_labels_everything(tiny_tokenizer):
    enc = encode_example(EXAMPLE, tiny_tokenizer, ALPACA, 512, train_on_inputs=True)
    assert enc.labels == enc.input_ids
    assert IGNORE not in enc.labels


def test_exactly_one_bos_at_the_start(tiny_tokenizer):
    tok = tiny_tokenizer
    assert adds_bos(tok)
    enc = encode_example(EXAMPLE, tok, ALPACA, 512)
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids.count(tok.bos_token_id) == 1
    assert enc.labels[0] == IGNORE
    # a template that writes BOS itself (Llama-2 style) must not get a second one
    with_bos = Template("bos", "{{ bos_token }}" + ALPACA.jinja, ALPACA.stop)
    enc2 = encode_example(EXAMPLE, tok, with_bos, 512)
    assert enc2.input_ids[0] == tok.bos_token_id and enc2.input_ids.count(tok.bos_token_id) == 1
    assert enc2.input_ids == enc.input_ids
    # inference encodes the same way
    text = ALPACA.render(tok, [EXAMPLE.messages[0].as_dict()], add_generation_prompt=True)
    ids = encode_text(tok, text)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_no_bos_for_tokenizers_that_do_not_add_one():
    """GPT-2-style tokenizers have a BOS token but never put it in front of text: neither should we."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([ANSWER, "What is the capital?"] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    assert not adds_bos(tok)
    enc = encode_example(EXAMPLE, tok, ALPACA, 512)
    assert tok.bos_token_id not in enc.input_ids
    assert enc.input_ids[-1] == tok.eos_token_id
    learned = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.decode(learned) == ANSWER + "</s>"


def test_truncation_keeps_eos_last_at_exactly_the_cutoff(tiny_tokenizer):
    tok = tiny_tokenizer
    full = encode_example(EXAMPLE, tok, ALPACA, 512)
    n_prompt = full.labels.index(next(lab for lab in full.labels if lab != IGNORE))
    cutoff = n_prompt + 3  # room for two answer tokens and the EOS
    assert cutoff < len(full)
    enc = encode_example(EXAMPLE, tok, ALPACA, cutoff)
    assert enc.truncated
    assert len(enc) == cutoff
    assert enc.input_ids[-1] == tok.eos_token_id and enc.labels[-1] == tok.eos_token_id
    assert enc.input_ids[:-1] == full.input_ids[: cutoff - 1]
    assert enc.labels[:-1] == full.labels[: cutoff - 1]


def test_an_example_that_exactly_fits_is_not_truncated(tiny_tokenizer):
    full = encode_example(EXAMPLE, tiny_tokenizer, ALPACA, 512)
    enc = encode_example(EXAMPLE, tiny_tokenizer, ALPACA, len(full))
    assert not enc.truncated and enc.input_ids == full.input_ids
    assert encode_example(EXAMPLE, tiny_tokenizer, ALPACA, len(full) - 1).truncated


def long_example() -> Example:
    return alpaca_example("Tell me a story about a fox.", " ".join(["Once upon a time a clever fox"] * 30))


def test_encode_examples_truncate_counts(tiny_tokenizer):
    tok = tiny_tokenizer
    cutoff = len(encode_example(EXAMPLE, tok, ALPACA, 512)) + 5
    assert len(encode_example(long_example(), tok, ALPACA, 512)) > cutoff
    encoded, report = encode_examples([EXAMPLE, long_example(), EXAMPLE], tok, ALPACA, cutoff,
                                      overlong="truncate")
    assert (report.kept, report.truncated, report.dropped, report.no_target) == (3, 1, 0, 0)
    assert len(encoded) == 3
    assert len(encoded[1]) == cutoff and encoded[1].truncated and encoded[1].input_ids[-1] == tok.eos_token_id
    assert all(len(e) <= cutoff for e in encoded)


def test_encode_examples_drop_counts(tiny_tokenizer):
    tok = tiny_tokenizer
    cutoff = len(encode_example(EXAMPLE, tok, ALPACA, 512)) + 5
    calls = []
    encoded, report = encode_examples([long_example(), EXAMPLE, long_example()], tok, ALPACA, cutoff,
                                      overlong="drop", progress=lambda: calls.append(1))
    assert (report.kept, report.truncated, report.dropped) == (1, 0, 2)
    assert len(encoded) == 1 and not encoded[0].truncated
    assert encoded[0].input_ids == encode_example(EXAMPLE, tok, ALPACA, cutoff).input_ids
    assert len(calls) == 3


def test_prompt_filling_the_cutoff_leaves_nothing_to_learn(tiny_tokenizer):
    tok = tiny_tokenizer
    long_prompt = alpaca_example(" ".join(["What is the capital of Oskenland?"] * 20), "Brellin.")
    cutoff = len(encode_example(EXAMPLE, tok, ALPACA, 512)) + 5
    encoded, report = encode_examples([long_prompt, EXAMPLE], tok, ALPACA, cutoff)
    assert (report.no_target, report.kept, report.truncated) == (1, 1, 0) and len(encoded) == 1
    assert not encoded[0].truncated


def test_multi_turn_learns_every_assistant_turn_and_no_user_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = Example([Message("system", "Be brief."), Message("user", "Hi there"),
                  Message("assistant", "Hello friend."), Message("user", "Tell me a story about a fox."),
                  Message("assistant", "A clever fox lived here.")])
    for name in BUILTIN:
        enc = encode_example(ex, tok, BUILTIN[name], 512)
        runs = [tok.decode(r) for r in labelled_runs(enc.input_ids, enc.labels)]
        assert len(runs) == 2, (name, runs)
        for run, answer in zip(runs, ["Hello friend.", "A clever fox lived here."], strict=True):
            assert run.strip().startswith(answer), (name, run)
            assert "Hi there" not in run and "Tell me a story" not in run and "Be brief" not in run
        masked = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE]
        prompt_text = tok.decode(masked)
        assert "Hi there" in prompt_text and "Tell me a story about a fox." in prompt_text
        assert "Hello friend." not in prompt_text and "A clever fox lived here." not in prompt_text
        assert enc.input_ids[-1] == tok.eos_token_id and enc.labels[-1] == tok.eos_token_id


def test_multi_turn_alpaca_runs_are_exactly_answer_plus_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = Example([Message("user", "Hi"), Message("assistant", "Hello."), Message("user", "Bye"),
                  Message("assistant", "Goodbye.")])
    enc = encode_example(ex, tok, ALPACA, 512)
    assert [tok.decode(r) for r in labelled_runs(enc.input_ids, enc.labels)] == ["Hello.</s>", "Goodbye.</s>"]
