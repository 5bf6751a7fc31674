"""The package's architecture: core modules never import a lesson module; every lesson module names its lesson."""
import ast
import re
from pathlib import Path

import course_utils

PKG = Path(course_utils.__file__).parent


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, relative imports resolved against its package (``package``, dotted; by default
    the one its place under ``course_utils`` gives)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                here = (package.split(".") if package else
                        ["course_utils"] + ([] if path.parent == PKG else [path.parent.name]))
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def test_core_never_imports_a_lesson():
    core = sorted(PKG.glob("*.py"))
    assert len(core) >= 10
    offenders = {p.name: sorted(m for m in imported_modules(p) if m.startswith("course_utils.lessons"))
                 for p in core}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_check_sees_a_lesson_import(tmp_path):
    # the test above must be able to fail: a core file that imports a lesson is caught
    bad = tmp_path / "_layout_probe.py"  # read as if it were a core module; nothing is written into the package
    bad.write_text("from .lessons import l1_levers\nfrom course_utils.lessons.l4_freeze import freeze\n")
    assert {"course_utils.lessons.l1_levers", "course_utils.lessons.l4_freeze"} <= imported_modules(bad, "course_utils")


def test_every_lesson_module_names_its_lesson():
    names = [p.stem for p in (PKG / "lessons").glob("*.py") if p.stem != "__init__"]
    assert names and all(re.fullmatch(r"l[1-5]_[a-z0-9_]+", n) for n in names), names
