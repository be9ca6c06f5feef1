"""What every CLI module shares: one-line errors with exit code 2, and a console."""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from rich.console import Console
from rich.markup import escape

from llamabrew.errors import LlamabrewError
from llamabrew.extras import MissingExtra, extra_of

console = Console(stderr=True, soft_wrap=True)  # long lines stay whole in logs and pipes
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
