"""Typed configuration: dataclasses whose field help texts become CLI help, checked when they are built.

Every command takes ``--config file.yaml`` plus ``--field value`` flags; flags override the file, and an unknown
key in either place is an error (a typo must never silently fall back to a default).

Checks happen in two stages, both before any model loads:

1. Constructing a config (from the CLI, a YAML file or Python) checks every field: its type, the choices of a
   ``Literal`` field, the bounds declared with :func:`option` (``ge``/``gt``/``le``/``lt``), names that become path
   parts (``safe_name``), then each class's ``_check`` method (cross-field rules, e.g. a harmful share needs a
   harmful source). Config classes get this by deriving from :class:`Checked`.
2. :func:`check_inputs` (the CLI calls it right after parsing) checks what is on disk: each class's
   ``_check_inputs`` method (data directory, input files, model specs). It is separate because a config may name
   files that a later step of the same pipeline writes.

Every failure is a :class:`~tokensafe.errors.UsageError` naming the field (and the config file it came from).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tokensafe.errors import UsageError

C = TypeVar("C")

SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class ConfigError(UsageError):
    """A config value that is malformed, out of range or inconsistent with another one."""


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - mirrors argparse
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    safe_name: bool = False,
    **kwargs: Any,
) -> Any:
    """A dataclass field with CLI help text and optional bounds, checked when the config is built.

    ``ge``/``gt``/``le``/``lt`` bound a number (None values of an optional field are not checked); ``safe_name``
    marks a name that becomes part of a path (letters, digits, ``._-``, not starting with a dot). Mutable defaults
    (lists) are copied per instance.
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "bounds": bounds, "safe_name": safe_name}
    if isinstance(default, list):
        value = list(default)
        return dataclasses.field(default_factory=lambda: list(value), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); ``X | Y | None`` -> (X | Y, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True  # noqa: UP007 - runtime Union
    return tp, False


def _union_members(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def choices(tp: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` field type (also inside ``| None``); () when it is not a choice."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is typing.Literal:
        return typing.get_args(inner)
    return tuple(c for member in _union_members(inner) for c in choices(member))


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _coerce_value(tp: Any, value: Any) -> Any:
    """Convert one YAML value or CLI string to ``tp`` (never None); ValueError/TypeError when it does not fit."""
    members = _union_members(tp)
    if members:  # e.g. int | Literal["all"]: the first member that takes the value
        for member in members:
            try:
                return _coerce_value(member, value)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"expected {type_label(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item_type,) = typing.get_args(tp)[:1] or (str,)
        if isinstance(value, str):
            value = [v for v in (part.strip() for part in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [_coerce_value(item_type, v) for v in value]
    if tp is bool:
        return value if isinstance(value, bool) else _parse_bool(str(value))
    if tp in (int, float) and not isinstance(value, (int, float, str)):
        raise TypeError(f"expected {'an integer' if tp is int else 'a number'}, got a {type(value).__name__}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise TypeError(f"expected a string, got a {type(value).__name__}")
        return str(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    return value


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML value or a CLI string to the field's declared type, with an error naming the field."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name} may not be null", field=name)
    try:
        return _coerce_value(inner, value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}", field=name) from exc


def type_label(tp: Any) -> str:
    """How a field type reads in help and errors: ``int``, ``float | None``, ``{sft,toss}``, ``int | all``."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is typing.Literal:
        label = "{" + ",".join(map(str, typing.get_args(inner))) + "}"
    elif _union_members(inner):
        label = " | ".join(type_label(member) for member in _union_members(inner))
    elif typing.get_origin(inner) in (list, tuple):
        label = f"list[{type_label((typing.get_args(inner) or (str,))[0])}]"
    else:
        label = getattr(inner, "__name__", str(inner))
    return f"{label} | None" if optional else label


def _fits(tp: Any, value: Any) -> bool:
    """Whether a value built in Python (not parsed) has the field's type; strings accept any path-like."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        return optional
    members = _union_members(inner)
    if members:
        return any(_fits(member, value) for member in members)
    if typing.get_origin(inner) is typing.Literal:
        return value in typing.get_args(inner)
    if inner is bool:
        return isinstance(value, bool)
    if inner is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if inner is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if inner is str:
        return isinstance(value, (str, os.PathLike))
    if typing.get_origin(inner) in (list, tuple):
        return isinstance(value, (list, tuple))
    return True


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bound_text(bounds: dict[str, float]) -> str:
    low = [f"{_BOUND_TEXT[k]} {v:g}" for k, v in bounds.items() if k in ("ge", "gt")]
    high = [f"{_BOUND_TEXT[k]} {v:g}" for k, v in bounds.items() if k in ("le", "lt")]
    if low and high:  # ge 0 + lt 1 -> "in [0, 1)"
        left = "[" if "ge" in bounds else "("
        right = "]" if "le" in bounds else ")"
        lo, hi = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
        return f"in {left}{lo:g}, {hi:g}{right}"
    return " and ".join(low + high)


def _in_bounds(value: float, bounds: dict[str, float]) -> bool:
    checks = {"ge": value >= bounds.get("ge", 0), "gt": value > bounds.get("gt", 0)}
    checks |= {"le": value <= bounds.get("le", 0), "lt": value < bounds.get("lt", 0)}
    return all(checks[k] for k in bounds)


def check_name(value: str, field: str) -> None:
    """A name that becomes one path component: letters, digits, ``._-``, not starting with a dot (no ``..``)."""
    if not SAFE_NAME.fullmatch(value):
        raise ConfigError(
            f"{field} {value!r} is not a safe name",
            field=field,
            hint="use letters, digits, '.', '_' and '-', not starting with '.' (it becomes a file or folder name)",
        )


def check_fields(cfg: Any) -> None:
    """Types, ``Literal`` choices, declared bounds and safe names of every field of a config dataclass."""
    types_ = _field_types(type(cfg))
    for f in config_fields(type(cfg)):
        value, tp = getattr(cfg, f.name), types_[f.name]
        if not _fits(tp, value):
            allowed = choices(tp)
            if allowed and not isinstance(value, (list, dict)):
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(map(str, allowed))}; got {value!r}", field=f.name
                )
            raise ConfigError(f"{f.name} must be {type_label(tp)}, got {value!r}", field=f.name)
        bounds = f.metadata.get("bounds") or {}
        if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not _in_bounds(value, bounds):
                raise ConfigError(f"{f.name} must be {_bound_text(bounds)}, got {value!r}", field=f.name)
        if f.metadata.get("safe_name") and value is not None:
            check_name(str(value), f.name)


def _hooks(cfg: Any, name: str) -> list[Any]:
    """Each class's own ``name`` method along the MRO, base classes first (every mixin checks its own fields)."""
    return [klass.__dict__[name] for klass in reversed(type(cfg).__mro__) if name in klass.__dict__]


def validate(cfg: Any) -> None:
    """Stage 1: field checks, then every ``_check`` (cross-field rules). Raises ConfigError."""
    check_fields(cfg)
    for hook in _hooks(cfg, "_check"):
        hook(cfg)


def check_inputs(cfg: Any) -> None:
    """Stage 2: every ``_check_inputs`` (files, directories, models on disk). Raises UsageError."""
    for hook in _hooks(cfg, "_check_inputs"):
        hook(cfg)


class Checked:
    """Base of the config dataclasses: building one validates it (:func:`validate`), from the CLI or from Python."""

    def __post_init__(self) -> None:
        validate(self)


# --- checks shared by several configs ------------------------------------------------------------------------------


def require(condition: bool, message: str, *, field: str | None = None, hint: str | None = None) -> None:
    """Raise a ConfigError unless ``condition`` holds (cross-field rules read as one line each)."""
    if not condition:
        raise ConfigError(message, field=field, hint=hint)


def check_steps(cfg: Any, field: str) -> None:
    """A ``max_steps``-style field: -1 (use the epochs) or a positive step count."""
    value = getattr(cfg, field)
    require(value == -1 or value >= 1, f"{field} must be -1 (use the epochs) or >= 1, got {value}", field=field)


def check_source(name: str | None, field: str, split: str | None = None, split_field: str | None = None) -> None:
    """A named data source (and its split) must be registered; the split check mirrors ``load_source``."""
    if name is None:
        return
    from tokensafe.data.sources import SOURCES

    if name not in SOURCES:
        raise ConfigError(
            f"{field}: unknown source {name!r}",
            field=field,
            hint=f"choose one of {', '.join(sorted(SOURCES))}",
        )
    spec = SOURCES[name]
    if split is not None and spec.aliases.get(split, split) not in spec.splits:
        raise ConfigError(
            f"{split_field}: source {name!r} has no split {split!r}",
            field=split_field,
            hint=f"choose one of {', '.join(spec.splits)} (or none for the default)",
        )


def check_dir(value: str | os.PathLike | None, field: str, what: str = "directory") -> None:
    if value is not None and not Path(value).expanduser().is_dir():
        raise UsageError(f"{field}: {what} {str(value)!r} does not exist", field=field, hint="check the path")


def check_file(value: str | os.PathLike | None, field: str, what: str = "file") -> None:
    if value is not None and not Path(value).expanduser().is_file():
        raise UsageError(f"{field}: {what} {str(value)!r} does not exist", field=field, hint="check the path")


def check_exists(value: str | os.PathLike | None, field: str, what: str = "path", hint: str | None = None) -> None:
    """A file or directory that must be there already (None: nothing to check)."""
    if value is not None and not Path(value).expanduser().exists():
        raise UsageError(f"{field}: {what} {str(value)!r} does not exist", field=field, hint=hint or "check the path")


def check_data_dir(value: str | None, field: str = "data_dir") -> None:
    """An explicit data directory (or ``$TOKENSAFE_DATA_DIR``) must exist: a typo must not silently try the hub."""
    from tokensafe.paths import DATA_DIR_ENV

    if value not in (None, ""):
        check_dir(value, field, "data directory")
    elif os.environ.get(DATA_DIR_ENV) and not Path(os.environ[DATA_DIR_ENV]).expanduser().is_dir():
        raise UsageError(
            f"${DATA_DIR_ENV} names a data directory that does not exist: {os.environ[DATA_DIR_ENV]!r}",
            hint=f"fix or unset {DATA_DIR_ENV}, or pass --data_dir",
        )


def _looks_like_path(spec: str) -> bool:
    """A model spec meant as a path (absolute, relative with ./ or ../, ~, Windows separators, two or more '/',
    or a weights file); a hub id is exactly ``owner/name``."""
    return (
        spec.startswith(("/", ".", "~"))
        or "\\" in spec
        or spec.count("/") >= 2
        or spec.endswith((".gguf", ".safetensors", ".bin"))
    )


def check_model_spec(spec: str | os.PathLike | None, field: str, cache_dir: str | None) -> None:
    """A model spec that ``tokensafe.models.resolve_model_path`` can resolve, checked without loading or converting.

    Accepts the bundled default (its package must be installed), a ``.gguf`` file, a directory with ``config.json``
    or ``adapter_config.json``, a named model under ``<cache>/models``, or (online only) a hub id ``owner/name``.
    """
    if spec is None:
        return
    from tokensafe.models import DEFAULT_ALIASES, ModelNotFoundError, bundled_gguf_path
    from tokensafe.paths import cache_dir as resolve_cache_dir
    from tokensafe.paths import hub_offline

    spec = str(spec)
    if spec in DEFAULT_ALIASES:
        try:
            bundled_gguf_path()
        except ModelNotFoundError as exc:
            raise UsageError(f"{field}: {exc}", field=field, hint="run `tokensafe doctor`") from None
        return
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        check_file(path, field, "GGUF file")
        return
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise UsageError(
                f"{field}: {spec!r} is a directory but holds no config.json or adapter_config.json",
                field=field,
                hint="pass a model or LoRA adapter directory (e.g. runs/<name>/final)",
            )
        return
    if _looks_like_path(spec):
        raise UsageError(f"{field}: model directory {spec!r} does not exist", field=field, hint="check the path")
    models = resolve_cache_dir(cache_dir) / "models"
    if (models / spec / "config.json").is_file() or (models / spec / "adapter_config.json").is_file():
        return
    if "/" in spec and not hub_offline():
        return  # a hub id: from_pretrained fetches it
    hint = "run `tokensafe align` first (it saves 'aligned')" if spec == "aligned" else "`tokensafe doctor` lists them"
    raise UsageError(
        f"{field}: model {spec!r} is not the bundled default, a .gguf file, a local directory or a named model in "
        f"{models}" + (" (hub access is disabled)" if "/" in spec else ""),
        field=field,
        hint=hint,
    )


# --- loading ---------------------------------------------------------------------------------------------------------


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping; malformed YAML names the file and line."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(
            f"config file {str(path)!r} does not exist" if not file.exists() else f"{str(path)!r} is not a file",
            hint="check the --config path",
        )
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(
            f"malformed YAML: {problem}",
            file=path,
            line=mark.line + 1 if mark is not None else None,
            hint="fix the YAML syntax (field: value, one per line)",
        ) from None
    except UnicodeDecodeError:
        raise UsageError("config file is not UTF-8 text", file=path) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(
            f"a config file must be a mapping of field: value, got a {type(raw).__name__}",
            file=path,
            hint="write one 'field: value' per line",
        )
    return raw


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Build ``cls`` from an optional YAML file, then apply ``overrides`` (already-parsed CLI values).

    Raises UsageError (a ConfigError for bad values): errors about a value that came from the file name the file.
    """
    types_ = _field_types(cls)
    known = {f.name for f in config_fields(cls)}
    values: dict[str, Any] = {}
    from_file: set[str] = set()
    if path is not None:
        raw = read_yaml(path)
        unknown = sorted(str(k) for k in set(raw) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown} for {cls.__name__}",
                file=path,
                hint=_suggest(unknown[0], known),
            )
        for key, value in raw.items():
            try:
                values[key] = _coerce(key, types_[key], value)
            except UsageError as exc:
                raise exc.with_context(file=path) from None
        from_file = set(values)
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown config key '{key}' for {cls.__name__}", hint=_suggest(key, known))
        values[key] = _coerce(key, types_[key], value)
        from_file.discard(key)
    try:
        return cls(**values)
    except UsageError as exc:
        if exc.field in from_file:
            exc.with_context(file=path)
        raise


def _suggest(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean '{close[0]}'?" if close else "the command's --help lists every field"


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--name`` flag per field. Flag values stay strings; load_config coerces them."""
    parser.add_argument("--config", type=str, default=None, help="YAML file with field: value pairs")
    types_ = _field_types(cls)
    for f in config_fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
        )
        tp = types_[f.name]
        kind = type_label(tp)
        inner, _ = _unwrap_optional(tp)
        bounds = f.metadata.get("bounds") or {}
        extra = [kind, f"default: {default!r}"]
        if bounds:
            extra.insert(1, _bound_text(bounds))
        help_text = f"{f.metadata.get('help', '')} [{', '.join(extra)}]".replace("%", "%%")
        metavar = kind.split(" | None")[0] if choices(tp) else getattr(inner, "__name__", "value").upper()
        # Both spellings work: --data_dir (the field name) and --data-dir (the usual CLI style).
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_text)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    known = {f.name for f in config_fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in known}
    return load_config(cls, getattr(args, "config", None), overrides)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config atomically (a killed run never leaves a torn config file)."""
    from tokensafe.atomic import write_yaml

    write_yaml(path, config_to_dict(config))
