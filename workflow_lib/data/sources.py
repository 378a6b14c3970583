"""Where a data source lives, told from its name alone (torch- and datasets-free): the sampler reads a local file
itself (data/sampling.py), and the pipeline's plan gives a task read from one no calibration pool of its own
(workflow_lib/pipeline)."""
from __future__ import annotations

from pathlib import Path

FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".arrow")


def is_local_file(source: str) -> bool:
    """A source naming a file (by suffix or because it is one) is local. Anything else is a hub id or a local dataset
    folder (e.g. a downloaded hub snapshot), both of which `datasets.load_dataset` reads."""
    return Path(source).suffix in FILE_SUFFIXES or Path(source).is_file()
