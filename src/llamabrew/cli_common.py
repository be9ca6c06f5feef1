"""What every CLI module shares: one-line errors with exit code 2, the terminal, library logs shown on it."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.markup import escape

from llamabrew.errors import LlamabrewError
from llamabrew.extras import MissingExtra, extra_of
from llamabrew.progress import log_to_terminal
from llamabrew.progress import terminal as console
from llamabrew.recipe import field_of, parse_set

F = TypeVar("F", bound=Callable[..., Any])


def command_path(fn: Callable[..., Any]) -> str:
    """The running command as the user typed it ("llamabrew data generate"), whatever argv[0] was; from the
    command's function name when no click context is current."""
    for where in ("typer._click.globals", "click.globals"):  # typer >= 0.24 carries its own click
        with contextlib.suppress(ImportError, AttributeError):
            ctx = importlib.import_module(where).get_current_context(silent=True)
            names = []
            while ctx is not None:
                names.append(ctx.info_name or "")
                ctx = ctx.parent
            if names:
                return " ".join(["llamabrew", *reversed(names[:-1])])
    return "llamabrew " + fn.__name__.removesuffix("_cmd").replace("_", "-")


def friendly_errors(fn: F) -> F:
    """Turn `LlamabrewError` into one red line on stderr and exit code 2, with no traceback; so too a missing
    module of a known extra that some import outside `llamabrew.extras.require` hit (a safety net)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log_to_terminal()
        try:
            return fn(*args, **kwargs)
        except LlamabrewError as e:
            _fail(e)
        except ModuleNotFoundError as e:
            if (extra := extra_of(e.name)) is None:
                raise
            _fail(MissingExtra(extra, command_path(fn), e.name))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _fail(e: LlamabrewError) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)  # [extras] stay
    sys.exit(e.exit_code)


def _cli_type(annotation: Any) -> Any:
    """The option type typer should parse for a recipe field: Optional unwrapped, Literal as plain str
    (pydantic checks the choice), dicts and other shapes as strings for ``--set``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _cli_type(args[0])
    if origin is typing.Literal:
        return type(args[0])
    if origin is list:
        return list[_cli_type(args[0])]
    return annotation if annotation in (str, int, float, bool, Path) else str


Flags = dict[str, str | tuple[str, ...]]


def recipe_flags(cls: type[BaseModel], flags: Flags) -> Callable[[F], F]:
    """Give a command one option per recipe field named in ``flags`` (parameter → dotted field, or (field,
    "--spelling", "-s")), typed and described by the field itself, plus ``--set KEY=VALUE`` for any field.
    The command receives ``overrides``: the dotted keys the user gave, for `llamabrew.recipe.load_recipe`."""

    def decorate(fn: F) -> F:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "overrides"]
        added, spellings = [], {}
        for name, spec in flags.items():
            dotted, *decls = (spec,) if isinstance(spec, str) else spec
            info = field_of(cls, dotted)
            kind = _cli_type(info.annotation)
            flag = "--" + name.replace("_", "-")
            decls = decls or [f"{flag}/--no-{flag[2:]}" if kind is bool else flag]
            spellings[name] = (dotted, decls[0])
            option = typer.Option(*decls, help=info.description or "", show_default=False)
            added.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                           annotation=Annotated[kind | None, option]))
        sets = typer.Option("--set", help="KEY=VALUE: any field of the recipe by its dotted name, value as "
                            "YAML (repeatable)", show_default=False)
        added.append(inspect.Parameter("set_values", inspect.Parameter.KEYWORD_ONLY, default=None,
                                       annotation=Annotated[list[str] | None, sets]))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides: dict[str, Any] = {}
            for name, (dotted, decl) in spellings.items():
                value = kwargs.pop(name, None)
                if value is False and "/" not in decl:  # a plain on-switch left off: not given
                    value = None
                if value is not None:
                    overrides[dotted] = value
            overrides |= parse_set(kwargs.pop("set_values", None), cls)
            return fn(*args, overrides=overrides, **kwargs)

        params = [*own, *added]
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate


def is_local(host: str) -> bool:
    """Whether a server listening on ``host`` is reachable only from this machine (no key needed)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
