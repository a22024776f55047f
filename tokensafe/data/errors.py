"""One error type for bad input data, always naming where the problem is."""

from __future__ import annotations

from tokensafe.errors import UsageError


class DataError(UsageError):
    """Bad input data. The message names the file, the line (1-based, for a user's own file) or
    the row (0-based, as read) and the field when known.

    ``str()`` keeps the data layer's own form (``file F, row N, field 'f': message``); the CLI prints
    :meth:`~tokensafe.errors.UsageError.one_line` like every other expected error.
    """

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message
