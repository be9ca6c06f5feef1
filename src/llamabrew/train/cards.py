"""The cards `llamabrew plan` prices a run on: memory, peak bf16 throughput, a typical hourly price, and the
model-FLOPs utilisation (MFU) assumed where no run on that card has been measured.

Every figure here is written down with where it comes from (an assumption unless it says measured):

- **Memory**: what torch reports as usable (a little under the marketing figure).
- **Peak bf16**: dense tensor-core TFLOP/s from the vendors' data sheets (no sparsity; the RTX 4090 with fp32
  accumulation, as training uses).
- **Prices**: typical on-demand prices per GPU-hour at community/specialist clouds as of ``PRICES_AS_OF``
  (hyperscalers charge more, spot and marketplaces less); always override with ``--price-per-hour``.
- **MFU**: model FLOPs (train.memory.flops_per_token; recomputation not counted) over peak. Measured on an H200
  with a LLaMA-7B shape (benchmarks/RESULTS.md, 2026-12-04): the fast path's LoRA on every linear layer, packed,
  liger loss and kernels, compiled, no checkpointing, 25.4%; the same recomputing every layer ran 1.84× slower
  (``CHECKPOINT_COST``: 0.84 of a step per recomputed step, where the FLOPs alone say 0.5); QLoRA (NF4,
  checkpointing every layer) 7.5%, so about 14% without the recomputation. On the H200 the LoRA figure is the
  measurement; every other card and method is assumed at ``ASSUMED_MFU`` (the H100 has the H200's compute).
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_AS_OF = "2025-06"


@dataclass(frozen=True)
class Card:
    name: str  # what --gpu takes
    label: str
    memory_gib: float
    bf16_tflops: float
    usd_per_hour: float


CARDS: dict[str, Card] = {c.name: c for c in (
    Card("4090", "RTX 4090 24GB", 23.6, 165.2, 0.45),
    Card("l4", "L4 24GB", 22.0, 121.0, 0.60),
    Card("a100", "A100 80GB SXM", 79.1, 312.0, 1.40),
    Card("h100", "H100 80GB SXM", 79.1, 989.0, 2.50),
    Card("h200", "H200 141GB SXM", 139.8, 989.0, 3.50),
)}

# (method, 4-bit base) -> assumed MFU of the fast path (packed rows, fused loss), see above.
ASSUMED_MFU: dict[tuple[str, bool], float] = {("lora", False): 0.25, ("lora", True): 0.14, ("full", False): 0.30}
MEASURED_MFU: dict[tuple[str, str, bool], float] = {("h200", "lora", False): 0.254}  # (card, method, 4-bit)
CHECKPOINT_COST = {"lora": 0.84, "full": 1 / 3}  # added time per step when every layer recomputes (lora: measured)
MULTI_GPU_EFFICIENCY = 0.90  # share of N× one card that N cards in one machine reach (DDP/FSDP, NVLink or PCIe)


def card_mfu(card: str, method: str, quantize_4bit: bool) -> tuple[float, bool]:
    """The fast path's MFU on ``card`` and whether it was measured there (else assumed, see the module docstring)."""
    key = (method, quantize_4bit and method == "lora")
    measured = MEASURED_MFU.get((card, *key))
    return (measured, True) if measured is not None else (ASSUMED_MFU[key], False)
