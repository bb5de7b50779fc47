"""`tunesmith synth` end to end against the scripted teacher (a real HTTP server): every mode, the
yield report, the held-out set kept out of prompts, unreadable documents, an unreachable teacher,
and a killed run that resumes without asking the teacher anything twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tests.eval.test_baselines import minimal_pdf
from tests.synth.teacher_server import INSTRUCTION, answer_order
from tunesmith.cli import main
from tunesmith.data.load import load_samples

REPO = Path(__file__).resolve().parents[2]
QUICKSTART_SCHEMA = REPO / "src" / "tunesmith" / "assets" / "quickstart" / "order.schema.json"


def cli(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _report(out: Path) -> dict:
    return json.loads(out.with_name(out.stem + ".report.json").read_text())


def _stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["stage"] == name)


def test_from_seeds_curates_counts_and_writes_training_data(teacher, seeds, held_out, tmp_path, capsys):
    scripted, url = teacher
    # A held-out example among the seeds must never reach the teacher.
    leaked = json.loads(held_out.read_text().splitlines()[0])
    with open(seeds, "a") as fh:
        fh.write(json.dumps(leaked) + "\n")
    out = tmp_path / "synth.jsonl"
    code, stdout, err = cli(["synth", "from-seeds", str(seeds), "-o", str(out), "--teacher", "openai:scripted",
                             "--teacher-url", url, "--n", "30", "--test", str(held_out), "--backoff-seconds", "0.01",
                             "--price-prompt-per-1k", "0.5"], capsys)
    assert code == 0, err
    assert "synth from-seeds: 30 of 30 examples kept" in stdout
    samples = load_samples(out)                    # the training loader reads it, provenance and all
    assert len(samples) == 30 and all(s.kind == "chat" for s in samples)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    prov = records[0]["provenance"]
    assert prov["mode"] == "from-seeds" and prov["teacher"] == "openai:scripted" and len(prov["seed_ids"]) == 3
    assert set(prov["scores"]) == {"rouge_l_max", "judge"} and prov["scores"]["judge"] >= 7
    report = _report(out)
    assert report["inputs"] == {"read": 11, "removed_overlapping_held_out": 1, "used": 10}
    leaked_order = leaked["messages"][0]["content"].split("\n")[-1]
    assert scripted.prompts and not any(leaked_order in p for p in scripted.prompts)
    # The stages chain: each one's input is the previous one's output.
    stages = report["stages"]
    for a, b in zip(stages, stages[1:]):
        assert b["in"] == a["out"]
        assert a["in"] - a["out"] == sum(a["dropped"].values())
    synth = _stage(report, "synthesize")
    invalid = sum(n for why, n in synth["dropped"].items() if why.startswith("invalid reply"))
    assert invalid == synth["in"] // 7                 # every 7th reply is not JSON
    assert invalid > 0 and _stage(report, "dedup")["dropped"]["exact duplicate"] > 0
    assert stages[-1]["stage"] == "judge" and stages[-1]["out"] >= 30
    # Token accounting agrees with what the server answered (every request was answered once).
    usage = report["teacher_usage"]
    assert usage["requests"] == sum(scripted.served.values()) and max(scripted.served.values()) == 1
    assert usage["retries"] == scripted.failures["429"] + scripted.failures["500"] > 0
    assert usage["cost"] > 0


def test_from_docs_reads_txt_md_pdf_and_skips_what_cannot_be_parsed(teacher, tmp_path, capsys):
    scripted, url = teacher
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kettles.txt").write_text("Brakkel kettles boil water in ninety seconds and switch off on their own. " * 3)
    (docs / "notes.md").write_text("# Returns\nCustomers may return any chair within sixty days of delivery.\n")
    minimal_pdf(docs / "policy.pdf", ["Warranty: every Brakkel lamp carries a five year warranty on parts."])
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf")
    out = tmp_path / "qa.jsonl"
    code, stdout, err = cli(["synth", "from-docs", str(docs), "-o", str(out), "--teacher", "openai:scripted",
                             "--teacher-url", url, "--min-score", "0", "--backoff-seconds", "0.01"], capsys)
    assert code == 0, err
    report = _report(out)
    assert report["documents"]["files"] == 4 and report["documents"]["passages"] == 3
    assert list(report["documents"]["skipped"]) == [str(docs / "broken.pdf")]
    assert "skipped document" in stdout and "broken.pdf" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and {r["provenance"]["source"].split("/")[-1] for r in records} == \
        {"kettles.txt", "notes.md", "policy.pdf#page 1"}
    pdf_answers = [r["messages"][-1]["content"] for r in records if "policy.pdf" in r["provenance"]["source"]]
    assert any("Warranty: every Brakkel lamp" in a for a in pdf_answers)


def test_relabel_and_evolve(teacher, seeds, tmp_path, capsys):
    scripted, url = teacher
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "what is two plus two"},
                                                      {"messages": [{"role": "user", "content": "name a colour"}]},
                                                      {"prompt": "what is two plus two"}])
    out = tmp_path / "relabelled.jsonl"
    code, _, err = cli(["synth", "relabel", str(prompts), "-o", str(out), "--teacher", "openai:scripted",
                        "--teacher-url", url, "--min-score", "0", "--backoff-seconds", "0.01"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in records] == ["TEACHER ANSWER: WHAT IS TWO PLUS TWO",
                                                               "TEACHER ANSWER: NAME A COLOUR"]
    assert _stage(_report(out), "dedup")["dropped"] == {"exact duplicate": 1}
    out = tmp_path / "evolved.jsonl"
    code, _, err = cli(["synth", "evolve", str(seeds), "-o", str(out), "--teacher", "openai:scripted",
                        "--teacher-url", url, "--n", "5", "--backoff-seconds", "0.01"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 and all(r["messages"][-2]["content"].endswith("Deliver before Friday.") for r in records)
    assert all(r["provenance"]["evolution"] and r["provenance"]["seed_ids"] for r in records)


@pytest.mark.parametrize("write_as", ["completion", "chat"])
def test_from_seeds_with_an_answerer_writes_prompts_then_answers_them(write_as, teacher, seeds, held_out, tmp_path,
                                                                       capsys):
    """Self-Instruct's two steps: the teacher writes a new request only (continuing a numbered list of the seeds'
    requests, or asked by chat), without the instruction every seed shares; the answerer answers it."""
    scripted, url = teacher
    out = tmp_path / "two-step.jsonl"
    code, stdout, err = cli(["synth", "from-seeds", str(seeds), "-o", str(out), "--teacher", "openai:writer",
                             "--teacher-url", url, "--answerer", "openai:answerer", "--write-as", write_as,
                             "--n", "20", "--test", str(held_out), "--check", str(QUICKSTART_SCHEMA),
                             "--min-score", "0", "--backoff-seconds", "0.01"], capsys)
    assert code == 0, err
    assert "synth from-seeds: 20 of 20 examples kept" in stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    opening = INSTRUCTION + "\nOrder: "
    for r in records:
        prompt, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert prompt.startswith(opening) and "\n" not in prompt[len(opening):]
        assert answer == answer_order(prompt)
        assert r["provenance"]["teacher"] == "openai:writer" and r["provenance"]["answerer"] == "openai:answerer"
    report = _report(out)
    answer_stage = _stage(report, "answer")
    assert answer_stage["in"] == _stage(report, "synthesize")["out"] == answer_stage["out"]
    assert answer_stage["teacher"]["requests"] + answer_stage["teacher"]["cached"] == answer_stage["in"]
    assert report["answerer"] == "openai:answerer"
    writes = [p for p in scripted.prompts if not p.startswith(INSTRUCTION)]
    assert len(writes) == _stage(report, "synthesize")["in"]
    # The writer never sees the shared instruction, only the varying part of three seed requests.
    assert all("Extract the order" not in w and w.count("Request ") >= 3 for w in writes)
    if write_as == "completion":
        assert all(w.endswith("Request 4:") for w in writes)


def test_an_answerer_is_for_from_seeds_only_and_must_answer(teacher, seeds, tmp_path, capsys):
    _, url = teacher
    code, _, err = cli(["synth", "evolve", str(seeds), "-o", str(tmp_path / "e.jsonl"), "--teacher", "openai:m",
                        "--teacher-url", url, "--answerer", "openai:m"], capsys)
    assert code == 2 and "only from-seeds takes an answerer" in err and "Traceback" not in err
    # --write-as only shapes the answerer's two steps: without --answerer it would be silently ignored.
    code, _, err = cli(["synth", "from-seeds", str(seeds), "-o", str(tmp_path / "w.jsonl"), "--teacher", "openai:m",
                        "--teacher-url", url, "--write-as", "completion"], capsys)
    assert code == 2 and "--write-as" in err and "add --answerer" in err and "Traceback" not in err
    assert not (tmp_path / "w.jsonl").exists()
    # An unreachable answerer is named as the answerer, with the option that fixes it, before any work.
    from tunesmith.serve.server import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "s.jsonl"
    code, _, err = cli(["synth", "from-seeds", str(seeds), "-o", str(out), "--teacher", "openai:m", "--teacher-url", url,
                        "--answerer", "openai:a", "--answerer-url", dead, "--min-score", "0"], capsys)
    assert code == 2 and f"error: answerer {dead} is unreachable" in err and "fix --answerer-url" in err
    assert "Traceback" not in err and not out.exists()


def test_unreachable_teacher_and_bad_check_stop_before_work(seeds, tmp_path, capsys):
    from tunesmith.serve.server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "x.jsonl"
    code, _, err = cli(["synth", "from-seeds", str(seeds), "-o", str(out), "--teacher", "openai:m", "--teacher-url", url], capsys)
    assert code == 2 and f"error: teacher {url} is unreachable" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("x.*"))
    bad = tmp_path / "schema.json"
    bad.write_text('{"type": 12}')
    code, _, err = cli(["synth", "from-seeds", str(seeds), "-o", str(out), "--teacher", "openai:m", "--teacher-url", url,
                        "--check", str(bad)], capsys)
    assert code == 2 and "not a valid JSON Schema" in err and not out.exists()


def test_a_killed_run_resumes_without_asking_the_teacher_again(seeds, tmp_path):
    from tests.synth.teacher_server import RunningTeacher, ScriptedTeacher

    # 0.3 s per reply: the run takes seconds, so a starved test process still kills it mid-way.
    scripted = ScriptedTeacher(delay=0.3)
    out = tmp_path / "synth.jsonl"
    with RunningTeacher(scripted) as url:
        argv = [sys.executable, "-m", "tunesmith", "synth", "from-seeds", str(seeds), "-o", str(out),
                "--teacher", "openai:scripted", "--teacher-url", url, "--n", "40", "--concurrency", "2",
                "--backoff-seconds", "0.01"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while sum(scripted.served.values()) < 15 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)                  # requests in flight at the kill finish on the server's side
        asked_before = sum(scripted.served.values())
        cached = len(list(out.with_name(out.name + ".cache").glob("*/*.json")))
        assert 15 <= asked_before and not out.exists()
        # A reply the server sent in the instant of the kill never reached the cache: at most the
        # requests in flight (--concurrency 2) can be lost; every other answer was stored.
        assert cached >= asked_before - 2
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    report = _report(out)
    usage = report["teacher_usage"]
    assert report["kept"] == 40 and usage["cached"] == cached                # every stored reply was read back ...
    assert usage["requests"] == sum(scripted.served.values()) - asked_before  # ... and only the rest was asked
    repeated = sum(n - 1 for n in scripted.served.values())
    assert repeated == asked_before - cached <= 2                              # only the replies lost in flight


def test_a_teacher_that_stops_answering_stops_the_run_without_output(seeds, tmp_path, capsys):
    from tests.synth.teacher_server import RunningTeacher, ScriptedTeacher

    scripted = ScriptedTeacher()
    out = tmp_path / "x.jsonl"
    with RunningTeacher(scripted) as url:
        scripted.reply = lambda text: (_ for _ in ()).throw(RuntimeError("teacher bug"))   # every request: HTTP 500
        code, _, err = cli(["synth", "from-seeds", str(seeds), "-o", str(out), "--teacher", "openai:scripted",
                            "--teacher-url", url, "--max-retries", "1", "--backoff-seconds", "0.01"], capsys)
    assert code == 2 and "teacher openai:scripted answered none of 8 requests: InternalServerError" in err
    assert not out.exists()


def test_ctrl_c_stores_the_replies_in_flight(seeds, tmp_path):
    from tests.synth.teacher_server import RunningTeacher, ScriptedTeacher

    # Half a second per reply: the 40 requests take ~10 s, so a test process starved of CPU for a while (a busy
    # CI machine) still interrupts the run mid-way instead of finding it finished.
    scripted = ScriptedTeacher(delay=0.5, fail=False)
    out = tmp_path / "synth.jsonl"
    with RunningTeacher(scripted) as url:
        argv = [sys.executable, "-m", "tunesmith", "synth", "from-seeds", str(seeds), "-o", str(out),
                "--teacher", "openai:scripted", "--teacher-url", url, "--n", "40", "--concurrency", "2"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        # SIGINT back to its default in the child: a pytest-xdist worker ignores SIGINT, and an ignored signal stays
        # ignored across exec, so the run would never see the Ctrl-C (as it would from a terminal).
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while sum(scripted.served.values()) < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        time.sleep(0.3)
    assert proc.returncode == 130 and not out.exists(), err[-500:]
    assert b"interrupted" in err.splitlines()[-1] and b"Traceback" not in err, err[-500:]
    assert len(list(out.with_name(out.name + ".cache").glob("*/*.json"))) == sum(scripted.served.values())
