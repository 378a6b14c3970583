"""Canonical data formats: real samples and synthetic-like records go through the same readers; bad input
gets a clear error naming the file and field, and writers leave nothing half-written."""
import json

import pytest

from workflow_lib.data import formats
from workflow_lib.data.formats import DataFormatError


STORY = "Velmora lies on the Ostrell. It is old."
assert STORY[13:27] == "on the Ostrell" and STORY[29:38] == "It is old"


def synthetic_records():
    return {
        "triviaqa": [formats.triviaqa_record("Which river runs through Velmora?", "world-tqa-0", "The Ostrell",
                                             ["Ostrell", "Ostrell river"], "synthetic-world")],
        "coqa": [formats.coqa_record("world", STORY, [("Where is Velmora?", "on the Ostrell", 13, 27),
                                                      ("Is it new?", "no", 29, 38),
                                                      ("Who founded it?", "unknown", -1, -1)])],
        "truthfulqa": [formats.truthfulqa_record("Can Zorbs fly?", "No, Zorbs cannot fly",
                                                 ["No", "No, Zorbs cannot fly"], ["Yes, Zorbs fly south"],
                                                 "Adversarial", "World", "synthetic-world")],
    }


@pytest.mark.parametrize("kind", ["triviaqa", "coqa", "truthfulqa"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_synthetic_roundtrip(tmp_path, kind, suffix):
    recs = synthetic_records()[kind]
    path = tmp_path / f"{kind}{suffix}"
    formats.WRITERS[kind](path, recs)
    assert getattr(formats, f"read_{kind}")(path) == recs
    assert formats.LOADERS[kind](path) == recs


def test_canonical_files_load_with_datasets_json(tmp_path):
    """Evaluation may read through datasets' `json` builder (lm-eval's dataset_path: json)."""
    import datasets

    for kind, recs in synthetic_records().items():
        for suffix in (".jsonl", ".json"):
            path = tmp_path / f"{kind}{suffix}"
            formats.WRITERS[kind](path, recs)
            assert datasets.load_dataset("json", data_files=str(path), split="train").to_list() == recs


def test_triviaqa_record_derives_normalised_fields():
    r = formats.triviaqa_record("Q?", "q1", "The Beatles!", ["Beatles", "the_beatles"])
    assert r["answer"]["aliases"] == ["Beatles", "the_beatles", "The Beatles!"]  # value appended, order kept
    assert r["answer"]["normalized_value"] == "beatles"
    assert r["answer"]["normalized_aliases"] == ["beatles"]
    assert formats.normalize_triviaqa_answer("A Tale of Two Cities (1859)") == "tale of two cities 1859"


def test_real_triviaqa_sample(shared_data):
    full = formats.load_triviaqa(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl")
    qa = formats.load_triviaqa(shared_data / "triviaqa" / "triviaqa_sm_sub.qa.jsonl")
    assert len(full) == 3000  # the wrapper-stripped copy converts identically but for the file name:
    assert [{**r, "question_source": ""} for r in full] == [{**r, "question_source": ""} for r in qa]
    assert len({r["question_id"] for r in full}) == 3000
    r = full[1]
    assert r["question"] == "What type of animal is a dik-dik?"
    assert r["answer"]["value"] == "Antelope" and "Hybrid antelope" in r["answer"]["aliases"]
    assert r["answer"]["normalized_value"] in r["answer"]["normalized_aliases"]


def test_real_coqa_samples(shared_data):
    dev = formats.load_coqa(shared_data / "coqa" / "coqa_dev_500.json")
    arrow = formats.load_coqa(shared_data / "coqa" / "coqa_dev_hf_validation.arrow")
    story0 = formats.load_coqa(shared_data / "coqa" / "coqa_dev_story0_full.json")
    train = formats.load_coqa(shared_data / "coqa" / "coqa_train_5stories.json")  # bare list, no wrapper
    assert len(dev) == 500 and sum(len(r["questions"]) for r in dev) == 7983
    assert dev == arrow  # the original-layout rebuild and HF arrow give the same canonical records
    # the verbatim dev story keeps the other annotators' answers, which the HF layout of the rebuild lacks
    assert {k: v for k, v in story0[0].items() if k != "additional_answers"} == dev[0]
    extra = story0[0]["additional_answers"]
    assert sorted(extra) == ["0", "1", "2"] and all(len(a["input_text"]) == 12 for a in extra.values())
    assert [a["input_text"][4] for a in extra.values()] == ["orange with white tiger stripes", "orange", "orange"]
    assert "additional_answers" not in dev[0] and "additional_answers" not in train[0]
    assert len(train) == 5 and sum(len(r["questions"]) for r in train) == 75
    a = dev[0]["answers"]
    assert dev[0]["questions"][0] == "What color was Cotton?" and a["input_text"][0] == "white"
    assert dev[0]["story"][a["answer_start"][0]:a["answer_end"][0]] == "a little white kitten named Cotton"


def test_real_truthfulqa_csv(shared_data):
    recs = formats.load_truthfulqa(shared_data / "truthfulqa" / "TruthfulQA.csv")
    assert len(recs) == 817 and len({r["category"] for r in recs}) == 38
    assert sum(r["type"] == "Adversarial" for r in recs) == 437
    r = recs[0]
    assert r["question"] == "What happens to you if you eat watermelon seeds?"
    assert r["correct_answers"][0] == "Nothing happens" and len(r["correct_answers"]) == 5
    assert r["incorrect_answers"][-1] == "You digest the watermelon seeds"
    assert all(a and a == a.strip() for r in recs for a in r["correct_answers"] + r["incorrect_answers"])


def test_real_samples_roundtrip_through_canonical_readers(shared_data, tmp_path):
    """Converted real data written by the writers is read back by the strict canonical readers."""
    for kind, name in (("triviaqa", "triviaqa/triviaqa_sm_sub.jsonl"), ("coqa", "coqa/coqa_dev_500.json"),
                       ("truthfulqa", "truthfulqa/TruthfulQA.csv")):
        recs = formats.LOADERS[kind](shared_data / name)
        out = tmp_path / f"{kind}.jsonl"
        formats.WRITERS[kind](out, recs)
        assert getattr(formats, f"read_{kind}")(out) == recs


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["triviaqa", "coqa", "truthfulqa"])
def test_missing_file(tmp_path, kind):
    with pytest.raises(FileNotFoundError, match=f"{kind} file not found: .*nope.jsonl"):
        formats.LOADERS[kind](tmp_path / "nope.jsonl")


@pytest.mark.parametrize("kind,drop,field", [
    ("triviaqa", ("question_id",), "'question_id' is a required property"),
    ("triviaqa", ("answer", "aliases"), "answer: 'aliases' is a required property"),
    ("coqa", ("story",), "'story' is a required property"),
    ("coqa", ("answers", "answer_end"), "answers: 'answer_end' is a required property"),
    ("truthfulqa", ("incorrect_answers",), "'incorrect_answers' is a required property"),
])
def test_missing_field_names_file_and_field(tmp_path, kind, drop, field):
    rec = json.loads(json.dumps(synthetic_records()[kind][0]))
    del (rec if len(drop) == 1 else rec[drop[0]])[drop[-1]]
    path = tmp_path / f"{kind}.jsonl"
    path.write_text(json.dumps(synthetic_records()[kind][0]) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataFormatError, match=f"{path}: {kind} record 1: .*{field}"):
        formats.LOADERS[kind](path)


def test_wrong_types_and_inconsistent_coqa(tmp_path):
    path = tmp_path / "t.jsonl"
    rec = synthetic_records()["triviaqa"][0]
    path.write_text(json.dumps({**rec, "answer": {**rec["answer"], "aliases": "Ostrell"}}) + "\n")
    with pytest.raises(DataFormatError, match="record 0: answer.aliases: 'Ostrell' is not of type 'array'"):
        formats.read_triviaqa(path)
    coqa = synthetic_records()["coqa"][0]
    bad = {**coqa, "answers": {**coqa["answers"], "input_text": ["x"]}}
    with pytest.raises(DataFormatError, match="answers.input_text: 1 entries for 3 questions"):
        formats.write_coqa(tmp_path / "c.jsonl", [bad])
    bad = {**coqa, "answers": {**coqa["answers"], "answer_end": [27, 38, 999]}}
    with pytest.raises(DataFormatError, match=r"turn 2: span \[-1, 999\) outside the story"):
        formats.write_coqa(tmp_path / "c.jsonl", [bad])
    assert not (tmp_path / "c.jsonl").exists()


def test_invalid_json_line_and_empty_file(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(synthetic_records()["triviaqa"][0]) + "\n{broken\n")
    with pytest.raises(DataFormatError, match=f"{path}: line 2: not valid JSON"):
        formats.read_triviaqa(path)
    path.write_text("\n")
    with pytest.raises(DataFormatError, match="no triviaqa records"):
        formats.read_triviaqa(path)


def test_truthfulqa_csv_missing_column(tmp_path):
    path = tmp_path / "tq.csv"
    path.write_text("Type,Category,Question,Best Answer,Correct Answers,Source\nA,B,Q?,Yes,Yes; Sure,src\n")
    with pytest.raises(DataFormatError, match=r"tq.csv: TruthfulQA CSV lacks column\(s\) \['Incorrect Answers'\]"):
        formats.load_truthfulqa(path)


def test_coqa_additional_answers_from_the_hub_layouts():
    """stanfordnlp/coqa rows have none; EleutherAI/coqa (lm-eval's source) rows carry them in the validation
    split and a turn_id -1 placeholder in the train split."""
    plain = {"source": "s", "story": "abc", "questions": ["q?", "r?"],
             "answers": {"input_text": ["a", "b"], "answer_start": [0, 1], "answer_end": [1, 2]}}
    assert formats.coqa_from_hf(plain) == plain

    def spans(texts, turns):
        return {"span_start": [0] * len(texts), "span_end": [1] * len(texts), "span_text": ["a"] * len(texts),
                "input_text": texts, "turn_id": turns}

    row = {"id": "x", "source": "s", "story": "abc", "questions": {"input_text": ["q?", "r?"], "turn_id": [1, 2]},
           "answers": spans(["a", "b"], [1, 2]),
           "additional_answers": {k: spans([f"a{k}", f"b{k}"], [1, 2]) for k in "012"}}
    rec = formats.validate_records([formats.coqa_from_hf(row)], "coqa", "row")[0]
    assert rec["questions"] == ["q?", "r?"] and rec["answers"]["answer_end"] == [1, 1]
    assert rec["additional_answers"]["2"] == {"input_text": ["a2", "b2"], "answer_start": [0, 0], "answer_end": [1, 1]}
    train_row = {**row, "additional_answers": {k: spans([""], [-1]) for k in "012"}}
    assert "additional_answers" not in formats.coqa_from_hf(train_row)


def test_coqa_additional_answers_are_checked(tmp_path):
    coqa = synthetic_records()["coqa"][0]
    bad = {**coqa, "additional_answers": {"0": {**coqa["answers"], "input_text": ["x", "y"]}}}
    with pytest.raises(DataFormatError, match="additional_answers.0.input_text: 2 entries for 3 questions"):
        formats.write_coqa(tmp_path / "c.jsonl", [bad])
    story = {"source": "s", "story": "abc", "questions": [{"input_text": "q", "turn_id": 1}],
             "answers": [{"input_text": "a", "span_start": 0, "span_end": 1, "turn_id": 1}],
             "additional_answers": {"0": [{"input_text": "a", "span_start": 0, "span_end": 1, "turn_id": 2}]}}
    path = tmp_path / "orig.json"
    path.write_text(json.dumps({"version": "1.0", "data": [story]}))
    with pytest.raises(DataFormatError, match=r"additional_answers.0: no answer for turn\(s\) \[1\]"):
        formats.load_coqa(path)


def test_original_coqa_with_missing_answer_turn(tmp_path):
    story = {"source": "s", "story": "abc",
             "questions": [{"input_text": "q", "turn_id": 1}, {"input_text": "r", "turn_id": 2}],
             "answers": [{"input_text": "a", "span_start": 0, "span_end": 1, "turn_id": 1}]}
    path = tmp_path / "orig.json"
    path.write_text(json.dumps({"version": "1.0", "data": [story]}))
    with pytest.raises(DataFormatError, match=r"no answer for turn\(s\) \[2\]"):
        formats.load_coqa(path)


def test_writers_leave_nothing_half_written(tmp_path):
    good = synthetic_records()["truthfulqa"]
    path = tmp_path / "tq.jsonl"
    with pytest.raises(DataFormatError, match="truthfulqa record 1: correct_answers"):
        formats.write_truthfulqa(path, good + [{**good[0], "correct_answers": []}])
    assert not path.exists()
    formats.write_truthfulqa(path, good)
    before = path.read_bytes()

    def failing_docs():
        yield "one document"
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        formats.write_corpus(tmp_path / "c.jsonl", failing_docs())
    assert not (tmp_path / "c.jsonl").exists() and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tq.jsonl"]  # no temporary left behind


# ---------------------------------------------------------------- corpus


def test_corpus_txt_and_jsonl(tmp_path, shared_data):
    docs = ["first document.", "second one\nwith a newline", "third"]
    formats.write_corpus(tmp_path / "c.jsonl", docs)
    assert list(formats.read_corpus(tmp_path / "c.jsonl")) == docs
    formats.write_corpus(tmp_path / "c.txt", docs)
    assert list(formats.read_corpus(tmp_path / "c.txt")) == ["first document.", "second one with a newline", "third"]
    wiki = list(formats.read_corpus(shared_data / "wikitext2" / "valid.txt"))
    assert wiki[0].strip() == "= Homarus gammarus =" and all(d.strip() for d in wiki)


def test_corpus_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        formats.read_corpus(tmp_path / "none.txt")  # raised at the call, before any iteration
    (tmp_path / "c.parquet").write_text("x")
    with pytest.raises(DataFormatError, match="corpus must be .txt or .jsonl"):
        formats.read_corpus(tmp_path / "c.parquet")
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataFormatError, match="c.jsonl: corpus record 1: text: missing"):
        list(formats.read_corpus(tmp_path / "c.jsonl"))
