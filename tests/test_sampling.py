"""Real-data sampling, offline: the TriviaQA longest-answer subset, seeded subsets, the text sampler over
local files through the same `datasets` streaming path as the hub, and bad input."""
import json
import random

import pytest

from workflow_lib.cli import sample_data
from workflow_lib.data import formats, sampling
from workflow_lib.data.sampling import answer_length


@pytest.fixture(scope="module")
def triviaqa(shared_data):
    return formats.load_triviaqa(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl")


def test_longest_answers_on_real_sample(triviaqa):
    chosen = sampling.longest_answers(triviaqa, 1000)
    ids = {r["question_id"] for r in chosen}
    rest = [r for r in triviaqa if r["question_id"] not in ids]
    assert len(chosen) == len(ids) == 1000 and len(rest) == 2000
    assert min(map(answer_length, chosen)) >= max(map(answer_length, rest))
    assert [answer_length(r) for r in chosen] == sorted((answer_length(r) for r in chosen), reverse=True)
    shuffled = triviaqa[:]
    random.Random(1).shuffle(shuffled)
    assert sampling.longest_answers(shuffled, 1000) == chosen  # ties broken by id, not by input order
    authors = sampling.longest_answers(triviaqa, 1000, offset=1000)  # the authors' ranks 1001-2000
    assert not ids & {r["question_id"] for r in authors}
    assert min(map(answer_length, chosen)) >= max(map(answer_length, authors))


def test_triviaqa_cli_on_real_sample(shared_data, tmp_path, triviaqa):
    out, fewshot = tmp_path / "triviaqa.jsonl", tmp_path / "fewshot.jsonl"
    stats = sample_data.main(["triviaqa", "--source", str(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl"),
                              "--out", str(out), "--n", "100", "--fewshot-out", str(fewshot), "--fewshot-n", "2"])
    got = formats.read_triviaqa(out)
    assert got == sampling.longest_answers(triviaqa, 100) and stats["selected"] == 100
    shots = formats.read_triviaqa(fewshot)
    assert len(shots) == 2 and not {r["question_id"] for r in shots} & {r["question_id"] for r in got}
    meta = json.loads((tmp_path / "triviaqa.jsonl.meta.json").read_text())
    assert meta["config"]["n"] == 100 and "packages" in meta and meta["stats"]["answer_length_unit"]


def test_triviaqa_seeded_selection(shared_data, tmp_path, triviaqa):
    """The seeded subset: the same questions for the same seed, answers of every length, few-shots outside it."""
    src = str(shared_data / "triviaqa" / "triviaqa_sm_sub.jsonl")
    runs = []
    for i, seed in enumerate((3, 3, 4)):
        out, fewshot = tmp_path / f"t{i}.jsonl", tmp_path / f"f{i}.jsonl"
        stats = sample_data.main(["triviaqa", "--source", src, "--out", str(out), "--n", "200", "--selection",
                                  "seeded", "--seed", str(seed), "--fewshot-out", str(fewshot), "--fewshot-n", "2"])
        runs.append(formats.read_triviaqa(out))
        shots = formats.read_triviaqa(fewshot)
        assert not {r["question_id"] for r in shots} & {r["question_id"] for r in runs[-1]}
    assert runs[0] == runs[1] != runs[2] and stats["selection"] == "seeded" and "ranks" not in stats
    longest = {r["question_id"] for r in sampling.longest_answers(triviaqa, 200)}
    assert len(longest & {r["question_id"] for r in runs[0]}) < 50  # not the longest-answer subset again
    with pytest.raises(ValueError, match="offset ranks the longest answers"):
        sampling.sample_triviaqa(src, tmp_path / "x.jsonl", n=5, offset=3, selection="seeded")
    # --n all: every question, a pool to draw held-out questions from (the translators' answer prompts)
    stats = sample_data.main(["triviaqa", "--source", src, "--out", str(tmp_path / "all.jsonl"), "--n", "all",
                              "--selection", "seeded"])
    assert formats.read_triviaqa(tmp_path / "all.jsonl") == triviaqa and stats["selected"] == 3000


def test_triviaqa_too_few_questions_writes_nothing(tmp_path):
    src = tmp_path / "src.jsonl"
    formats.write_triviaqa(src, [formats.triviaqa_record(f"Q{i}?", f"q{i}", "x" * i) for i in range(1, 4)])
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="asked for ranks 1-5 but the source has 3 questions"):
        sampling.sample_triviaqa(str(src), out, n=5)
    assert list(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize("kind,name", [("coqa", "coqa/coqa_dev_hf_validation.arrow"),
                                       ("truthfulqa", "truthfulqa/TruthfulQA.csv")])
def test_seeded_subsets_are_deterministic(shared_data, tmp_path, kind, name):
    src = str(shared_data / name)
    outs = [tmp_path / f"{kind}{i}.jsonl" for i in range(3)]
    for out, seed in zip(outs, (7, 7, 8)):
        sample_data.main([kind, "--source", src, "--out", str(out), "--n", "20", "--seed", str(seed)])
    assert outs[0].read_bytes() == outs[1].read_bytes() != outs[2].read_bytes()
    sub, full = formats.LOADERS[kind](outs[0]), formats.LOADERS[kind](src)
    positions = [full.index(r) for r in sub]
    assert len(sub) == 20 and positions == sorted(positions)  # source order kept


def test_full_eval_set_copy(shared_data, tmp_path):
    out = tmp_path / "coqa.json"
    stats = sampling.sample_eval_set("coqa", str(shared_data / "coqa" / "coqa_dev_500.json"), out)
    assert stats == {"records": 500, "questions": 7983}
    assert json.loads(out.read_text())[0]["questions"][0] == "What color was Cotton?"  # .json: one array


def test_hub_code_path_on_local_dataset_folder(tmp_path):
    """A folder of split files goes through the hub branch (datasets.load_dataset + HF-row converters):
    HF-layout TriviaQA with evidence fields, few-shot examples from its train split."""
    def hf_row(i):
        value = "v" * i
        return {"question": f"Q{i}?", "question_id": f"tc_{i}", "question_source": "http://quiz",
                "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
                "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [],
                                   "search_context": []},
                "answer": {"aliases": [value, value.upper()], "normalized_aliases": [value],
                           "matched_wiki_entity_name": "", "normalized_matched_wiki_entity_name": "",
                           "normalized_value": value,
                           "type": "WikipediaEntity", "value": value}}

    hub = tmp_path / "trivia_qa"
    hub.mkdir()
    (hub / "validation.jsonl").write_text("".join(json.dumps(hf_row(i)) + "\n" for i in (3, 1, 4, 2, 5)))
    (hub / "train.jsonl").write_text("".join(json.dumps(hf_row(i)) + "\n" for i in (10, 11, 12)))
    out, shots = tmp_path / "t.jsonl", tmp_path / "f.jsonl"
    sample_data.main(["triviaqa", "--source", str(hub), "--config", "", "--n", "2", "--out", str(out),
                      "--fewshot-out", str(shots), "--fewshot-n", "2"])
    got = formats.read_triviaqa(out)
    assert [r["question_id"] for r in got] == ["tc_5", "tc_4"] and "entity_pages" not in got[0]
    assert got[0]["answer"] == hf_row(5)["answer"]
    assert {r["question_id"] for r in formats.read_triviaqa(shots)} <= {"tc_10", "tc_11", "tc_12"}

    tq = tmp_path / "truthful_qa"
    tq.mkdir()
    row = {"type": "Adversarial", "category": "Myths", "question": "Q?", "best_answer": "No",
           "correct_answers": ["No", "Never"], "incorrect_answers": ["Yes", ""], "source": "s"}
    (tq / "validation.jsonl").write_text(json.dumps(row) + "\n")
    sampling.sample_eval_set("truthfulqa", str(tq), tmp_path / "tq.jsonl", config=None)
    assert formats.read_truthfulqa(tmp_path / "tq.jsonl") == [{**row, "incorrect_answers": ["Yes"]}]

    text = tmp_path / "fineweb"
    text.mkdir()
    (text / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i} here", "id": i}) + "\n"
                                              for i in range(50)))
    stats = sampling.sample_corpus(str(text), tmp_path / "c.jsonl", token_budget=30, config=None, shuffle_buffer=16)
    assert stats["documents"] == 10 and stats["tokens"] == 30  # 3 words each


# ---------------------------------------------------------------- distillation text


@pytest.fixture
def text_source(tmp_path):
    lines = [f"document {i}" + " word" * (i % 7) for i in range(200)]
    path = tmp_path / "source.txt"
    path.write_text("\n".join(lines[:100]) + "\n \n\n" + "\n".join(lines[100:]) + "\n")  # blank lines skipped
    return path, lines


def test_text_sampling_deterministic_by_seed(tmp_path, text_source):
    src, lines = text_source
    outs = [tmp_path / f"c{i}.jsonl" for i in range(3)]
    for out, seed in zip(outs, (1, 1, 2)):
        stats = sampling.sample_corpus(str(src), out, token_budget=300, seed=seed, shuffle_buffer=50)
    assert outs[0].read_bytes() == outs[1].read_bytes() != outs[2].read_bytes()
    docs = list(formats.read_corpus(outs[0]))
    assert set(docs) <= set(lines)
    words = [len(d.split()) for d in docs]
    assert sum(words) >= 300 and sum(words[:-1]) < 300  # whole documents until the budget is reached
    assert docs != lines[:len(docs)]  # shuffled, not the file's first lines
    assert not stats["exhausted_before_budget"]


def test_held_out_text_follows_the_training_text(tmp_path, text_source):
    """One stream: the training draw is the same with or without the held-out file, and shares no document with it."""
    src, lines = text_source
    alone, train, valid = tmp_path / "alone.jsonl", tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    sampling.sample_corpus(str(src), alone, token_budget=300, seed=1, shuffle_buffer=50)
    stats = sample_data.main(["fineweb", "--source", str(src), "--out", str(train), "--tokens", "300", "--seed", "1",
                              "--shuffle-buffer", "50", "--valid-out", str(valid), "--valid-tokens", "200"])
    assert train.read_bytes() == alone.read_bytes()
    train_docs, valid_docs = list(formats.read_corpus(train)), list(formats.read_corpus(valid))
    assert not set(train_docs) & set(valid_docs) and set(valid_docs) <= set(lines)
    words = [len(d.split()) for d in valid_docs]
    assert stats["valid"]["tokens"] == sum(words) >= 200 > sum(words[:-1])
    assert json.loads((tmp_path / "valid.jsonl.meta.json").read_text())["stats"] == stats["valid"]
    with pytest.raises(formats.DataFormatError, match="no documents left for the held-out text"):
        sampling.sample_corpus(str(src), train, token_budget=10**6, valid_out=valid, valid_budget=10)
    with pytest.raises(SystemExit):  # a budget without the held-out file it is for
        sample_data.main(["fineweb", "--source", str(src), "--out", str(train), "--tokens", "3", "--valid-tokens",
                          "10"])
    # --valid-out alone: the pipeline's budget (real_data.corpus.valid_tokens), more than this source has left
    stats = sample_data.main(["fineweb", "--source", str(src), "--out", str(train), "--tokens", "3", "--valid-out",
                              str(valid)])
    assert stats["valid"]["exhausted_before_budget"] and stats["valid"]["documents"] == len(lines) - stats["documents"]


def test_text_sampling_from_jsonl_through_datasets(tmp_path, text_source):
    _, lines = text_source
    src = tmp_path / "source.jsonl"
    src.write_text("".join(json.dumps({"text": ln, "id": i}) + "\n" for i, ln in enumerate(lines)))
    out = tmp_path / "c.txt"
    stats = sample_data.main(["fineweb", "--source", str(src), "--out", str(out), "--tokens", "100000", "--seed", "3",
                              "--shuffle-buffer", "64"])
    docs = list(formats.read_corpus(out))
    assert stats["exhausted_before_budget"] and stats["documents"] == 200
    assert sorted(docs) == sorted(lines) and docs != lines


def test_text_sampling_real_wikitext_with_tokenizer(tmp_path, shared_data):
    """Token budget counted with a transformers tokenizer (a whitespace word-level one, built here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    out = tmp_path / "wiki.jsonl"
    stats = sampling.sample_corpus(str(shared_data / "wikitext2" / "valid.txt"), out, token_budget=5000, seed=0,
                                   shuffle_buffer=500, tokenizer=str(tmp_path / "tok"))
    docs = list(formats.read_corpus(out))
    assert stats["tokens"] == sum(len(d.split()) for d in docs) >= 5000 and stats["documents"] == len(docs)


def test_text_sampling_bad_input(tmp_path, text_source):
    src, _ = text_source
    out = tmp_path / "out.jsonl"
    with pytest.raises(FileNotFoundError, match="source file not found: .*missing.txt"):
        sampling.sample_corpus(str(tmp_path / "missing.txt"), out, token_budget=10)
    with pytest.raises(ValueError, match="token_budget"):
        sampling.sample_corpus(str(src), out, token_budget=0)
    with pytest.raises(ValueError, match=r"output .*out.parquet: suffix must be one of \['.txt', '.jsonl'\]"):
        sampling.sample_corpus(str(src), tmp_path / "out.parquet", token_budget=10)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(formats.DataFormatError, match="no string field 'text'"):
        sampling.sample_corpus(str(bad), out, token_budget=10)
    assert not out.exists() and not (tmp_path / "out.jsonl.meta.json").exists()
