"""The prompting baselines on the tiny model: retrieval few-shot picks the most similar training
examples, rag the passages of the right document (.txt, .md and a real .pdf), the prompt tokens in
the report are the ones the chat template gives, and bad documents fail in one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.cli import main
from tunesmith.config import EvalConfig
from tunesmith.data.schema import Sample
from tunesmith.errors import ConfigError, UserError
from tunesmith.eval.baselines import baseline_names, get_baseline
from tunesmith.eval.documents import chunk, load_passages
from tunesmith.eval.runner import build_systems, run_eval, validate

TOPICS = ["volcano lava eruption magma", "violin orchestra concerto bow", "glacier ice melting arctic",
          "bakery sourdough flour oven", "satellite orbit rocket launch", "chess opening gambit knight",
          "coral reef fish ocean", "tax invoice accountant ledger"]


def chat(user: str, answer: str, id_: str | None = None) -> Sample:
    return Sample(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}], id=id_)


POOL = [chat(f"Tell me about the {t}.", f"ANSWER-{i}", f"train-{i}") for i, t in enumerate(TOPICS)]


def minimal_pdf(path: Path, lines: list[str]) -> Path:
    """A real one-page PDF (Helvetica text), written object by object with its xref table."""
    text = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({line}) Tj 0 -16 Td" for line in lines) + " ET"
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               "/Resources << /Font << /F1 5 0 R >> >> >>",
               f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)
    return path


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "kettles.txt").write_text("The Zorbic kettle boils water in ninety seconds and ships in grey.\n")
    (folder / "notes.md").write_text("# Lamps\n\nThe Quillon lamp uses a warm amber bulb rated at forty watts.\n")
    minimal_pdf(folder / "policy.pdf", ["Refund policy: the Brakkel chair may be returned within sixty days."])
    (folder / "ignored.csv").write_text("not,a,document\n")
    return folder


def test_registry_names_every_baseline_and_unknown_is_a_config_error():
    assert baseline_names()[:4] == ["zero-shot", "few-shot", "retrieval-few-shot", "rag"]
    with pytest.raises(ConfigError, match="unknown baseline 'bm25'.*"):
        get_baseline("bm25")


def test_retrieval_few_shot_puts_the_near_copy_next_to_the_question():
    # A test prompt that is a near-copy of train-5 (one word changed) and shares a word with train-2.
    probe = chat("Tell me about the chess opening gambit bishop, and a glacier.", "?")
    cfg = EvalConfig(few_shot_k=3)
    conv = get_baseline("retrieval-few-shot").conversations([probe], POOL, cfg)[0]
    demos = [m["content"] for m in conv if m["role"] == "assistant"]
    assert len(demos) == 3
    # Most similar last (right before the question): the near-copy, then the glacier example.
    assert demos[-1] == "ANSWER-5" and demos[-2] == "ANSWER-2"
    assert conv[-1] == probe.messages[0]
    # Never itself: with the probe in the pool it is skipped, the others keep their order.
    conv = get_baseline("retrieval-few-shot").conversations([POOL[5]], POOL, cfg)[0]
    assert "ANSWER-5" not in [m["content"] for m in conv[:-1]]


def test_chunking_covers_the_text_with_overlap():
    words = [f"w{i}" for i in range(250)]
    pieces = chunk(" ".join(words), 100, 20)
    assert [p.split()[0] for p in pieces] == ["w0", "w80", "w160"]
    assert pieces[-1].split()[-1] == "w249" and all(len(p.split()) <= 100 for p in pieces)
    assert chunk("", 100, 20) == []


def test_rag_reads_txt_md_and_pdf_and_retrieves_the_right_passage(docs):
    passages = load_passages(docs, 50, 10)
    sources = sorted(Path(p.source.split("#")[0]).name for p in passages)
    assert sources == ["kettles.txt", "notes.md", "policy.pdf"]
    pdf = next(p for p in passages if p.source.endswith("#page 1"))
    assert "Brakkel chair may be returned within sixty days" in pdf.text
    cfg = EvalConfig(docs=str(docs), rag_k=1)
    probe = chat("Within how many days can I return the Brakkel chair?", "sixty")
    conv = get_baseline("rag").conversations([probe], [], cfg)[0]
    assert len(conv) == 1 and "policy.pdf#page 1" in conv[0]["content"]
    assert conv[0]["content"].endswith("Question:\n" + probe.messages[0]["content"])


@pytest.mark.parametrize("make,message", [
    (lambda d: None, "has no .txt, .md or .pdf files"),
    (lambda d: (d / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf"), "broken.pdf: cannot parse this PDF"),
    (lambda d: (d / "latin.txt").write_bytes(b"caf\xe9 au lait"), "latin.txt: not UTF-8 text"),
    (lambda d: minimal_pdf(d / "empty.pdf", []), "empty.pdf: no text could be extracted"),
])
def test_bad_docs_fail_in_validate_naming_the_file(tmp_path, make, message):
    folder = tmp_path / "docs"
    folder.mkdir()
    make(folder)
    with pytest.raises(UserError, match=message):
        validate(EvalConfig(baselines=["rag"], docs=str(folder)))


def test_rag_without_docs_is_a_config_error():
    with pytest.raises(ConfigError, match="the rag baseline needs eval.docs"):
        validate(EvalConfig(baselines=["rag"]))


def template_tokens(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def test_run_eval_scores_the_new_baselines_and_reports_measured_prompt_tokens(tiny_model_dir, tokenizer, docs, tmp_path):
    from tunesmith.models import load_model

    model = load_model(str(tiny_model_dir)).eval()
    tests = [chat("Tell me about the volcano lava flow.", "ANSWER-0", "t0"),
             chat("How long does the Zorbic kettle take to boil?", "ninety", "t1")]
    cfg = EvalConfig(metrics=["exact_match"], baselines=["zero-shot", "retrieval-few-shot", "rag"], docs=str(docs),
                     few_shot_k=2, rag_k=2, max_new_tokens=3, regression=False, perplexity=False)
    report = run_eval(build_systems(None, cfg.baselines, base_model=model), tokenizer, tests, cfg, tmp_path,
                      train_pool=POOL).report
    assert list(report["systems"]) == ["base_zero_shot", "base_retrieval_few_shot", "base_rag"]
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    tokens = report["prompt_tokens"]
    for system in report["systems"]:
        prompts = [r["prompt"] for r in rows if r["system"] == system]
        # The chat template's own count, independent of the code under test.
        measured = [template_tokens(tokenizer, p) for p in prompts]
        assert tokens[system]["per_example"] == measured
        own = [template_tokens(tokenizer, t.prompt_messages()) for t in tests]
        assert tokens[system]["added_mean"] == pytest.approx(sum(m - o for m, o in zip(measured, own)) / len(tests))
    assert tokens["base_zero_shot"]["added_mean"] == 0
    assert tokens["base_retrieval_few_shot"]["added_mean"] > 10 and tokens["base_rag"]["added_mean"] > 10
    retrieval = next(r for r in rows if r["system"] == "base_retrieval_few_shot" and r["id"] == "t0")
    assert retrieval["prompt"][-2]["content"] == "ANSWER-0"
    rag = next(r for r in rows if r["system"] == "base_rag" and r["id"] == "t1")
    assert "kettles.txt" in rag["prompt"][-1]["content"].split("\n\n[2]")[0]
    assert "Prompt tokens per request" in (tmp_path / "report.md").read_text()


def test_cli_eval_rag_with_an_empty_docs_folder_fails_in_one_line(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"messages": chat("q", "a").messages}) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "-o", str(tmp_path / "out"),
              "--baselines", "rag", "--docs", str(empty), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"docs folder {empty} has no .txt, .md or .pdf files" in err.replace("\n", "") and "Traceback" not in err


def test_cli_eval_scores_retrieval_few_shot_and_a_config_resolves_docs_beside_it(tiny_model_dir, docs, tmp_path):
    from tunesmith.config import load_config

    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"id": "t0", "messages": chat("Tell me about the volcano lava flow.", "ANSWER-0").messages}) + "\n")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": s.messages}) + "\n" for s in POOL))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(tiny_model_dir), "--data", str(test), "--train-data", str(train), "-o", str(out),
              "--baselines", "zero-shot,retrieval-few-shot", "--few-shot-k", "1", "--max-new-tokens", "2",
              "--no-regression", "--no-perplexity", "--quiet"])
    assert exc.value.code in (0, None)
    report = json.loads((out / "report.json").read_text())
    assert list(report["systems"]) == ["base_zero_shot", "base_retrieval_few_shot"]
    row = next(json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()
               if '"base_retrieval_few_shot"' in line)
    assert [m["content"] for m in row["prompt"]][1] == "ANSWER-0"
    # eval.docs in a run config is relative to the config file, like eval.data.
    cfg_file = docs.parent / "run.yaml"
    cfg_file.write_text("eval:\n  baselines: [rag]\n  docs: docs\n")
    assert load_config(cfg_file).eval.docs == str(docs)
