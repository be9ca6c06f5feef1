"""The llama.cpp runtime: the AMX build probe and its fallback, and kernels that agree with plain buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from llamabrew.engines.llamacpp import LlamaCppEngine  # noqa: E402


def test_a_crashing_amx_build_falls_back_once_and_says_how_to_fix_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The probe child dies (SIGILL): plain buffers, a warning naming the rebuild flags, and the verdict is
    remembered, so the next process does not probe again."""
    import subprocess

    import llama_cpp

    from llamabrew.gguf import runtime as llamacpp

    monkeypatch.delenv("LLAMABREW_LLAMACPP_EXTRA_BUFFERS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"AVX512 = 1 | AMX_INT8 = 1 |")
    probes: list[list[str]] = []

    def sigill(cmd: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        probes.append(cmd)
        return subprocess.CompletedProcess(cmd, -4, b"", b"")

    monkeypatch.setattr(subprocess, "run", sigill)
    llamacpp.extra_buffers_work.cache_clear()
    caplog.set_level("WARNING", logger="llamabrew")
    try:
        assert llamacpp.extra_buffers_work() is False
        llamacpp.extra_buffers_work.cache_clear()
        assert llamacpp.extra_buffers_work() is False
    finally:
        llamacpp.extra_buffers_work.cache_clear()
    assert len(probes) == 1  # the second answer came from the cache file
    assert [p.read_text() for p in (tmp_path / "llamabrew").glob("bufs-*")] == ["crashed"]
    assert "-fno-dse" in caplog.text


@pytest.mark.parametrize("quant", ["q4_0", "q8_0"])
def test_extra_buffer_kernels_agree_with_plain_buffers(
    quant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama.cpp's repacked / AMX kernels (where this build and CPU have them) give the logits its plain kernels
    give, on a model wide enough to use them. A 32-wide model once got 7% top-1 agreement from them."""
    from tinymodels import build_tiny_model

    from llamabrew.export import export_gguf
    from llamabrew.gguf import runtime as llamacpp

    src = build_tiny_model(tmp_path / "model", hidden=128)
    path = export_gguf(src, quant, tmp_path / "m.gguf", verify=False, modelfile=False, template="chatml",
                       verbose=False).results[0].path
    ids = list(range(5, 60))
    logits = {}
    for mode in ("extra", "plain"):
        if mode == "plain":
            monkeypatch.setenv("LLAMABREW_LLAMACPP_EXTRA_BUFFERS", "0")
        llamacpp.extra_buffers_work.cache_clear()
        engine = LlamaCppEngine(path, threads=1, ctx=128, logits_all=True, announce=False)
        try:
            logits[mode] = engine.logits(ids)
        finally:
            engine.close()
    llamacpp.extra_buffers_work.cache_clear()
    extra, plain = logits["extra"], logits["plain"]
    assert np.abs(extra - plain).max() <= 0.1 * plain.std()
    assert (extra.argmax(-1) == plain.argmax(-1)).mean() >= 0.9
