"""A lecture's claims next to what this machine measured.

    claims = ClaimsTable("Lesson 2")
    claims.add("final-token training converges more slowly", "slower",
               compare_runs(all_token_losses, final_token_losses, lower=False))  # a course_utils.verdicts.Verdict
    claims  # renders as HTML in Jupyter, as text elsewhere

The verdict words live here; the procedures that pick one live in ``course_utils.verdicts`` (nothing else does).

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
    bar: str = ""  # the bar the figure was judged against, fixed before the data

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

    def add(self, claim: str, lecture: str, verdict, note: str = "") -> Claim:
        """Add a claim with the ``course_utils.verdicts.Verdict`` a procedure decided (its figure, verdict, bar and
        why are shown as they are); ``note`` adds context (the model used, the budget)."""
        from .verdicts import Verdict

        if not isinstance(verdict, Verdict):
            raise TypeError(f"claim {claim!r}: give the Verdict a course_utils.verdicts procedure returned "
                            f"(speed_verdict, compare_runs, paired_difference, level, exact, all_of, "
                            f"not_measurable), got {type(verdict).__name__}")
        why = f"{verdict.why}; {note}" if note else verdict.why
        c = Claim(claim, lecture, verdict.measured, verdict.verdict, why, verdict.bar)
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
                 "verdict": verdict_badge(c.verdict) if html_verdicts else c.verdict,
                 "bar (fixed before the run)": c.bar, "note": c.why}
                for c in self.claims]
        return Table(rows, self.title, columns=["claim", "lecture", "measured here", "verdict",
                                                "bar (fixed before the run)", "note"],
                     note=self.context, html_columns=("verdict",) if html_verdicts else ())

    def _facts_table(self) -> Table:
        return Table([{"fact": f.what, "value": f.value} for f in self.facts], columns=["fact", "value"])

    def to_markdown(self) -> str:
        md = self.table().to_markdown()
        return md + (f"\nFacts (true by construction, not claims):\n\n{self._facts_table().to_markdown()}"
                     if self.facts else "")

    def __str__(self) -> str:
        """The plain-text form (what a text-only viewer shows): per claim one line with its verdict, one with the
        lecture's figure, the figure measured here and the bar, one with the note; the facts one line each."""
        lines = [self.title] + ([self.context] if self.context else [])
        for i, c in enumerate(self.claims, 1):
            lines.append(f"{i}. {c.claim}: {c.verdict.upper()}")
            lines.append(f"   lecture: {c.lecture}; measured: {c.measured}" + (f"; bar: {c.bar}" if c.bar else ""))
            if c.why:
                lines.append(f"   note: {c.why}")
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
