"""The fine-tuning service end to end with the official `openai` client: upload the quickstart data,
train a job on a tiny random Llama in a worker process, follow its events, chat with the `ft:` model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
from safetensors.torch import load_file

from tests.serve.test_api import offline_answers

KEY, OTHER_KEY = "sk-acme", "sk-globex"
QUICKSTART = Path(__file__).resolve().parents[2] / "src" / "tunesmith" / "assets" / "quickstart" / "train.jsonl"
# A handful of steps on the tiny model: a job takes seconds, mostly the worker's imports.
FAST = {"train.max_steps": "6", "train.save_every": "3", "data.max_len": "128", "train.precision": "fp32",
        "method.r": "8", "train.warmup_ratio": "0"}
# With a validation file the job also evaluates: kept small here (no baselines, 4 examples).
EVAL = {"eval.baselines": "[]", "eval.regression": "false", "eval.perplexity": "false", "eval.max_examples": "4",
        "eval.max_new_tokens": "8"}
PROMPT = "Extract the order as JSON with keys item (singular), quantity (integer), color, city and priority " \
         "(\"high\" or \"normal\").\nOrder: Two red lamps for the Oslo office, no rush."


def wait_for(client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=50)]
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s; events: {events}")


@pytest.fixture(scope="module")
def service(tiny_model_dir, tmp_path_factory):
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    data_dir = tmp_path_factory.mktemp("ft-service")
    options = ServeOptions(model=str(tiny_model_dir), served_name="tiny", data_dir=str(data_dir),
                           tenants={"acme": KEY, "globex": OTHER_KEY}, default_max_tokens=16)
    state = build_state(options)
    with BackgroundServer(state) as url:
        clients = {org: openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
                   for org, key in (("acme", KEY), ("globex", OTHER_KEY))}
        yield {"url": url, "state": state, "data_dir": data_dir, **clients}
    state.close()


@pytest.fixture(scope="module")
def trained(service):
    """One supervised job on the quickstart training file, followed to `succeeded`."""
    client = service["acme"]
    with open(QUICKSTART, "rb") as fh:
        upload = client.files.create(file=fh, purpose="fine-tune")
    with open(QUICKSTART.with_name("test.jsonl"), "rb") as fh:
        validation = client.files.create(file=fh, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id, validation_file=validation.id,
                                         suffix="orders", seed=7,
                                         hyperparameters={"batch_size": 4, "learning_rate_multiplier": 5},
                                         metadata={**FAST, **EVAL, "team": "ops"})
    assert job.status == "queued" and job.fine_tuned_model is None
    done = wait_for(client, job.id)
    return {"upload": upload, "created": job, "job": done}


def test_upload_is_an_openai_file_object(service, trained):
    client, upload = service["acme"], trained["upload"]
    assert upload.object == "file" and upload.purpose == "fine-tune" and upload.status == "processed"
    assert upload.bytes == QUICKSTART.stat().st_size and upload.filename == "train.jsonl"
    assert client.files.retrieve(upload.id).id == upload.id
    assert client.files.content(upload.id).read() == QUICKSTART.read_bytes()
    assert upload.id in [f.id for f in client.files.list(purpose="fine-tune")]


def test_job_succeeds_and_its_model_answers_as_offline_generation(service, trained, tiny_model_dir, tokenizer):
    from peft import PeftModel

    client, job = service["acme"], trained["job"]
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:acme:orders:{job.id}"
    assert job.organization_id == "acme" and job.seed == 7 and job.trained_tokens > 0
    assert job.hyperparameters.batch_size == 4 and job.hyperparameters.learning_rate_multiplier == pytest.approx(5)
    assert job.metadata == {**FAST, **EVAL, "team": "ops"} and job.finished_at >= job.created_at
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]

    adapter = Path(service["data_dir"]) / "jobs" / job.id / "run" / "adapter"
    offline = offline_answers(tiny_model_dir, tokenizer, lambda base, path: PeftModel.from_pretrained(base, str(path)))
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": PROMPT}],
                                            temperature=0, max_tokens=12)
    assert answer.choices[0].message.content.strip() == offline(adapter, PROMPT)
    base = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                          temperature=0, max_tokens=12)
    assert base.choices[0].message.content != answer.choices[0].message.content   # the adapter changed something


def test_events_tell_the_run_newest_first(service, trained):
    client, job = service["acme"], trained["job"]
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))       # auto-paginates by `after`
    assert events[0].message == "The job has successfully completed"
    assert events[-1].message.startswith("Created fine-tuning job")
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [6, 5, 4, 3, 2, 1]
    losses = [e.data["train_loss"] for e in metrics[::-1]]
    assert losses[-1] < losses[0]
    assert len({e.id for e in events}) == len(events)


def test_result_file_holds_the_step_losses(service, trained):
    client, job = service["acme"], trained["job"]
    result_id, report_json, report_md = job.result_files
    assert [client.files.retrieve(f).filename for f in job.result_files] == ["step_metrics.csv", "report.json", "report.md"]
    assert client.files.retrieve(result_id).purpose == "fine-tune-results"
    lines = client.files.content(result_id).read().decode().splitlines()
    assert lines[0] == "step,train_loss,valid_loss,learning_rate,tokens_per_s"
    assert lines[-1].split(",")[2] != ""                         # the last step was validated
    report = json.loads(client.files.content(report_json).read())
    assert report["n_examples"] == 4 and "tuned" in report["systems"]
    run = Path(service["data_dir"]) / "jobs" / job.id / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [float(line.split(",")[1]) for line in lines[1:]] == pytest.approx([r["loss"] for r in rows if "loss" in r], rel=1e-5)


def test_checkpoints_are_served_models(service, trained, tiny_model_dir, tokenizer):
    from peft import PeftModel

    client, job = service["acme"], trained["job"]
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [6, 3]                 # newest first; the last is the model
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [f"{job.fine_tuned_model}:ckpt-step-{n}" for n in (6, 3)]
    assert checkpoints[0].metrics.step == 6 and checkpoints[0].metrics.train_loss is not None

    def ask(model):
        return client.chat.completions.create(model=model, temperature=0, max_tokens=12,
                                              messages=[{"role": "user", "content": PROMPT}]).choices[0].message.content

    assert ask(checkpoints[0].fine_tuned_model_checkpoint) == ask(job.fine_tuned_model)
    # Step 3's weights, as the trainer checkpointed them, written as a plain PEFT adapter folder.
    run = Path(service["data_dir"]) / "jobs" / job.id
    folder = run / "checkpoint-adapters" / "step-000003"
    ours = load_file(str(folder / "adapter_model.safetensors"))
    trained_state = load_file(str(run / "run" / "checkpoints" / "step-000003" / "trainable.safetensors"))
    assert {k.replace(".default.", "."): v for k, v in trained_state.items()}.keys() == ours.keys()
    assert all((trained_state[k] - ours[k.replace(".default.", ".")]).abs().max() == 0 for k in trained_state)
    offline = offline_answers(tiny_model_dir, tokenizer, lambda base, path: PeftModel.from_pretrained(base, str(path)))
    assert ask(checkpoints[1].fine_tuned_model_checkpoint).strip() == offline(folder, PROMPT)


def test_another_organization_cannot_see_or_use_the_fine_tuned_model(service, trained):
    globex, job = service["globex"], trained["job"]
    assert job.fine_tuned_model not in [m.id for m in globex.models.list().data]
    assert "tiny" in [m.id for m in globex.models.list().data]
    for model in (job.fine_tuned_model, f"{job.fine_tuned_model}:ckpt-step-3"):
        with pytest.raises(openai.NotFoundError):
            globex.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        globex.fine_tuning.jobs.retrieve(job.id)


def test_cancel_stops_a_running_job_within_one_step(service, trained):
    client = service["acme"]
    job = client.fine_tuning.jobs.create(model="tiny", training_file=trained["upload"].id, seed=3,
                                         metadata={**FAST, "train.max_steps": "100000", "train.save_every": "0"})
    deadline = time.monotonic() + 120
    while not any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5).data):
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.1)
    running = client.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish > time.time() + 60   # 100000 steps to go
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    time.sleep(2.0)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    newer = events[:[e.message for e in events].index("The job was cancelled")]
    assert len([e for e in newer if e.type == "metrics"]) <= 1, [e.message for e in newer]
    assert not service["state"].finetune.supervisor.workers        # the process is gone
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None


def test_a_paused_dpo_job_resumes_to_the_uninterrupted_adapter(service, tmp_path):
    from tunesmith.config import load_config
    from tunesmith.events import Events
    from tunesmith.pipeline import run

    client = service["acme"]
    pairs = [{"input": {"messages": [{"role": "user", "content": f"Code for item {i}?"}]},
              "preferred_output": [{"role": "assistant", "content": f"ITEM-{i:03d}"}],
              "non_preferred_output": [{"role": "assistant", "content": f"no idea about {i}"}]} for i in range(12)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    with open(path, "rb") as fh:
        prefs = client.files.create(file=fh, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=prefs.id, seed=5,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "batch_size": 4, "learning_rate_multiplier": 20}}},
        metadata={"train.max_steps": "40", "train.save_every": "5", "data.max_len": "64", "train.precision": "fp32",
                  "method.r": "4", "train.warmup_ratio": "0"})
    deadline = time.monotonic() + 120
    while not any(e.message == "Checkpoint created at step 10" for e in client.fine_tuning.jobs.list_events(job.id, limit=20)):
        assert time.monotonic() < deadline, "no checkpoint at step 10"
        time.sleep(0.05)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    time.sleep(1.0)
    assert not service["state"].finetune.supervisor.workers
    steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert max(steps) < 40, "the job finished before the pause"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    assert client.fine_tuning.jobs.resume(job.id).status in ("queued", "running")
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.fine_tuned_model.startswith("ft:tiny:acme::ftjob-")
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert any(m.startswith("Resumed from the checkpoint of step") for m in messages)
    assert any(m.startswith("objective: dpo") for m in messages)

    run_dir = Path(service["data_dir"]) / "jobs" / job.id / "run"
    cfg = load_config(run_dir / "config.yaml")
    run(cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": str(tmp_path / "straight")})}), events=Events())
    paused = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    assert paused.keys() == straight.keys()
    assert max((paused[k] - straight[k]).abs().max().item() for k in straight) <= 1e-5


def test_a_job_that_cannot_train_fails_with_the_reason(service, trained):
    client = service["acme"]
    job = client.fine_tuning.jobs.create(model="tiny", training_file=trained["upload"].id,
                                         metadata={**FAST, "data.max_len": "9"})     # no example fits in 9 tokens
    done = wait_for(client, job.id)
    assert done.status == "failed" and done.fine_tuned_model is None and done.finished_at is not None
    assert done.error.code == "invalid_training_data" and "no training examples left" in done.error.message
    assert next(iter(client.fine_tuning.jobs.list_events(job.id))).level == "error"


def test_another_organization_cannot_unload_the_fine_tuned_model(service, trained):
    name = trained["job"].fine_tuned_model
    with pytest.raises(openai.NotFoundError):
        service["globex"].delete(f"/adapters/{name}", cast_to=object)
    assert name in [m.id for m in service["acme"].models.list().data]


@pytest.mark.slow
def test_a_job_on_the_default_model_answers_as_offline_generation(default_model_dir, tokenizer, tmp_path):
    """The embedded SmolLM2-135M-Instruct, a few steps on the quickstart file, through the same service."""
    from peft import PeftModel

    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    state = build_state(ServeOptions(model="default", data_dir=str(tmp_path / "service"), api_key=KEY))
    try:
        with BackgroundServer(state) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
            with open(QUICKSTART, "rb") as fh:
                upload = client.files.create(file=fh, purpose="fine-tune")
            job = client.fine_tuning.jobs.create(model="default", training_file=upload.id, seed=1, suffix="orders",
                                                 hyperparameters={"batch_size": 4, "learning_rate_multiplier": 1},
                                                 metadata={"train.max_steps": "4", "data.max_len": "128"})
            done = wait_for(client, job.id, timeout=900)
            assert done.status == "succeeded", done.error
            assert done.fine_tuned_model == f"ft:default:local:orders:{job.id}"
            answer = client.chat.completions.create(model=done.fine_tuned_model, temperature=0, max_tokens=24,
                                                    messages=[{"role": "user", "content": PROMPT}])
    finally:
        state.close()
    adapter = tmp_path / "service" / "jobs" / job.id / "run" / "adapter"
    offline = offline_answers(default_model_dir, tokenizer, lambda base, path: PeftModel.from_pretrained(base, str(path)))
    assert answer.choices[0].message.content.strip() == offline(adapter, PROMPT, 24)
