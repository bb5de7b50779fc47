"""The user's documents for the RAG baseline: a folder of .txt, .md and .pdf files, in passages.

Each suffix has a reader (plain text, or pypdf's text extraction); a file none reads is skipped and
named in the summary. A file that cannot be read or parsed, a folder that is missing, empty or
holds no text, is a one-line UserError naming it, raised when the evaluation is validated, before
any model is loaded or trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError


@dataclass(frozen=True)
class Passage:
    source: str      # "FILE" or "FILE#page N"
    text: str


def _read_text(path: Path) -> list[tuple[str, str]]:
    try:
        return [(str(path), path.read_text(encoding="utf-8-sig"))]
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})", hint="save the file as UTF-8 or remove it") from None


def _read_pdf(path: Path) -> list[tuple[str, str]]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        raise UserError(f"{path}: reading PDF documents needs the pypdf package",
                        hint="pip install 'tunesmith[retrieval]' (or pip install pypdf)") from None
    try:
        reader = PdfReader(path)
        pages = [(f"{path}#page {i + 1}", page.extract_text() or "") for i, page in enumerate(reader.pages)]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot parse this PDF ({type(exc).__name__}: {exc})",
                        hint="re-export it as PDF or convert it to .txt, or remove it from the folder") from None
    if not any(text.strip() for _, text in pages):
        raise UserError(f"{path}: no text could be extracted from this PDF (a scanned image?)",
                        hint="run OCR on it or convert it to .txt, or remove it from the folder")
    return pages


# suffix -> reader returning (source, text) parts; a new format is one entry.
READERS: dict[str, Callable[[Path], list[tuple[str, str]]]] = {".txt": _read_text, ".md": _read_text, ".pdf": _read_pdf}


def chunk(text: str, words: int, overlap: int) -> list[str]:
    """`text` as passages of `words` words, each starting `words - overlap` words after the last."""
    tokens = text.split()
    step = max(1, words - overlap)
    return [" ".join(tokens[i:i + words]) for i in range(0, max(1, len(tokens) - overlap), step) if tokens[i:i + words]]


def document_files(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.exists():
        raise UserError(f"docs folder {root} does not exist", hint="pass --docs DIR with .txt, .md or .pdf files")
    if not root.is_dir():
        raise UserError(f"docs folder {root} is not a folder", hint="pass --docs DIR with .txt, .md or .pdf files")
    try:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in READERS)
    except PermissionError as exc:
        raise UserError(f"{exc.filename or root}: permission denied", hint="make the docs folder readable") from None
    if not files:
        raise UserError(f"docs folder {root} has no .txt, .md or .pdf files",
                        hint="put the documents the answers come from in it, or leave out the rag baseline")
    return files


def load_passages(folder: str | Path, words: int = 120, overlap: int = 30) -> list[Passage]:
    """Every document of `folder` (recursively, in path order) as passages of about `words` words."""
    out: list[Passage] = []
    for path in document_files(folder):
        try:
            parts = READERS[path.suffix.lower()](path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})",
                            hint="check the file's permissions, or remove it from the folder") from None
        out += [Passage(source, piece) for source, text in parts for piece in chunk(text, words, overlap)]
    if not out:
        raise UserError(f"docs folder {folder}: the documents hold no text", hint="add documents with text in them")
    return out
