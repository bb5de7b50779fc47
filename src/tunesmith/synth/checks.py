"""Programmatic checks of a candidate: a JSON Schema its answer must satisfy, or a user's Python
`check(example) -> bool | str` (True keeps it; False or a string, the reason, drops it).

Both are loaded and verified before any teacher request: a schema file that is not JSON Schema, a
Python file without `check`, is a one-line UserError. A check function that raises stops the run
with the function and the example id named (a buggy check must not silently drop everything).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from tunesmith.errors import UserError

# (example record) -> None (keep) or the reason it is dropped
Check = Callable[[dict], str | None]


def _schema_check(path: Path) -> Check:
    try:
        import jsonschema
    except ImportError:
        raise UserError(f"--check {path}: JSON Schema checks need the jsonschema package",
                        hint="pip install jsonschema (or 'tunesmith[all]')") from None
    try:
        schema = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--check {path}: not JSON ({exc})", hint="give a JSON Schema file (.json) or a Python file defining check(example)") from None
    if not isinstance(schema, (dict, bool)):
        raise UserError(f"--check {path}: not a JSON Schema (a schema is an object, got {type(schema).__name__})",
                        hint="see https://json-schema.org, e.g. {\"type\": \"object\", \"required\": [\"item\"]}")
    cls = jsonschema.validators.validator_for(schema) if isinstance(schema, dict) else jsonschema.Draft202012Validator
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top)"
        raise UserError(f"--check {path}: not a valid JSON Schema at {where}: {exc.message}",
                        hint="fix the schema (e.g. check it with `python -m jsonschema`)") from None
    validator = cls(schema)

    def check(example: dict) -> str | None:
        answer = example["messages"][-1]["content"]
        try:
            value = json.loads(answer)
        except json.JSONDecodeError:
            return "schema: the answer is not JSON"
        error = next(iter(validator.iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.path)
        return f"schema: {where + ': ' if where else ''}{error.validator}"

    return check


def _python_check(path: Path) -> Check:
    spec = importlib.util.spec_from_file_location(f"tunesmith_user_check_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module: any error is theirs
        raise UserError(f"--check {path}: importing it failed ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, "check", None)
    if not callable(fn):
        raise UserError(f"--check {path}: defines no function check(example)",
                        hint="def check(example: dict) -> bool | str: return True to keep, False or a reason to drop")

    def check(example: dict) -> str | None:
        try:
            verdict = fn(example)
        except Exception as exc:  # noqa: BLE001 - the user's code
            raise UserError(f"--check {path}: check() raised {type(exc).__name__}: {exc} on example {example.get('id')}",
                            hint="fix the function (it must return True, False or a reason), then rerun: "
                                 "teacher replies so far are cached") from None
        if verdict is True:
            return None
        if verdict is False or verdict is None:
            return "check: returned False"
        if isinstance(verdict, str):
            return f"check: {verdict}"
        raise UserError(f"--check {path}: check() returned {type(verdict).__name__} on example {example.get('id')}",
                        hint="return True to keep, False or a reason (a string) to drop")

    return check


LOADERS: dict[str, Callable[[Path], Check]] = {".json": _schema_check, ".py": _python_check}


def load_check(path: str | Path) -> Check:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--check {path}: file not found")
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise UserError(f"--check {path}: unknown kind of check '{path.suffix}'",
                        hint="a JSON Schema (.json) or a Python file defining check(example) (.py)")
    return loader(path)
