"""The README and docs/ say what the code does: every link lands, every train.py and predict.py
command composes, every cxrdet tool and option exists, and the README stays short."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from cxrdet.cli import TOOLS, main
from cxrdet.config import CONF_DIR, quote_numeric_choices

REPO = CONF_DIR.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks/README.md"]
PROMPT = re.compile(r"(?:^|\s)(python (?:train|predict)\.py|cxrdet [a-z]+)\b(.*)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


def commands(path: Path) -> list[str]:
    """Every command the file shows: whole lines of its code blocks (continuations joined)
    and every inline code span that holds one."""
    text, found = path.read_text(), []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.S):
        found += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " ")
    found += re.findall(r"`([^`]+)`", prose)
    out = []
    for line in found:
        match = PROMPT.search(line.split(" # ")[0].split("→")[0])
        if match:  # placeholders (<run>, <the five best checkpoints>) filled in
            out.append(re.sub(r"<[^>]*>", "X", match.group(1) + match.group(2)).strip())
    return out


def test_the_readme_is_short_and_points_nowhere_outside_the_project():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for doc in DOCS:
        assert "../shared" not in doc.read_text() and "/shared/" not in doc.read_text(), doc


def test_every_link_lands_on_a_file_and_heading_that_exist():
    checked = 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            assert path.exists(), f"{doc.name}: {target} (no such file)"
            if anchor:
                assert anchor in anchors(path), f"{doc.name}: {target} (no such heading)"
            checked += 1
    assert checked >= 30


def _overrides(args: list[str]) -> list[str]:
    """The key=value arguments of a command line, a sweep's first value."""
    out = []
    for arg in args:
        if arg.startswith(("-", "[")) or "=" not in arg:
            continue  # -m, --help, --cfg job, ..., a synopsis' [key=value ...]
        (override,) = OverridesParser.create().parse_overrides([arg])
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            arg = f"{override.get_key_element()}={first}"
        out.append(arg)
    return out


def test_every_train_and_predict_command_in_the_docs_composes():
    seen = 0
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for doc in DOCS:
            for command in commands(doc):
                script, *args = shlex.split(command)[1:]
                if script not in ("train.py", "predict.py"):
                    continue
                name = "train" if script == "train.py" else "predict"
                try:
                    compose(name, overrides=quote_numeric_choices(_overrides(args)))
                except Exception as e:  # noqa: BLE001
                    pytest.fail(f"{doc.name}: {command}\n{e}")
                seen += 1
    assert seen >= 25


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


def test_every_cxrdet_tool_and_option_in_the_docs_exists():
    seen = 0
    for doc in DOCS:
        for command in commands(doc):
            words = shlex.split(command)
            if words[0] != "cxrdet":
                continue
            tool = words[1]
            assert tool in TOOLS, f"{doc.name}: {command} (no tool {tool!r})"
            text = _help([tool])
            positional = [w for w in words[2:] if not w.startswith(("-", "["))]
            if positional and positional[0] in ("save", "list"):  # cxrdet weights save|list
                text += _help([tool, positional[0]])
            for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", command):
                known = re.search(re.escape(option) + r"(?![\w-])", text)
                assert known, f"{doc.name}: {command} ({tool} has no {option})"
            seen += 1
    assert seen >= 20


def test_the_helpers_find_commands_and_headings_and_a_misspelt_key_fails(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text(
        "# A Title, with (punctuation)\n\n"
        "Run `python train.py data.batchsize=2 ckpt_path=<run>/last.ckpt` and\n"
        "```bash\ncxrdet score --labels a.csv \\\n    --nosuch 1   # a comment\n```\n"
    )
    assert anchors(bad) == {"a-title-with-punctuation"}
    assert commands(bad) == [
        "cxrdet score --labels a.csv      --nosuch 1",
        "python train.py data.batchsize=2 ckpt_path=X/last.ckpt",
    ]
    with (
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
        pytest.raises(Exception, match="batchsize"),
    ):
        compose("train", overrides=_overrides(shlex.split(commands(bad)[1])[2:]))
