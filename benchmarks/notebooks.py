"""Wall time of every notebook in the small profile, one after another in fresh kernels.

    python benchmarks/notebooks.py [notebooks/02_*.ipynb ...]

Executed copies go to runs/bench/ (ignored by git); the table is printed and written as JSON there.
Run it on a quiet machine: other work on the same cores inflates every figure.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from course_utils.nbtools import RUNS, execute, notebook_paths  # noqa: E402


def main(argv: list[str]) -> int:
    import torch

    rows = {}
    for path in notebook_paths(argv or None):
        print(f"running {path.name} ...", flush=True)
        rows[path.name] = execute(path, RUNS / "bench" / path.name, profile="small")
    width = max(map(len, rows))
    print(f"\n{'notebook':<{width}}  seconds")
    for name, seconds in rows.items():
        print(f"{name:<{width}}  {seconds:7.1f}")
    print(f"{'total':<{width}}  {sum(rows.values()):7.1f}   ({torch.get_num_threads()} CPU threads)")
    out = RUNS / "bench" / "notebook_times.json"
    out.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "seconds": rows}, indent=2)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
