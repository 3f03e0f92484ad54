"""User-facing errors: every problem a user can fix is reported with where it is (file, line/record, field)."""

from __future__ import annotations


class ChatforgeError(Exception):
    """An error caused by user input or configuration; the CLI prints it without a traceback and exits 2."""


class DataError(ChatforgeError):
    """A problem in a data file, located by file, line (1-based) or record index (0-based), and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
        reason: str = "invalid",
    ):
        self.file, self.line, self.record, self.field, self.reason = file, line, record, field, reason
        self.bare_message = message
        where = []
        if file:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(f"record {record}")
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def located(self, file: str, loc: dict) -> DataError:
        """The same error placed in `file` at `loc` (the `line` / `record` keys a reader yields with each record)."""
        return DataError(
            self.bare_message,
            file=file,
            line=loc.get("line"),
            record=loc.get("record"),
            field=self.field,
            reason=self.reason,
        )


class NotSupportedError(ChatforgeError):
    """A feature that chatforge does not implement (yet); the message says what is supported instead."""
