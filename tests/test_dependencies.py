"""Every third-party package cxrdet imports is a declared dependency, so that the next import
of a package that only arrives through another one fails here, not in a user's install."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

from conftest import REPO


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, set[str]]:
    """Distribution names of the installed project's dependencies and of each optional extra
    (its metadata, which make install writes from pyproject.toml), normalised."""
    groups: dict[str, set[str]] = {"dependencies": set()}
    for requirement in requires("cxrdet"):
        name = _normal(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        extra = re.search(r"""extra == ["']([\w-]+)["']""", requirement)
        groups.setdefault(_normal(extra.group(1)) if extra else "dependencies", set()).add(name)
    return groups


def _imported(paths: list[Path]) -> dict[str, set[str]]:
    """Top-level module → the files importing it (at any depth of the file)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def _third_party(modules: dict) -> dict[str, set[str]]:
    """Module → its distributions, for the modules neither the standard library nor local."""
    local = {"cxrdet", "conftest", "train", "predict", "nan_on_rank", "ddp_validate"}
    local |= {p.stem for p in (REPO / "tests").rglob("*.py")}  # tests and their helpers
    dists = packages_distributions()
    return {
        m: {_normal(d) for d in dists.get(m, [m])}
        for m in modules
        if m not in sys.stdlib_module_names and m not in local and m != "__future__"
    }


def test_every_import_of_the_package_is_a_declared_dependency_or_its_extra():
    declared = _declared()
    runtime = declared["dependencies"]
    extras = set().union(*(v for k, v in declared.items() if k not in ("dependencies", "dev")))
    code = [*sorted((REPO / "cxrdet").rglob("*.py")), REPO / "train.py", REPO / "predict.py"]
    modules = _imported(code)
    missing = {
        m: sorted(modules[m])
        for m, dists in _third_party(modules).items()
        if not dists & (runtime | extras)
    }
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
    assert "torchmetrics" in runtime and "pycocotools" in runtime


def _installed_by_make() -> set[str]:
    """Packages the Makefile installs beside the dev extra (``pip install --no-deps X==V``)."""
    text = (REPO / "Makefile").read_text()
    return {_normal(n) for n in re.findall(r"pip install --quiet --no-deps ([\w.-]+)==", text)}


def test_every_import_of_the_tests_is_declared_with_the_dev_tools():
    declared = _declared()
    allowed = declared["dependencies"] | declared["dev"] | _installed_by_make()
    assert "tidecv" in _installed_by_make()
    modules = _imported(sorted((REPO / "tests").rglob("*.py")))
    missing = {
        m: sorted(modules[m]) for m, dists in _third_party(modules).items() if not dists & allowed
    }
    assert missing == {}, f"the tests import, undeclared in dependencies or dev: {missing}"
