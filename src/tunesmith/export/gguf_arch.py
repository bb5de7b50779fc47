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
    kind = rope_type(config)
    if kind not in ROPE_WRITERS:
        raise UserError(f"GGUF export: rope scaling '{kind}' is not supported by this converter",
                        hint=f"supported: {', '.join(ROPE_WRITERS)}; use llama.cpp's converter for other scalings")
    return ARCHS[model_type]


def rope_params(config) -> dict:
    # transformers 5 keeps them in rope_parameters, 4.x in rope_scaling (+ rope_theta).
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def rope_type(config) -> str:
    params = rope_params(config)
    return params.get("rope_type") or params.get("type") or "default"


def _rope_default(writer, config) -> None:
    pass


def _rope_linear(writer, config) -> None:
    import gguf

    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(float(rope_params(config)["factor"]))


def _rope_llama3(writer, config) -> None:
    """Llama 3.1-style rope: llama.cpp divides each rotary frequency by a factor from a `rope_freqs`
    tensor. We take the frequencies transformers itself computes, so the two cannot drift apart."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = head_dim(config)
    plain = 1.0 / (rope_theta(config) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    writer.add_tensor("rope_freqs.weight", (plain / scaled.double()).float().numpy())


# rope type -> writes its GGUF keys / tensors
ROPE_WRITERS = {"default": _rope_default, "linear": _rope_linear, "llama3": _rope_llama3}


def write_rope(writer, config) -> None:
    ROPE_WRITERS[rope_type(config)](writer, config)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_theta(config) -> float:
    return float(rope_params(config).get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


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
