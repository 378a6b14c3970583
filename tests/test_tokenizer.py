"""The corpus tokenizer: deterministic files, special-token ids of the tiny presets, lossless round trip."""
import pytest
from transformers import AutoTokenizer

from workflow_lib.data.formats import read_corpus
from workflow_lib.data.world import WorldConfig, write_world
from workflow_lib.cli.tokenizer import main as tokenizer_main

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    write_world(out, 0, WorldConfig(n_people=40, qa_docs=20, truthful_docs=10, coqa_train_stories=10,
                                    coqa_eval_stories=5, n_unknown=5))
    return out / "corpus_train.jsonl"


def test_deterministic_and_round_trip(corpus, tmp_path):
    for name in ("a", "b"):
        tokenizer_main(["--corpus", str(corpus), "--out-dir", str(tmp_path / name), "--vocab-size", "400"])
    for name in TOKENIZER_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert len(tok) == 400
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    text = "Question: Where does Zyx Ünïcode-Vorp live?\nAnswer: Brimholt\n\nQ: 42 €?\n\nA: yes"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # BPE learnt the corpus: its text costs far fewer tokens than bytes.
    doc = next(read_corpus(corpus))
    assert len(tok(doc)["input_ids"]) < len(doc.encode()) / 2


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus"):
        tokenizer_main(["--corpus", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path / "t")])
    (tmp_path / "c.txt").write_text("hello world\n")
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer_main(["--corpus", str(tmp_path / "c.txt"), "--out-dir", str(tmp_path / "t"), "--vocab-size", "100"])
    assert not (tmp_path / "t").exists()
