"""The package layout and the command family: imports run one way, every tool answers."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import PY, REPO, run_fails, run_ok

from cxrdet.cli import TOOLS

# The pipeline's stages, in the only order in which they may import each other.
STAGES = ["data", "evaluation", "models", "training", "reports", "inference", "demo"]


def test_packages_import_only_earlier_stages():
    found = set()
    for path in sorted((REPO / "cxrdet").glob("*/**/*.py")):
        stage = path.relative_to(REPO / "cxrdet").parts[0]
        found.add(stage)
        for imported in re.findall(r"^\s*(?:from|import) cxrdet\.(\w+)", path.read_text(), re.M):
            if imported in STAGES:
                assert STAGES.index(imported) <= STAGES.index(stage), (
                    f"{path.relative_to(REPO)} ({stage}) imports cxrdet.{imported}, a later stage"
                )
    assert found == set(STAGES)  # every stage is a package, and there is no other


def test_cxrdet_help_lists_every_tool_with_one_line():
    done = run_ok(["-m", "cxrdet", "--help"])
    for tool, (_, line) in TOOLS.items():
        assert re.search(rf"^\s+{tool}\s+{re.escape(line)}$", done.stdout, re.M), tool


@pytest.mark.parametrize("tool", list(TOOLS))
def test_every_tool_answers_help_under_its_own_name(tool, capsys):
    from cxrdet.cli import main

    with pytest.raises(SystemExit) as done:
        main([tool, "--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith(f"usage: cxrdet {tool}")


def test_the_cxrdet_command_is_the_cli():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "cxrdet"]
    assert script.value == "cxrdet.cli:main"


def test_an_unknown_tool_is_named():
    done = subprocess.run([PY, "-m", "cxrdet", "nope"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "unknown tool 'nope'" in done.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("score_threshold=0.1", "score_threshold"),  # a mistyped key
        ("score_thresh=high", "score_thresh"),  # a wrong type
        ("split.fold=first", "split.fold"),
    ],
)
def test_predict_refuses_a_bad_override_before_any_model_loads(override, named, tmp_path):
    done = run_fails(
        [
            "predict.py",
            f"ckpt_path={tmp_path / 'absent.ckpt'}",
            override,
            f"hydra.run.dir={tmp_path}",
        ]
    )
    assert named in done.stderr and "absent.ckpt" not in done.stderr


@pytest.mark.parametrize("override", ["data.batch_sise=4", "data.batch_size=four"])
def test_train_refuses_a_bad_data_override_at_compose_time(override, tmp_path):
    done = run_fails(["train.py", override, "model.weights=null", f"hydra.run.dir={tmp_path}"])
    assert override.split("=")[0].split(".")[1] in done.stderr


def test_no_benchmark_hides_a_module_the_pipeline_imports():
    """A benchmark runs with benchmarks/ first on sys.path: benchmarks/coverage.py once hid the
    coverage module numba looks for, and every benchmark that loads WBF failed on import."""
    code = "import sys; sys.path.insert(0, 'benchmarks'); import cxrdet.inference.predictor"
    run_ok(["-c", code])
