"""The decoders' cache (decoding/kv_cache.py): appends in place, and gives exactly what transformers' DynamicCache
gives through every operation the decoders apply to it."""
import copy

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from workflow_lib.decoding.kv_cache import GrowingLayer, new_cache


def kv(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 4, generator=g)  # (B, kv_heads, T, head_dim)


def test_operations_equal_dynamic_layer():
    """Append, read, write the last position in place, reorder rows, gather and put back, restore a snapshot
    (last-in first-out), crop, deep copy: the same K/V as DynamicLayer after each."""
    ours, theirs = GrowingLayer(), DynamicLayer()

    def check():
        assert ours.get_seq_length() == theirs.get_seq_length()
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)

    for layer in (ours, theirs):
        layer.update(*kv(3, 5, 0))
    check()
    for step in range(6):
        for layer in (ours, theirs):
            layer.update(*kv(3, 1, 10 + step))
        check()
    for layer in (ours, theirs):  # the batched decoder's per-row write at the last position
        layer.keys[torch.tensor([0, 2]), :, -1:] = torch.ones(2, 2, 1, 4)
    check()
    snapshot = [(layer.keys, layer.values) for layer in (ours, theirs)]
    for layer in (ours, theirs):  # a look-ahead, nested snapshot included, then put back
        layer.update(*kv(3, 1, 30))
        inner = layer.keys, layer.values
        layer.update(*kv(3, 1, 31))
        layer.keys, layer.values = inner
    check()
    for layer, (k, v) in zip((ours, theirs), snapshot):
        layer.keys, layer.values = k, v
    check()
    for layer in (ours, theirs):
        layer.update(*kv(3, 1, 40))
    check()
    for layer in (ours, theirs):  # run_rows: gather two rows, append, put the whole batch back
        k, v = layer.keys, layer.values
        layer.keys, layer.values = k[torch.tensor([2, 0])], v[torch.tensor([2, 0])]
        layer.update(*kv(2, 1, 50))
        layer.keys, layer.values = k, v
    check()
    for layer in (ours, theirs):
        layer.reorder_cache(torch.tensor([1, 2]))
        layer.update(*kv(2, 1, 60))
        layer.crop(-2)
    check()
    ours, theirs = copy.deepcopy(ours), copy.deepcopy(theirs)
    for layer in (ours, theirs):
        layer.update(*kv(2, 3, 70))
    check()


def test_appends_write_in_place():
    """A token's append leaves the earlier positions where they are (no copy of the cache) until the buffer fills."""
    layer = GrowingLayer()
    layer.update(*kv(2, 8, 0))  # room for 16
    first = layer.keys
    for step in range(8):
        layer.update(*kv(2, 1, step))
        assert layer.keys.data_ptr() == first.data_ptr()
    layer.update(*kv(2, 1, 9))  # the 17th position: the buffer doubles
    assert layer.keys.data_ptr() != first.data_ptr() and torch.equal(layer.keys[..., :8, :], first)


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_model_decodes_as_with_dynamic_cache(request, arch):
    """The model's own forward, prefill then 12 greedy steps (the buffer regrows once): the same logits, bit for bit,
    as with DynamicCache."""
    model = request.getfixturevalue(f"tiny_{arch}")
    ours = new_cache(model.config)
    assert {type(layer) for layer in ours.layers} == {GrowingLayer}  # no sliding window: every layer is ours
    ids = torch.tensor([[1, 17, 250, 33, 980, 4, 77], [5, 6, 7, 8, 9, 10, 11]])
    logits = []
    for cache in (ours, DynamicCache(config=model.config)):
        with torch.no_grad():
            out, steps = model(input_ids=ids, cache=cache, use_cache=True), []
            for _ in range(12):
                tok = out.logits[:, -1:].argmax(-1)  # (B, 1)
                steps.append(out.logits[:, -1])
                out = model(input_ids=tok, cache=cache, use_cache=True)
        logits.append(torch.stack(steps))
    assert torch.equal(*logits)
