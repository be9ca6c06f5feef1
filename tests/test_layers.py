"""The package's layers (docs/ARCHITECTURE.md): no import cycles, nothing imports upward, library code never the CLI.

Every import counts, also those inside functions (they are deferred, not absent): a cycle through a lazy import
still means two modules that cannot be understood, tested or replaced one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import llamabrew

PACKAGE = Path(llamabrew.__file__).parent

# Lowest first; a module may import its own layer and those below. The CLI modules sit above everything.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("errors", "io", "extras", "progress", "recipe", "stage_recipes", "models", "world", "world_specs",
              "world_lines", "persona")),
    ("data", ("data",)),
    ("run", ("run",)),
    ("gguf", ("gguf",)),
    ("engines", ("engines",)),
    ("train", ("train",)),
    ("evaluate", ("evaluate",)),
    ("export", ("export",)),
    ("serve", ("serve",)),
    ("report", ("report",)),
    ("jobs", ("quickstart", "quickstart_real", "pipeline")),
    ("cli", ("cli", "cli_common")),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_cli(name: str) -> bool:
    return name in ("llamabrew.cli", "llamabrew.cli_common") or name.endswith((".cli", "_cli"))


def layer_of(name: str) -> int:
    if is_cli(name):
        return len(LAYERS) - 1
    first = name.split(".")[1] if "." in name else ""
    for i, (_, tops) in enumerate(LAYERS):
        if first in tops:
            return i
    raise AssertionError(f"{name}: not in any layer of tests/test_layers.py (add it, and to ARCHITECTURE.md)")


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """llamabrew modules ``path`` imports; ``from pkg import sub`` counts as importing the submodule."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llamabrew")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: ``from .x import y`` inside ``package``
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            if not base.startswith("llamabrew"):
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found |= subs or {base}
            if len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_nothing_imports_a_higher_layer_and_library_code_never_the_cli() -> None:
    bad = []
    for name, deps in graph().items():
        for dep in deps:
            if layer_of(dep) > layer_of(name):
                bad.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not bad, "\n".join(sorted(bad))


def test_the_checks_catch_what_they_are_for() -> None:
    """The cycle finder and the layer table do find a planted cycle and an upward import."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("llamabrew.engines.base") < layer_of("llamabrew.export") < layer_of("llamabrew.serve.cli")
    assert is_cli("llamabrew.data.cli") and layer_of("llamabrew.data.cli") == len(LAYERS) - 1
    with pytest.raises(AssertionError, match="not in any layer"):
        layer_of("llamabrew.somewhere_new")


def test_library_code_reports_through_logging_not_a_console() -> None:
    """Stages say what they do through `logging`; only the CLI, the terminal chat, the quickstart's guided
    tour and the progress module itself write to the terminal."""
    allowed = {"llamabrew.progress", "llamabrew.serve.chat", "llamabrew.quickstart", "llamabrew.quickstart_real"}
    offenders = [name for name, path in modules().items()
                 if not is_cli(name) and name not in allowed
                 and ("import terminal" in (text := path.read_text(encoding="utf-8")) or "console.print" in text)]
    assert not offenders, offenders
