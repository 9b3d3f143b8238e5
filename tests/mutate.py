"""A short mutation pass: do the tests notice when the metric, the box mapping or the fusion
is wrong? ``make check-tests`` (CI runs it).

    python tests/mutate.py [--budget 270] [--list]

Each mutant changes one operator or constant of one of the modules below (``<`` for ``<=``,
``+`` for ``-``, ``and`` for ``or``, a dropped ``not``, a number off by one, ...), written
over the module for as long as that module's tests run (the original is put back after each,
and on any interruption). A mutant the tests pass with "survives": either a test is missing or
the change makes no observable difference. Each module gets a fixed number of mutants spread
evenly over its mutation sites (the same ones every run: about 4½ minutes on 2 cores); the
others are tried with ``--all``. Each survivor is listed with its line; ``docs/development.md``
lists them as of the last change to these modules, with why each is acceptable. Exits 1 only
when the tests fail on the unchanged code.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {  # module → (mutants tried, evenly spread over its sites; the pytest arguments)
    "cxrdet/evaluation/competition.py": (16, ["tests/evaluation/test_competition.py"]),
    "cxrdet/data/boxes.py": (
        12,
        [
            "tests/data/test_data.py",
            "tests/evaluation/test_competition.py",
            "-k",
            "box or letterbox or clip or iou or competition or positive",
        ],
    ),
    "cxrdet/data/fusion.py": (12, ["tests/data/test_fusion.py"]),
}
SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.And: ast.Or, ast.Or: ast.And,
}  # fmt: skip


def sites(tree: ast.AST) -> list[tuple[int, str, list]]:
    """Every place a mutation applies: (line, description, path of indices to the node)."""
    found = []
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    annotations = {
        id(sub)
        for n in ast.walk(tree)
        for a in (getattr(n, "annotation", None), getattr(n, "returns", None))
        if a is not None
        for sub in ast.walk(a)
    }
    for node in ast.walk(tree):
        if id(node) in docstrings or id(node) in annotations:
            continue
        ops = []
        if isinstance(node, ast.Compare):
            ops = [(i, op) for i, op in enumerate(node.ops)]
        elif isinstance(node, ast.BinOp | ast.BoolOp | ast.AugAssign):
            ops = [(None, node.op)]
        for i, op in ops:
            if type(op) in SWAPS:
                what = f"{type(op).__name__} -> {SWAPS[type(op)].__name__}"
                found.append((node.lineno, what, ("op", node, i)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append((node.lineno, "drop not", ("not", node, None)))
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            found.append(
                (node.lineno, f"{node.value!r} -> {bump(node.value)!r}", ("num", node, None))
            )
    return sorted(found, key=lambda s: (s[0], s[1]))


def bump(value):
    return value + 1 if isinstance(value, int) else (1.0 if value == 0 else value * 1.5)


def mutant(source: str, k: int) -> str:
    """``source`` with its ``k``-th mutation site changed."""
    tree = ast.parse(source)
    _, _, (kind, node, i) = sites(tree)[k]
    if kind == "op" and i is not None:
        node.ops[i] = SWAPS[type(node.ops[i])]()
    elif kind == "op":
        node.op = SWAPS[type(node.op)]()
    elif kind == "num":
        node.value = bump(node.value)
    else:  # drop a "not": replace the UnaryOp by its operand wherever it sits
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is node:
                    setattr(parent, field, node.operand)
                elif isinstance(value, list) and node in value:
                    value[value.index(node)] = node.operand
    return ast.unparse(tree)


def tests_pass(args: list[str], timeout: int = 120) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
    )
    return done.returncode == 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--all", action="store_true", help="every mutant (about 20 minutes)")
    p.add_argument("--list", action="store_true", help="list the mutants tried and stop")
    a = p.parse_args()
    originals = {m: (ROOT / m).read_text() for m in TARGETS}
    order = []
    for m, (quota, _) in TARGETS.items():
        n = len(sites(ast.parse(originals[m])))
        picked = range(n) if a.all or quota >= n else sorted({i * n // quota for i in range(quota)})
        order += [(m, k) for k in picked]
    if a.list:
        for m, k in order:
            line, what, _ = sites(ast.parse(originals[m]))[k]
            print(f"{m}:{line}: {what}")
        return 0
    for m, (_, args) in TARGETS.items():
        if not tests_pass(args):
            print(f"the tests of {m} fail on the unchanged code: {' '.join(args)}")
            return 1
    start, killed, survived, tried = time.monotonic(), 0, [], 0
    try:
        for m, k in order:
            line, what, _ = sites(ast.parse(originals[m]))[k]
            (ROOT / m).write_text(mutant(originals[m], k))
            try:
                alive = tests_pass(TARGETS[m][1])
            except subprocess.TimeoutExpired:
                alive = False  # a mutant that hangs the tests is noticed
            finally:
                (ROOT / m).write_text(originals[m])
            tried += 1
            if alive:
                survived.append(f"{m}:{line}: {what}")
            else:
                killed += 1
    finally:
        for m, text in originals.items():
            (ROOT / m).write_text(text)
    print(f"mutants: {tried} tried of {len(order)}, {killed} killed, {len(survived)} survived "
          f"({time.monotonic() - start:.0f} s)")  # fmt: skip
    for s in survived:
        print(f"  survived: {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
