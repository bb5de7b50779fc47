"""What a synthesis mode starts from: examples (seeds, prompts to relabel) or document passages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import FORMATS, FieldProblem, Messages, check_prompt, detect_format
from tunesmith.data.readers import Loc, ReadProblem, iter_records
from tunesmith.errors import DataError, UserError


@dataclass
class Input:
    id: str
    prompt: list[dict]          # the turns before the answer (system, user ...)
    answer: str | None = None   # the reference answer, when the input has one
    source: str = ""

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.prompt if m["role"] == "user")

    @property
    def system(self) -> str | None:
        return self.prompt[0]["content"] if self.prompt and self.prompt[0]["role"] == "system" else None


def _prompt_only(record: dict) -> list[dict]:
    """A record with a prompt and no answer: {"prompt": str} or messages ending with the user."""
    if isinstance(record.get("prompt"), str) and record["prompt"].strip():
        return [{"role": "user", "content": record["prompt"]}]
    if isinstance(record.get("messages"), list):
        messages = Messages.read_messages(record["messages"], "messages")
        check_prompt(messages, "messages")
        return messages
    raise FieldProblem("(record)", "neither an example nor a prompt ({\"prompt\": ...} or messages ending with the user)")


def load_examples(path: str | Path, *, answers_required: bool) -> list[Input]:
    """Every record of a data file as an `Input`; any bad record stops with FILE:LINE (no work done yet)."""
    out, problems = [], []
    for where, record in iter_records(path):
        file, line = (where.file, where.line) if isinstance(where, Loc) else (str(path), where)
        if isinstance(record, ReadProblem):
            problems.append(f"{file}:{line}: {record.field}: {record.message}")
            continue
        fmt = detect_format(record)
        try:
            if fmt is not None and fmt != "text":
                try:
                    sample = FORMATS[fmt].parse(record)
                    prompt, answer = sample.prompt_messages(), sample.reference()
                except FieldProblem:
                    if answers_required:
                        raise
                    prompt, answer = _prompt_only(record), None
            elif answers_required:
                raise FieldProblem("(record)", "expected an example with a prompt and an answer (e.g. messages)")
            else:
                prompt, answer = _prompt_only(record), None
        except FieldProblem as exc:
            problems.append(f"{file}:{line}: {exc.field}: {exc.message}")
            continue
        ident = record.get("id")
        out.append(Input(str(ident) if ident is not None else f"line-{line}", prompt, answer, f"{file}:{line}"))
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:10])
        raise DataError(f"{len(problems)} problem(s) in {path}:\n{shown}", hint=f"run `tunesmith data validate {path}`")
    if not out:
        raise DataError(f"{path}: no examples", hint="give a file with at least one example")
    return out


@dataclass
class Passage:
    source: str
    text: str


@dataclass
class DocumentLoad:
    passages: list[Passage]
    files: int
    skipped: dict[str, str]      # file -> why it could not be read


def load_documents(path: str | Path, words: int, overlap: int) -> DocumentLoad:
    """Passages of every .txt/.md/.pdf below `path` (or of the one file). A document that cannot be
    read or parsed is named and skipped, not fatal; none readable at all is a UserError."""
    from tunesmith.eval.documents import READERS, chunk, document_files

    path = Path(path)
    files = [path] if path.is_file() else document_files(path)
    passages, skipped = [], {}
    for file in files:
        reader = READERS.get(file.suffix.lower())
        if reader is None:
            skipped[str(file)] = f"unsupported type '{file.suffix}' (use .txt, .md or .pdf)"
            continue
        try:
            parts = reader(file)
        except UserError as exc:
            skipped[str(file)] = exc.message
            continue
        except OSError as exc:
            skipped[str(file)] = f"cannot read ({exc.strerror or type(exc).__name__})"
            continue
        passages += [Passage(source, piece) for source, text in parts for piece in chunk(text, words, overlap)]
    if not passages:
        why = "; ".join(f"{f}: {r}" for f, r in list(skipped.items())[:3])
        raise UserError(f"{path}: no document text to synthesize from" + (f" ({why})" if why else ""),
                        hint="give a folder of readable .txt, .md or .pdf files")
    return DocumentLoad(passages, len(files), skipped)
