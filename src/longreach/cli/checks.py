"""Command-line input checked before anything slow: each misuse becomes one :class:`UsageError`
line (exit code 2), raised before the model loads wherever the check needs no tokenizer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Longest input LongReach evaluates or generates from: 16M tokens. Beyond it, prompts and
#: caches would not fit in any machine's memory; a typo such as 99999999k fails here, at once.
MAX_LENGTH = 16 * 1024 * 1024


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit code 2."""


def lengths(text: str, option: str = "--lengths") -> list[int]:
    """Comma-separated token counts (``4k,8k``), in order, without repeats."""
    from longreach.methods import parse_length

    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise UsageError(f"{option} {text!r} names no length; use token counts such as 4k,8k,16k")
    try:
        found = [parse_length(part) for part in parts]
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None
    for n in found:
        if n > MAX_LENGTH:
            raise UsageError(
                f"{option}: length {n} is beyond the {MAX_LENGTH // (1024 * 1024)}M tokens LongReach evaluates "
                "(prompts and caches that long fit no machine's memory); did you mean a smaller length?"
            )
    return list(dict.fromkeys(found))


def depths(text: str) -> list[float]:
    """Comma-separated needle depths, each within [0, 1]."""
    try:
        found = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"bad --depths {text!r}; use fractions such as 0.1,0.5,0.9") from None
    if not found or any(not 0.0 <= d <= 1.0 for d in found):
        raise UsageError(f"bad --depths {text!r}; each depth must be within [0, 1]")
    return list(dict.fromkeys(found))


def at_least(option: str, value: int | float, least: int | float) -> None:
    if value < least:
        raise UsageError(f"{option} must be >= {least}, got {value}")


def specs(given: list[str] | None) -> list[str]:
    """Method specs (vanilla when none), each parsed now so that a typo fails at once."""
    from longreach.methods import MethodSpecError, parse_method
    from longreach.methods.recommend import AUTO

    found = list(dict.fromkeys(s.strip() for s in given or ["vanilla"]))
    for spec in found:
        if spec == AUTO:  # the recommended method, chosen once the model and length are known
            continue
        try:
            parse_method(spec, target_length=1 << 20, trained_length=1 << 20)
        except MethodSpecError as error:
            raise UsageError(str(error)) from None
    return found


def out_folder(path: str) -> Path:
    """An output folder that exists or can be made (it is made when the first result is in)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {path} is a file, not a folder; give a folder for the results")
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--out {path}: {parent} is a file, so the folder cannot be made")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: {parent} is not writable")
    return folder


def text_files(paths: list[str] | None) -> list[Path]:
    """Readable, non-empty text files; with none given, the novel LongReach ships."""
    from longreach.data import DEFAULT_TEXT
    from longreach.eval.haystack import check_texts

    if not paths:
        return [DEFAULT_TEXT]
    try:
        return list(check_texts(paths))
    except (ValueError, OSError) as error:
        raise UsageError(f"--text: {error}") from None


def read_text(path: str, what: str) -> str:
    """The text of a file (``-``: standard input), which must not be empty."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} file {path} is a folder") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {what} file {path}: {error}") from None
    if not text.strip():
        raise UsageError(f"{what} {'from standard input' if path == '-' else f'file {path}'} is empty")
    return text


def tasks(text: str) -> list[str]:
    """Task names, each one ``build_tasks`` knows or ``ppl``."""
    from longreach.eval.compare import PPL
    from longreach.eval.tasks import known_task_names

    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    known = [*known_task_names(), PPL]
    unknown = [n for n in names if n not in known and not n.startswith("ruler:")]
    if unknown or not names:
        raise UsageError(f"unknown task {', '.join(map(repr, unknown)) or '(none given)'}; known: {', '.join(known)}")
    return names


def model(name: str, dtype: str | None, device: str | None) -> None:
    """That the model is there and the device usable, in a few seconds at most, before loading."""
    from longreach.models.loading import ModelNotAvailableError, locate, resolve_device, resolve_dtype

    try:
        resolve_dtype(dtype, resolve_device(device))
        locate(name)
    except (ModelNotAvailableError, ValueError) as error:
        raise UsageError(str(error)) from None
