"""The synthetic world: determinism, schema validity, held-out questions never asked in the corpus, spans."""
import json
from pathlib import Path

import pytest

from workflow_lib.data import formats
from workflow_lib.data.world import WorldConfig, triviaqa_prompt, write_world
from workflow_lib.cli.world import main as world_main

SMALL = WorldConfig(n_people=40, qa_docs=20, truthful_docs=10, coqa_train_stories=10, coqa_eval_stories=10, n_unknown=5)
FILES = ["coqa.json", "corpus_train.jsonl", "corpus_valid.jsonl", "triviaqa.jsonl", "triviaqa_train.jsonl",
         "truthfulqa.jsonl", "world.json"]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    write_world(out, 0, SMALL)
    return out


def test_files_and_schemas(world_dir):
    assert sorted(p.name for p in world_dir.iterdir()) == FILES
    trivia = formats.read_triviaqa(world_dir / "triviaqa.jsonl")
    seen = formats.read_triviaqa(world_dir / "triviaqa_train.jsonl")
    truthful = formats.read_truthfulqa(world_dir / "truthfulqa.jsonl")
    coqa = formats.read_coqa(world_dir / "coqa.json")
    meta = json.loads((world_dir / "world.json").read_text())
    assert len(trivia) == meta["n_held_out"] == len(meta["held_out_facts"]) > 0
    assert len(trivia) + len(seen) == meta["n_facts"] == 40 * len(SMALL.attributes)
    assert len(coqa) == 10 and len(truthful) == meta["n_held_out"] + 5
    # The same loaders that read the real samples accept the synthetic files.
    assert formats.load_triviaqa(world_dir / "triviaqa.jsonl") == trivia
    assert formats.load_coqa(world_dir / "coqa.json") == coqa
    for r in trivia:  # lm-eval's prompt appends "?" itself; answers stop at "\n", "." or ","
        assert not r["question"].endswith("?") and not set(r["answer"]["value"]) & set("\n.,")
    for r in truthful:
        assert r["best_answer"] in r["correct_answers"] and not set(r["correct_answers"]) & set(r["incorrect_answers"])


def test_same_seed_byte_identical_other_seed_differs(world_dir, tmp_path):
    write_world(tmp_path / "same", 0, SMALL)
    write_world(tmp_path / "other", 1, SMALL)
    for name in FILES:
        assert (tmp_path / "same" / name).read_bytes() == (world_dir / name).read_bytes(), name
        assert (tmp_path / "other" / name).read_bytes() != (world_dir / name).read_bytes(), name


def test_held_out_facts_never_asked_in_corpus(world_dir):
    corpus = "\n".join(formats.read_corpus(world_dir / "corpus_train.jsonl"))
    corpus += "\n".join(formats.read_corpus(world_dir / "corpus_valid.jsonl"))
    meta = json.loads((world_dir / "world.json").read_text())
    trivia = formats.read_triviaqa(world_dir / "triviaqa.jsonl")
    for fact, record in zip(meta["held_out_facts"], trivia):
        assert fact["person"] in record["question"] and record["answer"]["value"] == fact["value"]
        assert fact["person"] in corpus and fact["value"] in corpus  # stated ...
        assert record["question"] not in corpus and triviaqa_prompt(record["question"]) not in corpus  # ... never asked
    held = {(f["person"], f["attribute"]) for f in meta["held_out_facts"]}
    # No question of any wording about a held-out (person, attribute): every corpus question line is about a seen fact.
    from workflow_lib.data.world import ATTRIBUTES
    for person, attribute in held:
        for template in ATTRIBUTES[attribute].questions:
            assert template.format(n=person) not in corpus
    # Seen facts are asked, in the TriviaQA prompt format.
    seen = formats.read_triviaqa(world_dir / "triviaqa_train.jsonl")
    assert sum(triviaqa_prompt(r["question"]) in corpus for r in seen) > len(seen) // 4


def test_coqa_answers_are_spans_of_their_story(world_dir):
    for record in formats.read_coqa(world_dir / "coqa.json"):
        answers = record["answers"]
        for text, start, end in zip(answers["input_text"], answers["answer_start"], answers["answer_end"]):
            assert 0 <= start < end <= len(record["story"])
            assert text in record["story"][start:end]


def test_coqa_calibration_stories_apart_from_the_world(world_dir, tmp_path, capsys):
    """More stories of the same world, none an evaluated one; the world's own files are not touched."""
    from workflow_lib.data.calibration import evaluated_records, overlap

    before = {name: (world_dir / name).read_bytes() for name in FILES}
    out = tmp_path / "coqa_calibration.jsonl"
    world_main(["--coqa-calibration", str(out), "--stories", "30", "--n-people", "40", "--qa-docs", "20",
                "--truthful-docs", "10", "--coqa-train-stories", "10", "--coqa-eval-stories", "10", "--n-unknown", "5"])
    assert "30 CoQA calibration stories" in capsys.readouterr().out
    stories = formats.load_coqa(out)
    evaluated = evaluated_records("coqa", formats.load_coqa(world_dir / "coqa.json"))
    assert len(stories) == len({s["story"] for s in stories}) == 30 and not overlap("coqa", stories, evaluated)
    people = {p["name"] for p in json.loads((world_dir / "world.json").read_text())["people"]}
    assert all(any(name in s["story"] for name in people) for s in stories)  # the world's people, as evaluated
    assert {name: (world_dir / name).read_bytes() for name in FILES} == before
    world_main(["--coqa-calibration", str(tmp_path / "again.jsonl"), "--stories", "30", "--n-people", "40",
                "--qa-docs", "20", "--truthful-docs", "10", "--coqa-train-stories", "10", "--coqa-eval-stories", "10",
                "--n-unknown", "5"])
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()  # deterministic
    with pytest.raises(SystemExit):
        world_main(["--coqa-calibration", str(tmp_path / "x.jsonl")])  # how many stories?
    assert "--coqa-calibration and --stories go together" in capsys.readouterr().err


def test_cli_and_bad_input(tmp_path, capsys):
    world_main(["--out-dir", str(tmp_path / "cli"), "--seed", "3", "--n-people", "10", "--coqa-eval-stories", "2"])
    assert "10 people" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "world.json").read_text())["config"]["n_people"] == 10
    with pytest.raises(ValueError, match="qa_fraction"):
        world_main(["--out-dir", str(tmp_path / "bad"), "--qa-fraction", "1.5"])
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("task_yaml", ["lm-eval", "project"])
def test_truthfulqa_documents_open_with_lm_evals_primer(world_dir, task_yaml):
    """The corpus teaches the evaluated prompt: its TruthfulQA documents start with the very primer lm-eval's
    truthfulqa_gen (and the project's copy of it) puts before the question."""
    import jinja2
    import lm_eval
    import yaml

    from workflow_lib.data.world import TRUTHFULQA_PRIMER
    from workflow_lib.evaluation.tasks.helpers import truthfulqa_doc_to_text

    if task_yaml == "lm-eval":
        loader = type("Loader", (yaml.SafeLoader,), {})
        loader.add_multi_constructor("!", lambda *_: None)  # !function tags: not needed to read the prompt
        path = Path(lm_eval.__file__).parent / "tasks/truthfulqa/truthfulqa_gen.yaml"
        template = yaml.load(path.read_text(), Loader=loader)["doc_to_text"]
        prompt = jinja2.Template(template).render(question="Who is X?")
    else:  # the project's task: a function (tests/test_tasks.py checks it against lm-eval's template)
        prompt = truthfulqa_doc_to_text({"question": "Who is X?"})
    assert prompt == TRUTHFULQA_PRIMER + "\n\nQ: Who is X?"
    docs = [json.loads(line)["text"] for line in (world_dir / "corpus_train.jsonl").read_text().splitlines()]
    truthful = [d for d in docs if d.startswith(TRUTHFULQA_PRIMER + "\n\nQ: ")]
    assert len(truthful) == SMALL.truthful_docs
