"""A lecture's claims next to what this machine measured.

    claims = ClaimsTable("Lesson 2")
    claims.add("final-token loss is higher", lecture="higher than all-token", measured=f"{a:.2f} vs {b:.2f}",
               verdict=HOLDS if a > b else DOES_NOT_HOLD)
    claims  # renders as HTML in Jupyter, as text elsewhere

Also the one result type of every "Your turn" checker: ``CheckResult`` (truthy when passed; shows PASSED or
NOT YET, then one line per message).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

from .tables import Table

HOLDS = "holds"  # the measurement decides for the claim, beyond its noise
DOES_NOT_HOLD = "does not hold"  # the measurement decides against it, beyond its noise
INCONCLUSIVE = "inconclusive"  # within the noise, or this profile's budget is below the lecture's setting
NOT_MEASURABLE = "not measurable here"  # this hardware cannot measure it at all
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_MEASURABLE)
#: Verdicts that must say why in the note.
NEEDS_WHY = (INCONCLUSIVE, NOT_MEASURABLE)

#: HTML badges: white text on a dark fill (4.5:1 or more) reads the same in JupyterLab's light and dark themes,
#: and the symbol carries the verdict without colour.
BADGES = {
    HOLDS: ("\u2713", "#1a7f37"),
    DOES_NOT_HOLD: ("\u2717", "#c62828"),
    INCONCLUSIVE: ("~", "#5a5f66"),
    NOT_MEASURABLE: ("\u2013", "#7a4d00"),
}


def verdict(condition: bool) -> str:
    """``HOLDS`` if the measured condition is true, else ``DOES_NOT_HOLD``."""
    return HOLDS if condition else DOES_NOT_HOLD


def verdict_badge(v: str) -> str:
    """A verdict as an HTML badge (symbol + word on a fill that passes contrast in light and dark themes)."""
    symbol, fill = BADGES[v]
    return (f"<span style='background:{fill};color:#ffffff;font-weight:bold;padding:1px 6px;border-radius:3px;"
            f"white-space:nowrap'>{symbol} {html.escape(v)}</span>")


@dataclass
class Claim:
    claim: str  # what the lecture says
    lecture: str  # the lecture's figure
    measured: str  # the figure measured here
    verdict: str  # one of VERDICTS
    why: str = ""  # context: the procedure, the profile, the model used, why it is inconclusive or not measurable

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict in NEEDS_WHY and not self.why:
            raise ValueError(f"claim {self.claim!r} is {self.verdict!r}: say why in `why`")


@dataclass
class Fact:
    """Something true by construction (a configuration constant, a count compared with itself, a unit-tested
    identity): shown under the table, never as a verdict."""

    what: str
    value: str


@dataclass
class ClaimsTable:
    title: str
    claims: list[Claim] = field(default_factory=list)
    context: str = ""  # one line: hardware, profile, model actually used
    facts: list[Fact] = field(default_factory=list)

    def add(self, claim: str, lecture: str, measured: str, verdict: str, why: str = "") -> Claim:
        c = Claim(claim, lecture, measured, verdict, why)
        self.claims.append(c)
        return c

    def fact(self, what: str, value: str) -> Fact:
        """Record a fact (not a claim): it cannot fail, so it gets no verdict."""
        f = Fact(what, value)
        self.facts.append(f)
        return f

    def counts(self) -> dict:
        return {v: sum(c.verdict == v for c in self.claims) for v in VERDICTS}

    def verdicts(self) -> str:
        """One line per claim, ``verdict: claim`` (deterministic text for regression tests)."""
        return "\n".join(f"{c.verdict:>19}: {c.claim}" for c in self.claims)

    def table(self, html_verdicts: bool = False) -> Table:
        rows = [{"claim": c.claim, "lecture": c.lecture, "measured here": c.measured,
                 "verdict": verdict_badge(c.verdict) if html_verdicts else c.verdict, "note": c.why}
                for c in self.claims]
        return Table(rows, self.title, columns=["claim", "lecture", "measured here", "verdict", "note"],
                     note=self.context, html_columns=("verdict",) if html_verdicts else ())

    def _facts_table(self) -> Table:
        return Table([{"fact": f.what, "value": f.value} for f in self.facts], columns=["fact", "value"])

    def to_markdown(self) -> str:
        md = self.table().to_markdown()
        return md + (f"\nFacts (true by construction, not claims):\n\n{self._facts_table().to_markdown()}"
                     if self.facts else "")

    def __str__(self) -> str:
        lines = [self.title] + ([self.context] if self.context else [])
        for i, c in enumerate(self.claims, 1):
            lines.append(f"{i}. {c.claim}\n   lecture : {c.lecture}\n   measured: {c.measured}\n"
                         f"   verdict : {c.verdict.upper()}")
            if c.why:
                lines.append(f"   note    : {c.why}")
        lines += [f"fact: {f.what}: {f.value}" for f in self.facts]
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        out = self.table(html_verdicts=True)._repr_html_()
        if self.facts:
            out += "<p><b>Facts</b> (true by construction, not claims)</p>" + self._facts_table()._repr_html_()
        return out


@dataclass
class CheckResult:
    """What an exercise checker found. Truthy when passed; shows ``PASSED`` or ``NOT YET``, then one line per
    message (what is right, or what is still wrong and how to fix it)."""

    passed: bool
    messages: list[str]

    def __post_init__(self):
        if isinstance(self.messages, str):
            self.messages = [self.messages]
        if not self.messages:
            raise ValueError("a CheckResult needs at least one message: say what was checked or what is wrong")

    def __bool__(self) -> bool:
        return self.passed

    @property
    def message(self) -> str:
        """All messages, one per line."""
        return "\n".join(self.messages)

    def __str__(self) -> str:
        return "\n".join(["PASSED" if self.passed else "NOT YET"] + [f"  - {m}" for m in self.messages])

    __repr__ = __str__
