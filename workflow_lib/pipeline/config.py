"""The pipeline config checked against schemas/config.schema.yaml, with the schema's defaults filled in, and the one
error every refused config raises."""
from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config the pipeline refuses, naming the key: 'invalid config: heads.m.state_sise: ...'."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"invalid config: {key}: {problem}")


@cache
def _schema(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _filling_defaults(validator_class):
    """The validator class that also fills each object's missing properties with the schema's default as it checks
    them, as Snakemake's `validate` does (jsonschema's FAQ recipe); defaults are copied, never shared."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        for name, subschema in props.items():
            if "default" in subschema and isinstance(instance, dict):  # a nullable object may be null
                instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


def key_path(path) -> str:
    """jsonschema's path of the failing value as the config spells it: evaluation.thresholds[1]."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top level)"


def validated(config: dict, schema: str | Path = SCHEMA) -> dict:
    """A copy of `config` checked against the schema, its defaults filled in; the most relevant violation as a
    ConfigError naming the key. One pass when the config is valid (every Snakemake call parses it, no-op reruns
    included)."""
    schema = _schema(Path(schema))
    filled = copy.deepcopy(config)
    try:
        _filling_defaults(jsonschema.Draft202012Validator)(schema).validate(filled)
    except jsonschema.ValidationError as first:
        # the first error met is not always the clearest one: best_match ranks them all
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(filled)) or first
        raise ConfigError(key_path(error.absolute_path), error.message) from None
    return filled
