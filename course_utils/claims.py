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

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_MEASURABLE = "not measurable here"
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_MEASURABLE)


def verdict(condition: bool) -> str:
    """``HOLDS`` if the measured condition is true, else ``DOES_NOT_HOLD``."""
    return HOLDS if condition else DOES_NOT_HOLD


@dataclass
class Claim:
    claim: str  # what the lecture says
    lecture: str  # the lecture's figure
    measured: str  # the figure measured here
    verdict: str  # HOLDS, DOES_NOT_HOLD or NOT_MEASURABLE
    why: str = ""  # context: the profile, the model used, why a claim could not be measured

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == NOT_MEASURABLE and not self.why:
            raise ValueError(f"claim {self.claim!r} is 'not measurable here': say why")


@dataclass
class ClaimsTable:
    title: str
    claims: list[Claim] = field(default_factory=list)
    context: str = ""  # one line: hardware, profile, model actually used

    def add(self, claim: str, lecture: str, measured: str, verdict: str, why: str = "") -> Claim:
        c = Claim(claim, lecture, measured, verdict, why)
        self.claims.append(c)
        return c

    def counts(self) -> dict:
        return {v: sum(c.verdict == v for c in self.claims) for v in VERDICTS}

    def verdicts(self) -> str:
        """One line per claim, ``verdict: claim`` (deterministic text for regression tests)."""
        return "\n".join(f"{c.verdict:>19}: {c.claim}" for c in self.claims)

    def to_markdown(self) -> str:
        rows = ["| claim | lecture | measured | verdict | note |", "|---|---|---|---|---|"]
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
        rows += [f"| {esc(c.claim)} | {esc(c.lecture)} | {esc(c.measured)} | **{c.verdict}** | {esc(c.why)} |" for c in self.claims]
        head = f"### {self.title}\n\n" + (f"{self.context}\n\n" if self.context else "")
        return head + "\n".join(rows) + "\n"

    def __str__(self) -> str:
        lines = [self.title] + ([self.context] if self.context else [])
        for i, c in enumerate(self.claims, 1):
            lines.append(f"{i}. {c.claim}\n   lecture : {c.lecture}\n   measured: {c.measured}\n   verdict : {c.verdict.upper()}")
            if c.why:
                lines.append(f"   note    : {c.why}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        colour = {HOLDS: "#1a7f37", DOES_NOT_HOLD: "#cf222e", NOT_MEASURABLE: "#9a6700"}
        e = html.escape
        rows = "".join(
            f"<tr><td style='text-align:left'>{e(c.claim)}</td><td style='text-align:left'>{e(c.lecture)}</td>"
            f"<td style='text-align:left'>{e(c.measured)}</td>"
            f"<td style='color:{colour[c.verdict]};font-weight:bold'>{e(c.verdict)}</td>"
            f"<td style='text-align:left'>{e(c.why)}</td></tr>"
            for c in self.claims
        )
        ctx = f"<p>{e(self.context)}</p>" if self.context else ""
        return (
            f"<h4>{e(self.title)}</h4>{ctx}<table><tr><th>claim</th><th>lecture</th><th>measured here</th>"
            f"<th>verdict</th><th>note</th></tr>{rows}</table>"
        )


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
