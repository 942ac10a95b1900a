"""Writing output files: missing folders are created, and a failure is one RlrpError naming the file."""

from __future__ import annotations

import os
from typing import Callable

from .errors import RlrpError


def write_file(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(path)`` after creating missing folders; RlrpError naming the file on failure."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        write(path)
    except FileExistsError:  # makedirs: the folder's path is taken by a file
        raise RlrpError(f"cannot write {path}: the output folder {folder} is a file") from None
    except OSError as error:
        raise RlrpError(f"cannot write {path}: {error.strerror or error}") from None
