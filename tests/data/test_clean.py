"""`data clean`: normalisation, empties, length filters, exact and near-duplicate removal, the report."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tests.conftest import write_jsonl
from tunesmith.data.clean import CleanOptions, clean_file
from tunesmith.data.dedup import MinHasher, NearDupIndex, _Signature, shingles
from tunesmith.data.load import load_samples
from tunesmith.data.normalize import normalize_text
from tunesmith.data.tokenize import token_lengths, tokenize_sample

rng = random.Random(0)
VOCAB = [f"word{i}" for i in range(2000)]


def _para(n=80):
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _chat(question, answer):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_minhash_signatures_match_datasketch():
    from datasketch import MinHash

    sets = [shingles(_para(rng.randint(1, 60)).split(), 5) for _ in range(50)]
    ours = MinHasher(128, seed=1).signatures(sets)
    for s, sig in zip(sets, ours):
        ref = MinHash(num_perm=128, seed=1)
        ref.update_batch(s)
        np.testing.assert_array_equal(sig, ref.hashvalues)


def test_near_duplicates_differing_by_a_word_are_removed_distinct_kept(tmp_path):
    distinct = [_chat(_para(), "Answer " + _para(20)) for _ in range(40)]
    near = []
    for i in (3, 17, 29):  # copies of three rows, each with one word of the question replaced
        words = distinct[i]["messages"][0]["content"].split()
        words[40] = "REPLACED"
        near.append(_chat(" ".join(words), distinct[i]["messages"][1]["content"]))
    # A pair sharing half its words is similar but not a near-duplicate at 0.8: it must stay.
    half = distinct[5]["messages"][0]["content"].split()[:40] + _para(40).split()
    rows = distinct + near + [_chat(" ".join(half), distinct[5]["messages"][1]["content"])]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    report = clean_file(src, tmp_path / "out.jsonl")
    kept = _read(tmp_path / "out.jsonl")
    assert kept == distinct + [rows[-1]]
    assert (report.records, report.kept, report.total_removed) == (44, 41, 3)
    assert report.removed["near_duplicate"] == 3
    assert [e["source"] for e in report.examples["near_duplicate"]] == [f"{src}:41", f"{src}:42", f"{src}:43"]
    assert [e["duplicate_of"] for e in report.examples["near_duplicate"]] == [f"{src}:4", f"{src}:18", f"{src}:30"]
    assert report.kept + report.total_removed == report.records


def test_exact_duplicates_after_normalisation_and_report_counts(tmp_path):
    a, b, c = (_chat(_para(10), _para(5)) for _ in range(3))
    shouty = _chat(a["messages"][0]["content"].upper() + "  ", "\u200b" + a["messages"][1]["content"].replace(" ", "\t"))
    rows = [a, b, shouty, c, b, _chat("q", "\u200b \u00a0"), {"messages": [{"role": "user", "content": "   "},
                                                                          {"role": "assistant", "content": "x"}]}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    report = clean_file(src, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == [a, b, c]
    assert {k: v for k, v in report.removed.items() if v} == {"exact_duplicate": 2, "empty_response": 1, "empty_prompt": 1}
    assert report.examples["exact_duplicate"][0]["duplicate_of"] == f"{src}:1"
    assert report.examples["empty_response"] == [{"source": f"{src}:6", "field": "messages[1].content"}]
    assert report.kept + report.total_removed == report.records == 7


def test_normalisation():
    assert normalize_text("\ufeffHello\u200b  world \r\n\r\n\r\n\r\nnext\u00a0line\t \n  indented\x07") == \
        "Hello  world\n\nnext line\n  indented"
    assert normalize_text("e\u0301") == "\u00e9"      # NFC composes ...
    assert normalize_text("x\u00b2 \uff21") == "x\u00b2 \uff21"  # ... but does not fold like NFKC would


def test_token_length_filters_use_the_chat_template(tmp_path, tokenizer):
    rows = [_chat("hi", "yo"), _chat(_para(10), _para(10)), _chat(_para(200), _para(200))]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    lengths = token_lengths(tokenizer, load_samples(src))
    assert lengths == [len(tokenize_sample(tokenizer, s)[0]) for s in load_samples(src)]
    opts = CleanOptions(min_tokens=lengths[0] + 1, max_tokens=lengths[2] - 1)
    report = clean_file(src, tmp_path / "out.jsonl", opts, tokenizer)
    assert _read(tmp_path / "out.jsonl") == [rows[1]]
    assert (report.removed["too_short"], report.removed["too_long"]) == (1, 1)
    assert report.examples["too_long"][0]["tokens"] == lengths[2]


def test_clean_is_deterministic_and_streams_in_batches(tmp_path):
    base = [_chat(_para(), _para(10)) for _ in range(30)]
    rows = []
    for r in base:
        rows.append(r)
        if rng.random() < 0.5:
            words = r["messages"][0]["content"].split()
            words[rng.randrange(len(words))] = "X"
            rows.append(_chat(" ".join(words), r["messages"][1]["content"]))
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    # A batch of 4 crosses batch boundaries inside duplicate pairs: the result must not change.
    r1 = clean_file(src, tmp_path / "a.jsonl", CleanOptions(batch_size=4))
    r2 = clean_file(src, tmp_path / "b.jsonl", CleanOptions(batch_size=1000))
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert _read(tmp_path / "a.jsonl") == base
    assert r1.removed == r2.removed and r1.removed["near_duplicate"] == len(rows) - len(base)


def test_near_dup_index_confirms_candidates():
    """A shared LSH band alone never removes an example: the Jaccard estimate must reach the threshold."""
    for backend in ("compact", "datasketch"):
        index = NearDupIndex(backend=backend)
        sig = index.signatures(load_samples_from_text(["a b c d e f g h i j"]))[0]
        assert index.find_duplicates(sig[None, :]) == [None]
        other = sig.copy()
        other[index.r:] = 0  # shares only the first band (9 rows of 128): a candidate with Jaccard ~ 0.07
        if backend == "datasketch":
            assert index.lsh.query(_Signature(other, index.hasher.scheme)) == [0]
        else:
            assert index.bands.recent_candidates(index.bands.band_keys(other[None, :])[0].tolist()) == {0}
        assert index.match(other) is None
        assert index.match(sig) == 0


def test_compact_index_agrees_with_datasketch_minhashlsh():
    """Same candidates, same confirmations: the compact band store and MinHashLSH keep the same examples,
    including after the compact store merges its recent entries into the sorted arrays."""
    r = random.Random(5)  # its own generator: the counts below must not depend on which tests ran first
    texts = [" ".join(r.choice(VOCAB) for _ in range(r.randint(40, 120))) for _ in range(400)]
    for _ in range(300):  # edits of 1-6 words span Jaccard from ~0.95 down to under 0.8
        words = r.choice(texts).split()
        for _ in range(r.randint(1, 6)):
            words[r.randrange(len(words))] = r.choice(VOCAB)
        texts.append(" ".join(words))
    r.shuffle(texts)
    samples = load_samples_from_text(texts)
    compact, reference = NearDupIndex(), NearDupIndex(backend="datasketch")
    compact.bands.MERGE_EVERY = 500  # force several merges
    got, want = [], []
    for start in range(0, len(samples), 64):
        chunk = samples[start:start + 64]
        got += compact.find_duplicates(compact.signatures(chunk))
        want += reference.find_duplicates(reference.signatures(chunk))
    assert got == want
    assert 30 < sum(h is not None for h in got) < 300 and len(compact.bands.keys) > 0


def load_samples_from_text(texts):
    from tunesmith.data.schema import Sample

    return [Sample(text=t) for t in texts]


# Without exact dedup the identical copy is still caught, as a near-duplicate (Jaccard 1).
@pytest.mark.parametrize("flag,removed", [("--no-dedup", {"near_duplicate": 2}), ("--no-near-dedup", {"exact_duplicate": 1})])
def test_cli_switches(tmp_path, capsys, flag, removed):
    from tunesmith.cli import main

    row = _chat(_para(), "a")
    words = row["messages"][0]["content"].split()
    words[10] = "Z"
    src = write_jsonl(tmp_path / "d.jsonl", [row, row, _chat(" ".join(words), "a")])
    with pytest.raises(SystemExit) as exc:
        main(["data", "clean", str(src), "-o", str(tmp_path / "o.jsonl"), flag, "--json"])
        raise SystemExit(0)
    assert exc.value.code == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in report["removed"].items() if v} == removed
    assert report["kept"] == 3 - sum(removed.values())
    assert json.loads((tmp_path / "o.report.json").read_text())["removed"] == report["removed"]


def test_cleaned_output_reads_back_for_every_kind(tmp_path):
    rows = [{"prompt": "Pick one", "chosen": " Good. ", "rejected": "Bad."}, {"prompt": "Other", "chosen": "A", "rejected": "B"}]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    clean_file(src, tmp_path / "p_out.jsonl")
    back = load_samples(tmp_path / "p_out.jsonl")
    assert [(s.kind, s.messages[0]["content"], s.chosen) for s in back] == [("preference", "Pick one", "Good."),
                                                                            ("preference", "Other", "A")]
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "Doc one.\r\n"}, {"text": "Doc two."}])
    clean_file(src, tmp_path / "t_out.parquet")
    assert [s.text for s in load_samples(tmp_path / "t_out.parquet")] == ["Doc one.", "Doc two."]
