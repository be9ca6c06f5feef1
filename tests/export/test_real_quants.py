"""Export verification on real, peaked logits: SmolLM2-135M-Instruct (the `smollm2` extra) at f16, q8_0, q4_0 and
q4_k_m, judged like llama.cpp's ``perplexity --kl-divergence`` (mean KL, top-1, perplexity), and llamabrew's own
q8_0 / q4_0 side by side with llama.cpp's quantizer run on the same f16 file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamabrew.export import BOUNDS, export_gguf
from llamabrew.export.verify import reference_logits, verify_gguf
from llamabrew.gguf.writer import llama_quantize


@pytest.fixture(scope="module")
def real_exports(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from llamabrew.models import load_for_inference
    from llamabrew.run import trained_template

    folder = tmp_path_factory.mktemp("real-gguf")
    report = export_gguf(str(smollm2_dir), ["f16", "q8_0", "q4_0", "q4_k_m"], folder / "smol.gguf",
                         verbose=False, modelfile=False)
    ours = {r.quant: r for r in report.results}
    model, tok = load_for_inference(str(smollm2_dir))
    ref = reference_logits(model, tok, trained_template(str(smollm2_dir), tok))
    theirs = {}
    for quant in ("q8_0", "q4_0"):  # llama.cpp's own quantizer, from llamabrew's f16 of the same weights
        path = llama_quantize(ours["f16"].path, folder / f"llamacpp-{quant}.gguf", quant)
        theirs[quant] = verify_gguf(path, ref, quant)
    return ours, theirs


def test_real_weights_pass_their_bounds_and_show_the_cost_of_bits(real_exports):
    ours, _ = real_exports
    for quant, bound in BOUNDS.items():
        check = ours[quant].check
        assert check.passed and check.tokens_match, check.summary()
        assert check.mean_kl <= bound.max_mean_kl / 2, check.summary()  # the bound leaves room, not slack for bugs
    kl = [ours[q].check.mean_kl for q in ("f16", "q8_0", "q4_k_m", "q4_0")]
    assert kl == sorted(kl) and kl[0] < 1e-3 < kl[-1], kl
    assert ours["f16"].check.top1 >= 0.99 and abs(ours["f16"].check.ppl_change) < 0.005
    assert ours["q4_0"].check.top1 < ours["q8_0"].check.top1 < ours["f16"].check.top1
    assert ours["q8_0"].check.positions > 200  # chat prompts and plain prose


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_our_quantizer_is_as_close_to_torch_as_llamacpps(real_exports, quant: str):
    ours, theirs = real_exports
    mine, ref = ours[quant].check, theirs[quant]
    assert mine.mean_kl <= ref.mean_kl * 1.1 + 1e-5, (mine.summary(), ref.summary())  # the headline measure
    # top-1 over 368 positions moves by a few positions with any rounding change (one standard error of a 68%
    # share is 2.4 points): seen 68.2% vs ours 66.6% at q4_0 on an AVX-512 Xeon, with our KL the lower one
    assert mine.top1 >= ref.top1 - 0.02, (mine.summary(), ref.summary())


def test_a_broken_conversion_of_real_weights_is_refused(smollm2_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    """The bounds leave room for quantization noise, not for a bug: without LLaMA's q/k permutation the real
    model still loads and runs in llama.cpp, and its f16 file is refused."""
    import llamabrew.gguf.writer as writer
    from llamabrew.export import VerificationError

    monkeypatch.setattr(writer, "_permute", lambda w, n_head: w)
    with pytest.raises(VerificationError, match="verification failed") as e:
        export_gguf(str(smollm2_dir), "f16", tmp_path / "bad.gguf", verbose=False, modelfile=False)
    assert "mean KL" in str(e.value) or "top-1" in str(e.value), str(e.value)
    assert not (tmp_path / "bad.gguf").exists() and (tmp_path / "bad.gguf.rejected").is_file()
