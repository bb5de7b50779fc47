"""The `method:` section is validated against the options model of the method it names.

Each method declares its options once (a pydantic model in its module); these tests pin what a user
sees for keys a method does not take, which configs keep working when only `method.name` changes,
and that a method registered at run time (the toy below) is picked up by config validation,
`tunesmith methods`, the generated docs and the method matrix's coverage check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import Field

from tunesmith.config import RunConfig, dump_yaml, load_config, starter_yaml, validate
from tunesmith.errors import ConfigError
from tunesmith.methods import METHODS, Method, MethodOptions, Prepared, method_options, prepare_method
from tunesmith.methods.options import SHARED_KEYS, option_keys
from tunesmith.methods.registry import register_method, trainable_groups, unregister_method
from tunesmith.quickstart import quickstart_config_path

REPO = Path(__file__).resolve().parents[2]


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        validate(raw, "x.yaml")
    return e.value.message


def test_each_method_validates_against_its_own_model():
    cfg = validate({"method": {"name": "vera", "vera_r": 64}})
    assert type(cfg.method) is METHODS["vera"].options and cfg.method.vera_r == 64
    assert set(option_keys(type(cfg.method))) == {"dropout", "target_modules", "vera_r"}
    assert type(RunConfig().method) is METHODS["lora"].options


def test_unknown_option_names_the_method_its_keys_and_a_guess():
    message = error_of({"method": {"name": "lora", "rr": 8}})
    assert message.startswith("x.yaml: unknown key 'method.rr' for method 'lora' (did you mean 'method.r'?)")
    assert "method 'lora' takes: r, alpha, dropout, target_modules, rslora, dora, loraplus_lr_ratio, lora_fa" in message


def test_another_methods_option_names_the_methods_that_take_it():
    message = error_of({"method": {"name": "ia3", "vera_r": 8}})
    assert "method.vera_r is set but method 'ia3' does not use it (method.vera_r applies to: vera)" in message
    assert "method 'ia3' takes: target_modules, ia3_feedforward_modules" in message


def test_every_mistake_in_the_section_is_reported_at_once():
    message = error_of({"method": {"name": "prefix", "lora_fa": True, "nmu_virtual_tokens": 4}, "train": {"lrr": 1}})
    assert "method.lora_fa is set but method 'prefix'" in message
    assert "unknown key 'method.nmu_virtual_tokens' for method 'prefix' (did you mean 'method.num_virtual_tokens'?)" in message
    assert "unknown key 'train.lrr'" in message


def test_unknown_method_and_bad_values():
    assert "unknown method 'vear' (did you mean 'vera'?)" in error_of({"method": {"name": "vear"}})
    assert "method.name: expected a string" in error_of({"method": {"name": 3}})
    assert "method.vera_r: expected an integer, got 'big'" in error_of({"method": {"name": "vera", "vera_r": "big"}})
    assert "method.spectrum_top_percent" in error_of({"method": {"name": "spectrum", "spectrum_top_percent": 150}})
    assert "method: expected a mapping of keys" in error_of({"method": "lora"})


@pytest.mark.parametrize("name", list(METHODS))
def test_shared_adapter_shape_keys_are_accepted_by_every_method(name):
    keys = {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj"]}
    cfg = validate({"method": {"name": name, **keys}})
    for key in SHARED_KEYS:
        if key in type(cfg.method).model_fields:
            assert getattr(cfg.method, key) == keys[key]
        else:   # ignored, and not written back into the run's config.yaml
            assert key not in yaml.safe_load(dump_yaml(cfg))["method"]


def test_an_ignored_shared_key_still_has_to_have_the_right_type():
    assert "method.r: expected an integer" in error_of({"method": {"name": "full", "r": "eight"}})


def test_a_config_saved_with_every_methods_keys_at_their_defaults_still_loads():
    # config.yaml files written before options were per method spell out every key of every method.
    every_key = {}
    for method in METHODS.values():
        every_key.update(method.options().model_dump(exclude={"name"}))
    for name in ("lora", "dora", "ia3", "full"):
        assert validate({"method": {"name": name, **every_key}}).method.name == name
    message = error_of({"method": {"name": "ia3", **every_key, "bottleneck_size": 8}})
    assert "method.bottleneck_size is set but method 'ia3' does not use it" in message


def test_switching_method_name_with_set_after_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  name: lora\n  r: 8\n  alpha: 16\n")
    for name in METHODS:
        cfg = load_config(path, [f"method.name={name}"])
        assert cfg.method.name == name
        assert getattr(cfg.method, "r", 8) == 8
    # The file's own LoRA options, not defaults filled in by validation, travel with the switch.
    assert load_config(path, ["method.name=lora", "method.lora_fa=true"]).method.lora_fa is True
    path.write_text("method:\n  name: lora\n  loraplus_lr_ratio: 16\n")
    with pytest.raises(ConfigError, match="method.loraplus_lr_ratio is set but method 'prefix' does not use it"):
        load_config(path, ["method.name=prefix"])


@pytest.mark.parametrize("name", list(METHODS))
def test_the_quickstart_config_takes_every_method_name(name, tmp_path):
    cfg = load_config(quickstart_config_path(), [f"method.name={name}"])
    assert cfg.method.name == name


def test_every_config_the_methods_benchmark_builds_is_valid(tmp_path):
    import importlib.util

    from tunesmith.quickstart import quickstart_config

    spec = importlib.util.spec_from_file_location("bench_methods", REPO / "bench" / "methods.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for row in [*METHODS, *bench.VARIANTS]:
        cfg = quickstart_config(tmp_path / row, bench.method_overrides(row, steps=12, eval_examples=16))
        assert cfg.method.name == bench.VARIANTS.get(row, (row,))[0] and cfg.output.dir == str(tmp_path / row)
        assert getattr(cfg.method, "r", 16) == 16   # the quickstart's r travels to every method that takes it


def test_the_dumped_config_holds_only_the_chosen_methods_keys_and_round_trips():
    cfg = validate({"method": {"name": "bottleneck", "bottleneck_size": 8}})
    dumped = yaml.safe_load(dump_yaml(cfg))
    assert dumped["method"] == {"name": "bottleneck", "bottleneck_size": 8, "bottleneck_activation": "relu"}
    assert validate(dumped) == cfg


def test_method_options_builds_and_checks_like_the_config():
    opts = method_options(name="qlora", r=4, dora=True)
    assert type(opts) is METHODS["qlora"].options and opts.dora and opts.r == 4
    with pytest.raises(ConfigError, match="method.vera_r is set but method 'lora' does not use it"):
        method_options(name="lora", vera_r=8)
    # Assigning a new name re-dispatches to that method's model.
    cfg = RunConfig()
    cfg.method = {"name": "prompt", "num_virtual_tokens": 4}
    assert type(cfg.method) is METHODS["prompt"].options


def test_every_option_has_a_description_and_appears_in_the_starter_file():
    starter = starter_yaml()
    for method in METHODS.values():
        for key, field in method.options.model_fields.items():
            assert field.description, f"{method.name}.{key}"
            assert f"{key}: " in starter, key


def test_methods_are_listed_in_registration_order_not_import_order():
    assert list(METHODS) == ["lora", "rslora", "dora", "qlora", "delta_lora", "vera", "ia3", "prefix", "prompt",
                             "bottleneck", "spectrum", "full", "freeze"]


# --- a method registered at run time ----------------------------------------------------------

class ToyOptions(MethodOptions):
    toy_layers: int = Field(1, gt=0, description="toy: train the output head and this many final norms")


class Toy(Method):
    name = "toy"
    summary = "test-only: trains the output head"
    options = ToyOptions
    kind = "full"

    def prepare(self, model, cfg, lr):
        self.check(cfg)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("lm_head") or "embed_tokens" in name)
        return Prepared(model, trainable_groups(model, lr), kind=self.kind)


@pytest.fixture
def toy_method():
    register_method(Toy)
    try:
        yield METHODS["toy"]
    finally:
        unregister_method("toy")
    assert "toy" not in METHODS


def test_a_registered_method_is_validated_against_its_own_options(toy_method):
    cfg = validate({"method": {"name": "toy", "toy_layers": 2, "r": 4}})
    assert type(cfg.method) is ToyOptions and cfg.method.toy_layers == 2
    assert "(did you mean 'method.toy_layers'?)" in error_of({"method": {"name": "toy", "toy_layer": 2}})
    assert "method.toy_layers is set but method 'lora' does not use it (method.toy_layers applies to: toy)" in \
        error_of({"method": {"name": "lora", "toy_layers": 2}})
    assert "toy_layers: 1  # toy: train the output head" in starter_yaml()


def test_a_registered_method_is_listed_and_prepared(toy_method, tiny_model_dir, capsys):
    from tunesmith.cli import main
    from tunesmith.methods.docs import DOC, options_markdown, with_tables
    from tunesmith.models import load_model

    for args in (["methods", "--markdown"], ["methods", "--model", str(tiny_model_dir)]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "toy" in text and "toy_layers" in text
    assert "| `toy` | test-only: trains the output head | `toy_layers` | 0.001 | full model |" in options_markdown()
    # The docs sync test would now fail: the committed tables lack the new method.
    assert with_tables(DOC.read_text(encoding="utf-8")) != DOC.read_text(encoding="utf-8")

    prepared = prepare_method(load_model(str(tiny_model_dir)), method_options(name="toy"), 1e-3)
    assert prepared.kind == "full" and prepared.trainable_parameters() > 0


def test_the_method_matrix_requires_a_row_for_a_registered_method(toy_method):
    from tests.methods import test_matrix as test_methods_matrix

    with pytest.raises(AssertionError, match=r"add a CASES row .* for \['toy'\]"):
        test_methods_matrix.test_every_registered_method_is_in_the_matrix()
