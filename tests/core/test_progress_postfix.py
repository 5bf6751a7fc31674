"""The training bar's postfix stays short and never gives a browser a place to split a label from its value."""
from course_utils.train import progress_postfix

NB_HYPHEN = "\u2011"  # non-breaking hyphen: looks like "-", but a browser does not break a line after it


def test_postfix_is_short_and_readable():
    assert progress_postfix(3.21432, 3e-4, 0.823, 1234.5) == f"loss 3.214 lr 3e{NB_HYPHEN}4 norm 0.82 1.23k tok/s"
    assert progress_postfix(10.8, 1e-6, 32.8, 31.2) == f"loss 10.800 lr 1e{NB_HYPHEN}6 norm 33 31.2 tok/s"
    assert "lr 2e3" in progress_postfix(1.0, 2000.0, 1.0, 1.0)


def test_postfix_has_no_line_break_opportunity_inside_a_field():
    text = progress_postfix(123.456, 1.23e-10, 12345.6, 9.9e9)
    assert "|" not in text and "-" not in text and len(text) <= 45, text
