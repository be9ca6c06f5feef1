"""Recipes: YAML + dotted-key overrides, strict keys, located YAML errors, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamabrew.errors import InputError
from llamabrew.recipe import PretrainRecipe, Recipe, load_recipe, read_saved_recipe, save_recipe


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file():
    r = load_recipe(Recipe)
    assert r == Recipe()
    assert (r.method, r.data.template) == ("lora", "auto")
    assert r.optim.learning_rate is None and r.optim.grad_accum is None  # chosen from the model and data
    assert (r.lora.r, r.lora.alpha) == (16, 32)


def test_lora_alpha_is_twice_the_rank_unless_set(tmp_path: Path):
    assert load_recipe(Recipe, overrides={"lora.r": 32}).lora.alpha == 64
    assert load_recipe(Recipe, overrides={"lora.r": 32, "lora.alpha": 8}).lora.alpha == 8
    saved = tmp_path / "recipe.yaml"
    saved.write_text("lora:\n  r: 4\n  alpha: 4\n")
    assert (load_recipe(Recipe, saved, {"lora.r": 2}).lora.r, load_recipe(Recipe, saved).lora.alpha) == (2, 4)


def test_yaml_file_then_flags_win(tmp_path: Path):
    path = write(tmp_path / "r.yaml", """
model:
  base: my/base
data:
  train_files: [a.jsonl, b.jsonl]
  cutoff_len: 256
optim:
  learning_rate: 0.0001
  epochs: 2
out: runs/x
""")
    r = load_recipe(Recipe, path, {"optim.learning_rate": 5e-5, "data.template": "chatml",
                                   "optim.epochs": None, "lora.r": 8})
    assert r.model.base == "my/base"
    assert r.data.train_files == [Path("a.jsonl"), Path("b.jsonl")]
    assert r.data.cutoff_len == 256  # from the file
    assert r.optim.learning_rate == 5e-5  # flag beats file
    assert r.optim.epochs == 2  # a flag left at None does not erase the file's value
    assert r.data.template == "chatml" and r.lora.r == 8  # flags for keys the file does not set
    assert r.optim.micro_batch_size == 4  # untouched default
    assert r.out == Path("runs/x")


def test_override_into_an_empty_yaml_section(tmp_path: Path):
    """`optim:` with every key commented out is None in YAML; a flag must still land in it."""
    path = write(tmp_path / "r.yaml", "model:\n  base: b\noptim:\n  # learning_rate: 1e-4\n")
    r = load_recipe(Recipe, path, {"optim.learning_rate": 2e-4})
    assert r.optim.learning_rate == 2e-4 and r.optim.epochs == 3


def test_override_into_a_non_mapping_section_is_a_clear_error(tmp_path: Path):
    path = write(tmp_path / "r.yaml", "optim: 5\n")
    with pytest.raises(InputError) as info:
        load_recipe(Recipe, path, {"optim.learning_rate": 2e-4})
    assert str(path) in str(info.value) and "'optim'" in str(info.value)


@pytest.mark.parametrize(("text", "field"), [
    ("optim:\n  learnin_rate: 0.001\n", "optim.learnin_rate"),
    ("modle:\n  base: x\n", "modle"),
    ("data:\n  cutoff_len: 4\n", "data.cutoff_len"),  # out of range
    ("method: qlora\n", "method"),
])
def test_bad_keys_and_values_name_the_field(tmp_path: Path, text: str, field: str):
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(InputError) as info:
        load_recipe(Recipe, path)
    assert info.value.field == field
    msg = str(info.value)
    assert str(path) in msg and f"field '{field}'" in msg and "\n" not in msg


def test_unknown_override_key_is_rejected():
    with pytest.raises(InputError) as info:
        load_recipe(Recipe, None, {"optim.bogus": 1})
    assert info.value.field == "optim.bogus" and "optim.bogus" in str(info.value)


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    path = write(tmp_path / "r.yaml", "model:\n  base: x\noptim:\n  epochs: [1, 2\n  lr: 3\n")
    with pytest.raises(InputError) as info:
        load_recipe(Recipe, path)
    err = info.value
    assert err.line is not None and err.line >= 4
    assert f"{path}:{err.line}:" in str(err) and "invalid YAML" in str(err) and "\n" not in str(err)


def test_invalid_yaml_bad_indent_line(tmp_path: Path):
    path = write(tmp_path / "r.yaml", "model:\n  base: x\n bad: 1\n")
    with pytest.raises(InputError) as info:
        load_recipe(Recipe, path)
    assert info.value.line == 3 and f"{path}:3:" in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path: Path):
    path = write(tmp_path / "r.yaml", "- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_recipe(Recipe, path)


def test_missing_recipe_file(tmp_path: Path):
    with pytest.raises(InputError, match="not found"):
        load_recipe(Recipe, tmp_path / "nope.yaml")


def test_save_then_load_round_trips(tmp_path: Path):
    r = load_recipe(Recipe, None, {
        "model.base": "some/base", "data.train_files": [Path("x.jsonl")],
        "data.val_files": [Path("v.json")], "data.template": "vicuna", "data.overlong": "drop",
        "method": "full",
        "lora.target_modules": ["q_proj"], "optim.max_steps": 7, "optim.learning_rate": 1.5e-4,
        "optim.max_minutes": 2.5, "out": tmp_path / "run",
    })
    path = save_recipe(r, tmp_path / "run")
    assert path == tmp_path / "run" / "recipe.yaml" and path.is_file()
    loaded = load_recipe(Recipe, path)
    assert loaded == r
    assert read_saved_recipe(tmp_path / "run") == r
    assert read_saved_recipe(tmp_path) is None  # a plain directory has no recipe


def test_pretrain_recipe_round_trips(tmp_path: Path):
    r = load_recipe(PretrainRecipe, None, {"corpus": [Path("c.txt")], "params": 123456, "optim.seed": 3})
    assert load_recipe(PretrainRecipe, save_recipe(r, tmp_path)) == r


def test_pretrain_nested_override_keeps_pretraining_defaults():
    r = load_recipe(PretrainRecipe, None, {"optim.max_minutes": 1.5})
    assert r.optim.max_minutes == 1.5
    assert r.optim.epochs == 40 and r.optim.learning_rate == 1e-3
    assert r.optim.micro_batch_size == 4 and r.optim.weight_decay == 0.1
    assert load_recipe(PretrainRecipe).optim.max_minutes == 4.0


def test_pretrain_yaml_section_keeps_pretraining_defaults(tmp_path: Path):
    path = write(tmp_path / "p.yaml", "corpus: [a.txt]\noptim:\n  max_minutes: 3\n")
    r = load_recipe(PretrainRecipe, path, {"optim.seed": 9})
    assert (r.optim.max_minutes, r.optim.seed, r.optim.epochs, r.optim.learning_rate) == (3, 9, 40, 1e-3)
