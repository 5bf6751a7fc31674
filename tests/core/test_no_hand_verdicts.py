"""No verdict is decided by hand: outside ``course_utils/verdicts.py`` (the procedures) and ``claims.py`` (the words),
no code in the package or the notebooks names a verdict itself (``HOLDS if x else INCONCLUSIVE``, ``"holds"``).
Lessons compute figures and hand them to a procedure, so every row can come out either way.

``NOT_MEASURABLE`` may still be named (the hardware cannot measure). The allow-list below holds the places not yet
converted; it only ever shrinks: the test fails when a file has more hand-decided places than listed, and also when
it has fewer (then lower the number, or remove the file)."""
import io
import json
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORDS = {"HOLDS", "DOES_NOT_HOLD", "INCONCLUSIVE"}
STRINGS = {"holds", "does not hold", "inconclusive"}
EXEMPT = {"course_utils/verdicts.py", "course_utils/claims.py"}

#: path -> hand-decided places still there. Only ever lower these numbers.
ALLOWED = {
}


def hand_decided(source: str) -> list[str]:
    """The tokens of ``source`` that pick a verdict by hand: the verdict constants, a bare verdict string, or a call
    of a function named ``verdict``. Comments and docstrings do not count (a docstring is more than one word)."""
    found = []
    toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(toks):
        if tok.type == tokenize.NAME and tok.string in WORDS:
            found.append(f"{tok.start[0]}: {tok.string}")
        elif tok.type == tokenize.STRING:
            try:
                value = eval(tok.string, {})  # a literal: safe to evaluate (no f-strings here)
            except Exception:  # f-strings and the like are not bare verdict words
                continue
            if isinstance(value, str) and value.strip().lower() in STRINGS:
                found.append(f"{tok.start[0]}: {tok.string}")
        elif (tok.type == tokenize.NAME and tok.string == "verdict" and i + 1 < len(toks)
              and toks[i + 1].string == "(" and (i == 0 or toks[i - 1].string not in (".", "def"))):
            found.append(f"{tok.start[0]}: verdict(...)")
    return found


def _notebook_source(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    # IPython magics are not Python: blank them so that tokenize reads the rest
    return "\n".join("\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.splitlines())
                     for cell in code)


def scan() -> dict:
    out = {}
    for path in sorted((ROOT / "course_utils").rglob("*.py")) + sorted((ROOT / "notebooks").glob("*.ipynb")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in EXEMPT:
            continue
        source = _notebook_source(path) if path.suffix == ".ipynb" else path.read_text()
        places = hand_decided(source)
        if places:
            out[rel] = places
    return out


def test_the_scanner_finds_each_kind_of_hand_decided_verdict():
    assert len(hand_decided('v = HOLDS if x > 1 else INCONCLUSIVE\n')) == 2
    assert hand_decided('row = ("faster", "holds")\n') == ['1: "holds"']
    assert hand_decided('claims.add("x", "y", verdict(ok))\n') == ["1: verdict(...)"]
    assert hand_decided('"""The claim holds when the interval is above the bar."""\nv = compare_runs(a, b)\n') == []
    assert hand_decided('# HOLDS in a comment\nx = v.verdict\ny = NOT_MEASURABLE\n') == []


def test_no_verdict_is_decided_by_hand_beyond_the_shrinking_allow_list():
    found = scan()
    too_many = {p: v for p, v in found.items() if len(v) > ALLOWED.get(p, 0)}
    assert not too_many, ("verdicts decided by hand (hand the figures to a course_utils.verdicts procedure "
                          f"instead): {too_many}")
    stale = {p: (n, len(found.get(p, []))) for p, n in ALLOWED.items() if len(found.get(p, [])) < n}
    if stale:
        pytest.fail(f"fewer hand-decided places than the allow-list says (allowed, found): {stale}; lower the "
                    "numbers in ALLOWED (it only ever shrinks)")
