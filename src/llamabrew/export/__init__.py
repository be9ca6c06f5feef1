"""Ship a tuned model to the CPU: merge adapters, export verified GGUFs (+ Ollama Modelfile), adapter GGUFs.

``export_gguf(run_or_model, ["q8_0", "q4_k_m"], "out/model.gguf", eval_file="held_out.jsonl")`` loads the
model as chat and eval do (base + adapter for a run directory), records torch's logits on a few prompts
rendered with the trained template, merges the adapter in full precision, writes each GGUF, re-loads it in
llama.cpp and compares tokens and next-token distributions (mean KL, top-1 agreement, perplexity). f16 / q8_0
files beyond `verify.BOUNDS` are refused (renamed ``*.rejected``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamabrew.errors import LlamabrewError
from llamabrew.evaluate.scores import EvalReport
from llamabrew.export.lora_gguf import export_adapter_gguf
from llamabrew.export.merge import MergeReport, merge
from llamabrew.export.modelfile import ModelfileResult, derive_parts, stop_strings, write_modelfile
from llamabrew.export.verify import BOUNDS, Check, VerificationError, verify_gguf
from llamabrew.extras import require
from llamabrew.gguf.writer import QUANTS, ChatInfo, check_quant, write_gguf
from llamabrew.recipe import ExportRecipe
from llamabrew.run import Run, trained_template

if TYPE_CHECKING:
    from llamabrew.engines.llamacpp import LlamaCppEngine

log = logging.getLogger(__name__)

DEFAULT_QUANT = "q8_0"  # for on-the-fly exports: near-lossless and still ~2x smaller than f16

__all__ = ["BOUNDS", "DEFAULT_QUANT", "QUANTS", "Check", "ExportReport", "MergeReport", "QuantResult",
           "VerificationError", "cached_gguf", "default_gguf_path", "export_adapter", "export_adapter_gguf",
           "export_gguf", "export_recipe", "merge", "open_llamacpp_engine", "verify_gguf", "write_modelfile"]


@dataclass
class QuantResult:
    quant: str
    path: Path
    size_bytes: int
    seconds: float
    check: Check | None = None
    score: EvalReport | None = None  # with an eval file: greedy answers of this GGUF
    modelfile: ModelfileResult | None = None


@dataclass
class ExportReport:
    source: str
    template: str
    results: list[QuantResult] = field(default_factory=list)
    torch_score: EvalReport | None = None  # with an eval file: the torch model on the same examples
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A side-by-side table: size, verification and (with an eval file) answer scores per file; then the
        warnings (how llama.cpp will read prompts differently, among others)."""
        def score(s: EvalReport | None) -> str:
            return f"{s.exact_match:6.1%} {s.contains:8.1%}" if s else f"{'-':>6} {'-':>8}"

        out = [f"{'model':<7} {'MiB':>8} {'mean KL':>9} {'top-1':>6} {'ppl':>7} {'tokens':>6} "
               f"{'exact':>6} {'contains':>8}  verdict"]
        if self.torch_score:
            out.append(f"{'torch':<7} {'':>8} {'':>9} {'':>6} {'':>7} {'':>6} {score(self.torch_score)}")
        for r in self.results:
            c = r.check
            tokens = "same" if c and c.tokens_match else "known" if c and c.tokens_ok else "DIFF"
            checked = (f"{c.mean_kl:9.2g} {c.top1:6.1%} {c.ppl_change:+7.2%} {tokens:>6}" if c
                       else f"{'not verified':>31}")
            verdict = "" if c is None else "refused" if not c.passed else "ok" if c.bound else "reported"
            out.append(f"{r.quant:<7} {r.size_bytes / 2**20:8.1f} {checked} {score(r.score)}  {verdict}")
        return out + [f"warning: {w}" for w in self.warnings]

    def as_dict(self) -> dict[str, Any]:
        """What `Run.save_report("export", ...)` keeps: per file its size, verification and scores."""
        def check(c: Check | None) -> dict[str, Any] | None:
            return None if c is None else {
                "mean_kl": c.mean_kl, "top1": c.top1, "ppl_torch": c.ppl_torch, "ppl_gguf": c.ppl_gguf,
                "max_abs_diff": c.max_abs_diff, "rel_diff": c.rel_diff, "positions": c.positions,
                "tokens_match": c.tokens_match, "tokens_ok": c.tokens_ok, "passed": c.passed,
                "problems": c.problems()}

        return {"source": self.source, "template": self.template, "warnings": self.warnings,
                "torch_score": self.torch_score.as_dict() if self.torch_score else None,
                "results": [{"quant": r.quant, "path": str(r.path), "size_bytes": r.size_bytes,
                             "seconds": r.seconds, "check": check(r.check),
                             "score": r.score.as_dict() if r.score else None,
                             "modelfile": str(r.modelfile.path) if r.modelfile else None} for r in self.results]}


def _say(verbose: bool, text: str) -> None:
    if verbose:
        log.info(text)


def default_gguf_path(model_or_run: str, quant: str) -> Path:
    """``<run>/gguf/model-<quant>.gguf`` for a run directory, else a per-user cache."""
    src = Path(model_or_run)
    if Run.is_run(src):
        return Run(src).gguf_path(quant)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(src.resolve() if src.exists() else model_or_run)).strip("_")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamabrew" / "gguf"
    return cache / f"{safe[-80:]}-{quant}.gguf"


def _out_paths(model_or_run: str, quants: list[str], out: str | Path | None) -> list[Path]:
    if out is None:
        return [default_gguf_path(model_or_run, q) for q in quants]
    out = Path(out)
    if out.suffix == ".gguf":
        return [out] if len(quants) == 1 else [out.with_name(f"{out.stem}-{q}.gguf") for q in quants]
    return [out / f"model-{q}.gguf" for q in quants]


def _load(model_or_run: str, base: str | None, template: str | None,
          trust_remote_code: bool) -> tuple[Any, ...]:
    """(model, tokenizer, template) as chat and eval see them: base + adapter for a run directory."""
    from llamabrew.models import load_for_inference

    model, tokenizer = load_for_inference(model_or_run, base=base, trust_remote_code=trust_remote_code)
    return model, tokenizer, trained_template(model_or_run, tokenizer, template)


def export_gguf(model_or_run: str | Path, quant: str | Sequence[str] = "q8_0", out: str | Path | None = None,
                verify: bool = True, eval_file: str | Path | None = None, *, base: str | None = None,
                template: str | None = None, threads: int | None = None, modelfile: bool = True,
                eval_limit: int | None = 50, max_new_tokens: int = 64, trust_remote_code: bool = False,
                verbose: bool = True) -> ExportReport:
    """Export a run directory (base + adapter, or a full fine-tune) or a model directory / hub id to GGUF.

    Several quant types share one load, one torch reference and one torch eval; with one type ``out`` is the
    file name, with several ``model.gguf`` becomes ``model-<quant>.gguf``. Raises `VerificationError` (a
    `LlamabrewError`) when an f16 / q8_0 file disagrees with torch beyond `BOUNDS`.
    """
    from llamabrew.engines.torch_engine import TorchEngine
    from llamabrew.export.verify import reference_logits
    from llamabrew.gguf.vocab import build_vocab
    from llamabrew.models import set_threads

    quants = [check_quant(q) for q in ([quant] if isinstance(quant, str) else list(quant))]
    if not quants:
        raise LlamabrewError("give at least one --quant")
    if eval_file is not None and not verify:
        raise LlamabrewError("--eval runs the GGUF in llama.cpp; it cannot be combined with --no-verify")
    require_llama_cpp(quants, verify)
    source, examples = str(model_or_run), None
    paths = _out_paths(source, quants, out)
    set_threads(threads)
    _say(verbose, f"loading {source}")
    model, tokenizer, tmpl = _load(source, base, template, trust_remote_code)
    report = ExportReport(source, tmpl.name)
    stops = tuple(tmpl.stop) or tuple(stop_strings(tmpl, derive_parts(tmpl, tokenizer)))
    chat = ChatInfo(tmpl.jinja, tmpl.name, stops)
    ref = reference_logits(model, tokenizer, tmpl) if verify else None
    if eval_file is not None:
        from llamabrew.data.formats import load_examples

        examples = load_examples(eval_file)[:eval_limit]
        _say(verbose, f"scoring the torch model on {len(examples)} examples of {eval_file}")
        report.torch_score = _score(TorchEngine(model, tokenizer, tmpl), examples, max_new_tokens)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # in full precision; the reference above was taken before merging
    vocab = build_vocab(tokenizer, model.config.vocab_size, chat.stop)
    report.warnings += vocab.warnings
    if warning := _template_warning(tokenizer, tmpl):
        report.warnings.append(warning)
    state, name = model.state_dict(), Path(source).name or source
    for q, path in zip(quants, paths, strict=True):
        t0 = time.monotonic()
        _say(verbose, f"writing {path} ({q})")
        write_gguf(state, model.config, vocab, chat, path, q, name=name, threads=threads)
        result = QuantResult(q, path, path.stat().st_size, time.monotonic() - t0)
        report.results.append(result)
        if modelfile:
            result.modelfile = write_modelfile(path, tmpl, tokenizer, model.config.max_position_embeddings)
            if not result.modelfile.has_template:
                report.warnings.append(f"{result.modelfile.path}: chat format not translatable to Ollama's "
                                       "template language; Ollama will use the GGUF's own template")
        if ref is not None:
            _say(verbose, f"verifying {path.name} in llama.cpp")
            result.check = _checked(path, verify_gguf(path, ref, q, threads))
            report.warnings += [w for w in result.check.token_warnings() if w not in report.warnings]
        if examples is not None:
            _say(verbose, f"scoring {path.name} on {len(examples)} examples")
            result.score = _score_gguf(path, tmpl, examples, max_new_tokens, threads)
    if Run.is_run(source):
        Run(source).save_report("export", report.as_dict())
    return report


def export_recipe(r: ExportRecipe, verbose: bool = True) -> ExportReport:
    """`llamabrew export` (and a pipeline's export stage): `export_gguf` with the settings of an `ExportRecipe`."""
    if r.model is None:
        raise LlamabrewError("name the run or model directory to export")
    return export_gguf(r.model, r.quants, r.out, verify=r.verify, eval_file=r.eval_file, base=r.base,
                       template=r.template, threads=r.threads, modelfile=r.modelfile, eval_limit=r.eval_limit,
                       max_new_tokens=r.max_new_tokens, trust_remote_code=r.trust_remote_code, verbose=verbose)


def export_adapter(adapter: str | Path, out: str | Path, *, base: str | None = None, verify: bool = True,
                   threads: int | None = None, verbose: bool = True) -> tuple[Path, Check | None]:
    """The LoRA adapter alone as a GGUF adapter; verified (by default) as f16 base GGUF + adapter in llama.cpp
    against torch base + adapter, which costs one temporary f16 export of the base."""
    import tempfile

    from llamabrew.export.verify import reference_logits
    from llamabrew.gguf.vocab import build_vocab

    require_llama_cpp([], verify)
    path = export_adapter_gguf(adapter, out, base=base)
    if not verify:
        return path, None
    _say(verbose, f"verifying {Path(out).name} on an f16 export of its base in llama.cpp")
    model, tokenizer, tmpl = _load(str(adapter), base, None, False)
    ref = reference_logits(model, tokenizer, tmpl)
    plain = model.unload()  # the base weights, adapter layers removed (not merged)
    vocab = build_vocab(tokenizer, plain.config.vocab_size, tuple(tmpl.stop))
    with tempfile.TemporaryDirectory() as tmp:
        base_gguf = write_gguf(plain.state_dict(), plain.config, vocab, ChatInfo(tmpl.jinja, tmpl.name),
                               Path(tmp) / "base-f16.gguf", "f16")
        return path, _checked(path, verify_gguf(base_gguf, ref, "f16", threads, lora=path))


def require_llama_cpp(quants: Sequence[str], verify: bool) -> None:
    """Say before loading the model, not after minutes, that llama.cpp is needed and missing."""
    if k_quants := [q for q in quants if q.endswith("_k_m")]:
        require("llamacpp", f"{k_quants[0]} export (llama.cpp's quantizer)")
    if verify:
        require("llamacpp", "verifying a GGUF in llama.cpp (--no-verify skips it)")


def _checked(path: Path, check: Check) -> Check:
    """Refuse a failed f16 / q8_0 file (or any whose tokenization differs): keep it as ``*.rejected``."""
    from llamabrew.export.verify import enforce

    if not check.passed and (check.bound is not None or not check.tokens_ok):
        rejected = path.with_name(path.name + ".rejected")
        os.replace(path, rejected)
        enforce(check, rejected)
    return check


def _template_warning(tokenizer: Any, template: Any) -> str | None:
    """Whether the trained template puts text where llama.cpp's SentencePiece dummy prefix differs from HF's."""
    from llamabrew.export.tokencheck import template_warning
    from llamabrew.export.verify import check_conversations
    from llamabrew.gguf.vocab import space_prefix

    texts = [template.render(tokenizer, conv, add_generation_prompt=True) for conv in check_conversations()]
    return template_warning(tokenizer, space_prefix(tokenizer), template.name, texts)


def _score(engine: Any, examples: list[Any], max_new_tokens: int) -> EvalReport:
    """Greedy answers on the eval file, through the one scoring path ``llamabrew eval`` uses."""
    from llamabrew.evaluate import score_engine

    return score_engine(engine, examples, max_new_tokens, batch_size=8, label=f"scoring {engine.name}", loss=False)


def _score_gguf(path: Path, template: Any, examples: list[Any], max_new_tokens: int,
                threads: int | None) -> EvalReport:
    from llamabrew.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(path, threads=threads, template=template, announce=False)
    try:
        return _score(engine, examples, max_new_tokens)
    finally:
        engine.close()


def _newest_mtime(folder: Path) -> float:
    kinds = (".safetensors", ".bin", ".json", ".yaml")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in kinds]
    return max((p.stat().st_mtime for p in files), default=0.0)


def cached_gguf(model_or_run: str, quant: str = "q8_0", verify: bool = True,
                threads: int | None = None) -> Path:
    """A GGUF of ``model_or_run``, exported (and verified) on first use, re-exported when the run changes."""
    path = default_gguf_path(model_or_run, check_quant(quant))
    src = Path(model_or_run)
    stale = src.is_dir() and path.is_file() and path.stat().st_mtime < _newest_mtime(src)
    if not path.is_file() or stale:
        log.info("exporting %s to %s for llama.cpp (once)", model_or_run, path)
        export_gguf(model_or_run, quant, path, verify=verify, threads=threads, verbose=False)
    return path


def open_llamacpp_engine(model_or_run: str | Path, threads: int | None = None, ctx: int | None = None,
                         quant: str = DEFAULT_QUANT, template: str | None = None, verify: bool = True,
                         announce: bool = True, parallel: int | None = None,
                         prompt_cache: bool = True) -> LlamaCppEngine:
    """An engine for a ``.gguf`` file, or a run / model directory exported on the fly (and cached)."""
    from llamabrew.data.templates import get_template
    from llamabrew.engines.llamacpp import LlamaCppEngine
    from llamabrew.gguf.runtime import GGUF_USE

    require("llamacpp", GGUF_USE)  # before exporting a run for minutes
    path = Path(model_or_run)
    if path.suffix != ".gguf":
        path = cached_gguf(str(model_or_run), quant, verify=verify, threads=threads)
    elif not path.is_file():
        raise LlamabrewError(f"{path}: no such GGUF file")
    tmpl = get_template(template) if template and template != "auto" else None  # default: the file's own
    return LlamaCppEngine(path, threads=threads, ctx=ctx, template=tmpl, announce=announce, parallel=parallel,
                          prompt_cache=prompt_cache)
