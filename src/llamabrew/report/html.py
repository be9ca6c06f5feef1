"""The report as one self-contained HTML file: inline CSS, inline SVG, no script and no request of any kind, so
it opens offline, mails as one attachment and prints (each section keeps together on paper)."""

from __future__ import annotations

import datetime
import re
from html import escape
from typing import Any

from llamabrew.report.collect import DataFacts, ReportData, RunFacts
from llamabrew.report.svg import histogram, line_chart

SECTIONS = ("recipe", "data", "training", "evaluation", "judge", "export", "cost")
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0 auto;max-width:960px;
padding:24px}h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;border-bottom:2px solid #8a5a2b;padding-bottom:3px;
margin-top:34px}h3{font-size:16px;margin:18px 0 6px}.sub{color:#666}table{border-collapse:collapse;margin:8px 0;
font-variant-numeric:tabular-nums}th,td{border:1px solid #ddd;padding:4px 9px;text-align:right}th{background:#f5efe8}
td:first-child,th:first-child,td.t{text-align:left}pre{background:#faf8f5;border:1px solid #e6dfd6;padding:10px;
overflow:auto;font-size:12.5px;white-space:pre-wrap}.none{color:#888;font-style:italic}.ok{color:#1b7f3b;
font-weight:600}.bad{color:#b3261e;font-weight:600}svg{max-width:100%;height:auto;font-size:11px;fill:#333}
svg .plot{fill:#fff;stroke:#bbb}svg .grid{stroke:#eee}svg .axis{stroke:#999}svg .bar{fill:#8a5a2b}
svg .mark{stroke:#b3261e;stroke-dasharray:4 3}svg .title{font-size:12px;fill:#555}.cards{display:flex;gap:12px;
flex-wrap:wrap}.card{border:1px solid #e6dfd6;border-radius:6px;padding:8px 14px;background:#fdfbf8}
.card b{display:block;font-size:20px}@media print{body{max-width:none;padding:0}section{break-inside:avoid}
h2{break-after:avoid}pre{white-space:pre-wrap}}
"""
COLOURS = ("#1f5fa8", "#d2691e", "#2e8b57", "#8e44ad")


def pct(x: Any) -> str:
    return "-" if x is None else f"{x:.1%}"


def num(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def duration(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def usd(x: Any) -> str:
    return "-" if x is None else f"${x:.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head) if any(head) else ""
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    thead = f"<thead><tr>{th}</tr></thead>" if th else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


class Markup(str):
    """Already-escaped HTML for a table cell."""


NUMBER = re.compile(r"^[-+≤$]?[\d.,]+(e[-+]?\d+)?%?( \[.*\])?$|^-$|^[\d.]+(h|m)[\d]+(m|s)$|^[\d.]+( / [\d.]+)+$")


def _cell(c: Any) -> str:
    """Numbers right-aligned (they line up), words and paths left."""
    text = c if isinstance(c, Markup) else escape(str(c))
    return f"<td>{text}</td>" if isinstance(c, int | float) or NUMBER.match(str(c)) else f'<td class="t">{text}</td>'


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>'


def none(text: str) -> str:
    return f'<p class="none">{escape(text)}</p>'


def recipe_section(d: ReportData) -> str:
    return section("recipe", "Recipe", f"<p class=sub>{escape(d.recipe_name)}</p><pre>{escape(d.recipe_text)}</pre>"
                   if d.recipe_text else none("no recipe file found"))


def _data_facts(run: RunFacts, f: DataFacts) -> str:
    rows = [["files", ", ".join(f.files) or "-"], ["records", f.records]]
    if run.summary:
        rows += [["training / validation " + ("windows" if run.summary.get("kind") == "pretrain" else "examples"),
                  f"{run.summary.get('train_examples')} / {run.summary.get('val_examples')}"]]
    if f.duplicates is not None:
        rows.append(["exact duplicates", f.duplicates])
    if f.cutoff is not None and run.summary and run.summary.get("kind") != "pretrain":
        rows += [[f"over the cutoff ({f.cutoff} tokens): truncated", f.truncated], ["dropped", f.dropped]]
    if f.lengths:
        s = sorted(f.lengths)
        rows.append([f"length in {f.unit} (min / median / p90 / max)",
                     f"{s[0]} / {s[len(s) // 2]} / {s[int(0.9 * (len(s) - 1))]} / {s[-1]}"])
    chart = histogram(f.lengths, f"{f.unit} per {'document' if 'documents' in f.note else 'example'}",
                      mark=f.cutoff, mark_label=f"cutoff {f.cutoff}") if f.lengths else ""
    note = f'<p class="sub">{escape(f.note)}</p>' if f.note else ""
    return f"<h3>{escape(run.name)}</h3>{table(['', ''], rows)}{note}{chart}"


def _stage_counts(name: str, kind: str, r: dict[str, Any]) -> str:
    flat = {k: v for k, v in r.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    removed = r.get("removed") if isinstance(r.get("removed"), dict) else {}
    flat |= {f"removed: {k}": v for k, v in removed.items()}
    rows = [[k, num(v) if isinstance(v, float) else v] for k, v in flat.items() if k not in ("histogram",)]
    return f"<h3>{escape(name)} ({escape(kind)})</h3>" + table(["", ""], rows[:24])


def data_section(d: ReportData) -> str:
    parts = [_stage_counts(n, k, r) for n, k, r in d.data_stages]
    parts += [_data_facts(run, run.data) for run in d.runs if run.data]
    return section("data", "Data", "".join(parts) or none("no data statistics"))


def training_section(d: ReportData) -> str:
    parts = []
    for run in d.runs:
        train = [(r["step"], r["loss"]) for r in run.loss if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in run.loss if "val_loss" in r]
        chart = line_chart([("train", train, COLOURS[0], False), ("validation", val, COLOURS[1], True)],
                           "optimizer step", "loss")
        s = run.summary or {}
        facts = (f"{s.get('kind', '')} ({s.get('method', '')}): {s.get('steps')} steps, train loss "
                 f"{num(s.get('train_loss'))}, validation loss {num(s.get('val_loss'))}, "
                 f"{num(s.get('trainable_params'))} trainable of {num(s.get('params'))} parameters"
                 + (" · stopped early (time or budget)" if s.get("stopped_early") else ""))
        metrics = s.get("metrics") or {}
        extra = table(["held-out metric", "value"], [[k, num(v)] for k, v in metrics.items()]) if metrics else ""
        parts.append(f"<h3>{escape(run.name)}</h3><p>{escape(facts)}</p>{chart}{extra}")
    return section("training", "Training: loss curves", "".join(parts) or none("no training run"))


def _eval_rows(r: dict[str, Any]) -> list[list[Any]]:
    rows = []
    if r.get("base"):
        b = r["base"]
        rows.append(["before: " + b.get("engine", "base"), b["n"], pct(b["exact_match"]), pct(b["contains"]),
                     num(b.get("loss"))])
    rows.append([("after: " if r.get("base") else "") + r.get("engine", "model"), r["n"], pct(r["exact_match"]),
                 pct(r["contains"]), num(r.get("loss"))])
    return rows


def evaluation_section(d: ReportData) -> str:
    parts = [f"<h3>{escape(name)}</h3><p class=sub>{escape(str(r.get('data', '')))}</p>"
             + table(["model", "examples", "exact match", "contains", "loss"], _eval_rows(r)) for name, r in d.evals]
    return section("evaluation", "Evaluation: before and after", "".join(parts) or none("no evaluation"))


def judge_section(d: ReportData) -> str:
    parts = []
    for name, s in d.judges:
        head = (f"<p><b>{escape(s['model_b'])}</b> (B) against <b>{escape(s['model_a'])}</b> (A), judged by "
                f"{escape(str(s.get('judge')))} on {s.get('questions')} questions</p>")
        if s.get("mode") == "pairwise":
            rows = [[c, v["games"], v["wins"], v["ties"], v["losses"], pct(v.get("win_rate_adjusted"))]
                    for c, v in s["by_category"].items()]
            ci = s.get("ci95")
            rows.append([Markup("<b>all</b>"), s["games"], s["wins"], s["ties"], s["losses"],
                         pct(s.get("win_rate_adjusted")) + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")])
            body = table(["category", "games", "B wins", "ties", "B losses", "adjusted win rate (95% CI)"], rows)
            body += (f"<p class=sub>ties include {s.get('inconsistent', 0)} order-flipped verdicts; "
                     f"{s.get('errors', 0)} errors left out; length-controlled win rate "
                     f"{pct(s.get('length_controlled_win_rate'))}</p>")
        else:
            ms = s["mean_score"]
            body = table(["model", "mean grade (1-10)"], [[m, num(v, 3)] for m, v in ms.items()])
        parts.append(f"<h3>{escape(name)}</h3>{head}{body}")
    return section("judge", "Judge", "".join(parts) or none("no judge"))


def export_section(d: ReportData) -> str:
    parts = []
    for name, r in d.exports:
        rows = []
        if r.get("torch_score"):
            t = r["torch_score"]
            rows.append(["torch", "", "", "", "", pct(t["exact_match"]), pct(t["contains"]), ""])
        for q in r["results"]:
            c, s = q.get("check") or {}, q.get("score") or {}
            verdict = "-" if not c else Markup('<span class="ok">ok</span>') if c["passed"] else \
                Markup('<span class="bad">refused</span>')
            rows.append([q["quant"], f"{q['size_bytes'] / 2**20:.1f}", num(c.get("mean_kl"), 3),
                         pct(c.get("top1")), "-" if not c else f"{c['ppl_gguf'] / c['ppl_torch'] - 1:+.2%}",
                         pct(s.get("exact_match")), pct(s.get("contains")), verdict])
        warn = "".join(f"<p class=sub>warning: {escape(w)}</p>" for w in r.get("warnings", []))
        parts.append(f"<h3>{escape(name)}</h3><p class=sub>{escape(r.get('source', ''))}, template "
                     f"{escape(r.get('template', ''))}</p>" + table(
                         ["file", "MiB", "mean KL", "top-1", "perplexity", "exact", "contains", "verified"], rows)
                     + warn)
    return section("export", "Export: GGUF verification per quant", "".join(parts) or none("no export"))


def cost_section(d: ReportData) -> str:
    rows = [[r["name"], r["kind"], r["status"], duration(r.get("elapsed_s")), num(r.get("device_hours"), 3),
             usd(r.get("cost_usd")), usd(r.get("teacher_usd"))] for r in d.stages]
    total_s = sum(r.get("elapsed_s") or 0 for r in d.stages)
    hours = sum(r.get("device_hours") or 0 for r in d.stages)
    cost = sum((r.get("cost_usd") or 0) + (r.get("teacher_usd") or 0) for r in d.stages)
    rows.append([Markup("<b>all</b>"), "", "", duration(total_s), num(hours, 3), "", usd(cost)])
    serve = "".join(f"<p>serve it: <code>{escape(c)}</code></p>" for c in d.serve)
    return section("cost", "Time, device-hours and cost", table(
        ["stage", "kind", "status", "time", "device-hours", "compute cost", "teacher / judge cost"], rows)
        + "<p class=sub>Compute cost is device-hours at the price the recipe or LLAMABREW_USD_PER_HOUR gave "
        "('-': no price given); teacher and judge costs are what their endpoints were charged.</p>" + serve)


def headline(d: ReportData) -> str:
    cards = []
    for name, r in d.evals[:1]:
        if r.get("base"):
            cards.append((f"{name}: contains", f"{pct(r['base']['contains'])} → {pct(r['contains'])}"))
        else:
            cards.append((f"{name}: contains", pct(r["contains"])))
    for name, s in d.judges[:1]:
        if s.get("mode") == "pairwise":
            cards.append((f"{name}: B's adjusted win rate", pct(s.get("win_rate_adjusted"))))
    for _, r in d.exports[:1]:
        ok = sum(1 for q in r["results"] if (q.get("check") or {}).get("passed"))
        cards.append(("GGUF files verified", f"{ok} of {len(r['results'])}"))
    cards.append(("time in all", duration(sum(r.get("elapsed_s") or 0 for r in d.stages))))
    return '<div class="cards">' + "".join(f'<div class="card"><b>{escape(v)}</b>{escape(k)}</div>'
                                           for k, v in cards) + "</div>"


def render(d: ReportData) -> str:
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = "".join(f(d) for f in (recipe_section, data_section, training_section, evaluation_section,
                                  judge_section, export_section, cost_section))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>llamabrew report: {escape(d.title)}</title>'
            f"<style>{CSS}</style></head><body><header><h1>llamabrew report: {escape(d.title)}</h1>"
            f'<p class="sub">{escape(str(d.source))} · written {made}</p>{headline(d)}</header>{body}</body></html>')
