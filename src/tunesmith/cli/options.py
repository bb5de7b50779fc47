"""Typer options generated from a pydantic model: each setting's default and help text live in one
place, the model's `Field(default, description=...)`.

    from tunesmith.cli.options import Flag, options_from

    @app.command()
    @options_from(ServeOptions, flags={"model": Flag("--model", "-m")})
    def serve(options: ServeOptions, port: int = typer.Option(8000, help="TCP port")):
        ...                                       # `options` is a validated ServeOptions

`options_from(Model)` puts one parameter per field of `Model` in front of the decorated command's
own (typer reads the signature), and at call time gathers their values into one
`Model(...)` passed as the command's `options` parameter (`into=` names another). Per field:

| field                      | command line                                                     |
|----------------------------|------------------------------------------------------------------|
| name `max_batch`           | `--max-batch` (override with `Flag("--other", "-o")`)            |
| `description`              | the option's help text                                           |
| default / default_factory  | the option's default, shown by `--help`; no default -> required  |
| `bool`                     | `--name/--no-name`                                               |
| `list[T]`                  | a repeatable option (`--tag a --tag b`)                          |
| `Literal["a", "b"]`        | a choice among the values                                        |
| `Literal["auto"] | int`    | one value, a word or a number (`--max-new-tokens auto`, `... 256`) |
| `T | None`                 | optional; None when not given                                    |
| anything else (a dict ...) | needs `Flag(cli_type=..., parse=...)`: what typer reads, and how |
|                            | it becomes the field's value (e.g. NAME=PATH items -> a dict)    |

`comma_separated("--metrics")` is the Flag for a list given as one value (`--metrics bleu,rouge_l`).
`Flag` also sets an environment variable (`envvar=`) and a metavar. `exclude=` / `only=` pick the
fields. A value the model rejects is a `ConfigError` naming the flag ("--max-batch: Input should
be ..."), so the user sees the option they typed, not the field name.
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from tunesmith.errors import ConfigError


class Flag:
    """How one field appears on the command line where the generated spelling will not do.

    `names`: the flag and its aliases ("--model", "-m"; default --field-name); `envvar`: also read
    from this environment variable; `metavar`: the placeholder in --help; `help`: text appended to
    the field's description (what only the command line needs to say, e.g. the choices). `cli_type`: what typer
    parses when it is not the field's own type, with `parse` turning that into the field's value
    and `format` turning the field's default into what --help shows and typer starts from (an
    empty default needs no `format`).
    """

    def __init__(self, *names: str, envvar: str | None = None, cli_type: Any = None,
                 parse: Callable[[Any], Any] | None = None, format: Callable[[Any], Any] | None = None,
                 metavar: str | None = None, help: str | None = None):
        self.names = names
        self.help = help
        self.envvar = envvar
        self.cli_type = cli_type
        self.parse = parse
        self.format = format
        self.metavar = metavar


def comma_separated(*names: str, item: type = str, metavar: str | None = None, help: str | None = None) -> Flag:
    """A list field given as one comma-separated value (`--metrics bleu,rouge_l`, `--pass-k 1,5`)."""
    def parse(text: str | None) -> list:
        parts = [p.strip() for p in (text or "").split(",") if p.strip()]
        try:
            return [item(p) for p in parts]
        except ValueError:
            flag = names[0] if names else "this option"
            raise ConfigError(f"{flag}: expected comma-separated {item.__name__} values, got '{text}'") from None

    return Flag(*names, cli_type=str, parse=parse, format=lambda values: ",".join(str(v) for v in values),
                metavar=metavar or f"{item.__name__.upper()},...", help=" ".join(t for t in ("(comma-separated)", help) if t))


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _optional_inner(annotation) -> tuple[Any, bool]:
    """(T, True) for `T | None` / Optional[T]; (annotation, False) otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


@dataclass
class _Option:
    field: str
    param: inspect.Parameter
    to_value: Callable[[Any], Any]
    flag: str


def _choices(field: str, values: tuple) -> type[enum.Enum]:
    # An Enum, not Literal: every typer release shows and checks Enum choices.
    return enum.Enum(f"{field.title().replace('_', '')}Choice", {str(v): v for v in values}, type=str)


def _word_or_number(annotation) -> tuple[tuple, type] | None:
    """(("auto",), int) for `Literal["auto"] | int`: a field that takes a word or a number."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    args = typing.get_args(annotation)
    words = [a for a in args if typing.get_origin(a) is typing.Literal]
    numbers = [a for a in args if a in (int, float)]
    if len(words) + len(numbers) != len(args) or len(numbers) != 1 or not words:
        return None
    return tuple(v for w in words for v in typing.get_args(w)), numbers[0]


def _option(name: str, info: FieldInfo, flag: Flag) -> _Option:
    names = flag.names or (flag_name(name),)
    default = info.get_default(call_default_factory=True) if not info.is_required() else ...
    annotation, optional = _optional_inner(info.annotation)
    to_value: Callable[[Any], Any] = lambda v: v  # noqa: E731
    if flag.cli_type is not None:
        cli_type = flag.cli_type
        if flag.format is not None and default not in (..., None):
            default = flag.format(default)
        elif isinstance(default, (dict, list, tuple, set)):
            if default:
                raise TypeError(f"options_from: field '{name}' has a default its flag cannot show; give Flag(format=...)")
            default = [] if typing.get_origin(cli_type) is list else None
    elif annotation is bool:
        cli_type = bool
        if not flag.names:
            names = (f"{names[0]}/--no-{names[0][2:]}",)
    elif _word_or_number(annotation) is not None:
        # Typer parses text; the model turns "256" into 256 and rejects anything else, naming the flag.
        words, number = _word_or_number(annotation)
        cli_type = str
        default = default if default in (..., None) else str(default)
        metavar = flag.metavar or "|".join([{int: "INTEGER", float: "FLOAT"}[number], *map(str, words)])
        flag = Flag(*flag.names, envvar=flag.envvar, metavar=metavar, help=flag.help, parse=flag.parse)
    elif typing.get_origin(annotation) is typing.Literal:
        cli_type = _choices(name, typing.get_args(annotation))
        default = default if default in (..., None) else cli_type(str(default))
        to_value = lambda v: v.value if isinstance(v, enum.Enum) else v  # noqa: E731
    elif annotation in (str, int, float) or typing.get_origin(annotation) is list:
        cli_type = annotation
    else:
        raise TypeError(f"options_from: field '{name}' has type {info.annotation}, which has no command-line form; "
                        "give it a Flag(cli_type=..., parse=...)")
    if optional:
        cli_type = cli_type | None
    if flag.parse is not None:
        parse, convert = flag.parse, to_value
        to_value = lambda v: parse(convert(v))  # noqa: E731
    help_text = " ".join(t for t in (info.description, flag.help) if t)
    option = typer.Option(default, *names, help=help_text, envvar=flag.envvar, metavar=flag.metavar)
    param = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=cli_type)
    return _Option(name, param, to_value, names[0].split("/")[0])


def options_from(model: type[BaseModel], *, into: str = "options", flags: Mapping[str, Flag] | None = None,
                 exclude: Iterable[str] = (), only: Iterable[str] | None = None):
    """Decorator: the command gets one typer option per field of `model` and receives them as one
    validated `model` instance in its parameter `into`. See the module docstring for the rules."""
    flags = dict(flags or {})
    excluded, chosen = set(exclude), None if only is None else list(only)
    names = [n for n in (model.model_fields if chosen is None else chosen) if n not in excluded]
    unknown = (set(flags) | excluded | set(chosen or ())) - set(model.model_fields)
    if unknown:
        raise TypeError(f"options_from({model.__name__}): no field(s) {', '.join(sorted(unknown))}")
    options = [_option(n, model.model_fields[n], flags.get(n, Flag())) for n in names]
    by_field = {o.field: o for o in options}

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)
        if into not in signature.parameters:
            raise TypeError(f"options_from: {fn.__name__} has no parameter '{into}' to receive the {model.__name__}")
        own = [p for p in signature.parameters.values() if p.name != into]
        clash = {p.name for p in own} & set(by_field)
        if clash:
            raise TypeError(f"options_from: {fn.__name__} already has parameter(s) {', '.join(sorted(clash))}")

        @functools.wraps(fn)
        def command(**kwargs):
            values = {name: by_field[name].to_value(kwargs.pop(name)) for name in names}
            kwargs[into] = build(model, values, {o.field: o.flag for o in options})
            return fn(**kwargs)

        # All keyword-only (typer passes every value by name), so the model's options can come first in --help.
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = signature.replace(parameters=[*(o.param for o in options), *own])
        command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
        del command.__wrapped__          # typer must read the new signature, not fn's
        return command

    return decorate


def build(model: type[BaseModel], values: dict, flags: Mapping[str, str] | None = None) -> BaseModel:
    """`model(**values)`; a rejected value is a ConfigError naming its flag (`flags`: field -> flag)."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        flag = (flags or {}).get(field, flag_name(field))
        raise ConfigError(f"{flag}: {first['msg']}") from None
