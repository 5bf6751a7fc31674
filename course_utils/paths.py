"""Where the course keeps its data and its caches."""
from __future__ import annotations

import os
from pathlib import Path

#: The repository root (course_utils is installed in editable mode from a clone).
REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder with the course texts: ``COURSE_DATA_DIR`` if set, else ``data/`` in the repository."""
    return Path(os.environ.get("COURSE_DATA_DIR", REPO_ROOT / "data"))


def cache_dir() -> Path:
    """Where converted models and tokenizer files are cached: ``COURSE_CACHE_DIR``, else ``~/.cache/course_utils``."""
    path = Path(os.environ.get("COURSE_CACHE_DIR", Path.home() / ".cache" / "course_utils"))
    path.mkdir(parents=True, exist_ok=True)
    return path
