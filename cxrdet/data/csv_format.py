"""What a CSV that cxrdet cannot read is most often: another separator (a spreadsheet saved
with ``;`` or tabs reads as one column), said in the error instead of only "missing columns"."""

from __future__ import annotations

SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def separator_note(columns) -> str:
    """`` (...)`` naming the separator when a header read as one column holds another one,
    else ''."""
    columns = [str(c) for c in columns]
    if len(columns) != 1:
        return ""
    found = [name for sep, name in SEPARATORS.items() if sep in columns[0]]
    if not found:
        return ""
    return f" (its header is separated by {found[0]}, not commas: save it as comma-separated CSV)"
