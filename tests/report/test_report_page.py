"""The report page in headless Chromium: it renders, every section is there with the run's own figures, it asks
for nothing over the network, and a screenshot is kept (test-artifacts/report.png) for a person to look at."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from llamabrew.cli import app
from llamabrew.report import SECTIONS

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def open_offline(browser, html: Path):
    """A page that may not fetch anything: every request other than the report file itself is recorded and
    aborted."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    asked: list[str] = []

    def guard(route, request) -> None:
        if request.url == html.as_uri():
            route.continue_()
        else:
            asked.append(request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("request", lambda r: r.url != html.as_uri() and asked.append(r.url))
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    return page, asked


def test_the_pipeline_report_renders_every_section_offline(tiny_pipeline, browser) -> None:
    _, result, _ = tiny_pipeline
    html = result.report
    assert html is not None and html.is_file()
    text = html.read_text()
    assert "<script" not in text and "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    page, asked = open_offline(browser, html)
    try:
        for key in SECTIONS:
            assert page.locator(f"section#{key} h2").is_visible(), key
        held = result.results["held_out"]
        evaluation = page.locator("section#evaluation").inner_text()
        assert f"{held['base']['loss']:.4g}" in evaluation and f"{held['loss']:.4g}" in evaluation
        judge, summary = page.locator("section#judge").inner_text(), result.results["judge"]
        ci = summary["ci95"]
        assert "held-out" in judge and f"{summary['win_rate_adjusted']:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]" in judge
        export = page.locator("section#export").inner_text()
        assert "q8_0" in export and "ok" in export
        assert page.locator("section#training svg polyline").count() == 4  # train + validation, base and sft
        assert page.locator("section#data svg rect.bar").count() > 10  # token-length histograms
        assert "exact duplicates" in page.locator("section#data").inner_text()
        cost = page.locator("section#cost").inner_text()
        assert all(name in cost for name in result.ran) and "llamabrew serve" in cost
        assert "${data.corpus}" in page.locator("section#recipe pre").inner_text()  # the file as written
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        page.emulate_media(media="print")
        assert page.locator("section#cost").is_visible()
        assert page.pdf()[:4] == b"%PDF"  # it prints
    finally:
        page.close()
    assert asked == []


def test_a_single_run_report_from_the_command(tiny_pipeline, browser, tmp_path: Path) -> None:
    _, result, _ = tiny_pipeline
    sft = result.pipeline.out / "sft"
    out = tmp_path / "sft.html"
    done = CliRunner().invoke(app, ["report", str(sft), "--out", str(out)])
    assert done.exit_code == 0, done.stderr
    summary = json.loads((sft / "train_summary.json").read_text())
    page, asked = open_offline(browser, out)
    try:
        for key in SECTIONS:
            assert page.locator(f"section#{key}").count() == 1, key
        assert f"{summary['steps']} steps" in page.locator("section#training").inner_text()
        assert "q8_0" in page.locator("section#export").inner_text()  # the run's own reports/export.json
        assert "learning_rate" in page.locator("section#recipe").inner_text()  # its recipe.yaml
    finally:
        page.close()
    assert asked == []


def test_report_of_something_else_is_one_line(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert done.exit_code == 2 and "neither a pipeline's run directory" in done.stderr
    assert not list(tmp_path.iterdir())
