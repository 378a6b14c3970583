"""The registered head types that are zero-parameter exit rules (`trainable = False` in models/heads.py, the
test-only `forced` head aside): no training job, their heads folder holds heads.json only.

Names only, without torch, so that the pipeline's rules read them without importing the models;
tests/test_heads.py checks them against the registry.
"""
ZERO_PARAMETER_HEADS = ("softmax", "saturation")
