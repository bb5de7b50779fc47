"""The methods and options tables of docs/methods.md, generated from the registered options models.

    python -m tunesmith.methods.docs [docs/methods.md]           # rewrite the tables in place
    python -m tunesmith.methods.docs --check [docs/methods.md]   # exit 1 when they are stale

The tables sit between OPTIONS_START and OPTIONS_END; the rest of the file (guide text, benchmark
results) is left as it is. `tunesmith methods --markdown` prints the same tables.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

import annotated_types
import yaml

from tunesmith.methods.options import option_keys
from tunesmith.methods.registry import METHODS

OPTIONS_START = "<!-- options:start (generated from the method options models: python -m tunesmith.methods.docs) -->"
OPTIONS_END = "<!-- options:end -->"
DOC = Path(__file__).resolve().parents[3] / "docs" / "methods.md"

_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="),
           (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="))


def yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def allowed_values(field) -> str:
    """What a field accepts: a Literal's choices, a number's bounds, or its type in words."""
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return " \\| ".join(str(v) for v in typing.get_args(annotation))
    bounds = [f"{sign} {getattr(m, attr):g}" for m in field.metadata for kind, attr, sign in _BOUNDS if isinstance(m, kind)]
    words = {int: "integer", float: "number", bool: "true \\| false", str: "text"}
    base = words.get(annotation)
    if base is None:
        args = set(typing.get_args(annotation))
        base = "text or list of text" if str in args and list[str] in args else \
            "text or null" if args == {str, type(None)} else "list of text" if annotation == list[str] else str(annotation)
    return f"{base} {', '.join(bounds)}".strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if "\\|" not in text else text


def methods_table() -> str:
    rows = ["| method | what it trains | options | `lr: auto` | saves | merge | GGUF |", "|---|---|---|---|---|---|---|"]
    for m in METHODS.values():
        keys = ", ".join(f"`{k}`" for k in option_keys(m.options)) or "-"
        saves = "adapter folder" if m.kind == "adapter" else "full model"
        merge = "not needed" if m.kind == "full" else "yes" if m.mergeable else "no"
        rows.append(f"| `{m.name}` | {_cell(m.summary)} | {keys} | {m.default_lr:g} | {saves} | {merge} | "
                    f"{'yes' if m.gguf_exportable else 'no'} |")
    return "\n".join(rows)


def options_table() -> str:
    """Every option once, with the methods that take it (a mixin's field is one row)."""
    seen: dict[str, tuple] = {}
    for m in METHODS.values():
        for key in option_keys(m.options):
            field = m.options.model_fields[key]
            if key not in seen:
                seen[key] = (field, [])
            seen[key][1].append(m.name)
    rows = ["| option | default | accepts | methods | description |", "|---|---|---|---|---|"]
    for key, (field, users) in seen.items():
        default = yaml_value(field.get_default(call_default_factory=True))
        rows.append(f"| `{key}` | `{default}` | {allowed_values(field)} | {', '.join(users)} | {_cell(field.description or '')} |")
    return "\n".join(rows)


def options_markdown() -> str:
    return f"{methods_table()}\n\n{options_table()}"


def options_section() -> str:
    """The generated tables with their markers, as they stand in docs/methods.md."""
    return f"{OPTIONS_START}\n{options_markdown()}\n{OPTIONS_END}"


def with_tables(text: str) -> str:
    """`text` with the part between the markers replaced by freshly generated tables."""
    start, end = text.find(OPTIONS_START), text.find(OPTIONS_END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {OPTIONS_START!r} ... {OPTIONS_END!r} are missing")
    return text[:start] + options_section() + text[end + len(OPTIONS_END):]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"]
    path = Path(paths[0]) if paths else DOC
    text = path.read_text(encoding="utf-8")
    fresh = with_tables(text)
    if check:
        if fresh != text:
            print(f"{path}: the options tables are stale; run python -m tunesmith.methods.docs {path}", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        path.write_text(fresh, encoding="utf-8")
        print(f"rewrote the options tables of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
