"""Command-line options generated from a pydantic model, so each default and description lives once.

A config model's fields already say everything a flag needs: the name, the type, the default and
a description. `model_options` turns a model into typer options and decorates a command with them:

    @app.command("eval")
    @model_options(EvalConfig, into="settings", exclude={"enabled", "data"})
    def evaluate(data: Path = typer.Option(...), settings: dict = None):
        cfg = build_model(EvalConfig, settings)

Each field `some_key` becomes an option of the command:

- flag `--some-key` (`flags={"some_key": ("--key", "-k")}` keeps an existing name or adds a short one);
- type and default from the field (a `default_factory` is called once, to show the default);
- help = the field's description, then `help_extra[name]` if given (e.g. the list of choices);
- `bool` -> `--some-key/--no-some-key`;
- `X | None` -> an option whose absence leaves None;
- `list[X]` -> one comma-separated value (`--metrics a,b`; `--metrics ''` is the empty list), the
  form tunesmith's flags have always had; `lists="repeat"` makes it a repeatable option instead.

The command declares one parameter named by `into` (it is not an option); it receives a dict of
every generated field's parsed value, lists already split and converted. Pass it to `build_model`,
which validates it with the model and reports a bad value as `--flag: what is wrong`.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Union

import typer
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from tunesmith.errors import ConfigError

_ITEM_WORDS = {int: "integers", float: "numbers", str: "values"}


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _optional_inner(annotation) -> Any:
    """X for `X | None` / `Optional[X]`, else None."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


class _FieldOption:
    """How one model field becomes one option, and how its raw value becomes the field's value."""

    def __init__(self, name: str, info, decls: Sequence[str], extra_help: str | None, lists: str):
        self.name = name
        annotation = info.annotation
        inner = _optional_inner(annotation)
        self.optional = inner is not None
        base = inner if self.optional else annotation
        self.item = None
        self.comma = False
        default = info.get_default(call_default_factory=True)
        if default is PydanticUndefined:
            default = ...
        if typing.get_origin(base) is list:
            (self.item,) = typing.get_args(base) or (str,)
            if lists == "comma":
                self.comma = True
                self.type = typing.Optional[str] if self.optional else str  # noqa: UP045 (typer reads it)
                if isinstance(default, list):
                    default = ",".join(str(v) for v in default)
            else:
                self.type = list[self.item]
        else:
            self.type = annotation
        self.flag = decls[0].split("/")[0]
        if base is bool and len(decls) == 1 and "/" not in decls[0]:
            decls = [f"{decls[0]}/--no-{decls[0][2:]}"]
        help_text = " ".join(t for t in (info.description, "(comma-separated)" if self.comma else None, extra_help) if t)
        self.option = typer.Option(default, *decls, help=help_text)

    def parameter(self) -> inspect.Parameter:
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.option, annotation=self.type)

    def parse(self, raw):
        if not self.comma or raw is None:
            return raw
        parts = [x.strip() for x in raw.split(",") if x.strip()]
        try:
            return [self.item(x) for x in parts]
        except ValueError:
            word = _ITEM_WORDS.get(self.item, "values")
            raise ConfigError(f"{self.flag}: expected comma-separated {word}, got '{raw}'") from None


def _field_options(model: type[BaseModel], exclude: Collection[str], flags: Mapping[str, str | Sequence[str]],
                   help_extra: Mapping[str, str], lists: str) -> list[_FieldOption]:
    unknown = (set(exclude) | set(flags) | set(help_extra)) - set(model.model_fields)
    if unknown:
        raise ValueError(f"{model.__name__} has no field(s) {', '.join(sorted(unknown))}")
    out = []
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        decls = flags.get(name, flag_name(name))
        decls = [decls] if isinstance(decls, str) else list(decls)
        out.append(_FieldOption(name, info, decls, help_extra.get(name), lists))
    return out


def model_options(model: type[BaseModel], *, into: str, exclude: Collection[str] = (),
                  flags: Mapping[str, str | Sequence[str]] | None = None, help_extra: Mapping[str, str] | None = None,
                  lists: str = "comma") -> Callable:
    """Decorate a typer command with one option per field of `model` (see the module docstring)."""
    if lists not in ("comma", "repeat"):
        raise ValueError(f"lists must be 'comma' or 'repeat', not {lists!r}")
    fields = _field_options(model, exclude, flags or {}, help_extra or {}, lists)

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        if into not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {into!r} to receive the {model.__name__} values")
        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in signature.parameters.values() if p.name != into]
        clash = {p.name for p in own} & {f.name for f in fields}
        if clash:
            raise TypeError(f"{command.__name__}: parameter(s) {', '.join(sorted(clash))} clash with "
                            f"{model.__name__} fields; exclude them")
        params = own + [f.parameter() for f in fields]

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {f.name: f.parse(kwargs.pop(f.name)) for f in fields}
            return command(**kwargs, **{into: values})

        wrapper.__signature__ = signature.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty}
        wrapper.flags = {f.name: f.flag for f in fields}
        return wrapper
    return decorate


def build_model(model: type[BaseModel], values: dict, flags: Mapping[str, str] | None = None):
    """`model(**values)`, a validation error reported as `--flag: message` (a ConfigError, exit status 2)."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        flag = (flags or {}).get(name) or flag_name(".".join(str(p) for p in first["loc"]))
        raise ConfigError(f"{flag}: {first['msg']}") from None
