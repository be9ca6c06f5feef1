"""A whole pipeline small enough for tests (about half a minute on 2 cores): a made-up world, a tiny pretrained
base, a few LoRA steps, eval before/after, the offline judge, a verified q8_0 GGUF and the serve hint."""

from __future__ import annotations

from pathlib import Path

TINY = """\
out: {out}
vars: {{seed: 0}}
log_to: [tensorboard]
stages:
  data: {{kind: world, entities: 12, seed: "${{vars.seed}}", judged_questions: 8, per_fact: 2}}
  base:
    kind: pretrain
    corpus: ["${{data.corpus}}"]
    params: 200000
    vocab_size: 400
    seq_len: 64
    optim: {{max_minutes: 0.3, epochs: 8, threads: 1}}
  sft:
    kind: train
    model: {{base: "${{base}}"}}
    data: {{train_files: ["${{data.train}}"], template: alpaca, cutoff_len: 192, val_fraction: 0.1}}
    optim: {{max_steps: {steps}, save_every: 2, micro_batch_size: 8, grad_accum: 1, threads: 1,
             learning_rate: 0.005}}
  held_out:
    kind: eval
    model: ${{sft}}
    data: ${{data.held_out}}
    compare: true
    max_new_tokens: 16
    threads: 1
  judge:
    questions: ${{data.questions}}
    a: ${{base}}
    b: ${{sft}}
    judge: {{url: "builtin:reference"}}
    template: alpaca
    max_new_tokens: 16
    threads: 1
  gguf: {{kind: export, model: "${{sft}}", quants: [q8_0], eval_file: "${{data.held_out}}", eval_limit: 8,
          max_new_tokens: 16, threads: 1}}
  chat: {{kind: serve, model: "${{gguf.q8_0}}", port: 8001}}
"""
STAGES = ["data", "base", "sft", "held_out", "judge", "gguf", "chat"]


def write_tiny(folder: Path, steps: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(TINY.format(out=folder / "runs", steps=steps))
    return path
