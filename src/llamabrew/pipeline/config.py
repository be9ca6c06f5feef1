"""A pipeline file, read and checked whole before any stage runs.

```yaml
out: runs/mine                 # the pipeline's run directory; each stage writes to out/<stage> unless it says
vars: {seed: 0}                # ${vars.seed} anywhere below
stages:
  sft:                         # a stage: its name, then the recipe section its command takes
    kind: train                # optional when the name is a kind (train:, eval:, export:, ...)
    model: {base: ${base}}     # ${stage} is a stage's main output, ${stage.name} a named one
    data: {train_files: ["${data.train}"]}
```

Stages run in the file's order, except that a stage runs after every stage it refers to. Everything a person can
get wrong (an unknown kind or field, a reference to a stage or output that does not exist, a cycle, a missing
input file) is one `InputError` naming the file, the line and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from llamabrew.errors import InputError
from llamabrew.pipeline.kinds import KINDS
from llamabrew.recipe import Section, parse_set, set_dotted

REF = re.compile(r"\$\{([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_-]+))?\}")
Key = tuple[str, ...]


class PipelineSettings(Section):
    """A pipeline file's own keys (``extends`` is read before: it names another file)."""

    name: str | None = Field(None, description="a title for the report (default: the out folder's name)")
    out: Path | None = Field(None, description="the pipeline's run directory (default: runs/<file name>)")
    vars: dict[str, Any] = Field(default_factory=dict, description="values for ${vars.NAME}")
    price_per_hour: float | None = Field(None, ge=0, description="what an hour of this machine costs, for every "
                                         "training stage that does not say")
    log_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="trackers for "
                                                          "every training stage")
    stages: dict[str, Any] = Field(..., min_length=1, description="stage name → kind: and its recipe section")


@dataclass
class Stage:
    name: str
    kind: str
    section: Any  # the kind's recipe section, references resolved
    folder: Path
    outputs: dict[str, Path]  # the main output first
    deps: list[str] = field(default_factory=list)

    @property
    def output(self) -> Path | None:
        return next(iter(self.outputs.values()), None)


@dataclass
class Pipeline:
    file: Path | None
    name: str
    out: Path
    stages: list[Stage]  # in run order
    price_per_hour: float | None = None
    log_to: list[str] = field(default_factory=list)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def names(self) -> list[str]:
        return [s.name for s in self.stages]


class _Reader:
    """Raises errors that point into the file: its name, the key's line, the key."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.lines = path, {}

    def fail(self, message: str, key: Key) -> InputError:
        line = next((self.lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in self.lines), None)
        return InputError(message, file=self.path or "<pipeline>", line=line, field=".".join(key) or None)

    def read(self, path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
        if not path.is_file():
            raise InputError("pipeline file not found", file=path) if not seen else self.fail(
                f"extends a file that does not exist: {path}", ("extends",))
        try:
            text = path.read_bytes().decode("utf-8")
            node = yaml.compose(text)
            tree = yaml.safe_load(text) or {}
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8 (byte {e.start})", file=path) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"invalid YAML: {getattr(e, 'problem', e)}", file=path,
                             line=None if mark is None else mark.line + 1) from None
        if not isinstance(tree, dict):
            raise InputError("a pipeline must be a mapping (out:, vars:, stages:)", file=path)
        if not seen:
            _index_lines(node, (), self.lines)
        if (parent := tree.pop("extends", None)) is not None:
            parent_path = (path.parent / str(parent)).resolve()
            if parent_path in seen or parent_path == path.resolve():
                raise self.fail(f"extends itself through {parent_path}", ("extends",))
            tree = merge(self.read(parent_path, (*seen, path.resolve())), tree)
        return tree


def _index_lines(node: Any, key: Key, lines: dict[Key, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            child = (*key, str(k.value))
            lines[child] = k.start_mark.line + 1
            _index_lines(v, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines[(*key, str(i))] = v.start_mark.line + 1
            _index_lines(v, (*key, str(i)), lines)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merged key by key (a stage of the same name is amended, new stages
    come after the parent's), anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def strings(obj: Any, key: Key) -> list[tuple[Key, str]]:
    """Every string in a stage's body with its key (list items by index)."""
    if isinstance(obj, str):
        return [(key, obj)]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in strings(v, (*key, str(k)))]
    if isinstance(obj, list):
        return [s for i, v in enumerate(obj) for s in strings(v, (*key, str(i)))]
    return []


def substitute(obj: Any, value_of: Any) -> Any:
    """Replace references: a string that is one reference becomes the value itself (a number stays a number),
    references inside a longer string are written into it."""
    if isinstance(obj, str):
        if (m := REF.fullmatch(obj)) is not None:
            return value_of(m)
        return REF.sub(lambda m: str(value_of(m)), obj)
    if isinstance(obj, dict):
        return {k: substitute(v, value_of) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, value_of) for v in obj]
    return obj


def load_pipeline(path: str | Path, sets: list[str] | None = None) -> Pipeline:
    """Read, amend (``sets``: ``KEY=VALUE`` with dotted keys, e.g. ``vars.seed=1``), resolve and check a
    pipeline file."""
    reader = _Reader(Path(path))
    tree = reader.read(Path(path))
    for key, value in parse_set(sets).items():
        set_dotted(tree, key, value, Path(path))
    return build(tree, reader, default_out=Path("runs") / Path(path).stem)


def build(tree: dict[str, Any], reader: _Reader, default_out: Path) -> Pipeline:
    known = [*PipelineSettings.model_fields, "extends"]
    for key in tree:
        if key not in known:
            raise reader.fail(f"unknown key (a pipeline has {', '.join(known)})", (str(key),))
    settings = _validate(PipelineSettings, tree, (), reader)
    assert isinstance(settings, PipelineSettings)
    variables, raw_stages = settings.vars, settings.stages
    out = settings.out or default_out
    bodies, kinds = {}, {}
    for name, body in raw_stages.items():
        key = ("stages", str(name))
        if body is None:  # `gguf: null` (or --set stages.gguf=null) removes a stage, e.g. one a parent file has
            continue
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) or name == "vars":
            raise reader.fail("a stage name is letters, digits, '-' and '_' (and not 'vars')", key)
        if not isinstance(body, dict):
            raise reader.fail("a stage is a mapping (kind: and its recipe fields)", key)
        body = dict(body)
        kind = body.pop("kind", name if name in KINDS else None)
        if kind not in KINDS:
            raise reader.fail(f"unknown stage kind {kind!r}; kinds: {', '.join(KINDS)}" if kind else
                              f"unknown stage {name!r}: give it a kind ({', '.join(KINDS)})", (*key, "kind")
                              if "kind" in raw_stages[name] else key)
        bodies[str(name)], kinds[str(name)] = _with_vars(body, variables, key, reader), kind
    deps = _dependencies(bodies, reader)
    order = _run_order(list(bodies), deps, bodies, reader)
    stages: dict[str, Stage] = {}
    for name in order:
        stages[name] = _resolve(name, kinds[name], bodies[name], deps[name], stages, out, settings, reader)
    pipeline = Pipeline(reader.path, settings.name or out.name, out, [stages[n] for n in order],
                        settings.price_per_hour, list(settings.log_to))
    _check_inputs(pipeline, reader)
    return pipeline


def _with_vars(body: dict[str, Any], variables: dict[str, Any], key: Key, reader: _Reader) -> dict[str, Any]:
    for where, text in strings(body, key):
        for m in REF.finditer(text):
            if m.group(1) == "vars" and m.group(2) not in variables:
                raise reader.fail(f"no variable {m.group(2)!r} under vars:", where)

    def value_of(m: re.Match[str]) -> Any:
        return variables[m.group(2)] if m.group(1) == "vars" else m.group(0)

    return substitute(body, value_of)


def _dependencies(bodies: dict[str, dict[str, Any]], reader: _Reader) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for name, body in bodies.items():
        deps[name] = []
        for where, text in strings(body, ("stages", name)):
            for m in REF.finditer(text):
                target = m.group(1)
                if target not in bodies:
                    raise reader.fail(f"refers to stage {target!r}, which this pipeline does not have "
                                      f"(stages: {', '.join(bodies)})", where)
                if target not in deps[name]:
                    deps[name].append(target)
    return deps


def _first_ref(body: dict[str, Any], name: str, target: str) -> Key:
    return next(k for k, text in strings(body, ("stages", name)) for m in REF.finditer(text) if m.group(1) == target)


def _run_order(names: list[str], deps: dict[str, list[str]], bodies: dict[str, dict[str, Any]],
               reader: _Reader) -> list[str]:
    """The file's order, each stage moved after the stages it refers to; a cycle is an error."""
    order: list[str] = []
    while len(order) < len(names):
        ready = next((n for n in names if n not in order and all(d in order for d in deps[n])), None)
        if ready is None:
            cycle = _find_cycle([n for n in names if n not in order], deps)
            raise reader.fail(f"stages refer to each other in a cycle: {' → '.join(cycle)}",
                              _first_ref(bodies[cycle[0]], cycle[0], cycle[1]))
        order.append(ready)
    return order


def _find_cycle(left: list[str], deps: dict[str, list[str]]) -> list[str]:
    path = [left[0]]
    while True:
        nxt = next(d for d in deps[path[-1]] if d in left)
        if nxt in path:
            return [*path[path.index(nxt):], nxt]
        path.append(nxt)


def _resolve(name: str, kind_name: str, body: dict[str, Any], deps: list[str], done: dict[str, Stage],
             out: Path, settings: PipelineSettings, reader: _Reader) -> Stage:
    kind, key, folder = KINDS[kind_name], ("stages", name), out / name
    resolved = {k: substitute(v, lambda m, where=(*key, str(k)): _output_of(m, done, where, reader))
                for k, v in body.items()}
    if kind.out_key and resolved.get(kind.out_key) is None:
        resolved[kind.out_key] = str(folder / kind.out_name if kind.out_name else folder)
    if kind.compute:
        optim = resolved.setdefault("optim", {}) or {}
        resolved["optim"] = optim
        if settings.price_per_hour is not None:
            optim.setdefault("price_per_hour", settings.price_per_hour)
        if settings.log_to:
            optim["log_to"] = list(dict.fromkeys([*(optim.get("log_to") or []), *settings.log_to]))
    section = _validate(kind.section, resolved, key, reader)
    return Stage(name, kind_name, section, folder, kind.outputs(section, folder), deps)


def _output_of(m: re.Match[str], done: dict[str, Stage], where: Key, reader: _Reader) -> str:
    """The path ``${stage}`` or ``${stage.name}`` stands for (the stage comes earlier in the run order)."""
    target, wanted = done[m.group(1)], m.group(2)
    if not target.outputs:
        raise reader.fail(f"stage {target.name!r} ({target.kind}) has no outputs to refer to", where)
    if wanted is None:
        return str(target.output)
    if wanted not in target.outputs:
        raise reader.fail(f"stage {target.name!r} has no output {wanted!r} (it has: {', '.join(target.outputs)})",
                          where)
    return str(target.outputs[wanted])


def _validate(cls: type[BaseModel], body: dict[str, Any], key: Key, reader: _Reader) -> BaseModel:
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = (*key, *(str(x) for x in err["loc"]))
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise reader.fail(message, where) from None


def _values(section: BaseModel, dotted: str) -> list[Any]:
    value = getattr_path(section, dotted)
    return [v for v in (value if isinstance(value, list) else [value]) if v is not None]


def _looks_local(value: str) -> bool:
    """A model named by a path a person meant as local (a hub id is ``org/name``: one slash, no dot first)."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or value.endswith((".gguf", ".jsonl"))


def _check_inputs(pipeline: Pipeline, reader: _Reader) -> None:
    """Input files that no stage makes must exist now: a typo is found before hours of earlier stages."""
    made = {str(p) for s in pipeline.stages for p in s.outputs.values()}
    made |= {str(Path(p).resolve()) for p in made}
    for stage in pipeline.stages:
        kind = KINDS[stage.kind]
        for dotted, strict in [*((f, True) for f in kind.files), *((m, False) for m in kind.models)]:
            for i, value in enumerate(_values(stage.section, dotted)):
                text = str(value)
                if text.startswith(("builtin:", "openai:")) or text in made or str(Path(text).resolve()) in made:
                    continue
                if (strict or _looks_local(text)) and not Path(text).expanduser().exists():
                    key = ("stages", stage.name, *dotted.split("."))
                    many = isinstance(getattr_path(stage.section, dotted), list)
                    raise reader.fail(f"no such file or directory: {text}", (*key, str(i)) if many else key)


def getattr_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
