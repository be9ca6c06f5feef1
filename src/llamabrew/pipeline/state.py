"""What a pipeline remembers in its run directory (``OUT/pipeline.json``): per stage its status, the hash of
what went in (settings and input contents) and of what came out, its time and its result.

A stage is skipped when it finished with the same input hash and its outputs are still there. Inputs made by an
earlier stage count by that stage's recorded output hash, so an unchanged upstream stage costs nothing to check
and a changed one makes everything downstream run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from llamabrew.io import atomic_write_text
from llamabrew.pipeline.config import Pipeline, Stage
from llamabrew.pipeline.kinds import KINDS

STATE = "pipeline.json"
RESOLVED = "pipeline.yaml"
SAMPLE = 1 << 20  # files over WHOLE bytes are hashed by their size and their first and last MiB
WHOLE = 256 << 20
SKIP_DIRS = {"checkpoints", "tensorboard", "wandb", "reports", "gguf", "__pycache__"}  # not the model itself


def file_digest(path: Path, h: Any) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as f:
        if size <= WHOLE:
            for block in iter(lambda: f.read(SAMPLE), b""):
                h.update(block)
        else:
            h.update(f.read(SAMPLE))
            f.seek(size - SAMPLE)
            h.update(f.read(SAMPLE))


def fingerprint(path: Path) -> str | None:
    """Content hash of a file or folder (checkpoints, trackers' logs and later stages' reports left out)."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    if path.is_file():
        file_digest(path, h)
        return h.hexdigest()
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            file = Path(root) / name
            h.update(str(file.relative_to(path)).encode())
            file_digest(file, h)
    return h.hexdigest()


def _dump(stage: Stage) -> dict[str, Any]:
    """The stage's settings without the fields that do not change what it makes."""
    data = stage.section.model_dump(mode="json")
    for dotted in KINDS[stage.kind].volatile:
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return data


def _paths_in(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [p for v in obj.values() for p in _paths_in(v)]
    if isinstance(obj, list):
        return [p for v in obj for p in _paths_in(v)]
    return []


class PipelineState:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.path = pipeline.out / STATE
        data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.stages: dict[str, dict[str, Any]] = data.get("stages", {})

    def record(self, name: str) -> dict[str, Any]:
        return self.stages.get(name, {})

    def input_hash(self, stage: Stage) -> str:
        """Kind + settings + the content of every file or folder the settings name (not its own outputs)."""
        settings = _dump(stage)
        own = {str(p) for p in stage.outputs.values()} | {str(stage.folder)}
        out_key = KINDS[stage.kind].out_key
        if out_key:
            own.add(str(getattr(stage.section, out_key)))
        made = {str(p): s for s in self.pipeline.stages for p in s.outputs.values()}
        inputs = {}
        for text in sorted(set(_paths_in(settings)) - own):
            if text in made:  # an earlier stage's output: its recorded hash
                inputs[text] = f"{made[text].name}:{self.record(made[text].name).get('output_hash')}"
            elif len(text) < 4096 and Path(text).exists():
                inputs[text] = fingerprint(Path(text))
        blob = json.dumps({"kind": stage.kind, "settings": settings, "inputs": inputs}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def output_hash(self, stage: Stage) -> str:
        parts = {name: fingerprint(path) for name, path in stage.outputs.items()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def outputs_exist(self, stage: Stage) -> bool:
        return all(p.exists() for p in stage.outputs.values())

    def finished(self, stage: Stage) -> bool:
        return self.record(stage.name).get("status") == "done" and self.outputs_exist(stage)

    def unchanged(self, stage: Stage, input_hash: str) -> bool:
        rec = self.record(stage.name)
        return rec.get("status") == "done" and rec.get("hash") == input_hash and self.outputs_exist(stage)

    def start(self, stage: Stage, input_hash: str, resumed_from: int | None) -> None:
        self.stages[stage.name] = {"kind": stage.kind, "status": "running", "hash": input_hash,
                                   "started": time.time(), "resumed_from_step": resumed_from,
                                   "outputs": {k: str(v) for k, v in stage.outputs.items()},
                                   "elapsed_s": self.record(stage.name).get("elapsed_s", 0.0)
                                   if resumed_from else 0.0}
        self.save()

    def finish(self, stage: Stage, result: dict[str, Any], elapsed_s: float) -> None:
        rec = self.stages[stage.name]
        rec.update(status="done", finished=time.time(), elapsed_s=rec.get("elapsed_s", 0.0) + elapsed_s,
                   output_hash=self.output_hash(stage), result=result)
        self.save()

    def fail(self, stage: Stage, error: str, elapsed_s: float) -> None:
        rec = self.stages[stage.name]
        rec.update(status="failed", error=error, elapsed_s=rec.get("elapsed_s", 0.0) + elapsed_s)
        self.save()

    def save(self) -> None:
        order = self.pipeline.names()
        stages = {n: self.stages[n] for n in [*order, *self.stages] if n in self.stages}
        file = str(Path(self.pipeline.file).resolve()) if self.pipeline.file else None
        atomic_write_text(self.path, json.dumps({"name": self.pipeline.name, "file": file, "order": order,
                                                 "stages": stages}, indent=2, default=str))
