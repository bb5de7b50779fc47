"""GGUF export of SentencePiece-style tokenizers (Llama 2 / Mistral / TinyLlama: BPE with byte fallback).

A tiny SentencePiece BPE model is trained here with the options Llama 2's tokenizer uses (byte fallback,
no normalization, digits split, whitespace kept), turned into a transformers LlamaTokenizer, and put on
a tiny random Llama. llama.cpp must tokenize like transformers and compute the same logits.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import llama_cpp  # noqa: F401  (a failed llama-cpp-python build must fail here, not skip)
import numpy as np
import pytest
import sentencepiece
import torch

from tests.export.helpers import torch_logits
from tests.export.test_gguf import gguf_logits
from tunesmith.errors import UserError
from tunesmith.export.gguf import export_gguf
from tunesmith.export.llama_runtime import open_llama

WORDS = ("the lighthouse keeper wrote weather ships passed price lamp oil wind north east strong three trawlers "
         "before dark harbour storm boats winter town fishing café").split()
TEXTS = ["Hello world", "the lighthouse keeper wrote 1871 lines.", "naïve café — 日本語 ✓ 🙂",
         "two  spaces\n\tand a tab\n\n", "wind NE 6!? (strong)", "trawlers,boats;storm"]
# Text that starts with whitespace: SentencePiece (and llama.cpp) put the dummy '▁' in front anyway,
# transformers 5's Metaspace does not when the text already starts with one (docs/export.md).
LEADING = ["  two  spaces", " leading space", "\tindented"]


def train_spm(folder: Path) -> None:
    import sentencepiece as spm

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice([".", ",", "!", "?", ""])
             + f" {rng.randint(0, 2000)}" for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=400, model_type="bpe",
                                   byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    root = tmp_path_factory.mktemp("spm")
    train_spm(root / "sp")
    tokenizer = LlamaTokenizer.from_pretrained(str(root / "sp"), add_bos_token=True)
    tokenizer.sp_model_file = root / "sp" / "tokenizer.model"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, initializer_range=0.2,
                                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2))
    folder = root / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = export_gguf(str(folder), root / "gguf", "f32,q8_0", name="spm", threads=1, log=lambda *_: None)
    return model, tokenizer, out


def test_llama_cpp_tokenizes_like_transformers(spm_model):
    from gguf import GGUFReader

    _, tokenizer, result = spm_model
    assert len(tokenizer) == 400
    llm = open_llama(result.files["f32"], vocab_only=True)
    try:
        assert llm.metadata["tokenizer.ggml.model"] == "llama"
        for text in TEXTS:
            hf = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == hf, text
        space = tokenizer.convert_tokens_to_ids("\u2581")
        for text in LEADING:
            hf = tokenizer(text, add_special_tokens=False)["input_ids"]
            got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            assert got == (hf if text[0] != " " else [space] + hf), text
        # After a special token llama.cpp starts a new segment with '▁', as at the start of the text.
        for text in ("the wind", "Hello world"):
            got = llm.tokenize(("</s>" + text).encode("utf-8"), add_bos=False, special=True)
            assert got == [2] + tokenizer(text, add_special_tokens=False)["input_ids"], text
        sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer.sp_model_file))
        for text in TEXTS + LEADING:   # the original SentencePiece agrees everywhere
            assert llm.tokenize(text.encode("utf-8"), add_bos=False) == sp.encode(text), text
        # The non-ASCII text goes through byte fallback on both sides (no CJK pieces in this vocab).
        assert tokenizer.convert_tokens_to_ids("<0xE6>") in tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"]
        # BOS as transformers adds it; llama.cpp's own default follows the file's add_bos_token.
        assert tokenizer("Hello")["input_ids"][0] == 1
        assert llm.tokenize(b"Hello", add_bos=True) == tokenizer("Hello")["input_ids"]
        assert (llm.token_bos(), llm.token_eos()) == (1, 2)
        assert llm.detokenize(tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"]).decode() == " " + TEXTS[2]
    finally:
        llm.close()
    reader = GGUFReader(str(result.files["f32"]))
    types = reader.fields["tokenizer.ggml.token_type"]
    type_of = [int(types.parts[i][0]) for i in types.data]
    assert type_of[0] == 2 and type_of[1] == 3 and type_of[2] == 3      # unk UNKNOWN, bos/eos CONTROL
    assert set(type_of[3:259]) == {6}                                    # <0x00>..<0xFF> are BYTE tokens
    assert bool(reader.fields["tokenizer.ggml.add_bos_token"].parts[-1][0]) is True


def test_spm_export_logits_match_torch(spm_model):
    model, tokenizer, result = spm_model
    ids = tokenizer(" ".join(TEXTS))["input_ids"]
    assert len(ids) > 60
    expected = torch_logits(model, ids).numpy()
    assert np.abs(gguf_logits(result.files["f32"], ids) - expected).max() < 1e-3
    q8 = gguf_logits(result.files["q8_0"], ids)
    assert (q8.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_unsupported_tokenizer_names_the_supported_ones(tiny_model_dir, tmp_path):
    """A Unigram tokenizer (T5 style) has no llama.cpp mapping here: refused before any file is written."""
    import shutil

    from tokenizers import Tokenizer
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "unigram"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    vocab = [("<unk>", 0.0), ("a", -1.0), ("b", -2.0)]
    unigram = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(Unigram(vocab, unk_id=0)), unk_token="<unk>")
    unigram.save_pretrained(folder)
    with pytest.raises(UserError, match=r"tokenizer model 'Unigram'.*\n.*SentencePiece-style BPE with byte fallback"):
        export_gguf(str(folder), tmp_path / "out", "f32", log=lambda *_: None)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
