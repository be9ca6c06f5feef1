"""Bad pipeline files: one line naming the file, the line and the key, exit code 2, before any stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamabrew.cli import app

GOOD = """\
out: {out}
stages:
  data:
    kind: world
    entities: 8
  base:
    kind: pretrain
    corpus: ["${{data.corpus}}"]
  sft:
    kind: train
    model: {{base: "${{base}}"}}
    data: {{train_files: ["${{data.train}}"]}}
"""


def run_cli(tmp_path: Path, text: str, *args: str):
    path = tmp_path / "pipe.yaml"
    path.write_text(text.format(out=tmp_path / "runs"))
    result = CliRunner().invoke(app, ["run", str(path), *args])
    return path, result


@pytest.mark.parametrize("change, line, key, message", [
    (("    kind: world\n", "    kind: wrold\n"), 4, "stages.data.kind", "unknown stage kind 'wrold'"),
    (("  sft:\n    kind: train\n", "  sft:\n"), 9, "stages.sft", "unknown stage 'sft': give it a kind"),
    (('corpus: ["${{data.corpus}}"]', 'corpus: ["${{dta.corpus}}"]'), 8, "stages.base.corpus.0",
     "refers to stage 'dta', which this pipeline does not have"),
    (('corpus: ["${{data.corpus}}"]', 'corpus: ["${{data.text}}"]'), 8, "stages.base.corpus",
     "stage 'data' has no output 'text' (it has: train, held_out, questions, corpus, facts)"),
    (("    entities: 8\n", "    entities: 8\n    seed: ${{sft.run}}\n"), 6, "stages.data.seed",
     "stages refer to each other in a cycle: data → sft → base → data"),
    (('["${{data.train}}"]', '["data/missing.json"]'), 12, "stages.sft.data.train_files.0",
     "no such file or directory: data/missing.json"),
    (('model: {{base: "${{base}}"}}', 'model: {{base: "${{base}}", bsae: x}}'), 11, "stages.sft.model.bsae",
     "unknown field"),
    (("stages:\n", "stagse: {{}}\nstages:\n"), 2, "stagse", "unknown key"),
])
def test_a_bad_pipeline_is_one_line_naming_file_line_and_key(tmp_path: Path, change: tuple[str, str], line: int,
                                                            key: str, message: str) -> None:
    old, new = change
    assert old in GOOD
    path, result = run_cli(tmp_path, GOOD.replace(old, new))
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}:{line}: field '{key}': "), lines[0]
    assert message in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written


def test_the_good_file_is_good_and_flags_are_checked(tmp_path: Path) -> None:
    path, result = run_cli(tmp_path, GOOD, "--dry-run")
    assert result.exit_code == 0, result.stderr
    path, result = run_cli(tmp_path, GOOD, "--only", "eval")
    assert result.exit_code == 2 and "--only eval" in result.stderr and "stages: data, base, sft" in result.stderr
    path, result = run_cli(tmp_path, GOOD, "--only", "sft")
    assert result.exit_code == 2 and "stage sft needs stage base, which has not finished" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_pipeline_file_and_an_extended_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.yaml'}: pipeline file not found"
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nstages:\n  sft: {optim: {epochs: 2}}\n")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "child.yaml"), "--dry-run"])
    assert result.exit_code == 2 and f"{tmp_path / 'child.yaml'}:1: field 'extends'" in result.stderr
    (tmp_path / "parent.yaml").write_text(GOOD.format(out=tmp_path / "runs"))
    from llamabrew.pipeline import load_pipeline

    child = load_pipeline(tmp_path / "child.yaml", ["stages.data.entities=10"])
    assert child.names() == ["data", "base", "sft"] and child.stage("sft").section.optim.epochs == 2
    assert child.stage("data").section.entities == 10
    assert load_pipeline(tmp_path / "child.yaml", ["stages.sft=null"]).names() == ["data", "base"]


def test_log_to_reaches_every_training_stage_and_a_missing_tracker_stops_first(tmp_path: Path, monkeypatch) -> None:
    import sys

    from llamabrew import pipeline
    from llamabrew.extras import MissingExtra

    path = tmp_path / "pipe.yaml"
    path.write_text(GOOD.format(out=tmp_path / "runs"))
    loaded = pipeline.load_pipeline(path, ["log_to=[wandb]", "stages.sft.optim.log_to=[tensorboard]"])
    assert loaded.stage("base").section.optim.log_to == ["wandb"]
    assert loaded.stage("sft").section.optim.log_to == ["tensorboard", "wandb"]
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    with pytest.raises(MissingExtra, match="--log-to wandb needs the 'wandb' extra"):
        pipeline.run(loaded)
    assert not (tmp_path / "runs").exists()
    export = '  gguf: {kind: export, model: "${sft}", quants: [q4_k_m]}\n'
    path.write_text(GOOD.format(out=tmp_path / "runs") + export)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(MissingExtra, match="q4_k_m export .* needs the 'llamacpp' extra"):
        pipeline.run(pipeline.load_pipeline(path))  # said before the data, pretrain and train stages run
    assert not (tmp_path / "runs").exists()


def test_quickstart_is_the_shipped_pipeline_with_its_settings(tmp_path: Path) -> None:
    from llamabrew.quickstart import quickstart_pipeline

    job = quickstart_pipeline(tmp_path / "qs", entities=40, pretrain_minutes=1.5, seed=3, gguf=True, align=True)
    assert job.names() == ["data", "base", "sft", "held_out", "judge", "dpo", "gguf", "chat", "align_sft",
                           "align_dpo"]
    assert job.stage("data").section.entities == 40 and job.stage("data").section.seed == 3
    assert job.stage("base").section.optim.max_minutes == 1.5 and job.stage("sft").section.optim.seed == 3
    assert job.stage("gguf").section.model == str(tmp_path / "qs" / "dpo")  # --align ships the DPO run
    plain = quickstart_pipeline(tmp_path / "qs", entities=40, pretrain_minutes=1.5, seed=3, gguf=False, align=False)
    assert plain.names() == ["data", "base", "sft", "held_out", "judge"]


@pytest.mark.parametrize("top, line, key, message", [
    ("price_per_hour: cheap\n", 1, "price_per_hour", "a valid number"),
    ("log_to: [mlflow]\n", 1, "log_to.0", "'tensorboard' or 'wandb'"),
    ("vars: [1, 2]\n", 1, "vars", "a valid dictionary"),
])
def test_the_pipelines_own_keys_are_checked_too(tmp_path: Path, top: str, line: int, key: str, message: str) -> None:
    path, result = run_cli(tmp_path, top + GOOD)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}:{line}: field '{key}': ") and message in result.stderr
