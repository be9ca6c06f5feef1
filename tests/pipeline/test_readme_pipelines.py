"""The README's pipeline files are the real ones: the quickstart file it shows is the shipped file, and the
Chinese-Alpaca file runs as printed (translate → curate → LoRA → judge → q4_k_m GGUF) against a scripted local
OpenAI-compatible teacher, with only the endpoint, the base, the inputs and the sizes swapped."""

from __future__ import annotations

import json
import re
from pathlib import Path

from data.scripted_teacher import ScriptedTeacher, fake_zh, translate_responder
from typer.testing import CliRunner

from llamabrew import pipeline
from llamabrew.cli import app

ROOT = Path(__file__).resolve().parents[2]


def readme_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_shows_the_shipped_quickstart_pipeline_in_full() -> None:
    assert pipeline.builtin("quickstart").read_text() in readme_yaml_blocks()


def alpaca_zh() -> str:
    return next(b for b in readme_yaml_blocks() if b.startswith("# alpaca-zh.yaml"))


ALPACA = [{"instruction": f"Name the colour number {i} of the list.", "input": "", "output": f"Colour {i}."}
          for i in range(1, 9)]  # digits survive the scripted translation, so no two records become alike
ALPACA += [{"instruction": "Write a long essay about the history of every colour ever named by people " * 5,
            "input": "", "output": "No."}]  # the longest: left out by the character budget, shortest first


def test_the_readme_alpaca_zh_pipeline_runs_against_a_teacher_endpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "alpaca-zh.yaml"
    path.write_text(alpaca_zh())
    (tmp_path / "alpaca.json").write_text(json.dumps(ALPACA))
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(
        {"question_id": i, "category": "colour", "turns": [f"颜色 {i}?"]}) + "\n" for i in range(1, 4)))

    def respond(messages: list[dict[str, str]], teacher: ScriptedTeacher) -> str:
        if "[[A]]" in messages[0]["content"] or "[[A]]" in messages[-1]["content"]:
            return "Both are fine; A is a little clearer.\n[[A]]"
        return translate_responder()(messages, teacher)

    chars = sum(len(r["instruction"]) + len(r["output"]) for r in ALPACA[:-1])
    with ScriptedTeacher(respond) as teacher:
        sets = [f"out={tmp_path / 'runs'}", f"vars.base={tiny_model_dir}", f"vars.teacher={teacher.url}",
                f"stages.zh.input={tmp_path / 'alpaca.json'}", f"stages.zh.budget_chars={chars}",
                f"stages.judge.questions={tmp_path / 'questions.jsonl'}", "stages.judge.max_new_tokens=8",
                "stages.judge.threads=1", "stages.sft.optim.max_steps=4", "stages.sft.optim.threads=1",
                "stages.curated.near_dup_threshold=0",  # fake_zh makes every sentence alike: no near-dup filter
                "stages.curated.val_fraction=0.25", "stages.gguf.max_new_tokens=8", "stages.gguf.threads=1"]
        done = pipeline.run(pipeline.load_pipeline(path, sets))
        asked = list(teacher.requests)
    assert done.ran == ["zh", "curated", "sft", "judge", "gguf", "chat"]
    zh = done.results["zh"]
    assert zh["selected"] == 8 and zh["translated"] == 8 and zh["not_selected_over_budget"] == 1
    curated = done.results["curated"]
    assert curated["train"] + curated["val"] == 8 and curated["val"] == 2
    train_rows = [json.loads(x) for x in (tmp_path / "runs" / "curated" / "train.jsonl").read_text().splitlines()]
    assert all(r["instruction"] == fake_zh(r["instruction"]) for r in train_rows)  # Chinese (as faked) only
    assert done.results["sft"]["steps"] == 4 and (tmp_path / "runs" / "sft" / "adapter_config.json").is_file()
    judge = done.results["judge"]
    assert judge["games"] == 3 and judge["ties"] == 3 and judge["inconsistent"] == 3  # "A" in both orders: a flip
    assert len(asked) == 8 + 2 * 3  # 8 translations, 3 questions judged in both orders, all over HTTP
    gguf = done.results["gguf"]["results"]
    assert [g["quant"] for g in gguf] == ["q4_k_m"] and Path(gguf[0]["path"]).is_file()
    assert done.results["chat"]["command"] == f"llamabrew serve {gguf[0]['path']}"
    assert done.report is not None and "q4_k_m" in done.report.read_text()


def test_the_readme_error_line_is_what_llamabrew_says(tmp_path: Path, monkeypatch) -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"`(error: alpaca-zh\.yaml:\d+: field .*?)`", readme, flags=re.S).group(1)
    (tmp_path / "alpaca_data_cleaned.json").write_text(json.dumps(ALPACA))
    (tmp_path / "alpaca-zh.yaml").write_text(alpaca_zh().replace("${curated.train}", "${curate.train}"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "alpaca-zh.yaml"])
    assert result.exit_code == 2
    assert result.stderr.strip() == " ".join(shown.split())
