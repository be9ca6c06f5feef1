"""What a run costs: the machine's hourly price, the budget it may spend, and device-hours for the summary."""

from __future__ import annotations

import os

from llamabrew.errors import LlamabrewError
from llamabrew.recipe import OptimConfig

PRICE_ENV = "LLAMABREW_USD_PER_HOUR"  # what an hour of this machine costs, when the recipe does not say


def hourly_price(cfg: OptimConfig) -> float | None:
    """USD per hour of this machine: the recipe's, else $LLAMABREW_USD_PER_HOUR, else unknown."""
    if cfg.price_per_hour is not None:
        return cfg.price_per_hour
    raw = os.environ.get(PRICE_ENV)
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def budget_seconds(cfg: OptimConfig, devices: int = 1) -> float | None:
    """How long the money lasts: ``budget_usd`` at the hourly price of ``devices`` (None: no budget). Under
    torchrun the price is per device (one rank's): N ranks spend it N times as fast."""
    if cfg.budget_usd is None:
        return None
    price = hourly_price(cfg)
    if not price:
        raise LlamabrewError(f"--budget-usd needs the machine's price: --price-per-hour USD (or set {PRICE_ENV})")
    return cfg.budget_usd / price * 3600 / devices


def run_cost(cfg: OptimConfig, elapsed_s: float, devices: int = 1) -> tuple[float, float | None]:
    """(device-hours, USD or None when no price is known) of a run that took ``elapsed_s``."""
    hours = devices * elapsed_s / 3600
    price = hourly_price(cfg)
    return hours, (hours * price if price is not None else None)
