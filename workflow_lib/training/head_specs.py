"""Head specs: the pipeline config's `heads:` entries, resolved and checked without importing torch.

A spec maps a head name to a registered head `type`, that type's constructor options, and any training setting
that differs from the shared `head_training:` defaults (plus `exit_layers`, else the backbone's):

    heads:
      mamba_s64: {type: mamba, state_size: 64}
      calm_k15: {type: calm, label_rule: oracle_in_intermediate_topk, k: 15}

The pipeline resolves every spec before any job runs (workflow_lib/pipeline/plan.py). Importing the registry itself
(workflow_lib.models.heads pulls in torch and transformers' Mamba-2) took 6-9 s here, more than a whole no-op
`snakemake` call, so `registry()` reads the registry from the source of models/heads.py instead: the classes
decorated with @register_head("name"), their constructor options and their `trainable` flag.
tests/test_heads.py checks this description against the imported registry.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# Training settings of one head: the `head_training:` keys, each overridable per spec, and train_heads' flags.
TRAINING_KEYS = ("label_rule", "k", "label_source", "mode", "class_balance", "seq_len", "batch_size", "steps", "lr",
                 "answers_weight")
EXIT_LAYERS = "exit_layers"  # also overridable per spec; otherwise the backbone's
HEADS_SOURCE = Path(__file__).resolve().parents[1] / "models" / "heads.py"


@dataclass(frozen=True)
class HeadType:
    """What the pipeline needs to know of a registered head class."""

    options: tuple[str, ...]  # constructor keyword options (after hidden_size)
    required: tuple[str, ...]  # the options without a default
    any_options: bool  # the constructor also takes **options
    trainable: bool
    stateful: bool  # it keeps a recurrent state that reads the prompt (overrides ExitHead.prefill: the mamba head)


def _registered_name(cls: ast.ClassDef) -> str | None:
    for deco in cls.decorator_list:
        if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == "register_head"
                and deco.args and isinstance(deco.args[0], ast.Constant)):
            return deco.args[0].value
    return None


def _lookup(cls: ast.ClassDef, classes: dict[str, ast.ClassDef], found):
    """The first `found(node)` that is not None in the class body, then in its bases defined in the same file."""
    for node in cls.body:
        if (value := found(node)) is not None:
            return value
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            if (value := _lookup(classes[base.id], classes, found)) is not None:
                return value
    return None


def _init(node):
    return node if isinstance(node, ast.FunctionDef) and node.name == "__init__" else None


def _trainable(node):
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(isinstance(t, ast.Name) and t.id == "trainable" for t in targets) and isinstance(node.value, ast.Constant):
            return bool(node.value.value)
    return None


def _prefill_owner(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> str | None:
    """The class (this one or a base in the same file) whose body defines `prefill`."""
    if any(isinstance(node, ast.FunctionDef) and node.name == "prefill" for node in cls.body):
        return cls.name
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            if (owner := _prefill_owner(classes[base.id], classes)) is not None:
                return owner
    return None


def registry(source: str | Path = HEADS_SOURCE) -> dict[str, HeadType]:
    """Every registered head type of `source` (models/heads.py) with its constructor options."""
    tree = ast.parse(Path(source).read_text(), filename=str(source))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    types = {}
    for cls in classes.values():
        name = _registered_name(cls)
        if name is None:
            continue
        init = _lookup(cls, classes, _init)
        if init is None:
            raise ValueError(f"{source}: head class {cls.name} has no __init__ (in the class or its bases)")
        a = init.args
        positional = a.posonlyargs + a.args
        params = positional[2:] + a.kwonlyargs  # after self and hidden_size
        defaulted = {p.arg for p in positional[len(positional) - len(a.defaults):]} if a.defaults else set()
        defaulted |= {p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None}
        options = tuple(p.arg for p in params)
        clash = set(options) & {"type", EXIT_LAYERS, *TRAINING_KEYS}
        if clash:  # a spec key must mean one thing: a constructor option or a training setting
            raise ValueError(f"{source}: head type {name!r} has constructor options named like spec keys: "
                             f"{', '.join(sorted(clash))}")
        types[name] = HeadType(options=options, required=tuple(o for o in options if o not in defaulted),
                               any_options=a.kwarg is not None, trainable=_lookup(cls, classes, _trainable) is not False,
                               stateful=_prefill_owner(cls, classes) not in (None, "ExitHead"))
    return types


def resolve_specs(heads: dict, defaults: dict, types: dict[str, HeadType]) -> dict[str, dict]:
    """{name: spec} -> {name: {"type", "options", "training"}}: each spec split into its type's constructor options
    and its training settings (the defaults filled in; exit_layers None = the backbone's).

    Types and ranges of the training settings are the config schema's job; this refuses, naming heads.NAME.KEY,
    what needs the registry: an unknown type, an option its constructor does not take, a required option missing.
    """
    resolved = {}
    for name, spec in heads.items():
        head_type = spec.get("type")
        if head_type not in types:
            raise ValueError(f"heads.{name}.type: unknown head type {head_type!r}; known: {', '.join(sorted(types))}")
        kind = types[head_type]
        options = {k: v for k, v in spec.items() if k not in ("type", EXIT_LAYERS, *TRAINING_KEYS)}
        for key in options:
            if key not in kind.options and not kind.any_options:
                raise ValueError(
                    f"heads.{name}.{key}: head type {head_type!r} takes no option {key!r} (its options: "
                    f"{', '.join(kind.options) or 'none'}; training settings: {', '.join((*TRAINING_KEYS, EXIT_LAYERS))})")
        for key in kind.required:
            if key not in options:
                raise ValueError(f"heads.{name}: head type {head_type!r} needs the option {key!r}")
        training = {k: spec.get(k, defaults[k]) for k in TRAINING_KEYS}
        training[EXIT_LAYERS] = spec.get(EXIT_LAYERS)
        resolved[name] = {"type": head_type, "options": options, "training": training}
    return resolved
