"""The loss curve PNG written beside every run."""

from __future__ import annotations

import io
from pathlib import Path

from llamabrew.io import atomic_write_bytes, read_jsonl


def write_loss_plot(log_path: Path, png_path: Path) -> Path | None:
    """Plot train and validation loss against steps from the JSONL loss log."""
    records = read_jsonl(log_path)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if all(v > 0 for _, v in train + val):  # GRPO's loss crosses zero: a log axis would show nothing
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
    return png_path
