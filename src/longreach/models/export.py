"""Model folders for runtimes that load safetensors only (vLLM): an embedded model or a ``.gguf``
file is dequantised once into LongReach's cache folder and reused from there."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from longreach.models.embedded import EMBEDDED

#: Where converted models are kept: ``$LONGREACH_CACHE``, else ``~/.cache/longreach``.
CACHE_ENV = "LONGREACH_CACHE"


def cache_folder() -> Path:
    """LongReach's cache folder (``$LONGREACH_CACHE`` or ``~/.cache/longreach``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "longreach")


def safetensors_folder(name_or_path: str | Path, *, dtype: str = "float32") -> Path:
    """A folder holding ``name_or_path`` as safetensors with its config and tokenizer.

    A folder that already holds safetensors is returned as it is. An embedded name or a ``.gguf``
    file is loaded (dequantised to ``dtype``) and saved once under :func:`cache_folder`; later
    calls find it there. The saved config drops ``quantization_config``: the weights are plain.

    Example:
        >>> safetensors_folder("smollm2-135m")  # doctest: +SKIP
        PosixPath('/root/.cache/longreach/models/smollm2-135m-float32')
    """
    name = str(name_or_path)
    given = Path(name).expanduser()
    if given.is_dir() and any(given.glob("*.safetensors")):
        return given
    stem = name if name in EMBEDDED else given.stem
    target = cache_folder() / "models" / f"{stem}-{dtype}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from longreach.models.loading import load_model

    model, tokenizer = load_model(name, dtype=dtype)
    if "gguf" in str(getattr(getattr(model, "hf_quantizer", None), "quantization_config", "")).lower():
        # GGUF weights are dequantised on load: what transformers still calls quantized is plain
        # tensors, and it refuses to save them until told so.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        config = json.loads((staging / "config.json").read_text())
        config.pop("quantization_config", None)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        staging.rename(target)  # whole or not at all: an interrupted conversion leaves no half folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
