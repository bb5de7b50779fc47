"""HF architectures that we know how to lay out as llama.cpp GGUF: one `ArchSpec` per model_type.

Tensor names come from gguf-py's own name map. What differs between architectures is the GGUF
arch string, the hyper-parameter keys, and whether q/k rows must be permuted: HF Llama checkpoints
store each head's rotary pairs as two halves (rotate_half), while llama.cpp's LLAMA graph rotates
adjacent pairs, so q and k are re-ordered head by head. Qwen2 runs NEOX-style rope in llama.cpp and
keeps the HF order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunesmith.errors import UserError


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str            # llama.cpp's architecture string
    permute_qk: bool          # HF half-split rope -> llama.cpp interleaved rope


ARCHS: dict[str, ArchSpec] = {}


def register_arch(model_type: str, spec: ArchSpec) -> None:
    ARCHS[model_type] = spec


# SmolLM / SmolLM2 and Mistral checkpoints are model_type "llama" / "mistral" with the Llama graph.
register_arch("llama", ArchSpec("llama", permute_qk=True))
register_arch("mistral", ArchSpec("llama", permute_qk=True))
register_arch("qwen2", ArchSpec("qwen2", permute_qk=False))


def arch_for(config) -> ArchSpec:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise UserError(f"GGUF export: architecture '{model_type}' is not supported",
                        hint=f"supported model_type values: {', '.join(sorted(ARCHS))}; "
                             "for others use llama.cpp's convert_hf_to_gguf.py on the merged folder")
    rope = getattr(config, "rope_scaling", None) or {}
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type")) or params.get("rope_type") or "default"
    if rope_type != "default":
        raise UserError(f"GGUF export: rope scaling '{rope_type}' is not supported by this converter",
                        hint="models with default rope (Llama 2, Mistral, Qwen2, SmolLM) export; "
                             "use llama.cpp's converter for scaled-rope models")
    return ARCHS[model_type]


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def write_hparams(writer, config) -> None:
    """The hyper-parameters llama.cpp reads for the Llama-family graphs (same keys for qwen2)."""
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_vocab_size(int(config.vocab_size))


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of one q/k projection (or of a LoRA B for it): per head, [x0..x_{d/2-1}, y0..] -> [x0, y0, x1, y1, ...].

    w: (n_head * head_dim, ...). Works for a weight (out, in), a bias (out,) and a LoRA B (out, r).
    """
    rest = w.shape[1:]
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def qk_heads(hf_name: str, config) -> int | None:
    """Number of heads to permute over for a q/k tensor name, None for every other tensor."""
    if ".q_proj." in hf_name or hf_name.endswith(".q_proj"):
        return int(config.num_attention_heads)
    if ".k_proj." in hf_name or hf_name.endswith(".k_proj"):
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    return None


def gguf_tensor_name(hf_name: str, spec: ArchSpec, n_blocks: int) -> str | None:
    """llama.cpp's name for an HF tensor ('model.layers.0.self_attn.q_proj.weight' -> 'blk.0.attn_q.weight')."""
    import gguf

    arch = gguf.MODEL_ARCH[spec.gguf_arch.upper()]
    name_map = gguf.get_tensor_name_map(arch, n_blocks)
    return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
