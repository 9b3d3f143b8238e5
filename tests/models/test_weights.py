"""Pretrained weights offline: torchvision names from a TORCH_HOME made here, local files of every
accepted kind, the one-line cure when nothing is cached, and the save helper."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from conftest import train_in_process
from safetensors.torch import save_file
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
from torchvision.ops.misc import FrozenBatchNorm2d

from cxrdet.models.detector import build_fasterrcnn
from cxrdet.models.module import DetectorModule, load_detector
from cxrdet.models.weights import WeightsUnavailable, cache_file
from cxrdet.models.weights import main as weights_main

COCO = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
IMAGENET = ResNet50_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def coco_state():
    """A state dict shaped like torchvision's COCO detector (91 classes), made on the spot."""
    torch.manual_seed(1)
    return build_fasterrcnn(num_classes=90, image_size=64, frozen_bn=True).state_dict()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME of this test's own; torchvision reads its cache from there."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _cache(weights, state) -> None:
    path = cache_file(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _trainable_stages(model) -> list[str]:
    body = model.backbone.body
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    return [s for s in stages if any(p.requires_grad for p in getattr(body, s).parameters())]


def test_default_loads_the_cached_coco_file_with_frozen_batchnorm(torch_home, coco_state, caplog):
    _cache(COCO, coco_state)
    assert str(cache_file(COCO)).startswith(str(torch_home))
    with caplog.at_level(logging.INFO, logger="cxrdet.models.weights"):
        model = build_fasterrcnn(num_classes=14, image_size=64, weights="DEFAULT")
    got = model.state_dict()
    assert torch.equal(
        got["backbone.body.layer3.0.conv1.weight"],
        coco_state["backbone.body.layer3.0.conv1.weight"],
    )
    assert torch.equal(got["rpn.head.conv.0.0.weight"], coco_state["rpn.head.conv.0.0.weight"])
    assert (
        got["roi_heads.box_predictor.cls_score.weight"].shape[0] == 15
    )  # 14 findings + background
    message = caplog.text
    assert "torchvision COCO_V1" in message and "skipped 4" in message
    assert "roi_heads.box_predictor.bbox_pred.bias" in message
    norms = [m for m in model.backbone.body.modules() if "Norm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) and m.eps == 0.0 for m in norms)
    assert _trainable_stages(model) == ["layer2", "layer3", "layer4"]


def test_backbone_name_loads_the_cached_imagenet_file(torch_home):
    torch.manual_seed(2)
    state = resnet50().state_dict()
    _cache(IMAGENET, state)
    model = build_fasterrcnn(num_classes=14, image_size=64, weights_backbone="IMAGENET1K_V1")
    assert torch.equal(model.backbone.body.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert model.backbone.body.bn1.eps == 1e-5


def test_a_name_neither_cached_nor_downloadable_names_the_file_and_the_cures(
    torch_home, monkeypatch
):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as e:
        build_fasterrcnn(num_classes=14, image_size=64, weights="DEFAULT")
    text = str(e.value)
    assert str(cache_file(COCO)) in text and "\n" not in text
    assert "cxrdet weights save" in text and "model.weights=/path/to/" in text
    assert "random weights with model.weights=null" in text  # the cure that needs no network
    with pytest.raises(WeightsUnavailable, match="model.weights_backbone=IMAGENET1K_V1"):
        build_fasterrcnn(num_classes=14, image_size=64, weights_backbone="IMAGENET1K_V1")


def test_unknown_name_and_unsupported_file_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="model.weights=COCO_V9: neither a torchvision name"):
        build_fasterrcnn(weights="COCO_V9")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unsupported weights file; expected one of \.pth, \.pt"):
        build_fasterrcnn(weights=str(bad))
    with pytest.raises(WeightsUnavailable, match="missing.pth: weights file not found"):
        build_fasterrcnn(weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt", ".safetensors"])
def test_local_files_of_every_accepted_kind(tmp_path, coco_state, suffix):
    path = tmp_path / f"coco{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in coco_state.items()}, str(path))
    elif suffix == ".ckpt":  # a cxrdet (Lightning) checkpoint: "model." prefix under state_dict
        torch.save({"state_dict": {f"model.{k}": v for k, v in coco_state.items()}}, path)
    else:
        torch.save(coco_state, path)
    model = build_fasterrcnn(num_classes=14, image_size=64, weights=str(path))
    key = "backbone.fpn.layer_blocks.2.0.weight"
    assert torch.equal(model.state_dict()[key], coco_state[key])
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)


def test_the_coco_file_is_recognised_by_content_and_its_eps_kept_through_a_checkpoint(
    tmp_path, coco_state, monkeypatch
):
    from cxrdet.models import weights

    coco = tmp_path / "renamed_by_a_user.pth"  # not torchvision's name: known by its content
    torch.save(coco_state, coco)
    monkeypatch.setattr(weights, "coco_hash_prefix", lambda: weights.sha256(coco)[:8])
    impostor = tmp_path / cache_file(COCO).name  # torchvision's name, other content
    torch.save({k: v + 1 for k, v in coco_state.items()}, impostor)
    assert weights.frozen_bn_eps(str(coco)) == 0.0 and weights.frozen_bn_eps(str(impostor)) == 1e-5
    module = DetectorModule(
        model={"num_classes": 14, "image_size": 64, "weights": str(coco)},
        optim={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01},
    )
    assert module.model.backbone.body.bn1.eps == 0.0
    assert module.hparams.model["frozen_bn_eps"] == 0.0 and module.hparams.model["frozen_bn"]
    ckpt = tmp_path / "trained.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    coco.unlink()  # inference never needs the starting weights again: the eps is recorded
    loaded = load_detector(str(ckpt)).model
    assert loaded.backbone.body.bn1.eps == 0.0
    assert isinstance(loaded.backbone.body.layer1[0].bn1, FrozenBatchNorm2d)
    explicit = build_fasterrcnn(image_size=64, weights=str(impostor), frozen_bn_eps=0.001)
    assert explicit.backbone.body.bn1.eps == 0.001  # model.frozen_bn_eps decides when given


def test_a_fresh_box_predictor_starts_as_detectron2_s_and_a_loaded_one_is_kept(tmp_path):
    torch.manual_seed(0)
    fresh = build_fasterrcnn(image_size=64, head_init="detectron2").roi_heads.box_predictor
    assert fresh.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert fresh.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert not fresh.cls_score.bias.any() and not fresh.bbox_pred.bias.any()
    default = build_fasterrcnn(image_size=64).roi_heads.box_predictor  # torchvision's
    assert default.bbox_pred.weight.abs().max() > 0.01 and default.bbox_pred.bias.any()
    # From a file whose predictor fits (a 14-class detector), the loaded one stays.
    path = tmp_path / "fourteen.pth"
    torch.save(build_fasterrcnn(image_size=64).state_dict(), path)
    kept = build_fasterrcnn(image_size=64, weights=str(path), head_init="detectron2")
    saved = torch.load(path, weights_only=True)
    key = "roi_heads.box_predictor.bbox_pred.weight"
    assert torch.equal(kept.state_dict()[key], saved[key])
    with pytest.raises(ValueError, match="model.head_init='xavier'"):
        build_fasterrcnn(image_size=64, head_init="xavier")


def test_save_writes_a_torch_home_with_checksums(torch_home, tmp_path, coco_state, capsys):
    _cache(COCO, coco_state)
    _cache(IMAGENET, resnet50().state_dict())
    out = tmp_path / "carry"
    weights_main(["save", str(out)])
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 2
    for line in sums:
        digest, rel = line.split("  ")
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    assert (out / "hub" / "checkpoints" / cache_file(COCO).name).is_file()
    assert f"export TORCH_HOME={out}" in capsys.readouterr().out
    weights_main(["list"])
    assert capsys.readouterr().out.count(" cached") == 2


def test_train_without_cached_weights_stops_before_the_data_in_one_line(tmp_path, monkeypatch):
    # The headline command, run for real offline: torchvision's download goes to a closed port.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    for proxy in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    for no_proxy in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(no_proxy, "")
    raw = tmp_path / "raw"
    raw.mkdir()
    # The header sizes the head (its class set); a row would fail, loudly, if anything read it.
    header = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
    (raw / "train.csv").write_text(f"{header}\n1,2,3,4,5,6,7,8,9,10,11\n")
    args = [
        "data=512",
        "model=frcnn_r50fpn",
        f"paths.raw_dir={raw}",
        f"paths.prepared_dir={tmp_path}",  # exists: the data's paths pass the first check
        "data.image_dir=.",
        "data.meta_csv=README.md",
        "trainer=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    with pytest.raises(SystemExit) as stopped:
        train_in_process(args)
    error = str(stopped.value.code)
    assert error.startswith("error: model.weights=DEFAULT") and cache_file(COCO).name in error
    assert "\n" not in error  # one line, and the labels' rows were never read


def test_a_broken_file_in_the_cache_is_named_with_the_cure(torch_home):
    path = cache_file(COCO)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a download")
    with pytest.raises(ValueError, match=r"cannot be read as weights .* delete it"):
        build_fasterrcnn(num_classes=14, image_size=64, weights="DEFAULT")
