"""One default per setting: a stage run by hand does what the pipeline's job does.

Compared here, against what schemas/config.schema.yaml fills into the pipeline's config:
  - workflow_lib/defaults.py, key by key (every key it has is a schema key with that default, where the schema has one);
  - every entry point's argparse default of an option the pipeline passes from a config key (CLI_DEFAULTS below), and
    the options paired with another (--answers-weight, --valid-tokens), which take the config's default with it;
  - the dataclasses' field defaults (TrainConfig, LabelCacheConfig, TranslatorConfig, PretrainConfig, WorldConfig),
    and each entry point's defaults against its dataclass for the settings no config key has;
  - the schema's enums against workflow_lib/choices.py, and the backbone registry against choices.ARCHITECTURES.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml

from workflow_lib import choices, defaults

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml").read_text())


def node(path: str) -> dict:
    """The schema of a config key, 'head_training.steps', 'backbones.*.pretrain.lr' ('*': any backbone's)."""
    here = SCHEMA
    for key in path.split("."):
        if "$ref" in here and "properties" not in here:
            here = resolve(here)
        if key == "*":
            here = here["additionalProperties"]
            continue
        properties = here.get("properties") or here.get("then", {}).get("properties")  # world: null or an object
        here = properties[key]
    return here


def resolve(schema: dict) -> dict:
    """A `$ref: "#/$defs/NAME"` followed (its own keys, e.g. a default beside the $ref, kept)."""
    if "$ref" not in schema:
        return schema
    target = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return {**resolve(target), **{k: v for k, v in schema.items() if k != "$ref"}}


def schema_default(path: str):
    return node(path)["default"]


def enum(path: str) -> set:
    schema = resolve(node(path))
    if "items" in schema:
        schema = resolve(schema["items"])
    return set(schema["enum"])


def same(a, b) -> bool:
    """Equal as the YAML reads them (a tuple default is a YAML list)."""
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return norm(a) == norm(b)


# ---------------------------------------------------------------------------------------------- defaults.py

SECTIONS = {"world": defaults.WORLD, "real_data.corpus": defaults.CORPUS, "real_data.triviaqa": defaults.TRIVIAQA,
            "real_data.coqa": defaults.COQA, "real_data.truthfulqa": defaults.TRUTHFULQA,
            "tokenizer": defaults.TOKENIZER, "backbones.*.pretrain": defaults.PRETRAIN,
            "head_training": defaults.HEAD_TRAINING, "translators": defaults.TRANSLATORS, "answers": defaults.ANSWERS,
            "agreement": defaults.AGREEMENT, "evaluation": defaults.EVALUATION, "calibration": defaults.CALIBRATION,
            "analysis": defaults.ANALYSIS}


@pytest.mark.parametrize("section", SECTIONS)
def test_defaults_module_is_the_schema(section):
    for key, value in SECTIONS[section].items():
        schema = resolve(node(f"{section}.{key}"))  # a key the schema does not have raises KeyError here
        if "default" in schema:  # real_data.coqa.source has none: the config must name it; the sampler's own stays
            assert same(value, schema["default"]), \
                f"{section}.{key}: defaults.py {value!r}, schema {schema['default']!r}"
    assert defaults.SEED == schema_default("seed")


def test_a_wrong_default_would_be_seen():
    """The comparison reads real schema values: a changed number differs."""
    assert schema_default("head_training.steps") == defaults.HEAD_TRAINING["steps"] == 300
    assert not same(defaults.HEAD_TRAINING["steps"] + 1, schema_default("head_training.steps"))
    assert schema_default("backbones.*.pretrain.lr") == 0.002 and schema_default("real_data.coqa.split") == "validation"


# ---------------------------------------------------------------------------------------------- entry points

def _seed(*extra):
    return {"seed": "seed", **dict(extra)}


# entry point -> {argparse dest: the config key the pipeline passes it from (rules/*.smk)}
CLI_DEFAULTS = {
    "train_heads": _seed(*((k, f"head_training.{k}") for k in (
        "label_rule", "k", "label_source", "mode", "class_balance", "seq_len", "batch_size", "steps", "lr"))),
    "label_cache": _seed(*((k, f"head_training.{k}") for k in ("label_source", "seq_len", "batch_size", "store_inputs"))),
    "train_translators": _seed(*((k, f"translators.{k}") for k in (
        "steps", "lr", "batch_size", "seq_len", "init", "init_batches"))),
    "answers": _seed(("prompts", "answers.prompts"), ("tokens", "answers.tokens"),
                     ("batch_size", "evaluation.batch_size")),
    "agreement": _seed(("text_tokens", "agreement.text_tokens"), ("limit", "agreement.limit"),
                       ("max_new_tokens", "evaluation.max_new_tokens")),
    "evaluate": _seed(*((k, f"evaluation.{k}") for k in ("max_new_tokens", "degenerate_limit", "batch_size"))),
    "calibrate": _seed(*((k, f"evaluation.{k}") for k in ("max_new_tokens", "degenerate_limit", "batch_size")),
                       *((k, f"calibration.{k}") for k in ("epsilon", "risk", "metric", "bound"))),
    "generate": {k: f"evaluation.{k}" for k in ("max_new_tokens", "batch_size")},  # by hand only: as evaluate
    "held_out_split": _seed(),
    "world": _seed(*((f.name, f"world.{f.name}") for f in dataclasses.fields(
        importlib.import_module("workflow_lib.data.world").WorldConfig))),
    "pretrain": _seed(*((k, f"backbones.*.pretrain.{k}") for k in defaults.PRETRAIN)),
    "tokenizer": {"vocab_size": "tokenizer.vocab_size"},
    "make_tables": _seed(("no_loss_delta", "analysis.no_loss_delta")),
    "make_figures": {"crf": "analysis.crf"},
}


@pytest.mark.parametrize("entry", CLI_DEFAULTS)
def test_entry_point_defaults_are_the_pipelines(entry):
    parser = importlib.import_module(f"workflow_lib.cli.{entry}").build_parser()
    for dest, key in CLI_DEFAULTS[entry].items():
        default = parser.get_default(dest)
        assert same(default, schema_default(key)), \
            f"{entry} --{dest.replace('_', '-')}: {default!r}, the pipeline's {key}: {schema_default(key)!r}"


def test_make_tables_crf_is_the_pipelines():
    from workflow_lib.cli import make_tables

    assert make_tables.build_parser().get_default("crf") == f"crf_{schema_default('analysis.crf')}"  # as tables.smk


SAMPLE_DATA = {"fineweb": ("real_data.corpus", ("source", "config", "split", "tokens")),
               "triviaqa": ("real_data.triviaqa", ("source", "config", "split", "n", "selection", "fewshot_n")),
               "coqa": ("real_data.coqa", ("config", "split", "n")),
               "truthfulqa": ("real_data.truthfulqa", ("config", "split", "n"))}


@pytest.mark.parametrize("command", SAMPLE_DATA)
def test_sample_data_defaults_are_the_pipelines(command):
    from workflow_lib.cli import sample_data

    section, keys = SAMPLE_DATA[command]
    args = sample_data.parse_args([command, "--out", "x.jsonl"])
    for key in keys:
        assert same(getattr(args, key), schema_default(f"{section}.{key}")), (command, key)
    assert args.seed == schema_default("seed")
    if command == "fineweb":  # --valid-tokens goes with --valid-out, and then takes the config's default
        assert args.valid_tokens is None
        paired = sample_data.parse_args([command, "--out", "x.jsonl", "--valid-out", "v.jsonl"])
        assert paired.valid_tokens == schema_default("real_data.corpus.valid_tokens")


def test_answers_weight_is_the_pipelines_with_answers():
    """head_training.answers_weight / translators.answers_weight apply when there are answers (the pipeline passes
    --answers with its weight); without answers the fit is on text alone (0), as the pipeline's command."""
    from workflow_lib.cli import train_heads, train_translators

    heads = ["--backbone", "b", "--head", "calm", "--train-text", "t", "--valid-text", "v", "--out", "o"]
    assert train_heads.parse_args(heads).answers_weight == 0.0
    assert train_heads.parse_args([*heads, "--answers", "a"]).answers_weight == schema_default(
        "head_training.answers_weight")
    assert train_heads.parse_args([*heads, "--answers", "a", "--answers-weight", "0.25"]).answers_weight == 0.25
    translators = ["--backbone", "b", "--train-text", "t", "--out", "o"]
    assert train_translators.parse_args(translators).answers_weight == 0.0
    assert train_translators.parse_args([*translators, "--answers", "a"]).answers_weight == schema_default(
        "translators.answers_weight")


# ---------------------------------------------------------------------------------------------- dataclasses

def _fields(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


DATACLASSES = {  # dataclass -> {field: config key}
    "workflow_lib.training.distill.TrainConfig": _seed(*((k, f"head_training.{k}") for k in (
        "label_rule", "k", "label_source", "mode", "class_balance", "seq_len", "batch_size", "steps", "lr"))),
    "workflow_lib.training.label_cache.LabelCacheConfig": _seed(*((k, f"head_training.{k}") for k in (
        "label_source", "seq_len", "batch_size", "store_inputs"))),
    "workflow_lib.training.translators.TranslatorConfig": _seed(*((k, f"translators.{k}") for k in (
        "steps", "lr", "batch_size", "seq_len", "init", "init_batches"))),
    "workflow_lib.training.pretrain.PretrainConfig": _seed(*((k, f"backbones.*.pretrain.{k}") for k in (
        "hidden_size", "num_layers", "seq_len", "batch_size", "steps", "lr", "state_size", "time_budget_s"))),
    "workflow_lib.data.world.WorldConfig": {f: f"world.{f}" for f in defaults.WORLD},
}


def _class(name: str):
    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(module), cls)


@pytest.mark.parametrize("name", DATACLASSES)
def test_dataclass_defaults_are_the_pipelines(name):
    fields = _fields(_class(name))
    for field, key in DATACLASSES[name].items():
        assert same(fields[field], schema_default(key)), \
            f"{name}.{field}: {fields[field]!r}, {key}: {schema_default(key)!r}"


# entry point -> its dataclass and the least command line it parses: every option that is a field has the field's
# default (the settings no config key has included: --valid-tokens, --checkpoint-every ...); the paired
# --answers-weight is resolved by parse_args (test_answers_weight_is_the_pipelines_with_answers)
ENTRY_DATACLASSES = {
    "train_heads": ("workflow_lib.training.distill.TrainConfig", "--backbone b --head calm --out o"),
    "label_cache": ("workflow_lib.training.label_cache.LabelCacheConfig",
                    "--backbone b --train-text t --valid-text v --train-tokens 1 --out o"),
    "train_translators": ("workflow_lib.training.translators.TranslatorConfig", "--backbone b --train-text t --out o"),
    "pretrain": ("workflow_lib.training.pretrain.PretrainConfig", "--tokenizer t --out-dir o"),
    "world": ("workflow_lib.data.world.WorldConfig", "--out-dir o"),
}


@pytest.mark.parametrize("entry", ENTRY_DATACLASSES)
def test_entry_point_defaults_are_its_dataclasses(entry):
    name, argv = ENTRY_DATACLASSES[entry]
    options = vars(importlib.import_module(f"workflow_lib.cli.{entry}").build_parser().parse_args(argv.split()))
    fields = _fields(_class(name))
    given = {word.lstrip("-").replace("-", "_") for word in argv.split() if word.startswith("--")}
    compared = sorted((set(options) - given - {"answers_weight"}) & set(fields))
    assert len(compared) >= 5, compared
    for dest in compared:
        assert same(options[dest], fields[dest]), (entry, dest, options[dest], fields[dest])


# ---------------------------------------------------------------------------------------------- enums

def test_schema_enums_are_the_choices():
    from workflow_lib.data.world import ATTRIBUTES
    from workflow_lib.evaluation.tasks import TASKS

    policies = {p for names in choices.POLICIES.values() for p in names}
    pairs = [("$label_rule", choices.LABEL_RULES), ("$label_source", choices.LABEL_SOURCES),
             ("$training_mode", choices.TRAIN_MODES), ("$policy_names", policies),
             ("backbones.*.policies", policies), ("backbones.*.arch", choices.ARCHITECTURES),
             ("backbones.*.emissions", choices.EMISSION_RULES), ("translators.init", choices.TRANSLATOR_INITS),
             ("calibration.risk", choices.RISKS), ("calibration.bound", choices.BOUNDS),
             ("analysis.crf", choices.CRF_KINDS), ("analysis.formats", choices.FIGURE_FORMATS),
             ("real_data.triviaqa.selection", choices.TRIVIAQA_SELECTIONS), ("world.attributes", ATTRIBUTES),
             ("answers.tasks", TASKS), ("calibration.tasks", TASKS)]
    for path, names in pairs:
        if path.startswith("$"):  # a definition of the schema's $defs
            schema = SCHEMA["$defs"][path[1:]]
            found = set(schema.get("items", schema)["enum"])
        else:
            found = enum(path)
        assert found == set(names), (path, found, names)
    assert set(node("evaluation.tasks")["propertyNames"]["enum"]) == set(TASKS)
    for rules in ("emission_heads", "emission_policies"):
        assert set(node(f"backbones.*.{rules}")["properties"]) == set(choices.EMISSION_RULES)
    assert schema_default("backbones.*.emissions") == [choices.DEFAULT_EMISSION]
    # each architecture's policies (the schema's per-arch allOf) are its family's
    for case in node("backbones")["additionalProperties"]["allOf"]:
        archs = case["if"]["properties"]["arch"]
        family = "mamba2" if archs.get("const") == "mamba2" else "transformer"
        assert set(case["then"]["properties"]["policies"]["items"]["enum"]) == set(choices.POLICIES[family])
    assert set(choices.PRETRAIN_ARCHS) <= set(choices.ARCHITECTURES)


def test_backbone_registry_is_the_choices():
    from workflow_lib.models.backbone import ARCHITECTURES, family

    assert set(ARCHITECTURES) == set(choices.ARCHITECTURES)
    assert {family(arch) for arch in choices.ARCHITECTURES} == set(choices.POLICIES) == set(choices.DEFAULT_POLICY)
    assert all(choices.DEFAULT_POLICY[f] in choices.POLICIES[f] for f in choices.POLICIES)
