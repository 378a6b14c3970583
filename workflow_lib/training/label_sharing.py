"""When a head job trains on its backbone's stored labels (training/label_cache.py) instead of labelling its own
batches. Torch-free, so that the pipeline's plan decides it before any job (workflow_lib/pipeline) in the same terms
in which the cache's reader refuses a head job made for other settings."""
from __future__ import annotations

from .head_specs import EXIT_LAYERS

# Settings a head job must share with the cache to train on it: the emission rule (one cache per rule) and these.
SHARED_SETTINGS = ("emission", "label_source", "seq_len")


def reads_label_cache(training: dict, cache: dict, answers: bool) -> bool:
    """Whether a head spec with these training settings (head_specs.resolve_specs' "training") trains on the cache made
    with `cache`'s (head_training): it keeps the backbone's exit layers (the cache's) and the shared settings, reads
    no more text than the cache holds (its sequences are a prefix of the cache's), and, when the config has answer
    tasks (`answers`), trains on answers only if the cache labels them too."""
    return (training[EXIT_LAYERS] is None
            and all(training[k] == cache[k] for k in SHARED_SETTINGS if k != "emission")
            and (not answers or training["answers_weight"] == 0 or cache["answers_weight"] > 0)
            and training["steps"] * training["batch_size"] <= cache["steps"] * cache["batch_size"])
