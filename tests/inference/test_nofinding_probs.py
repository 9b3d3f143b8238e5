"""predict.py with the "No finding" classifier: P(abnormal) in the run, averaged, with TTA."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cxrdet.evaluation.submission import read_submission
from cxrdet.inference.config import NofindingConfig, PredictConfig
from cxrdet.inference.predictor import PROBS_CSV, predict

OPTIM = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.005, "momentum": 0.9}


@pytest.fixture(scope="module")
def checkpoints(module_tmp):
    """A random-init detector and classifier, saved as train.py saves them."""
    from cxrdet.models.classifier import NoFindingModule
    from cxrdet.models.module import DetectorModule

    out = module_tmp
    torch.manual_seed(0)
    for name, module in (
        ("det", DetectorModule(model={"num_classes": 14, "image_size": 64}, optim=OPTIM)),
        ("cls", NoFindingModule(model={"arch": "resnet18", "weights": None}, optim=OPTIM)),
        ("cls2", NoFindingModule(model={"arch": "resnet18", "weights": None}, optim=OPTIM)),
    ):
        state = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
        torch.save(state, out / f"{name}.ckpt")
    return out / "det.ckpt", out / "cls.ckpt", out / "cls2.ckpt"


def _predict(checkpoints, tiny_data, out, **nofinding):
    prepared = tiny_data["prepared"] / "64"
    summary = predict(
        PredictConfig(
            ckpt_path=str(checkpoints[0]),
            output=str(out),
            image_dir=str(prepared / "test"),
            meta_csv=str(prepared / "test_meta.csv"),
            nofinding=NofindingConfig(**nofinding),
            progress=False,
        )
    )
    probs = pd.read_csv(out.with_name(PROBS_CSV), dtype={"image_id": str})
    return summary, read_submission(out), dict(zip(probs.image_id, probs.p_abnormal))


def test_the_classifier_runs_in_the_prediction_and_its_probs_are_written(
    checkpoints, tiny_data, tmp_path
):
    cls = str(checkpoints[1])
    summary, sub, probs = _predict(checkpoints, tiny_data, tmp_path / "a" / "s.csv", ckpt_path=cls)
    assert summary["nofinding_classifiers"] == 1 and sorted(probs) == sorted(sub)
    assert all(0 <= p <= 1 for p in probs.values())
    # The same filter as from a CSV of those probabilities.
    csv = str(tmp_path / "a" / PROBS_CSV)
    _, from_csv, _ = _predict(checkpoints, tiny_data, tmp_path / "b" / "s.csv", probs=csv)
    for image_id, row in sub.items():
        assert all((a == b).all() for a, b in zip(row, from_csv[image_id]))
    # Between low and high (a random classifier's p is near 0.5): "14 <1 - p> 0 0 1 1" added.
    image_id = next(i for i, p in probs.items() if 0.08 <= p < 0.95)
    assert sub[image_id][1][sub[image_id][2] == 14] == pytest.approx(1 - probs[image_id], abs=1e-4)


def test_several_classifiers_are_averaged_and_hflip_tta_adds_the_flipped_view(
    checkpoints, tiny_data, tmp_path
):
    from cxrdet.data.dataset import ImageDataset
    from cxrdet.inference.nofinding_probs import load_classifiers

    a, b = str(checkpoints[1]), str(checkpoints[2])  # two different classifiers
    _, _, one = _predict(checkpoints, tiny_data, tmp_path / "a" / "s.csv", ckpt_path=a)
    _, _, other = _predict(checkpoints, tiny_data, tmp_path / "b" / "s.csv", ckpt_path=b)
    _, _, both = _predict(checkpoints, tiny_data, tmp_path / "ab" / "s.csv", ckpt_path=[a, b])
    assert max(abs(one[i] - other[i]) for i in one) > 0.01  # they do disagree
    for image_id in one:  # written to 6 decimals
        assert both[image_id] == pytest.approx((one[image_id] + other[image_id]) / 2, abs=2e-6)
    _, _, tta = _predict(
        checkpoints, tiny_data, tmp_path / "tta" / "s.csv", ckpt_path=a, tta="hflip"
    )
    # The flipped view on its own, straight through the network:
    prepared = tiny_data["prepared"] / "64"
    dataset = ImageDataset(prepared / "test", prepared / "test_meta.csv")
    (classifier,) = load_classifiers(a, "cpu")
    with torch.inference_mode():
        flipped = {
            info["image_id"]: float(torch.sigmoid(classifier([image.flip(-1)]))[0])
            for image, info in (dataset[i] for i in range(len(dataset)))
        }
    assert max(abs(one[i] - flipped[i]) for i in one) > 1e-3  # the views differ
    for image_id in one:
        assert tta[image_id] == pytest.approx((one[image_id] + flipped[image_id]) / 2, abs=2e-6)


def test_probs_and_a_classifier_together_are_refused(checkpoints, tiny_data, tmp_path):
    with pytest.raises(ValueError, match="pass one"):
        _predict(checkpoints, tiny_data, tmp_path / "s.csv", probs="p.csv", ckpt_path="c.ckpt")


def test_the_classifier_shares_the_detector_s_pass_and_gives_what_it_gives_alone(
    checkpoints, tiny_data
):
    from cxrdet.data.dataset import ImageDataset
    from cxrdet.inference.detectors import load_models
    from cxrdet.inference.nofinding_probs import load_classifiers, predict_probs
    from cxrdet.inference.prediction_pass import PassOptions, predict_dataset

    prepared = tiny_data["prepared"] / "64"

    class CountingDataset(ImageDataset):
        reads = 0

        def __getitem__(self, i):
            CountingDataset.reads += 1
            return super().__getitem__(i)

    dataset = CountingDataset(prepared / "test", prepared / "test_meta.csv")
    classifiers = load_classifiers(str(checkpoints[1]), "cpu")
    models, _ = load_models([str(checkpoints[0])], "cpu", None, None)
    options = PassOptions(progress=False, classifier_tta="hflip")
    results, _, probs = predict_dataset(models, dataset, "cpu", options, classifiers=classifiers)
    assert CountingDataset.reads == len(dataset) == len(results)  # each image read once
    alone = predict_probs(classifiers, dataset, "cpu", tta="hflip", progress=False)
    assert probs == pytest.approx(alone, abs=1e-6) and sorted(probs) == sorted(results)
