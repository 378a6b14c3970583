"""DYNAMAX: early-exit inference for Transformer and Mamba-2 decoder LLMs."""
