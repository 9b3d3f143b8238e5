"""The "No finding" classifier: its heads, the filter's figures, and a tiny training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_datamodule, train_in_process
from sklearn.metrics import roc_auc_score

from cxrdet.models.classifier import build_classifier, filter_figures, load_classifier


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "efficientnet_v2_s", "convnext_tiny"])
def test_every_arch_gives_one_logit_per_image(arch):
    net = build_classifier(arch, weights=None).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_an_unknown_arch_is_named():
    with pytest.raises(ValueError, match="model.arch='vgg'.*resnet50"):
        build_classifier("vgg")


def test_filter_figures_count_the_bands_and_the_accuracy_at_each_threshold():
    probs = torch.tensor([0.01, 0.05, 0.5, 0.9, 0.96, 0.99])
    abnormal = torch.tensor([0, 1, 0, 1, 1, 1])
    f = filter_figures(probs, abnormal, low=0.08, high=0.95)
    assert f["share_below_low"] == pytest.approx(2 / 6)  # rows that become "No finding"
    assert f["share_between"] == pytest.approx(2 / 6)  # rows that get a line appended
    assert f["share_above_high"] == pytest.approx(2 / 6)  # rows left alone
    assert f["acc_low"] == pytest.approx(4 / 6)  # wrong: 0.05 (abnormal), 0.5 (normal)
    assert f["acc_high"] == pytest.approx(4 / 6)  # wrong: 0.05 and 0.9 (both abnormal)


def test_train_py_experiment_nofinding_trains_and_keeps_the_best_auc(tiny_data, tmp_path):
    run = tmp_path / "run"
    train_in_process(
        [
            "experiment=nofinding",
            "data=256",
            f"paths.raw_dir={tiny_data['raw']}",
            f"paths.prepared_dir={tiny_data['prepared']}",
            f"data.image_size={tiny_data['size']}",
            "data.num_workers=0",
            "data.batch_size=4",
            "data.split=kfold",  # 8 validation images, normal ones among them
            "data.n_folds=2",
            "data.fold=1",
            "trainer=cpu",
            "model.weights=null",  # random init, as for the detector
            "model.arch=resnet18",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            f"hydra.run.dir={run}",
        ]
    )
    metrics = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/AUC"])
    assert metrics["step"].tolist() == [1, 3]  # validated at steps 2 and 4
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (key,) = [k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint")]
    assert "'monitor': 'val/AUC'" in key  # the best checkpoint is chosen by validation AUC
    state = ckpt["callbacks"][key]
    best = metrics.loc[metrics["val/AUC"].idxmax()]
    assert float(state["best_model_score"]) == pytest.approx(best["val/AUC"], abs=1e-6)
    assert Path(state["best_model_path"]).name == f"best-step{int(best['step']) + 1}.ckpt"
    # The checkpoint records the size it trained at (predict.py resizes the detector's images).
    assert ckpt["hyper_parameters"]["image_size"] == tiny_data["size"]
    # The logged figures are those of the kept checkpoint on the 8 validation images,
    # recomputed here (scikit-learn's AUC; the filter's bands by hand).
    data = tiny_datamodule(tiny_data, split="kfold", n_folds=2, fold=1)
    data.setup("fit")
    classifier = load_classifier(state["best_model_path"])
    images, targets = zip(*(data.val_set[i] for i in range(len(data.val_set))))
    with torch.inference_mode():
        probs = torch.sigmoid(classifier(list(images))).numpy()
    abnormal = np.array([not t["normal"] for t in targets])
    assert len(probs) == best["val/images"] == 8 and 0 < abnormal.sum() < 8
    assert best["val/AUC"] == pytest.approx(roc_auc_score(abnormal, probs), abs=1e-6)
    assert best["val/acc_low"] == pytest.approx(((probs >= 0.08) == abnormal).mean(), abs=1e-6)
    assert best["val/acc_high"] == pytest.approx(((probs >= 0.95) == abnormal).mean(), abs=1e-6)
    assert best["val/share_below_low"] == pytest.approx((probs < 0.08).mean(), abs=1e-6)
    assert best["val/loss"] > 0
    # What the demo prints: the best checkpoint's AUC on the images its checkpoint records as
    # the run's validation split, with a 95 % bootstrap interval.
    from cxrdet.inference.classifier_cv import validation_auc

    r = validation_auc(run)
    assert r["checkpoint"] == Path(state["best_model_path"]).name and r["images"] == 8
    assert r["AUC"] == pytest.approx(roc_auc_score(abnormal, probs), abs=1e-6)
    assert r["AUC_ci"][0] <= r["AUC"] <= r["AUC_ci"][1]


def test_the_input_is_normalised_as_imagenet_weights_expect_and_old_checkpoints_load_as_trained(
    tmp_path, caplog
):
    from cxrdet.models.classifier import IMAGENET_MEAN, IMAGENET_STD, NoFindingModule

    optim = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
    torch.manual_seed(0)
    module = NoFindingModule({"arch": "resnet18", "weights": None}, optim).eval()
    assert module.hparams.input_norm == "imagenet"
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        ours = module(images)
        torchvision_s = module.net(torch.stack([(im - mean) / std for im in images])).squeeze(1)
        unnormalised = module.net(torch.stack(images)).squeeze(1)
    torch.testing.assert_close(ours, torchvision_s)
    assert not torch.allclose(ours, unnormalised)
    # A checkpoint from before (no input_norm recorded): loaded as it was trained.
    hparams = {k: v for k, v in module.hparams.items() if k != "input_norm"}
    torch.save(
        {"hyper_parameters": hparams, "state_dict": module.state_dict()}, tmp_path / "o.ckpt"
    )
    with caplog.at_level("INFO", logger="cxrdet.models.classifier"):
        old = load_classifier(str(tmp_path / "o.ckpt"))
    assert old.hparams.input_norm == "none" and "loaded as trained" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(old(images), unnormalised)


def test_images_of_another_size_are_resized_to_the_one_it_trained_at(tmp_path):
    """A classifier trained at 32 px given the detector's 64-px images scores them as the
    same images resized to 32 (what it learnt on); the size survives the checkpoint."""
    from cxrdet.models.classifier import NoFindingModule

    optim = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
    torch.manual_seed(0)
    module = NoFindingModule({"arch": "resnet18", "weights": None}, optim, image_size=32).eval()
    large = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    small = torch.nn.functional.interpolate(
        large.float() / 255, size=(32, 32), mode="bilinear", antialias=True
    )
    torch.save(
        {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
        tmp_path / "c.ckpt",
    )
    loaded = load_classifier(str(tmp_path / "c.ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(list(large)), module(list(small)))
        assert not torch.allclose(
            module.net((large.float() / 255 - module.mean) / module.std),
            module.net((small - module.mean) / module.std),
        )


def test_the_diagnoses_head_learns_six_labels_and_hands_the_filter_1_minus_p_no_finding():
    """model.targets=global6: six logits, BCE on each image's diagnoses, and the filter's
    P(abnormal) = 1 - P(No finding). Fails if forward gives another output than minus the
    "No finding" logit, or if the loss reads the image-level "normal" flag instead."""
    from cxrdet.data.classes import GLOBAL6
    from cxrdet.models.classifier import NoFindingModule

    optim = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
    module = NoFindingModule({"arch": "resnet18", "weights": None}, optim, targets="global6")
    module.eval()
    images = [torch.rand(3, 32, 32) for _ in range(2)]
    with torch.no_grad():
        logits = module.logits(images)
        assert logits.shape == (2, len(GLOBAL6))
        p_abnormal = torch.sigmoid(module(images))
    p_no_finding = torch.sigmoid(logits[:, GLOBAL6.index("No finding")])
    assert torch.allclose(p_abnormal, 1 - p_no_finding, atol=1e-6)
    targets = [
        {"normal": False, "diagnoses": np.array([1, 0, 0, 0, 1, 0], np.float32)},
        {"normal": True, "diagnoses": np.array([0, 0, 0, 0, 0, 1], np.float32)},
    ]
    assert module.labels(targets).tolist() == [[1, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="model.targets='global5'"):
        NoFindingModule({"arch": "resnet18", "weights": None}, optim, targets="global5")
