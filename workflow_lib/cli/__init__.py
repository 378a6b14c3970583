"""The pipeline's entry points, one module per stage: `python -m workflow_lib.cli.<stage> --help`.

Each parses its arguments, checks its inputs before any expensive work, and calls the library packages beside this
one (data, models, training, decoding, evaluation, analysis); nothing in those packages imports from here.
"""
