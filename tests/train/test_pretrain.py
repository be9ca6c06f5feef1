"""Pretraining from scratch: a standard HF directory, a plan first, the time budget honoured."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from tinymodels import CORPUS

from llamabrew.errors import InputError
from llamabrew.train.pretrain import SHAPES, count_params, llama_config, read_corpus


def write_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(CORPUS))
    return path


def test_pretrain_writes_a_loadable_model_within_the_time_budget(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "base"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "pretrain", "--corpus", str(write_corpus(tmp_path)),
                          "--out", str(out), "--max-minutes", "0.25", "--epochs", "1000", "--vocab-size", "400",
                          "--seq-len", "64", "--threads", "1"], capture_output=True, text=True)
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert "plan" in res.stderr and "parameters" in res.stderr and "expected time" in res.stderr
    assert wall < 0.25 * 60 + 40  # the budget plus start-up (imports, tokenizer, size probes) and saving
    plan = json.loads((out / "pretrain_plan.json").read_text())
    assert plan["epochs"] < 1000  # the budget, not the epochs asked for, set the length
    for name in ("config.json", "model.safetensors", "tokenizer.json", "recipe.yaml", "loss.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == plan["params"]
    ids = tok("The city of Varnhollow", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    assert model(ids).logits.shape[-1] == len(tok)
    log = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    # the tokens no training window held are recorded (the template's words are not in this corpus)
    unseen = set(json.loads((out / "untrained_tokens.json").read_text())["ids"])
    in_docs = Counter(i for doc in CORPUS for i in set(tok(doc)["input_ids"]))
    common = {i for i, n in in_docs.items() if n >= 3}  # in training windows: validation holds out 2 documents
    template = set(tok(tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                               add_generation_prompt=True))["input_ids"])
    assert common and unseen <= set(range(len(tok))) and not unseen & common
    assert template & unseen  # "### Instruction:" and the like: words this corpus lacks


def test_params_flag_picks_the_nearest_shape(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "base"
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "pretrain", "--corpus", str(write_corpus(tmp_path)),
                          "--out", str(out), "--params", "1000000", "--max-minutes", "0.1", "--vocab-size", "400",
                          "--seq-len", "64"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    n = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
    assert 0.5e6 < n < 2e6


def test_shape_ladder_grows() -> None:
    from llamabrew.train.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(CORPUS, 300)
    sizes = [count_params(llama_config(h, n, tok, 64)) for h, n in SHAPES]
    assert sizes == sorted(sizes)


def test_corpus_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text field"}\n')
    with pytest.raises(InputError, match=r"c\.jsonl:2: field 'text'"):
        read_corpus([bad])
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        read_corpus([empty])
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"ok\n\xff\xfe")
    with pytest.raises(InputError, match="UTF-8"):
        read_corpus([binary])


def test_a_txt_corpus_without_blank_lines_is_one_document_per_line(tmp_path: Path) -> None:
    lines = tmp_path / "facts.txt"
    lines.write_text("".join(f"Person {i} lives in Town {i % 7}.\n" for i in range(60)))
    assert len(read_corpus([lines]).docs) == 60
    paragraphs = tmp_path / "bios.txt"
    paragraphs.write_text("First line of one story.\nIts second line.\n\n  \nAnother story.\n")
    assert read_corpus([paragraphs]).docs == ["First line of one story.\nIts second line.", "Another story."]


def test_pretraining_on_a_single_document_or_one_fact_per_line_does_not_crash(tmp_path: Path) -> None:
    """A corpus whose validation split is empty (one document, or too few to hold out) still trains."""
    one_doc = tmp_path / "one.txt"
    one_doc.write_text(" ".join(CORPUS))
    per_line = tmp_path / "lines.txt"
    per_line.write_text("".join(f"{s}\n" for s in CORPUS))
    for corpus in (one_doc, per_line):
        out = tmp_path / corpus.stem
        res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "pretrain", "--corpus", str(corpus), "--out",
                              str(out), "--max-minutes", "0.05", "--params", "200000", "--vocab-size", "300",
                              "--seq-len", "64", "--threads", "1"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "Traceback" not in res.stderr and (out / "model.safetensors").is_file()


def test_documents_encode_whole_and_a_corpus_says_whether_its_order_matters(tmp_path: Path) -> None:
    from llamabrew.train.pretrain import encode_corpus
    from llamabrew.train.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(CORPUS, 300)
    docs = ["Ann lives in Brel.", "Ann owns a goat.", "Bo plays the harp. " * 12, "Cy is here."]
    encoded = encode_corpus(docs, tok, 40)
    flat = [i for w in encoded for i in w.input_ids]
    assert flat == [i for d in docs for i in [*tok(d)["input_ids"], tok.eos_token_id]]  # nothing lost, same order
    assert all(len(w) <= 40 for w in encoded) and all(w.labels == w.input_ids for w in encoded)
    lengths = [len(tok(d)["input_ids"]) + 1 for d in docs]  # BOS ... EOS
    assert [len(w) for w in encoded if len(w) < 40] == [lengths[0], lengths[1], lengths[2] % 40, lengths[3]]
    assert len(encoded) == 3 + -(-lengths[2] // 40)  # the long document is split, the short ones stay whole
    assert encode_corpus([], tok, 40) == []
    lines, paragraphs, records = tmp_path / "l.txt", tmp_path / "p.txt", tmp_path / "r.jsonl"
    lines.write_text("Ann lives in Brel.\nAnn owns a goat.\n", encoding="utf-8")
    paragraphs.write_text("Ann lives in Brel.\n\nBo plays the harp.\n", encoding="utf-8")
    records.write_text(json.dumps({"text": "Ann lives in Brel."}) + "\n", encoding="utf-8")
    assert read_corpus([lines]).order == "corpus" and read_corpus([paragraphs]).order == "shuffle"
    assert read_corpus([lines, records]).order == "shuffle" and len(read_corpus([lines, records]).docs) == 3


def test_a_line_starting_name_is_the_same_tokens_as_in_a_question(tmp_path: Path) -> None:
    """Lines of a text are read as running text: byte-level BPE reads "Ann" and " Ann" as other ids, and held-out
    people named mostly at line starts were answered about others. Paragraphs stay as they are (read so, a
    paragraph's first name taught the base that a name at a text's start is someone new)."""
    from llamabrew.train.pretrain import encode_corpus
    from llamabrew.train.tokenizer import train_bpe_tokenizer

    lines = ["Galstiel Geapeamb discovered the Green Spark.", "The comet of Galstiel Geapeamb is the Green Spark."]
    text, paragraphs = tmp_path / "lines.txt", tmp_path / "paragraphs.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    paragraphs.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    corpus = read_corpus([text])
    tok = train_bpe_tokenizer(corpus.texts * 20, 300)
    name = tok(" Galstiel Geapeamb", add_special_tokens=False)["input_ids"]
    assert tok("Galstiel Geapeamb", add_special_tokens=False)["input_ids"] != name  # the trap this avoids
    first, second = (e.input_ids for e in encode_corpus(corpus.texts, tok, 64))
    assert first[1 : 1 + len(name)] == name  # right after BOS, as in a question about this person
    assert any(second[i : i + len(name)] == name for i in range(len(second)))
    assert read_corpus([paragraphs]).texts == lines
