"""Class names for a classifier's outputs: a text file with one name per line."""

from __future__ import annotations

import os
from typing import Sequence

from .errors import RlrpError


def load_labels(path: str | os.PathLike, classes: int | None = None) -> list[str]:
    """Read class names, one per line (line i names class i); trailing blank lines are ignored.
    With ``classes`` (the model's number of classes), a file with another number of lines is refused."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig") as file:
            names = [line.strip() for line in file.read().splitlines()]
    except FileNotFoundError:
        raise RlrpError(f"labels file not found: {path}") from None
    except UnicodeDecodeError:
        raise RlrpError(f"labels file is not UTF-8 text: {path}") from None
    except OSError as error:
        raise RlrpError(f"cannot read labels file {path}: {error.strerror or error}") from None
    while names and not names[-1]:
        names.pop()
    if not names:
        raise RlrpError(f"labels file has no class names: {path}")
    if classes is not None and len(names) != classes:
        raise RlrpError(f"labels file {path} has {len(names)} lines but the model has {classes} classes")
    return names


def class_name(labels: Sequence[str] | None, index: int) -> str | None:
    """The name of class ``index``, or None when ``labels`` has no (non-empty) name for it."""
    index = int(index)
    if labels is not None and 0 <= index < len(labels) and labels[index]:
        return labels[index]
    return None
