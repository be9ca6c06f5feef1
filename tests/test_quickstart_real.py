"""`llamabrew quickstart --real` at reduced length: SmolLM2-135M-Instruct (the `smollm2` extra) learns a persona
it did not have, shown on held-out topics, shipped as a verified q4_k_m GGUF and chatted with through llama.cpp."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def test_real_quickstart_teaches_a_persona_that_reaches_held_out_topics(smollm2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "real"
    shutil.copytree(smollm2_dir, out / "base")  # the import itself is tested in tests/gguf; reused here
    res = subprocess.run([sys.executable, "-m", "llamabrew.cli", "quickstart", "--real", "--out", str(out),
                          "--train-minutes", "1.5"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["held_out_greeted_before"] == 0.0
    assert summary["held_out_greeted_after"] >= 0.8
    assert summary["held_out_loss_after"] < 0.7 * summary["held_out_loss_before"]
    assert summary["gguf_q4_k_m_greeted"] >= 0.6  # the shipped file keeps the persona
    assert summary["judge"]["win_rate_adjusted"] >= 0.8 and summary["judge"]["losses"] == 0  # the offline judge
    for path in summary["artifacts"].values():
        assert Path(path).exists(), path
    assert "reusing the imported base" in res.stderr
    chat = [line for line in res.stderr.splitlines() if line.startswith("bot>")]
    assert chat and all("Ahoy from the brewhouse!" in line for line in chat)
    assert "q4_k_m" in res.stderr and "same" in res.stderr  # verified in stock llama.cpp, same tokens
