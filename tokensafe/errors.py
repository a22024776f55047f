"""Expected errors: bad input that the user can fix, reported as one line without a traceback.

``tokensafe <command>`` prints every :class:`UsageError` (config errors, :class:`~tokensafe.data.errors.DataError`)
and every missing input file as::

    tokensafe <command>: error: <what> (<file>, row <n>, field <f>) — <what to do>

and exits with status 2; ``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
The class derives from ``ValueError`` so code that validates with ``except ValueError`` keeps working.
"""

from __future__ import annotations

from os import PathLike


class UsageError(ValueError):
    """An error in what the user gave us (a config value, a file, a name), with where it is and how to fix it.

    ``file``, ``line``, ``row`` and ``field`` say where the problem is (any may be None); ``hint`` says what to do.
    ``str()`` is the one-line message the CLI prints after ``tokensafe <command>: error:``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | PathLike | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.row = row
        self.field = field
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        return self.one_line()

    def where(self) -> str:
        """``"c.yaml, line 3"`` / ``"data.jsonl, row 4, field response"``: the known parts of the location."""
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.row is not None:
            parts.append(f"row {self.row}")
        # A message that already names its field ("batch_size must be >= 1") does not repeat it in the location.
        if self.field is not None and (self.row is not None or self.field not in self.message):
            parts.append(f"field {self.field}")
        return ", ".join(parts)

    def one_line(self, default_hint: str | None = None) -> str:
        where = self.where()
        hint = self.hint or default_hint
        text = self.message + (f" ({where})" if where else "") + (f" — {hint}" if hint else "")
        return " ".join(text.split())  # one line, whatever the parts held

    def with_context(self, *, file: str | PathLike | None = None, hint: str | None = None) -> UsageError:
        """Fill in the file and hint where the raiser did not know them (the config loader knows the file)."""
        if self.file is None and file is not None:
            self.file = str(file)
        if self.hint is None and hint is not None:
            self.hint = hint
        return self


def one_line(exc: BaseException, default_hint: str | None = None) -> str:
    """The CLI's one-line message for an expected error."""
    if isinstance(exc, UsageError):
        return exc.one_line(default_hint)
    if isinstance(exc, FileNotFoundError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror} ({exc.filename})"
    else:
        text = str(exc) or type(exc).__name__
    text = text + (f" — {default_hint}" if default_hint else "")
    return " ".join(text.split())
