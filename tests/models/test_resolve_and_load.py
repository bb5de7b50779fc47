import json

import pytest

from tunesmith.errors import ModelNotFound
from tunesmith.models import load_model, resolve_base


def test_default_resolves_to_cached_hf_folder(default_model_dir):
    resolved = resolve_base("default")
    assert resolved.path == default_model_dir
    assert (resolved.path / "config.json").is_file()
    assert (resolved.path / "model.safetensors").is_file()
    cfg = json.loads((resolved.path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576
    assert "quantization_config" not in cfg


def test_default_tokenizer_has_chat_template(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_local_folder(tiny_model_dir):
    model = load_model(str(tiny_model_dir))
    assert model.config.num_hidden_layers == 2


def test_missing_model_lists_places_searched(tmp_path):
    with pytest.raises(ModelNotFound) as e:
        resolve_base("someone/not-a-cached-model")
    msg = e.value.message
    assert "Searched" in msg and "local path" in msg and "Hugging Face cache" in msg


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelNotFound) as e:
        resolve_base(str(tmp_path))
    assert "no config.json" in e.value.message


def test_adapter_folder_is_not_a_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelNotFound) as e:
        resolve_base(str(tmp_path))
    assert "adapter folder" in e.value.message


@pytest.mark.slow
def test_default_model_is_a_working_chat_model(default_model_dir, tokenizer):
    """The converted default answers greedily like an instruct model (checked on a fixed prompt)."""
    model = load_model("default")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_models_load_without_hub_kernels(tiny_model_dir):
    """transformers 5 swaps layers for Hugging Face hub kernels in every model it loads while the `kernels`
    package is installed (a requirement of it); on a CUDA device that downloads them at load or at `.train()`
    (seen on an H200: offline it fails). tunesmith loads with that off, also after switching to training."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    if not hasattr(PreTrainedModel, "set_use_kernels"):
        pytest.skip("this transformers has no hub kernels")
    model = load_model(str(tiny_model_dir))
    model.train()
    assert model.use_kernels is False and model.kernels_mode is None
    assert AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).use_kernels   # transformers' default: this can fail
