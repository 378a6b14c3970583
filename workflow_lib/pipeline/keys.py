"""The names that path components are made of, and the patterns that match them.

Three words for three things (docs/architecture.md): a head TYPE is a registered class (`calm`); a head SPEC is an
entry of the config's `heads:` (`calm_k15`: a type, its options and training settings); a head KEY is a spec under one
emission rule, the folder name of its heads, cells and logs: the spec's name under the paper's rule
(`calm_k15`), `calm_k15/emission~lens` under another. The oracle's folder is keyed the same way.
"""
from __future__ import annotations

import re

import numpy as np

from ..choices import DEFAULT_EMISSION, EMISSION_RULES

ORACLE = "oracle"
# The rules that put an emission~RULE folder under a spec's (or the oracle's): all but the default.
OTHER_EMISSIONS = tuple(rule for rule in EMISSION_RULES if rule != DEFAULT_EMISSION)
EMISSION_SUFFIX = rf"(/emission~({'|'.join(OTHER_EMISSIONS)}))?"
SPEC_NAME = r"[A-Za-z0-9_]+"  # the schema's pattern of a `heads:` name
HEAD_KEY = SPEC_NAME + EMISSION_SUFFIX
ORACLE_KEY = ORACLE + EMISSION_SUFFIX
LABEL = r"[0-9.]+"  # a threshold or delta folder's number (threshold~0.4, calibrated~0.05)


def head_key(spec: str, emission: str) -> str:
    """calm, last_block -> calm; calm, lens -> calm/emission~lens."""
    return spec if emission == DEFAULT_EMISSION else f"{spec}/emission~{emission}"


def spec_name(key: str) -> str:
    """The spec's name of a head key: calm/emission~lens -> calm."""
    return key.split("/", 1)[0]


def emission_of(key: str) -> str:
    """The emission rule of a head key or an oracle folder: calm/emission~lens -> lens, calm -> last_block."""
    _, found, rule = key.partition("emission~")
    return rule if found else DEFAULT_EMISSION


def one_of(names) -> str:
    """A wildcard pattern matching exactly these names (none: a pattern that never matches)."""
    return "|".join(map(re.escape, names)) or "(?!)"


def keys_of(specs) -> str:
    """A wildcard pattern matching the head keys of these specs, under any emission rule."""
    return f"({one_of(specs)}){EMISSION_SUFFIX}"


def number_label(value: float) -> str:
    """A threshold or delta as its folder spells it: positional, shortest round-trip digits, never scientific (0.4 ->
    '0.4', 1 -> '1', 1e-05 -> '0.00001'), so that it matches LABEL and float(label) == value."""
    return np.format_float_positional(float(value), trim="-")
