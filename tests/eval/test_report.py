"""The evaluation run end to end on the tiny model with a LoRA adapter: systems, report files,
predictions.jsonl rows, numbers that match a direct recomputation, flags, and the `tunesmith eval` CLI."""

from __future__ import annotations

import json
import sys

import pytest
import sacrebleu

from tests.conftest import write_jsonl
from tunesmith.cli import main
from tunesmith.config import EvalConfig
from tunesmith.data.load import load_samples
from tunesmith.eval import lm_harness, regression
from tunesmith.eval.perplexity import perplexity
from tunesmith.eval.report import markdown
from tunesmith.eval.runner import baseline_weights, build_report, build_systems, read_train_log, run_eval


def cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def chat(i: int) -> dict:
    return {"id": f"ex-{i}", "messages": [{"role": "user", "content": f"Code for item {i}?"},
                                          {"role": "assistant", "content": f"ITEM-{i:03d}"}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    """Held-out and train data, and two saved LoRA adapters on the tiny model (random, non-zero B)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunesmith.models import load_model

    root = tmp_path_factory.mktemp("eval-files")
    out = {"test": write_jsonl(root / "test.jsonl", [chat(i) for i in range(5)]),
           "train": write_jsonl(root / "train.jsonl", [chat(i) for i in range(100, 112)]),
           "text": write_jsonl(root / "text.jsonl", [{"text": "The moon orbits the Earth about once a month."},
                                                     {"text": "Bees carry pollen from flower to flower."}])}
    for name, seed in (("adapter", 1), ("other", 2)):
        torch.manual_seed(seed)
        model = get_peft_model(load_model(str(tiny_model_dir)),
                               LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def tuned(files, tiny_model_dir):
    from peft import PeftModel

    from tunesmith.models import load_model

    return PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(files["adapter"])).eval()


def test_run_eval_report_numbers_match_recomputation(files, tuned, tokenizer, tmp_path):
    cfg = EvalConfig(metrics=["exact_match", "bleu", "rougeL"], max_new_tokens=6, few_shot_k=2, batch_size=4,
                     compare_to=str(files["other"]))
    samples = load_samples(files["test"]) + load_samples(files["text"])
    systems = build_systems(tuned, cfg.baselines)
    # A training run's log in the report folder: the last step with a validation loss is step 2.
    write_jsonl(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.0, "val_loss": 1.8},
                                             {"step": 3, "loss": 0.2}])
    result = run_eval(systems, tokenizer, samples, cfg, tmp_path, train_pool=load_samples(files["train"]),
                      training={"final_loss": 0.2, "best_val_loss": 1.8}, title="t")
    report = json.loads((tmp_path / "report.json").read_text())
    for name in ("report.md", "predictions.jsonl", "report.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    names = ["base_zero_shot", "base_few_shot", "tuned", "compare"]
    assert list(report["systems"]) == names
    assert report["metrics"] == ["exact_match", "bleu", "rougeL", "response_perplexity", "perplexity"]
    assert report["n_examples"] == 5 and report["n_text_examples"] == 2

    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * len(names)
    references = [f"ITEM-{i:03d}" for i in range(5)]
    for name in names:
        mine = [r for r in rows if r["system"] == name]
        assert [r["reference"] for r in mine] == references
        assert all({"system", "prompt", "prediction", "reference"} <= set(r) for r in mine)
        preds = [r["prediction"] for r in mine]
        assert preds == result.predictions[name]
        entry = report["systems"][name]
        assert entry["exact_match"] == pytest.approx(sum(p == t for p, t in zip(preds, references)) / 5)
        assert entry["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [references]).score, abs=1e-9)
        lo, hi = entry["bleu_ci95"]
        assert lo <= entry["bleu"] + 1e-9 and entry["bleu"] <= hi + 1e-9
    zero = [r for r in rows if r["system"] == "base_zero_shot"][0]["prompt"]
    few = [r for r in rows if r["system"] == "base_few_shot"][0]["prompt"]
    assert len(zero) == 1 and len(few) == 2 * 2 + 1 and few[-1] == zero[-1]

    # Perplexity columns equal a direct computation with the adapter off (base) and on (tuned).
    chats, texts = load_samples(files["test"]), load_samples(files["text"])
    with tuned.disable_adapter():
        base_ppl = perplexity(tuned, tokenizer, chats).perplexity
        base_text = perplexity(tuned, tokenizer, texts).perplexity
    tuned_ppl = perplexity(tuned, tokenizer, chats).perplexity
    assert report["systems"]["base_zero_shot"]["response_perplexity"] == pytest.approx(base_ppl, rel=1e-6)
    assert report["systems"]["base_few_shot"]["response_perplexity"] == pytest.approx(base_ppl, rel=1e-6)
    assert report["systems"]["base_zero_shot"]["perplexity"] == pytest.approx(base_text, rel=1e-6)
    assert report["systems"]["tuned"]["response_perplexity"] == pytest.approx(tuned_ppl, rel=1e-6)
    assert abs(tuned_ppl - base_ppl) > 1e-3 * base_ppl  # the adapter really is on for "tuned"
    assert report["lower_is_better"] == ["response_perplexity", "perplexity"]

    # Verdict against the best baseline, then against the compare system; settings and flags recorded.
    assert [c["baseline"] for c in report["comparisons"]][1:] == ["compare"]
    assert report["verdict"].startswith("tuned ") and "the best baseline (" in report["verdict"]
    assert "tuned" in report["verdict"] and "compare on exact_match" in report["verdict"]
    assert report["generation"] == {"max_new_tokens": 6, "temperature": 0.0, "top_p": 1.0, "seed": 0, "batch_size": 4,
                                    "few_shot_k": 2, "decoding": "greedy", "precision": "fp32", "padding": "left",
                                    "loop_limit": 4}   # short references: the least limit (eval.stop_loops)
    assert report["overfitting"] == {"step": 2, "train_loss": 1.0, "val_loss": 1.8, "gap": pytest.approx(0.8),
                                     "flagged": True, "threshold": 0.5}
    assert report["baseline_weights"] == {"source": "adapter_off", "quantized_bits": None,
                                          "note": "the tuned model's own base weights with the adapter switched off"}
    assert report["details"]["tuned"]["bleu"]["signature"].startswith("nrefs:1|")

    # Forgetting check: base numbers equal the shipped set scored directly, and the flag follows the thresholds.
    reg = report["regression"]
    _, reg_texts = regression.load_regression_set()
    with tuned.disable_adapter():
        assert reg["text"]["base_perplexity"] == pytest.approx(perplexity(tuned, tokenizer, reg_texts).perplexity, rel=1e-6)
    assert reg["text"]["tuned_perplexity"] == pytest.approx(perplexity(tuned, tokenizer, reg_texts).perplexity, rel=1e-6)
    assert reg["qa"]["n"] == 150
    expected_flag = ((reg["qa"]["tuned"] - reg["qa"]["base"] < -0.05 and reg["qa"]["difference_ci95"][1] < 0)
                     or reg["text"]["relative_change"] > 0.10)
    assert reg["flagged"] == expected_flag and bool(reg["reasons"]) == expected_flag
    md = (tmp_path / "report.md").read_text()
    for text in ("**Verdict:**", "| base_few_shot |", "## Regression (forgetting)", "Generation: max_new_tokens=6",
                 "sacrebleu signature", "possible overfitting", "lower is better",
                 "Base systems: the tuned model's own base weights with the adapter switched off."):
        assert text in md, text


def test_forgetting_flag_thresholds():
    cfg = EvalConfig(regression_acc_drop=0.05, regression_ppl_rise=0.10)
    base = {"qa_scores": [1.0] * 10 + [0.0] * 10, "ppl_rows": [(20.0, 10)]}       # acc 0.5, ppl e^2
    same = regression.compare(base, dict(base), cfg)
    assert not same["flagged"] and same["qa"]["difference"] == 0.0 and same["text"]["relative_change"] == 0.0
    # Two of 20 answers lost: a drop of 0.10, past the threshold, but the paired interval reaches 0 (a resample
    # without either lost answer is 12 % likely): a note, not a flag.
    noisy = {"qa_scores": [1.0] * 8 + [0.0] * 12, "ppl_rows": [(20.0, 10)]}
    r = regression.compare(base, noisy, cfg)
    assert not r["flagged"] and r["reasons"] == [] and r["qa"]["difference_ci95"][1] == 0.0
    assert r["notes"] == ["general QA accuracy fell 0.500 -> 0.400 (more than 0.05; 95 % CI of the difference "
                          f"{r['qa']['difference_ci95'][0]:+.3f} to +0.000): within noise, not flagged"]
    # Twelve of 60 lost (0.5 -> 0.3): the interval lies below zero.
    base60 = {"qa_scores": [1.0] * 30 + [0.0] * 30, "ppl_rows": [(20.0, 10)]}
    worse = {"qa_scores": [1.0] * 18 + [0.0] * 42, "ppl_rows": [(20.0, 10)]}
    r = regression.compare(base60, worse, cfg)
    assert r["flagged"] and r["notes"] == [] and r["qa"]["difference_ci95"][1] < 0
    assert r["reasons"][0].startswith("general QA accuracy fell 0.500 -> 0.300 (more than 0.05; 95 % CI")
    from tunesmith.eval.sections.forgetting import HELP, Forgetting

    flagged = "\n".join(Forgetting().markdown({"regression": r}))
    assert "**possible catastrophic forgetting**" in flagged and HELP in flagged and "answers: base" in HELP
    quiet = "\n".join(Forgetting().markdown({"regression": regression.compare(base, noisy, cfg)}))
    assert "no forgetting flag" in quiet and HELP not in quiet and "Note: general QA accuracy fell" in quiet
    small = {"qa_scores": [1.0] * 10 + [0.0] * 10, "ppl_rows": [(20.9, 10)]}      # ppl x e^0.09 = +9.4 %
    assert not regression.compare(base, small, cfg)["flagged"]
    big = {"qa_scores": [1.0] * 10 + [0.0] * 10, "ppl_rows": [(21.0, 10)]}        # ppl x e^0.1 = +10.5 %
    r = regression.compare(base, big, cfg)
    assert r["flagged"] and r["text"]["relative_change"] == pytest.approx(2.718281828 ** 0.1 - 1, rel=1e-6)


def test_overfitting_flag_respects_threshold():
    cfg = EvalConfig(metrics=["exact_match"], overfit_gap=0.5)
    columns = {}
    report = build_report({}, columns, cfg, n=0, training={"final_loss": 1.0, "best_val_loss": 1.3}, precision="fp32",
                          title="t", train_log=[{"step": 5, "loss": 1.0, "val_loss": 1.3}])
    assert report["overfitting"]["flagged"] is False and report["overfitting"]["gap"] == pytest.approx(0.3)


def test_overfitting_compares_train_and_validation_loss_of_the_same_step(tmp_path):
    # Best validation loss (1.5) at step 2; the last step with both losses is 4; training ran on to step 5.
    log = tmp_path / "metrics.jsonl"
    write_jsonl(log, [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0, "val_loss": 1.5}, {"step": 3, "loss": 1.2},
                      {"step": 4, "loss": 0.9, "val_loss": 1.6}, {"step": 5, "loss": 0.3}])
    with open(log, "a") as fh:
        fh.write('{"step": 6, "lo')  # a run killed mid-append
    rows = read_train_log(log)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    training = {"final_loss": 0.3, "best_val_loss": 1.5}
    # Final train loss vs best validation loss would be 1.5 - 0.3 = 1.2 and flag; step 4's own gap is 0.7.
    report = build_report({}, {}, EvalConfig(overfit_gap=0.8), n=0, training=training, precision="fp32", title="t",
                          train_log=rows)
    assert report["overfitting"] == {"step": 4, "train_loss": 0.9, "val_loss": 1.6, "gap": pytest.approx(0.7),
                                     "flagged": False, "threshold": 0.8}
    flagged = build_report({}, {}, EvalConfig(overfit_gap=0.5), n=0, training=training, precision="fp32", title="t",
                           train_log=rows)
    assert flagged["overfitting"]["flagged"] is True
    assert "Train/validation gap at step 4: 1.600 - 0.900 = +0.700 nats (**possible overfitting**; threshold 0.5)" \
        in markdown(flagged)
    # No validation loss anywhere: the check says why it did not run instead of inventing a gap.
    none = build_report({}, {}, EvalConfig(), n=0, training=training, precision="fp32", title="t",
                        train_log=[{"step": 1, "loss": 2.0}])
    assert none["overfitting"] == {"skipped": "no step in metrics.jsonl has both a train and a validation loss "
                                              "(validation needs data.val or data.val_split)"}
    assert "Overfitting check skipped: no step in metrics.jsonl" in markdown(none)
    assert read_train_log(tmp_path / "missing.jsonl") == []


def test_qlora_baseline_is_reported_as_the_4bit_base_with_the_adapter_off(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    Params4bit = pytest.importorskip("bitsandbytes.nn").Params4bit
    from tunesmith.models import load_model

    model = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(r=2, target_modules=["q_proj"]))
    assert baseline_weights(build_systems(model, ["zero-shot"]))["quantized_bits"] is None
    # A bitsandbytes 4-bit weight, as a QLoRA load leaves in every base linear (quantizing needs a GPU).
    layer = model.base_model.model.model.layers[0].self_attn.k_proj
    layer.weight = Params4bit(layer.weight.data.clone(), requires_grad=False)
    baseline = baseline_weights(build_systems(model, ["zero-shot", "few-shot"]))
    assert baseline == {"source": "adapter_off", "quantized_bits": 4,
                        "note": "the 4-bit quantized base the adapter was trained on, with the adapter switched off; "
                                "not the full-precision base model, which may score differently"}
    report = build_report({}, {}, EvalConfig(), n=0, training=None, precision="fp32", title="t", baseline=baseline)
    assert report["baseline_weights"]["quantized_bits"] == 4
    assert "Base systems: the 4-bit quantized base the adapter was trained on, with the adapter switched off;" in markdown(report)
    assert isinstance(layer.weight, torch.nn.Parameter)


def test_lm_eval_compare_difference_and_standard_error():
    # lm-evaluation-harness results: "metric,filter" keys with "metric_stderr,filter" beside them.
    base = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.40, "acc_stderr,none": 0.03,
                         "acc_norm,none": 0.50, "acc_norm_stderr,none": "N/A"},
            "boolq": {"acc": 0.70, "acc_stderr": 0.012},
            "only_base": {"acc,none": 0.3, "acc_stderr,none": 0.01}}
    tuned = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.46, "acc_stderr,none": 0.04,
                          "acc_norm,none": 0.45, "acc_norm_stderr,none": "N/A"},
             "boolq": {"acc": 0.65, "acc_stderr": 0.016}}
    table = lm_harness.compare(base, tuned)
    assert set(table) == {"arc_easy", "boolq"} and set(table["arc_easy"]) == {"acc,none", "acc_norm,none"}
    acc = table["arc_easy"]["acc,none"]
    # 0.46 - 0.40 = 0.06; sqrt(0.03^2 + 0.04^2) = 0.05
    assert (acc["base"], acc["tuned"]) == (0.40, 0.46)
    assert acc["difference"] == pytest.approx(0.06) and acc["stderr"] == pytest.approx(0.05)
    norm = table["arc_easy"]["acc_norm,none"]
    assert norm["difference"] == pytest.approx(-0.05) and norm["stderr"] is None  # "N/A": no standard error
    boolq = table["boolq"]["acc"]  # no filter suffix; sqrt(0.012^2 + 0.016^2) = 0.02
    assert boolq["difference"] == pytest.approx(-0.05) and boolq["stderr"] == pytest.approx(0.02)


def test_lm_eval_not_installed_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert not lm_harness.available()
    assert lm_harness.run(["hellaswag"], base_args={"pretrained": "x"}, tuned_args={"pretrained": "x"}) == \
        {"skipped": "lm-evaluation-harness is not installed (pip install lm-eval)"}


@pytest.mark.parametrize("args,module,message", [
    (["--metrics", "exact_match,bleu"], "sacrebleu", "--metrics: bleu needs the sacrebleu package"),
    (["--metrics", "rouge2"], "rouge_score", "--metrics: rouge2 needs the rouge_score package"),
    (["--judge", "openai:gpt-4o-mini"], "openai", "eval.judge: the openai judge needs the openai package"),
])
def test_cli_missing_extra_fails_before_the_model_is_touched(args, module, message, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "never"
    # A model that does not exist: had the CLI looked for it first, that would be the error.
    assert cli("eval", "--model", tmp_path / "no-such-model", "--data", files["test"], "-o", out, "--baselines",
               "zero-shot", "--no-regression", "--quiet", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "pip install" in err and "Traceback" not in err
    assert "no-such-model" not in err
    assert not out.exists()


def test_run_eval_missing_extra_fails_before_generation(tuned, tokenizer, files, tmp_path, monkeypatch):
    from tunesmith.errors import ConfigError

    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    cfg = EvalConfig(metrics=["exact_match", "bleu"], baselines=[], regression=False)
    with pytest.raises(ConfigError, match="bleu needs the sacrebleu package"):
        run_eval(build_systems(tuned, []), tokenizer, load_samples(files["test"]), cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_eval_with_adapter_and_local_judge(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli("eval", "--model", tiny_model_dir, "--adapter", files["adapter"], "--data", files["test"],
               "--train-data", files["train"], "-o", out, "--metrics", "exact_match,rouge1", "--few-shot-k", "2",
               "--max-new-tokens", "5", "--no-regression", "--judge", f"local:{tiny_model_dir}",
               "--lm-eval-tasks", "hellaswag", "--quiet") == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert set(report["systems"]) == {"base_zero_shot", "base_few_shot", "tuned"}
    assert "verdict" in report and report["verdict"].split(":")[0] in printed.replace("\n", " ")
    judge = report["judge"]
    assert judge["n"] == 5 and judge["wins"] + judge["ties"] + judge["losses"] == 5
    assert judge["win_rate"] == pytest.approx((judge["wins"] + 0.5 * judge["ties"]) / 5)
    assert judge["baseline"] == report["comparison"]["baseline"]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    tuned_rows = [r for r in rows if r["system"] == "tuned"]
    assert [r["judge"]["outcome"] for r in tuned_rows].count("win") == judge["wins"]
    assert "regression" not in report
    if not lm_harness.available():
        assert report["lm_eval"] == {"skipped": "lm-evaluation-harness is not installed (pip install lm-eval)"}
    elif "skipped" in report["lm_eval"]:  # installed, but offline without hellaswag's data
        assert report["lm_eval"]["skipped"].startswith("lm-evaluation-harness failed: ")
    else:
        assert report["lm_eval"]["tasks"] == ["hellaswag"] and "hellaswag" in report["lm_eval"]["results"]
    assert "judge win rate" in printed


def test_cli_eval_raw_text_gives_perplexity_only(files, tiny_model_dir, tmp_path):
    out = tmp_path / "ppl"
    assert cli("eval", "--model", tiny_model_dir, "--adapter", files["adapter"], "--data", files["text"], "-o", out,
               "--baselines", "zero-shot", "--ppl-window", "8", "--ppl-stride", "4", "--no-regression", "--quiet") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"] == ["perplexity"] and report["primary_metric"] == "perplexity"
    assert report["perplexity"]["window"] == 8 and report["perplexity"]["stride"] == 4
    # Lower is better, so the verdict reads the perplexity difference the right way round.
    diff = report["systems"]["tuned"]["perplexity"] - report["systems"]["base_zero_shot"]["perplexity"]
    assert report["comparison"]["difference"] == pytest.approx(diff)
    lo, hi = report["comparison"]["difference_ci95"]
    word = "beats" if hi < 0 else "loses to" if lo > 0 else "is not distinguishable from"
    assert report["verdict"].startswith(f"tuned {word}")


def test_cli_eval_of_an_adapter_folder_given_as_the_model(files, tiny_model_dir, tmp_path, capsys):
    """`--model ADAPTER` alone: the adapter on the base its adapter_config.json records, the scores of
    `--model BASE --adapter ADAPTER`."""
    import shutil

    common = ["--data", files["test"], "--baselines", "zero-shot", "--max-new-tokens", "4", "--no-regression", "--quiet"]
    assert cli("eval", "--model", tiny_model_dir, "--adapter", files["adapter"], "-o", tmp_path / "a", *common) == 0
    assert cli("eval", "--model", files["adapter"], "-o", tmp_path / "b", *common) == 0
    a, b = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("a", "b"))
    assert a["systems"] == b["systems"] and set(b["systems"]) == {"base_zero_shot", "tuned"}
    assert a["systems"]["tuned"] != a["systems"]["base_zero_shot"]
    orphan = tmp_path / "orphan"
    shutil.copytree(files["adapter"], orphan)
    config = json.loads((orphan / "adapter_config.json").read_text())
    (orphan / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    capsys.readouterr()
    assert cli("eval", "--model", orphan, "-o", tmp_path / "c", *common) == 2
    err = capsys.readouterr().err
    assert "does not record its base model" in err and f"--adapter {orphan}" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--adapter", "{tmp}"], "no adapter_config.json"),
    (["--metrics", "blue"], "--metrics: unknown metric(s) blue"),
    (["--ppl-window", "16", "--ppl-stride", "32"], "eval.ppl_stride (32) is larger than eval.ppl_window (16)"),
    (["--few-shot-k", "0"], "--few-shot-k:"),
    (["--judge", "gpt4"], "is not KIND:MODEL"),
    (["--baselines", "few-shot"], "needs --train-data"),
])
def test_cli_eval_bad_input_is_a_clear_error(args, message, files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "never"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["eval", "--model", tiny_model_dir, "--data", files["test"], "-o", out, "--quiet", "--no-regression"]
    if "--baselines" not in args:
        base += ["--baselines", "zero-shot"]
    assert cli(*base, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "report.json").exists()


def test_run_eval_code_tasks_pass_at_k_rows(files, tuned, tokenizer, tmp_path):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [
        {"id": "add", "prompt": "Write add(a, b).", "test": "assert add(2, 3) == 5"},
        {"id": "sq", "prompt": "Write square(x).", "test": "def check(f):\n    assert f(3) == 9", "entry_point": "square"}])
    cfg = EvalConfig(metrics=[], baselines=["zero-shot"], code_tasks=str(tasks), code_samples=3, pass_k=[1, 3],
                     temperature=0.8, max_new_tokens=8, regression=False, code_timeout_s=3.0)
    systems = build_systems(tuned, cfg.baselines)
    run_eval(systems, tokenizer, [], cfg, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metrics"] == ["pass@1", "pass@3"]
    assert report["code"]["tasks"] == 2 and report["code"]["samples_per_task"] == 3
    assert "audit-hook" in report["code"]["isolation"] and "rlimits" in report["code"]["isolation"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3 and {r["system"] for r in rows} == {"base_zero_shot", "tuned"}
    from tunesmith.eval.passk import pass_at_k

    for name in ("base_zero_shot", "tuned"):
        mine = [r for r in rows if r["system"] == name]
        counts = [sum(r["passed"] for r in mine if r["id"].startswith(t + "#")) for t in ("add", "sq")]
        for k in (1, 3):
            expected = sum(pass_at_k(3, c, k) for c in counts) / 2
            assert report["systems"][name][f"pass@{k}"] == pytest.approx(expected)
        assert all(r["status"] in ("passed", "failed", "timeout", "signal") for r in mine)
    # A code row's reference is the task's test.
    assert rows[0]["reference"] == "assert add(2, 3) == 5"


def test_pass_k_larger_than_samples_is_rejected_before_generation(files, tuned, tokenizer, tmp_path):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"prompt": "p", "test": "assert True"}])
    from tunesmith.errors import ConfigError

    cfg = EvalConfig(metrics=[], code_tasks=str(tasks), code_samples=2, pass_k=[5], temperature=0.8)
    with pytest.raises(ConfigError, match="eval.pass_k"):
        run_eval(build_systems(tuned, []), tokenizer, [], cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
