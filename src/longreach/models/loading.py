"""Model loading: the embedded default, Hugging Face ids or folders, and GGUF files.

Every way a model can fail to be there (a path that does not exist, a folder with no model, a
Hugging Face id that is neither in the local cache nor reachable) raises
:class:`ModelNotAvailableError` with a message that says what to do, before anything is loaded;
a bad ``dtype`` or ``device`` raises ``ValueError`` first of all.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from longreach.models.config import MODEL_NAME_KEY
from longreach.models.embedded import EMBEDDED, ModelNotAvailableError, embedded_gguf

#: The dtypes a model loads in.
DTYPES = ("float32", "bfloat16", "float16")
#: Seconds to wait for the Hugging Face hub to answer before calling it unreachable.
HUB_TIMEOUT = 3.0
#: A Hugging Face model id: ``org/name``, letters, digits, ``-``, ``_`` and ``.``.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device`` (CPU when None), after checking this machine has it.

    Example:
        >>> resolve_device(None)
        device(type='cpu')
        >>> resolve_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: unknown device 'gpu'; use cpu, cuda, cuda:1, mps, ...
    """
    if device is None:
        return torch.device("cpu")
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:1, mps, ...") from None
    if found.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA GPU visible"
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here ({build}); use --device cpu")
        if found.index is not None and found.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPUs")
    elif found.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
    return found


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a ``torch.dtype``: float32 on CPU and bfloat16 elsewhere when None.

    Example:
        >>> resolve_dtype("float33", torch.device("cpu"))
        Traceback (most recent call last):
        ...
        ValueError: unknown dtype 'float33'; use float32, bfloat16 or float16
    """
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES[:-1])} or {DTYPES[-1]}")
    return getattr(torch, dtype)


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, not a Hugging Face id (``org/name``).

    Example:
        >>> [looks_like_path(n) for n in ("Qwen/Qwen2-0.5B", "./models/qwen", "/data/m", "~/m", "a/b/c")]
        [False, True, True, True, True]
    """
    return not _HUB_ID.fullmatch(name) or name.startswith((".", "~")) or "\\" in name


def locate(name_or_path: str | Path) -> tuple[str, str | None, bool]:
    """Where a model loads from: ``(source, gguf_file, local_files_only)``, after checking it is
    there; raises :class:`ModelNotAvailableError` with what to do when it is not. Fast: it loads
    nothing, and asks the hub only whether it can be reached (a few seconds at most).

    Example:
        >>> locate("no/such/folder/here")
        Traceback (most recent call last):
        ...
        longreach.models.embedded.ModelNotAvailableError: model folder no/such/folder/here does not exist
    """
    name = str(name_or_path)
    if name in EMBEDDED:
        path = embedded_gguf(name)
        return str(path.parent), path.name, True
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotAvailableError(f"GGUF file {path} does not exist")
        return str(path.parent), path.name, True
    if path.is_dir():
        return str(path), _gguf_in_folder(path), True
    if path.exists():
        raise ModelNotAvailableError(f"{path} is a file, not a model: give a model folder, a .gguf file or an HF id")
    if "/" not in name and "\\" not in name:
        known = ", ".join(sorted(EMBEDDED))
        raise ModelNotAvailableError(
            f"unknown model {name!r}: give an embedded name ({known}), a .gguf file, "
            "a model folder or a Hugging Face id (org/name)"
        )
    if looks_like_path(name):
        raise ModelNotAvailableError(f"model folder {name} does not exist")
    return name, None, _hub_local_only(name)


def _gguf_in_folder(folder: Path) -> str | None:
    """None for a transformers model folder; the one GGUF file of a folder of one; else an error."""
    if (folder / "config.json").is_file():
        return None
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        raise ModelNotAvailableError(f"{folder} holds {len(ggufs)} GGUF files ({', '.join(ggufs)}): name one of them")
    raise ModelNotAvailableError(
        f"{folder} holds no model: a model folder has a config.json (as save_pretrained writes), or give a .gguf file"
    )


def _hub_local_only(repo_id: str) -> bool:
    """Whether a Hugging Face id must load from the local cache alone (it is there and the hub is
    off or unreachable); raises when it is neither cached nor reachable."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    offline = bool(constants.HF_HUB_OFFLINE)
    if cached and offline:
        return True
    if not offline and _hub_reachable(constants.ENDPOINT):
        return False
    if cached:
        return True
    why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
    raise ModelNotAvailableError(
        f"{repo_id} is not in the local Hugging Face cache and {why}: download it first "
        f"(hf download {repo_id}) or give a local folder"
    )


@functools.lru_cache(maxsize=4)
def _hub_reachable(endpoint: str, timeout: float = HUB_TIMEOUT) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (name lookup included)."""
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False

    def connect() -> None:
        socket.create_connection((host, port), timeout=timeout).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout)
        return True
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)  # a name lookup that hangs is left to finish on its own


@contextlib.contextmanager
def quiet_loading():
    """Silence transformers' progress bars while loading, the GGUF reader's de-quantizing bar
    included (it ignores ``disable_progress_bar``); restores both after (a no-op for whatever a
    newer transformers no longer has)."""
    from transformers import modeling_gguf_pytorch_utils as gguf
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    bar = getattr(gguf, "tqdm", None)
    if bar is not None:
        gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf.tqdm = bar
        if bars_were_on:
            hf_logging.enable_progress_bar()


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    ``name_or_path`` is an embedded short name (``"smollm2-135m"``), a ``.gguf`` file, a local
    model folder (or a folder holding one ``.gguf`` file) or a Hugging Face model id. GGUF
    weights are dequantised; ``dtype`` defaults to float32 on CPU and bfloat16 elsewhere.
    Quiet unless ``progress``: no download or de-quantizing bars. A model that is not there
    raises :class:`ModelNotAvailableError` (a Hugging Face id neither in the local cache nor
    reachable, within a few seconds), a bad ``dtype`` or ``device`` ``ValueError``, before any
    loading.

    Example:
        >>> model, tokenizer = load_model("smollm2-135m")  # doctest: +SKIP
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    source, gguf_file, local_only = locate(name_or_path)
    extra: dict = {"gguf_file": gguf_file} if gguf_file else {}
    if local_only and gguf_file is None and not Path(source).is_dir():
        extra["local_files_only"] = True
    with contextlib.nullcontext() if progress else quiet_loading():
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            # transformers' own choice: SDPA where the model supports it, else eager (Gemma 2's soft-capping).
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
        except OSError as error:  # a hub id that does not exist, a gated repo, a folder missing its weights
            if isinstance(error, ModelNotAvailableError):
                raise
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelNotAvailableError(f"cannot load {name_or_path}: {first}") from error
    if gguf_file is not None:  # transformers knows only the GGUF's folder: name the model or the file
        name = str(name_or_path)
        setattr(model.config, MODEL_NAME_KEY, name if name in EMBEDDED else str(Path(source, gguf_file).resolve()))
    model.to(device)
    model.eval()
    return model, tokenizer
