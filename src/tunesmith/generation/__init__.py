"""The one decoding package: batching, sampling, stop tokens, the virtual-token decoder, offline
batch generation and the continuous-batching engine. Evaluation, the judge and the server call it;
it imports neither of them. docs/generation.md says which module owns what.
"""

from tunesmith.generation.batching import left_pad, pad_id, positions
from tunesmith.generation.engine import Engine, FallbackPath
from tunesmith.generation.errors import GenerationError
from tunesmith.generation.fallback import PeftFallback
from tunesmith.generation.lora_batch import LoRABank
from tunesmith.generation.offline import generate, generate_tokens, next_token_logits
from tunesmith.generation.request import Event, GenRequest
from tunesmith.generation.sampling import choose_tokens, default_top_k, generate_kwargs, sampler, top_p_filter
from tunesmith.generation.speculate import PromptLookup
from tunesmith.generation.stops import stop_token_ids
from tunesmith.generation.virtual_tokens import VirtualTokenDecoder, virtual_token_kind

__all__ = [
    "Engine", "Event", "FallbackPath", "GenRequest", "GenerationError", "LoRABank", "PeftFallback", "PromptLookup",
    "VirtualTokenDecoder", "choose_tokens", "default_top_k", "generate", "generate_kwargs", "generate_tokens",
    "left_pad", "next_token_logits", "pad_id", "positions", "sampler", "stop_token_ids", "top_p_filter", "virtual_token_kind",
]
