"""Text normalisation for training text, and the stronger folding used only for duplicate keys.

Training text keeps what the model should learn: NFC (not NFKC, which would turn "x²" into "x2"
and full-width CJK punctuation into ASCII), indentation and inner spacing (code and tables depend
on them). Only noise goes: Windows line ends, invisible characters, control bytes, odd Unicode
spaces, trailing spaces, runs of blank lines, and leading/trailing whitespace.

Duplicate keys fold much harder (NFKC, case, every whitespace run to one space), so two examples
that differ only in such details count as the same text.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from tunesmith.data.schema import Sample

# Zero-width space, word joiner, BOM and soft hyphen carry nothing a model should learn. ZWJ/ZWNJ
# stay: they are meaningful in emoji sequences and in Persian and Indic scripts.
_INVISIBLE = re.compile("[\u200b\u2060\ufeff\u00ad]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ODD_SPACE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile(r"[ \t]+(?=\n)")
_BLANK_RUN = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():  # the common all-ASCII case skips the Unicode passes
        text = _ODD_SPACE.sub(" ", _INVISIBLE.sub("", unicodedata.normalize("NFC", text)))
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()


def normalize_sample(sample: Sample) -> Sample:
    return replace(
        sample,
        messages=[{**m, "content": normalize_text(m["content"])} for m in sample.messages],
        text=None if sample.text is None else normalize_text(sample.text),
        chosen=None if sample.chosen is None else normalize_text(sample.chosen),
        rejected=None if sample.rejected is None else normalize_text(sample.rejected),
    )


def fold(text: str) -> str:
    return _ANY_SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def sample_parts(sample: Sample) -> list[tuple[str, str]]:
    """(role, text) pieces of a sample, in order; preference answers count as two more turns."""
    parts = [(m["role"], m["content"]) for m in sample.messages]
    if sample.text is not None:
        parts.append(("text", sample.text))
    if sample.chosen is not None:
        parts += [("chosen", sample.chosen), ("rejected", sample.rejected or "")]
    if sample.label is not None:
        # The same completion marked desirable and undesirable is two different records, not a copy.
        parts.append(("label", "desirable" if sample.label else "undesirable"))
    return parts


def exact_key(sample: Sample) -> str:
    """Folded text with the roles, so the same words in a different conversation shape stay distinct."""
    return "\x1e".join(f"{role}\x1f{fold(text)}" for role, text in sample_parts(sample))


def content_words(sample: Sample) -> list[str]:
    """The folded words of every turn, in order: what near-duplicate shingles are made from."""
    return fold(" ".join(text for _, text in sample_parts(sample))).split(" ")


def empty_part(sample: Sample) -> tuple[str, str] | None:
    """(reason, field) when normalisation left a required part empty, else None."""
    if sample.text is not None:
        return ("empty_text", "text") if not sample.text else None
    if sample.chosen is not None and not (sample.chosen and sample.rejected):
        return "empty_response", "chosen" if not sample.chosen else "rejected"
    for i, m in enumerate(sample.messages):
        if not m["content"]:
            reason = "empty_response" if m["role"] == "assistant" else "empty_prompt"
            return reason, f"messages[{i}].content"
    return None


def preview(sample: Sample, limit: int = 120) -> str:
    text = " | ".join(f"{role}: {t}" for role, t in sample_parts(sample))
    text = _ANY_SPACE.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
