"""The fine-tuning API's shapes, errors, pagination, organizations and limits, with the official `openai`
client. The server keeps jobs queued (job_workers=0), so nothing here trains: each test is quick."""

from __future__ import annotations

import io
import json

import openai
import pytest

KEYS = {"acme": "sk-acme", "globex": "sk-globex", "initech": "sk-initech"}
MAX_QUEUED = 26
MAX_UPLOAD = 16 * 1024


def chats(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                          {"role": "assistant", "content": f"ITEM-{i:03d}"}]} for i in range(n)]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def api(tiny_model_dir, tmp_path_factory):
    from tunesmith.serve.server import BackgroundServer
    from tunesmith.serve.state import ServeOptions, build_state

    options = ServeOptions(model=str(tiny_model_dir), served_name="tiny", data_dir=str(tmp_path_factory.mktemp("ft-api")),
                           tenants=KEYS, job_workers=0, max_queued_jobs=MAX_QUEUED, max_upload_bytes=MAX_UPLOAD)
    state = build_state(options)
    with BackgroundServer(state) as url:
        clients = {org: openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)
                   for org, key in KEYS.items()}
        yield {"url": url, "state": state, **clients}
    state.close()


def upload(client, rows_or_bytes, name: str = "train.jsonl"):
    content = rows_or_bytes if isinstance(rows_or_bytes, bytes) else jsonl(rows_or_bytes)
    return client.files.create(file=(name, io.BytesIO(content)), purpose="fine-tune")


def test_broken_json_on_line_7_is_refused_naming_line_7(api):
    lines = jsonl(chats(10)).decode().splitlines()
    lines[6] = lines[6][:-5]                                  # cut the closing braces off line 7
    with pytest.raises(openai.BadRequestError) as caught:
        upload(api["acme"], ("\n".join(lines) + "\n").encode(), "broken.jsonl")
    err = caught.value
    assert err.status_code == 400 and err.code == "invalid_file_format" and err.param == "file"
    assert "broken.jsonl" in err.message and "line 7:" in err.message and "invalid JSON" in err.message
    assert "line 6" not in err.message and "line 8" not in err.message
    assert "broken.jsonl" not in [f.filename for f in api["acme"].files.list()]   # nothing kept


def test_a_record_that_is_not_a_chat_is_refused_naming_line_and_field(api):
    rows = chats(5)
    rows[2]["messages"] = rows[2]["messages"][:1]                 # no assistant answer on line 3
    with pytest.raises(openai.BadRequestError) as caught:
        upload(api["acme"], rows)
    assert "line 3: messages: conversation does not end with an assistant message" in caught.value.message


def test_preference_files_are_accepted_and_need_a_dpo_job(api):
    client = api["acme"]
    pairs = [{"input": {"messages": [{"role": "user", "content": f"Item {i}?"}]},
              "preferred_output": [{"role": "assistant", "content": f"ITEM-{i}"}],
              "non_preferred_output": [{"role": "assistant", "content": "no idea"}]} for i in range(4)]
    pref = upload(client, pairs, "prefs.jsonl")
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(model="tiny", training_file=pref.id)
    assert caught.value.param == "training_file" and "dpo" in caught.value.message
    job = client.fine_tuning.jobs.create(model="tiny", training_file=pref.id, seed=1,
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == pytest.approx(0.2)
    assert job.hyperparameters.n_epochs == 2 and job.status == "queued"
    client.fine_tuning.jobs.cancel(job.id)


def test_job_naming_a_missing_file_fails_with_openais_error_shape(api):
    with pytest.raises(openai.BadRequestError) as caught:
        api["acme"].fine_tuning.jobs.create(model="tiny", training_file="file-doesnotexist")
    err = caught.value
    assert err.status_code == 400 and err.param == "training_file" and err.type == "invalid_request_error"
    assert set(err.body) == {"message", "type", "param", "code"} and "file-doesnotexist" in err.message


@pytest.mark.parametrize("kwargs, param", [
    ({"model": "gpt-4o-mini"}, "model"),
    ({"metadata": {"train.lrr": "0.1"}}, "metadata"),                   # a run-config key that does not exist
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"suffix": "has spaces"}, "suffix"),
])
def test_bad_job_requests_are_400s_naming_the_parameter(api, kwargs, param):
    client = api["acme"]
    file = upload(client, chats(4))
    with pytest.raises(openai.BadRequestError) as caught:
        client.fine_tuning.jobs.create(**{"model": "tiny", "training_file": file.id, **kwargs})
    assert caught.value.param == param, caught.value.message
    if param == "metadata":
        assert "train.lrr" in caught.value.message and "did you mean 'train.lr'" in caught.value.message


def test_pagination_over_25_jobs_returns_every_job_once(api):
    client = api["initech"]
    file = upload(client, chats(8))
    created = [client.fine_tuning.jobs.create(model="tiny", training_file=file.id, seed=i).id for i in range(25)]
    first = client.fine_tuning.jobs.list(limit=10)
    assert len(first.data) == 10 and first.has_more is True
    assert [j.id for j in first.data] == created[::-1][:10]             # newest first
    seen = [job.id for job in client.fine_tuning.jobs.list(limit=10)]   # the client follows `after` to the end
    assert len(seen) == 25 and sorted(seen) == sorted(created)
    last = client.fine_tuning.jobs.list(limit=10, after=created[5])
    assert [j.id for j in last.data] == created[4::-1] and last.has_more is False

    tagged = client.fine_tuning.jobs.create(model="tiny", training_file=file.id, metadata={"team": "ops", "run": "7"})
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "ops"})] == [tagged.id]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "ops", "run": "8"})] == []
    client.fine_tuning.jobs.cancel(tagged.id)

    # 25 unfinished jobs, the limit is 26: one more, then 429 until one is cancelled.
    extra = client.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    with pytest.raises(openai.RateLimitError) as caught:
        client.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    assert caught.value.code == "too_many_jobs"
    assert client.fine_tuning.jobs.cancel(extra.id).status == "cancelled"
    client.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    for job_id in created:
        client.fine_tuning.jobs.cancel(job_id)


def test_another_key_cannot_see_read_or_cancel_files_and_jobs(api):
    acme, globex = api["acme"], api["globex"]
    file = upload(acme, chats(4), "secret.jsonl")
    job = acme.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    for call in (lambda: globex.files.retrieve(file.id), lambda: globex.files.content(file.id),
                 lambda: globex.files.delete(file.id), lambda: globex.fine_tuning.jobs.retrieve(job.id),
                 lambda: globex.fine_tuning.jobs.cancel(job.id), lambda: list(globex.fine_tuning.jobs.list_events(job.id)),
                 lambda: list(globex.fine_tuning.jobs.checkpoints.list(job.id))):
        with pytest.raises(openai.NotFoundError):
            call()
    assert file.id not in [f.id for f in globex.files.list()]
    assert job.id not in [j.id for j in globex.fine_tuning.jobs.list()]
    with pytest.raises(openai.BadRequestError):                       # nor train on it
        globex.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    assert acme.fine_tuning.jobs.retrieve(job.id).status == "queued"   # untouched by the attempts
    assert acme.files.content(file.id).read() == jsonl(chats(4))
    acme.fine_tuning.jobs.cancel(job.id)


def test_cancel_a_queued_job_and_its_events(api):
    client = api["acme"]
    file = upload(client, chats(4))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=file.id)
    with pytest.raises(openai.ConflictError):                          # a queued job still needs its file
        client.files.delete(file.id)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages[0] == "The job was cancelled" and messages[-1] == f"Created fine-tuning job: {job.id}"
    assert client.files.delete(file.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)


def test_limits_and_keys_answer_in_openais_shape(api):
    client = api["acme"]
    with pytest.raises(openai.APIStatusError) as caught:
        upload(client, b'{"text": "' + b"x" * MAX_UPLOAD + b'"}\n')
    assert caught.value.status_code == 413 and caught.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.jsonl", io.BytesIO(jsonl(chats(2)))), purpose="batch")
    assert caught.value.param == "purpose"
    nobody = openai.OpenAI(base_url=f"{api['url']}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        nobody.files.list()


def test_jobs_cli_lists_shows_cancels_and_prints_logs(api, capsys, monkeypatch):
    from tunesmith.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    client = api["globex"]
    file = upload(client, chats(4))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=file.id, suffix="cli")
    flags = ["--base-url", f"{api['url']}/v1", "--api-key", KEYS["globex"]]

    def cli(*argv) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(["jobs", *argv, *flags])
        captured = capsys.readouterr()
        return info.value.code, captured.out, captured.err

    code, text, _ = cli("list")
    assert code == 0 and job.id in text and "queued" in text
    code, text, _ = cli("show", job.id)
    assert code == 0 and "n_epochs=5 batch_size=4" in text and file.id in text   # auto: 1 step a pass, so 5 passes
    code, text, _ = cli("cancel", job.id)
    assert code == 0 and text.strip() == f"{job.id}: cancelled"
    code, text, _ = cli("logs", job.id)
    lines = text.strip().splitlines()
    assert code == 0 and lines[0].endswith(f"Created fine-tuning job: {job.id}") and lines[-1].endswith("The job was cancelled")
    code, _, err = cli("show", "ftjob-nosuchjob")
    assert code == 2 and "404" in err and "ftjob-nosuchjob" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:                 # another organization's key: not found, as for a missing job
        main(["jobs", "cancel", job.id, "--base-url", f"{api['url']}/v1", "--api-key", KEYS["acme"]])
    assert info.value.code == 2 and "404" in capsys.readouterr().err


def test_a_full_data_folder_refuses_uploads(api):
    client, options = api["acme"], api["state"].options
    file = upload(client, chats(2))
    kept = options.max_data_bytes
    options.max_data_bytes = 1024          # well under what the folder holds already (the database alone)
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            upload(client, chats(2))
        assert caught.value.code == "storage_quota_exceeded" and caught.value.type == "insufficient_quota"
        with pytest.raises(openai.RateLimitError) as caught:
            client.fine_tuning.jobs.create(model="tiny", training_file=file.id)
        assert caught.value.code == "storage_quota_exceeded"
    finally:
        options.max_data_bytes = kept
    assert upload(client, chats(2)).status == "processed"


def test_files_list_pages_both_ways(api):
    client = api["globex"]
    ids = [upload(client, chats(2), f"part{i}.jsonl").id for i in range(5)]
    newest = [f.id for f in client.files.list(purpose="fine-tune", limit=2) if f.id in ids]
    oldest = [f.id for f in client.files.list(purpose="fine-tune", limit=2, order="asc") if f.id in ids]
    assert newest == ids[::-1] and oldest == ids


def test_a_second_server_on_the_same_data_folder_is_refused(api, tiny_model_dir):
    from tunesmith.errors import UserError
    from tunesmith.serve.state import ServeOptions, build_state

    data_dir = api["state"].options.data_dir
    with pytest.raises(UserError, match="another tunesmith server is using this folder"):
        build_state(ServeOptions(model=str(tiny_model_dir), data_dir=data_dir, job_workers=0))
