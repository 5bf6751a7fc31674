"""The committed notebooks look right to a learner: the installed kernel's name, finished progress bars.

The tests over the committed files pass once the notebooks were regenerated with ``make notebooks``.
"""
import json
import re

import nbformat
import pytest

from course_utils.nbtools import NOTEBOOKS, WIDGET_STATE, installed_kernelspec, last_frames, tidy_outputs

BAR_AT_ZERO = re.compile(r"\b0%\|")
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert len(PATHS) >= 6


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_kernelspec_is_the_installed_one(path):
    spec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
    installed = installed_kernelspec()
    assert spec.get("display_name") == installed["display_name"], (
        f"{path.name} names the kernel {spec.get('display_name')!r}, the installed one is "
        f"{installed['display_name']!r}: JupyterLab marks it modified on open. Run `make notebooks`.")
    assert spec.get("name") == installed["name"] and spec.get("language") == installed["language"]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_no_saved_progress_bar_at_zero(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = json.dumps(out, ensure_ascii=False)
            match = BAR_AT_ZERO.search(text)
            assert not match, (f"{path.name}, cell {i}: a saved progress bar shows 0% "
                               f"({text[max(0, match.start() - 40):match.end() + 40]}). Run `make notebooks`.")


def widget_nb():
    """An executed notebook as nbclient saves it: a tqdm.notebook bar whose text fallback is at 0%."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}

    def model(name, **state):
        return {"model_module": "@jupyter-widgets/controls", "model_module_version": "2.0.0",
                "model_name": name, "state": state}

    nb.metadata["widgets"] = {WIDGET_STATE: {"version_major": 2, "version_minor": 0, "state": {
        "box": model("HBoxModel", children=["IPY_MODEL_left", "IPY_MODEL_bar", "IPY_MODEL_right"]),
        "left": model("HTMLModel", value="lr\u20071e-6:\u2007100%"),
        "bar": model("FloatProgressModel", value=40.0, max=40.0, bar_style="success"),
        "right": model("HTMLModel", value="\u200740/40\u2007[00:41&lt;00:00,\u2007loss\u20077.951]"),
        "other": model("DropdownModel", value="a"),
    }}}
    cell = nbformat.v4.new_code_cell("train(...)")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "box", "version_major": 2, "version_minor": 0},
            "text/plain": "lr 1e-6:   0%|          | 0/40 [00:00<?, ?it/s]"}),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "other", "version_major": 2, "version_minor": 0},
            "text/plain": "Dropdown(value='a')"}),
        nbformat.v4.new_output("display_data", data={  # a bar closed while the cell ran: no saved state
            "application/vnd.jupyter.widget-view+json": {"model_id": "gone", "version_major": 2, "version_minor": 0},
            "text/plain": "Loading weights:   0%|          | 0/272 [00:00<?, ?it/s]"}),
        nbformat.v4.new_output("stream", name="stderr", text=(
            "\rtrain:   0%|          | 0/3 [00:00<?, ?it/s]\rtrain:  33%|███▎      | 1/3 [00:01<00:02]"
            "\rtrain: 100%|██████████| 3/3 [00:03<00:00]\n"
            "a warning\n"
            "\reval:   0%|          | 0/2\reval: 100%|██████████| 2/2\n")),
    ]
    nb.cells.append(cell)
    return nb


def test_tidy_outputs_finishes_bars_and_sets_the_kernelspec():
    nb = tidy_outputs(widget_nb(), kernelspec={"display_name": "Python 3 (ipykernel)", "language": "python",
                                               "name": "python3"})
    assert nb.metadata.kernelspec.display_name == "Python 3 (ipykernel)"
    widget, other, stream = nb.cells[0].outputs  # the closed bar's output is gone
    assert widget.data["text/plain"] == "lr 1e-6: 100%|██████████| 40/40 [00:41<00:00, loss 7.951]"
    assert other.data["text/plain"] == "Dropdown(value='a')"  # not a progress bar: untouched
    assert stream.text == "train: 100%|██████████| 3/3 [00:03<00:00]\na warning\neval: 100%|██████████| 2/2\n"
    saved = nbformat.writes(nb)
    assert not BAR_AT_ZERO.search(saved)
    nbformat.validate(nbformat.reads(saved, as_version=4))


def test_tidy_outputs_uses_the_installed_kernelspec_by_default():
    assert tidy_outputs(widget_nb()).metadata.kernelspec == installed_kernelspec()


def test_last_frames():
    assert last_frames("plain\ntext\n") == "plain\ntext\n"
    assert last_frames("\ra 0%\ra 100%\r\n") == "a 100%\n"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_cell_ids_are_unique(path):
    """A copied cell keeps its id; nbformat then rewrites it on every read (and warns) and JupyterLab may mix the
    two cells up. Read the raw JSON: nbformat.read would quietly 'correct' it."""
    ids = [c.get("id") for c in json.loads(path.read_text())["cells"]]
    dupes = sorted({i for i in ids if i is not None and ids.count(i) > 1})
    assert not dupes, f"{path.name}: cell ids used twice: {dupes}; give the copies new ids (e.g. uuid4().hex[:8])"
