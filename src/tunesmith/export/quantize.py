"""GGUF weight types: the ones we write ourselves (f32, f16, bf16) and llama.cpp's quantizers.

Quantized types are made by llama.cpp itself (`llama_model_quantize`, through llama-cpp-python)
from the f16 file, exactly as its `llama-quantize` tool does, so K-quant mixes (which tensors get
more bits in q4_k_m, say) are llama.cpp's own.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.export.llama_runtime import llama_cpp_module


@dataclass(frozen=True)
class QuantType:
    name: str
    ftype: int            # llama_ftype
    written: bool         # True: written directly by our converter; False: made by llama_model_quantize


# llama_ftype values (llama.h). Kept here rather than read from llama_cpp so `--help` and validation
# work without the optional llama-cpp-python package.
QUANT_TYPES: dict[str, QuantType] = {q.name: q for q in [
    QuantType("f32", 0, True), QuantType("f16", 1, True), QuantType("bf16", 32, True),
    QuantType("q8_0", 7, False), QuantType("q4_0", 2, False), QuantType("q4_1", 3, False),
    QuantType("q5_0", 8, False), QuantType("q5_1", 9, False), QuantType("q2_k", 10, False),
    QuantType("q3_k_s", 11, False), QuantType("q3_k_m", 12, False), QuantType("q3_k_l", 13, False),
    QuantType("q4_k_s", 14, False), QuantType("q4_k_m", 15, False), QuantType("q5_k_s", 16, False),
    QuantType("q5_k_m", 17, False), QuantType("q6_k", 18, False),
]}


def parse_quants(spec: str) -> list[QuantType]:
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--quant: no type given", hint=f"e.g. --quant f16,q8_0,q4_k_m; known: {', '.join(QUANT_TYPES)}")
    unknown = [n for n in names if n not in QUANT_TYPES]
    if unknown:
        import difflib

        guess = difflib.get_close_matches(unknown[0], list(QUANT_TYPES), n=1)
        extra = f" (did you mean '{guess[0]}'?)" if guess else ""
        raise UserError(f"--quant: unknown type '{unknown[0]}'{extra}", hint=f"known types: {', '.join(QUANT_TYPES)}")
    return [QUANT_TYPES[n] for n in dict.fromkeys(names)]


GGML_TYPE_F16 = 1


def check_keep_patterns(patterns: list[str]) -> list[str]:
    import re

    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"--keep-f16: '{pattern}' is not a valid regular expression ({exc})",
                            hint="e.g. --keep-f16 attn_v  (GGUF tensor names: blk.N.attn_v.weight, ...)") from exc
    return patterns


def quantize_file(src: Path, dst: Path, qtype: QuantType, threads: int | None = None,
                  keep_f16: list[str] | None = None) -> Path:
    """llama.cpp quantization of an f16/f32 GGUF into `dst`, written under a temporary name first.

    keep_f16: regexes of GGUF tensor names llama.cpp leaves in f16 (its tensor-type overrides).
    """
    import ctypes

    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = qtype.ftype
    params.nthread = threads or max(1, min(4, os.cpu_count() or 1))
    if keep_f16:
        # A null-pattern entry ends the list, as in llama.cpp's own tool.
        overrides = (llama_cpp.llama_model_tensor_override * (len(keep_f16) + 1))()
        for slot, pattern in zip(overrides, keep_f16):
            slot.pattern, slot.type = pattern.encode(), GGML_TYPE_F16
        overrides[len(keep_f16)].pattern = None
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        from llama_cpp._utils import suppress_stdout_stderr

        # llama.cpp prints a line per tensor from C; the verify table reports what matters.
        with suppress_stdout_stderr(disable=bool(os.environ.get("TUNESMITH_LLAMA_VERBOSE"))):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise UserError(f"llama.cpp could not quantize {src} to {qtype.name} (code {rc})",
                            hint="run with --debug and check that the f16 file loads in llama.cpp")
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dst
