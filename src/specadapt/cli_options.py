"""Typer options derived from settings dataclasses: every default and help text is written once, in the dataclass.

A field becomes the option ``--field-name`` when its metadata has ``help``. Other metadata keys:

- ``flag``: the option's name(s) instead, e.g. ``"--exec-timeout"`` or ``("--out", "-o")``, or
  ``"--shared-blocks/--independent-blocks"`` for a boolean with both switches;
- ``negated``: a boolean field set by an off switch (``flag="--no-progress"``: the field is ``not`` the switch);
- ``repeat``: a list field given by repeating the option instead of as one comma-separated string;
- ``parse``: turns the option's text into the field's value (default for list fields: :func:`comma_list`);
- ``example``: a valid value, quoted when a comma-separated number list does not parse.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Optional

import typer

from .errors import SpecAdaptError

SETTINGS_PARAMETER = "settings"


def comma_list(text: str, option: str = "", kind: type = str, example: str = "") -> list:
    """``'a, b,'`` -> ``["a", "b"]``, each item converted by ``kind``; a bad item names ``option`` and an ``example``."""
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise SpecAdaptError(f"{option} must be comma-separated {noun}, e.g. {example}; got {text!r}.") from None


def with_settings(*classes: type, help: Mapping[str, str] | None = None) -> Callable:
    """Decorate a typer command: its parameter ``settings`` becomes one option per field of the dataclass(es)
    ``classes`` with help text (the field's metadata, or ``help[name]`` for a dataclass whose fields carry none),
    and receives ``{field name: value}`` with every value converted to the field's type: one such dict for one
    class, a tuple of them (in the order of ``classes``) for several."""
    help = dict(help or {})
    chosen = []  # (class index, field, type hint)
    for i, cls in enumerate(classes):
        hints = typing.get_type_hints(cls)
        chosen += [(i, f, hints[f.name]) for f in dataclasses.fields(cls)
                   if f.init and (f.metadata.get("help") or f.name in help)]
    options = [_option(f, hint, help.get(f.name) or f.metadata["help"]) for _, f, hint in chosen]

    def decorate(command: Callable) -> Callable:
        own_hints = typing.get_type_hints(command)  # resolved in the command's own module
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints.get(p.name, p.annotation))
               for p in inspect.signature(command).parameters.values()]
        at = [p.name for p in own].index(SETTINGS_PARAMETER)
        parameters = own[:at] + options + own[at + 1 :]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            values: list[dict] = [{} for _ in classes]
            for i, f, hint in chosen:
                values[i][f.name] = _convert(f, hint, kwargs.pop(f.name))
            return command(**kwargs, **{SETTINGS_PARAMETER: values[0] if len(classes) == 1 else tuple(values)})

        run.__signature__ = inspect.Signature(parameters)  # what typer reads
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def _flag(f: dataclasses.Field) -> tuple[str, ...]:
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    return (flag,) if isinstance(flag, str) else tuple(flag)


def _option(f: dataclasses.Field, hint: Any, help: str) -> inspect.Parameter:
    """The typer parameter for field ``f``: its type as the command line spells it, its default, its help."""
    inner, optional = _unwrap_optional(hint)
    default = _default(f)
    if f.metadata.get("negated"):
        cli_type, default = bool, not default
    elif f.metadata.get("repeat"):
        item = typing.get_args(inner)[0] if typing.get_args(inner) else str
        cli_type, default = Optional[list[item]], list(default) if default else None
    elif f.metadata.get("parse") or typing.get_origin(inner) in (list, tuple, dict):
        # Comma-separated text, shown with the default it stands for.
        cli_type = Optional[str] if default is None else str
        if isinstance(default, dict):
            default = ",".join(f"{k}={v}" for k, v in default.items())
        elif isinstance(default, (list, tuple)):
            default = ",".join(str(x) for x in default)
    else:
        cli_type = Optional[inner] if optional else inner
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=cli_type,
                             default=typer.Option(default, *_flag(f), help=help))


def _convert(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """The option's value as the field's value."""
    inner, _ = _unwrap_optional(hint)
    if f.metadata.get("negated"):
        return not value
    if f.metadata.get("repeat"):
        return _default(f) if value is None else value  # typer gives None for an option never given
    if value is None:
        return None
    if f.metadata.get("parse"):
        return f.metadata["parse"](value)
    if typing.get_origin(inner) in (list, tuple):
        item = typing.get_args(inner)[0] if typing.get_args(inner) else str
        default = _default(f)
        example = f.metadata.get("example") or (",".join(map(str, default)) if isinstance(default, (list, tuple)) else "")
        return comma_list(value, _flag(f)[0], item, example)
    return value


def _default(f: dataclasses.Field) -> Any:
    """The field's default (a fresh one from its factory); ``...`` (typer's "required") when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else ...


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False
