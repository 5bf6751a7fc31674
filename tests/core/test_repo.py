"""The repository's own promises: one list of packages, notebook headers, ignored outputs."""
import re
from pathlib import Path

import nbformat
import yaml

from course_utils import REPO_URL
from course_utils.nbtools import header_problems, notebook_paths

ROOT = Path(__file__).resolve().parents[2]


def _names(lines, base: Path):
    names = set()
    for line in lines:
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            ref = base / line[2:].strip()
            names |= _names(ref.read_text().splitlines(), ref.parent)
            continue
        names.add(re.split(r"[=<>!~\[ ;]", line)[0].lower().replace("_", "-"))
    return names


def test_environment_yml_and_requirements_name_the_same_packages():
    req = _names((ROOT / "requirements.txt").read_text().splitlines(), ROOT)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _names(pip_section, ROOT) == req
    conda_names = {re.split(r"[=<> ]", d)[0] for d in env["dependencies"] if isinstance(d, str)}
    assert not (conda_names - {"python", "pip", "make"}) & req, "a package is listed for both conda and pip"


def test_every_notebook_has_the_colab_header():
    paths = notebook_paths()
    assert paths, "no notebooks found"
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        assert header_problems(path, nb) == [], f"{path.name}: run `python -m course_utils.nbtools header --fix`"
        assert REPO_URL in nb.cells[1].source


def test_notebooks_are_committed_with_outputs_and_no_errors():
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert any(c.outputs for c in code), f"{path.name} has no outputs: run `make notebooks`"
        assert not any(o.output_type == "error" for c in code for o in c.outputs), f"{path.name} holds an error"


def test_executed_copies_are_ignored_by_git():
    assert "runs/" in (ROOT / ".gitignore").read_text()


def test_results_header_reports_the_peak_gpu_memory_the_claims_cell_printed():
    from course_utils.nbtools import results_header, split_peak

    peak, md = split_peak("PEAK_GPU_BYTES=2147483648\n### Lesson X\n| claim |\n")
    assert peak == 2**31 and md == "### Lesson X\n| claim |\n"
    assert split_peak("### Lesson X\n") == (None, "### Lesson X\n")
    assert "peak GPU memory 2.00 GiB" in results_header("01_x.ipynb", 12.0, peak)
    assert "peak GPU memory" not in results_header("01_x.ipynb", 12.0, None)


def test_readme_is_the_learners_page_and_its_commands_are_real():
    """README names the two set-up commands and the one that runs a lesson; every `make X` it names is a target;
    the figures of the speed rule are the code's; benchmarks and maintainers' notes live in their own files."""
    from course_utils.measure import CLAIM_ROUNDS
    from course_utils.verdicts import _median_interval_ranks

    readme = (ROOT / "README.md").read_text()
    for command in ("make setup", "make test", "make lesson NB=02"):
        assert command in readme, f"README does not name `{command}`"
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)", readme))
    assert named <= targets, f"README names make targets that do not exist: {named - targets}"
    _, coverage = _median_interval_ranks(CLAIM_ROUNDS)
    assert f"{CLAIM_ROUNDS} for a claim" in readme and f"{coverage:.1%}" in readme
    assert "2.5%" in readme and "budget_short" in readme
    for path in ("CONTRIBUTING.md", "benchmarks/README.md"):
        assert (ROOT / path).exists() and f"]({path})" in readme
    assert "tokens/s" not in readme and "## Benchmarks" not in readme  # measured figures live in benchmarks/


def test_a_dry_run_results_header_says_it_is_not_results(monkeypatch):
    """gpu_results.sh's DRY=1 test of a sitting writes results files on a CPU: their header must say so."""
    from course_utils.nbtools import results_header

    monkeypatch.setenv("COURSE_DRY_RUN", "1")
    assert "DRY RUN" in results_header("01_x.ipynb", 12.0) and "not results" in results_header("01_x.ipynb", 1.0)
    monkeypatch.setenv("COURSE_DRY_RUN", "0")
    assert "DRY RUN" not in results_header("01_x.ipynb", 12.0)
