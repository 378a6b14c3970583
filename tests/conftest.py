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
def tiny_mamba2():
    return build_backbone(preset_config("tiny-mamba2"), seed=0, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session", params=["tiny_mistral", "tiny_mamba2"])
def tiny_backbone(request):
    return request.getfixturevalue(request.param)
