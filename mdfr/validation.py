"""One declarative validation layer for trial configs and sweep files (pydantic v2).

Configs and sweep-file sections are frozen pydantic dataclasses built on :data:`CONFIG`:
unknown keys are refused, numbers must be finite, and the field types below are strict (no
``true`` for an integer, no ``"3"`` for a number of epochs). Bounds are ``Field(ge=..)``,
choices are ``Literal``; each field's docstring is its documentation (``docs/sweep-files.md``
is generated from them). Only rules that span fields or sections are written by hand.

:func:`validate` runs a model and turns pydantic's first error into our one message format,
``file: dotted.path: message`` (a :class:`~mdfr.errors.ConfigError`, exit 2), with a
"did you mean" for unknown keys and values (:func:`did_you_mean`, the only place that builds
one). YAML is read here too (:func:`read_yaml_mapping`): UTF-8 only, duplicate keys refused.

Imports neither torch nor Ray: ``mdfr sweep validate`` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError
from yaml.constructor import ConstructorError

from mdfr.errors import ConfigError

# Every config and sweep-file model: unknown keys and non-finite numbers are errors, and each
# field's docstring becomes its description (the sweep-file reference is generated from it).
CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)


def _yaml11_number(value: Any) -> Any:
    # PyYAML reads YAML 1.1, where `1e-3` (no dot) is a string; users write numbers that
    # way, so a string that parses as a number is one. Anything else fails as "a number".
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# Strict field types: no bool for an int or a float, no string for an int.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
# A float field takes ints (widened) and numeric strings (see _yaml11_number), never bools.
Float = Annotated[float, BeforeValidator(_yaml11_number), Strict()]


# --------------------------------------------------------------------------- messages


def did_you_mean(name: Any, known: typing.Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ""."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(path: str, name: Any, known: typing.Iterable[Any], what: str = "key") -> ConfigError:
    """The error for an unknown key or name, with a suggestion and what is allowed.

    A key, axis or option is named by ``path`` already (``model.widht``): the message lists the
    allowed ones, sorted. A value (a backbone, a setup) is quoted and the known ones follow in
    their own order.
    """
    known = [str(k) for k in known]
    hint = did_you_mean(name, known)
    if path.endswith(str(name)):
        return ConfigError(path, f"unknown {what}{hint}; allowed: {', '.join(sorted(known))}")
    return ConfigError(path, f"unknown {what} {name!r}{hint}; known: {', '.join(known)}")


def _choices(expected: str) -> list[str]:
    # pydantic's literal_error ctx: "'a', 'b' or 'c'" -> ["'a'", "'b'", "'c'"]
    head, _, last = expected.rpartition(" or ")
    return [*(p.strip() for p in head.split(",") if p.strip()), last.strip()]


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "none_required": "nothing (null)",
}
_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _message(err: dict[str, Any], cls: Any, loc: tuple[Any, ...]) -> str:
    """One pydantic error as our message (what is allowed, then what was given)."""
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value!r}"
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"expected a value {op} {ctx[key]!r}, got {value!r}"
    if kind == "literal_error":
        choices = _choices(ctx["expected"])
        hint = did_you_mean(value, [c.strip("'") for c in choices])
        return f"expected one of {', '.join(choices)}, got {value!r}{hint}"
    if kind in ("dataclass_type", "model_type", "dataclass_exact_type", "model_attributes_type"):
        return f"expected a mapping of {ctx.get('class_name', 'settings')} fields, got {value!r}"
    if kind == "missing":
        info = getattr(_field_type(cls, loc[:-1]), "__pydantic_fields__", {}).get(loc[-1])
        what = (info.description or "").split(":")[0].rstrip(".") if info else ""
        return f"is required ({what[:1].lower()}{what[1:]})" if what else "is required"
    if kind == "too_short":
        return f"expected a non-empty list, got {value!r}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {value!r}"


def _field_type(cls: Any, loc: tuple[Any, ...]) -> Any:
    """The declared type at ``loc`` inside ``cls`` (a pydantic dataclass), or None."""
    tp = cls
    for part in loc:
        tp = _unwrap(tp)
        fields = getattr(tp, "__pydantic_fields__", None)
        if fields is not None:
            by_key = {info.alias or name: info for name, info in fields.items()}
            if part not in by_key:
                return None
            tp = by_key[part].annotation
            continue
        origin = typing.get_origin(tp)
        if origin in (dict, list, tuple) and typing.get_args(tp):
            tp = typing.get_args(tp)[-1]
            continue
        return None
    return _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X`` (the first non-None member)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = members[0] if members else tp
            if len(members) != 1:
                return tp
        else:
            return tp


def field_names(cls: Any) -> list[str]:
    """The keys a config/sweep-file dataclass accepts (as written: aliases where set)."""
    fields = getattr(cls, "__pydantic_fields__", {}) or {}
    return [info.alias or name for name, info in fields.items()]


_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


def _error(e: ValidationError, cls: Any, prefix: str) -> ConfigError:
    errors = e.errors(include_url=False)
    # An unknown key first: a misspelt key is usually also why a required one is "missing".
    err = next((x for x in errors if x["type"] in _UNKNOWN), errors[0])
    # Union members and validator wrappers appear in loc as strings like "function-after[...]"
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    path = ".".join(str(p) for p in (prefix.rstrip(".").split(".") if prefix else []) + list(loc))
    path = path.strip(".")
    if err["type"] in _UNKNOWN:
        return unknown(path, loc[-1], field_names(_field_type(cls, loc[:-1])))
    return ConfigError(path, _message(err, cls, loc))


def validate(cls: type, data: Any, prefix: str = "") -> Any:
    """``data`` (plain nested values, as read from YAML) as a ``cls`` instance.

    Args:
        cls: a pydantic dataclass on :data:`CONFIG`.
        data: the mapping to check.
        prefix: dotted path of ``data`` inside the document, for messages (``base.``).

    Raises:
        ConfigError: the first problem, as ``dotted.path: message``.
    """
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as e:
        raise _error(e, cls, prefix) from None


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def describe(cls: type) -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, description) of each field of ``cls``, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        info = cls.__pydantic_fields__[f.name]  # type: ignore[attr-defined]
        default = info.get_default(call_default_factory=True)
        out.append((f.name, info, default, info.description or ""))
    return out


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (it would let the last one win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """Parse YAML (safe tags only; duplicate keys are an error)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping; errors name the file (and line).

    Raises:
        ConfigError: missing or unreadable file, not UTF-8, invalid YAML, duplicate keys,
            or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", "file not found", str(p))
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError("", f"cannot read the file ({e.strerror or e})", str(p)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            "",
            f"not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save the file as UTF-8",
            str(p),
        ) from None
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError("", f"invalid YAML: {where}{problem}", str(p)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "", f"expected a mapping at the top level, got {type(data).__name__}", str(p)
        )
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.width=8"`` -> ``("model.width", 8)``; values are parsed as YAML scalars."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("", f"override {item!r}: expected dotted.key=value")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value
