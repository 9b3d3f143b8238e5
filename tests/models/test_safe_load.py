"""Nothing runs that the user did not write: a checkpoint whose unpickling would run code is
refused by every entry point that reads checkpoints or weights, in one line naming the file
and the opt-in; with the opt-in it loads, after a warning."""

from __future__ import annotations

import argparse
import pathlib

import pytest
import torch
import yaml
from conftest import in_process, tiny_overrides, train_in_process
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cxrdet.config import CONF_DIR, quote_numeric_choices
from cxrdet.models.safe_load import UntrustedFile, safe_load

OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}


class CreatesAFile:
    """Unpickling this creates ``path``: any code could run instead."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture(scope="module")
def files(module_tmp, tiny_data):
    """The checkpoint a one-step train.py run writes, the same with a payload, one with an
    old-style Namespace (harmless, but only full unpickling reads it), and the file the
    payload would create."""
    run = module_tmp / "run"
    train_in_process(
        [*tiny_overrides(tiny_data, run), "trainer.max_steps=1", "trainer.val_check_interval=1"]
    )
    good, evil, old = (module_tmp / n for n in ("good.ckpt", "evil.ckpt", "old.ckpt"))
    good.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    ckpt = torch.load(good, weights_only=True)  # tensors and plain values only
    marker = module_tmp / "the_payload_ran"
    torch.save({**ckpt, "callbacks": {"x": CreatesAFile(marker)}}, evil)
    torch.save({**ckpt, "hparams_namespace": argparse.Namespace(lr=0.01)}, old)
    return {"good": good, "evil": evil, "old": old, "marker": marker}


def _refused(files, error: str, opt_in: str, path=None) -> None:
    assert not files["marker"].exists(), "the payload ran"
    assert "\n" not in error.strip() and str(path or files["evil"]) in error
    assert "refused: it asks to run" in error and f"pass {opt_in}" in error


def _exit_message(call) -> str:
    with pytest.raises(SystemExit) as stopped:
        call()
    return str(stopped.value.code)


def test_predict_refuses_it_as_checkpoint_and_as_classifier(files, tiny_data, tmp_path):
    prepared = tiny_data["prepared"] / "64"
    common = [
        f"image_dir={prepared / 'test'}",
        f"meta_csv={prepared / 'test_meta.csv'}",
        "num_workers=0",
        f"hydra.run.dir={tmp_path}",
    ]
    for args in (
        [f"ckpt_path={files['evil']}"],
        [f"ckpt_path={files['good']}", f"nofinding.ckpt_path={files['evil']}"],
    ):
        error = _exit_message(lambda a=args: in_process("predict.py", [*a, *common]))
        _refused(files, error, "trust_checkpoint=true")


def test_train_refuses_it_to_resume_from_and_as_local_weights(files, tiny_data, tmp_path):
    base = [*tiny_overrides(tiny_data, tmp_path / "run"), "trainer.max_steps=1"]
    weights = files["evil"].with_suffix(".pth")
    weights.write_bytes(files["evil"].read_bytes())
    for extra in ([f"ckpt_path={files['evil']}"], [f"model.weights={weights}"]):
        error = _exit_message(lambda e=extra: train_in_process([*base, *e]))
        _refused(files, error.replace(str(weights), str(files["evil"])), "trust_checkpoint=true")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def _sweep_with(ckpt, tiny_data, root) -> pathlib.Path:
    """A one-fold sweep folder (and run folder) whose best checkpoint is ``ckpt``."""
    overrides = [*tiny_overrides(tiny_data, root), "data.split=kfold", "data.n_folds=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        plain = quote_numeric_choices([o for o in overrides if "hydra." not in o])
        cfg = compose(config_name="train", overrides=plain)
    run = root / "0"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "csv").mkdir()
    cfg.trainer.default_root_dir = str(run)
    for key in ("model_checkpoint", "signals"):
        cfg.callbacks[key].dirpath = str(run / "checkpoints")
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(OmegaConf.to_container(cfg)))
    (run / "csv" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    (run / "checkpoints" / "best-step1.ckpt").write_bytes(ckpt.read_bytes())
    return root


def test_the_tools_refuse_it_and_name_their_trust_flag(files, tiny_data, tmp_path, capsys):
    from cxrdet.inference import cv, export
    from cxrdet.reports import report

    sweep = _sweep_with(files["evil"], tiny_data, tmp_path / "sweep")
    best = sweep / "0" / "checkpoints" / "best-step1.ckpt"
    out = tmp_path / "x.onnx"
    calls = {
        "export": (
            lambda: export.main([str(files["evil"]), "--format", "onnx", "--out", str(out)])
        ),
        "cv": (lambda: cv.main([str(sweep)])),
        "report": (lambda: report.main([str(sweep / "0")])),
    }
    for tool, call in calls.items():
        assert call() == 2, tool
        error = capsys.readouterr().err.removeprefix("error: ")
        _refused(files, error, "--trust", files["evil"] if tool == "export" else best)
    assert not out.exists()


def test_with_the_opt_in_a_file_that_needs_unpickling_loads_after_a_warning(
    files, caplog, tmp_path
):
    """The opt-in really unpickles in full: a payload's code runs (here, it creates a file in
    this test's folder), after the warning; without it nothing runs."""
    with pytest.raises(UntrustedFile, match=r"old\.ckpt: refused: it asks to run argparse"):
        safe_load(files["old"])
    with caplog.at_level("WARNING", logger="cxrdet.models.safe_load"):
        ckpt = safe_load(files["old"], trust=True)
    assert ckpt["hparams_namespace"].lr == 0.01
    assert "unpickled in full (trust_checkpoint=true)" in caplog.text
    assert "any Python code the file carries runs" in caplog.text
    marker, payload = tmp_path / "ran", tmp_path / "payload.ckpt"
    torch.save({"callbacks": {"x": CreatesAFile(marker)}}, payload)
    with pytest.raises(UntrustedFile):
        safe_load(payload)
    assert not marker.exists()
    safe_load(payload, trust=True)
    assert marker.exists()


def test_a_checkpoint_train_py_writes_loads_as_tensors_and_plain_values(files):
    """train.py's whole training state (optimiser, loops, callbacks, RNG states) reads with
    weights_only=True; the same file with a payload added is refused."""
    ckpt = safe_load(files["good"])
    assert ckpt["state_dict"] and isinstance(ckpt["hyper_parameters"]["model"], dict)
    assert {"optimizer_states", "loops", "callbacks", "rng_states"} <= set(ckpt)
    with pytest.raises(UntrustedFile, match="evil.ckpt: refused: it asks to run"):
        safe_load(files["evil"])
    assert not files["marker"].exists()
