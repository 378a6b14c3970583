"""GGUF checkpoints: checked from their header alone, torch-free, so the config check and the entry points refuse a
bad file in milliseconds, before any job or weight load.

Hand-written on purpose: the gguf package's GGUFReader builds a numpy view of every vocabulary string (4 s on
SmolLM2's 49,152 tokens and merges); this walks the same layout (GGUF v2/v3: header, key-value pairs, tensor
infos, aligned data) with struct and takes the quantisation block sizes from the gguf package itself.
"""
from __future__ import annotations

import importlib.util
import mmap
import os
import struct

GGUF_SUFFIX = ".gguf"
# GGUF `general.architecture` values that transformers' GGUF loader maps onto a backbone this project runs
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2")
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def is_gguf(path: str) -> bool:
    return str(path).lower().endswith(GGUF_SUFFIX)


class _Cursor:
    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"GGUF file {self.path} is truncated or corrupt (header ends at byte {len(self.buf)})")
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ValueError(f"GGUF file {self.path} is truncated or corrupt (a string runs past the end)")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("I"), self.take("Q")
            if item in _SCALAR and not keep:  # skip a numeric array without reading it
                self.pos += count * struct.calcsize("<" + _SCALAR[item])
                return None
            return [self.value(item, keep) for _ in range(count)]
        if kind not in _SCALAR:
            raise ValueError(f"GGUF file {self.path} is corrupt (unknown value type {kind})")
        return self.take(_SCALAR[kind])


def gguf_architecture(path: str) -> str:
    """`general.architecture` of a GGUF file (checked as `gguf_header` does)."""
    return gguf_header(path)["general.architecture"]


def gguf_header(path: str) -> dict:
    """The `general.*` and `*.block_count` fields of a GGUF file after checking the whole file is there (header,
    tensor infos, and data up to the end of the last tensor) and that its architecture is supported; a one-line
    ValueError for anything else. Needs the gguf package."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"{path} is a GGUF checkpoint but the gguf package is not installed "
                         f"(pip install gguf==0.19.0)")
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # numpy only, no torch

    if not os.path.isfile(path):
        raise ValueError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise ValueError(f"GGUF file {path} is truncated or corrupt ({os.fstat(f.fileno()).st_size} bytes)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            c = _Cursor(buf, path)
            if bytes(buf[:4]) != b"GGUF":
                raise ValueError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r})")
            c.pos = 4
            version, n_tensors, n_kv = c.take("I"), c.take("Q"), c.take("Q")
            if version not in (2, 3):
                raise ValueError(f"GGUF file {path} has version {version}; versions 2 and 3 are supported")
            fields = {}
            for _ in range(n_kv):
                key, kind = c.string(), c.take("I")
                keep = key.startswith("general.") or key.endswith(".block_count")
                value = c.value(kind, keep=keep)
                if keep:
                    fields[key] = value
            end = 0
            for _ in range(n_tensors):
                c.string()
                dims = [c.take("Q") for _ in range(c.take("I"))]
                kind, offset = c.take("I"), c.take("Q")
                try:
                    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
                except (ValueError, KeyError):
                    raise ValueError(f"GGUF file {path} is corrupt (unknown tensor type {kind})") from None
                n = 1
                for d in dims:
                    n *= d
                end = max(end, offset + n // block * block_bytes)
            align = fields.get("general.alignment") or 32
            data_start = (c.pos + align - 1) // align * align
            if data_start + end > len(buf):
                raise ValueError(f"GGUF file {path} is truncated: its tensors need {data_start + end} bytes, "
                                 f"the file has {len(buf)}")
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(f"GGUF file {path} holds a {arch!r} model; supported GGUF architectures: "
                         f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}")
    return fields
