"""The cards `llamabrew plan` prices a run on: memory, peak bf16 throughput, a typical hourly price, and the
model-FLOPs utilisation (MFU) assumed where no run on that card has been measured.

Every figure here is an assumption written down, not a measurement:

- **Memory**: what torch reports as usable (a little under the marketing figure).
- **Peak bf16**: dense tensor-core TFLOP/s from the vendors' data sheets (no sparsity; the RTX 4090 with fp32
  accumulation, as training uses).
- **Prices**: typical on-demand prices per GPU-hour at community/specialist clouds as of ``PRICES_AS_OF``
  (hyperscalers charge more, spot and marketplaces less); always override with ``--price-per-hour``.
- **MFU**: model FLOPs (train.memory.flops_per_token; recomputation not counted) over peak. The only measured
  anchor is issue 14's H200 run of a LLaMA-7B shape: a naive packed LoRA run on all linear layers reached 11,516
  tokens/s, 31% MFU by this convention, and padded runs with checkpointing 2.7-7.5%. The fast path is assumed to
  reach ``ASSUMED_MFU`` on every GPU; benchmarks/train_throughput.py measures it on a real card, and a measured
  figure should replace the assumption here once a CUDA run exists (benchmarks/RESULTS.md).
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

# (method, 4-bit base) -> assumed MFU of the fast path (packed rows, varlen attention, fused loss), see above.
ASSUMED_MFU: dict[tuple[str, bool], float] = {("lora", False): 0.30, ("lora", True): 0.15, ("full", False): 0.35}
MULTI_GPU_EFFICIENCY = 0.90  # share of N× one card that N cards in one machine reach (DDP/FSDP, NVLink or PCIe)


def assumed_mfu(method: str, quantize_4bit: bool) -> float:
    return ASSUMED_MFU[(method, quantize_4bit and method == "lora")]
