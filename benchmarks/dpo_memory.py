"""Peak memory of DPO against SFT on the same model and the same rows: DPO's reference is a frozen copy of the
SFT adapter (a few MB) inside the same model, not a second base, so its peak should stay within 1.3x of SFT's.

Each measurement runs in a fresh process: ``load`` (tokenizer + model + LoRA only), ``sft`` (a few steps on the
pairs' chosen and rejected answers as 2B plain rows per micro-batch) and ``dpo`` (the same steps on the B pairs:
the same 2B rows, plus the reference's no-grad forward). On a GPU the figure is torch's peak allocation; on a CPU
the process's peak resident set, also shown above the ``load`` baseline (what training itself adds).

    python benchmarks/dpo_memory.py --base DIR        # any HF model directory, e.g. SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = 4
PAIRS_PER_STEP = 4


def make_data(folder: Path, n: int = 32) -> tuple[Path, Path]:
    pairs = [{"prompt": f"Tell me about room {i} of the old lighthouse, in one sentence.",
              "chosen": f"Room {i} holds the keeper's logbooks, stacked neatly by year and tied with blue string.",
              "rejected": f"Room {i} is a room."} for i in range(n)]
    rows = [{"instruction": p["prompt"], "output": p[k]} for p in pairs for k in ("chosen", "rejected")]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pairs.jsonl", folder / "rows.jsonl"


def measure(mode: str, base: str, folder: Path) -> None:
    """Run in a child process: print one JSON line with the peak."""
    import resource

    import torch

    from llamabrew import train
    from llamabrew.recipe import DataConfig, ModelConfig, OptimConfig, Recipe

    common = {"max_steps": STEPS, "grad_accum": 1, "learning_rate": 1e-4, "threads": 2, "seed": 0}
    if mode == "load":
        from llamabrew.models import load_causal_lm
        from llamabrew.train.sft import attach_lora

        attach_lora(load_causal_lm(base), Recipe())
    elif mode == "sft":
        train.run(Recipe(model=ModelConfig(base=base), data=DataConfig(train_files=[folder / "rows.jsonl"],
                                                                        val_fraction=0),
                         optim=OptimConfig(micro_batch_size=2 * PAIRS_PER_STEP, **common), out=folder / "sft"))
    else:
        train.run(Recipe(model=ModelConfig(adapter=str(folder / "sft")), method="dpo",
                         data=DataConfig(train_files=[folder / "pairs.jsonl"], val_fraction=0),
                         optim=OptimConfig(micro_batch_size=PAIRS_PER_STEP, **common), out=folder / "dpo"))
    cuda = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": mode, "peak_mib": peak / 2**20, "device": "cuda" if cuda else "cpu"}))


def child(mode: str, base: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--base", base, "--child", mode, "--folder", str(folder)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--child")
    ap.add_argument("--folder", type=Path)
    args = ap.parse_args()
    if args.child:
        measure(args.child, args.base, args.folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder)
        load, sft, dpo = (child(m, args.base, folder) for m in ("load", "sft", "dpo"))  # dpo continues sft's run
    print(f"device {sft['device']}; {STEPS} steps of {PAIRS_PER_STEP} pairs (= {2 * PAIRS_PER_STEP} rows)")
    print(f"peak MiB: load {load['peak_mib']:.0f}, SFT {sft['peak_mib']:.0f}, DPO {dpo['peak_mib']:.0f}")
    print(f"DPO / SFT peak: {dpo['peak_mib'] / sft['peak_mib']:.2f}x")
    if sft["device"] == "cpu":
        above = (dpo["peak_mib"] - load["peak_mib"]) / max(sft["peak_mib"] - load["peak_mib"], 1e-9)
        print(f"DPO / SFT above the loaded model: {above:.2f}x")


if __name__ == "__main__":
    main()
