"""Errors the user can fix. The CLI prints them as one line and exits with code 2 (no traceback)."""

from __future__ import annotations

from pathlib import Path


class LlamabrewError(Exception):
    """A problem with the user's input, files or settings, explained in one line."""

    exit_code = 2


class InputError(LlamabrewError):
    """Bad input data, located by file, line (or record index) and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        record: int | None = None,
    ) -> None:
        self.file, self.line, self.field, self.record, self.reason = file, line, field, record, message
        where = str(file) if file is not None else ""
        if line is not None:
            where += f":{line}"
        elif record is not None:
            where += f" record {record}"
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{message}" if where else f"{what}{message}")
