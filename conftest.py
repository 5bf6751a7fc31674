"""Test configuration shared by the unit tests and nbval.

The tests always run the small profile (set before any kernel starts: kernels inherit this
environment), never compare stderr (tqdm progress bars write there), and end with a table of how
long each notebook took.
"""
import os
from collections import defaultdict

from course_utils.env import use_fast_cpu_env

os.environ["COURSE_PROFILE"] = "small"
os.environ.setdefault("PYTHONHASHSEED", "0")
use_fast_cpu_env()  # speed only (see course_utils.env.FAST_CPU_ENV); the kernels inherit it

_durations = defaultdict(float)


def pytest_collectstart(collector):
    if str(getattr(collector, "path", "")).endswith(".ipynb"):
        collector.skip_compare += ("stderr",)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _durations[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _durations:
        return
    tr = terminalreporter
    tr.section("notebook run times (small profile)")
    for path, seconds in sorted(_durations.items()):
        tr.write_line(f"{seconds:8.1f} s  {path}")
    tr.write_line(f"{sum(_durations.values()):8.1f} s  total")
