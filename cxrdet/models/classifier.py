"""The image-level "No finding" classifier: P(the image has a finding), the winners' largest lever.

``python train.py experiment=nofinding`` trains it on the detector's data module, splits,
seeds, augmentation, schedule, precision and loggers, with binary cross-entropy on "the image
has a finding" (cxrdet's one meaning: some reader marked a finding). Validation logs
``val/loss``, ``val/AUC``, the accuracy of "abnormal" at the filter's two thresholds
(``nofinding.low`` / ``high`` of predict.py) and the share of images each band of the filter
would touch; the best checkpoint is chosen by ``val/AUC``.

torchvision's classification models, unlike its detectors, do not normalise their input: the
module does (ImageNet mean and std on the grey image repeated over three channels), so
training, ``predict.py``, ``cxrdet cv`` and every later use see what the pretrained weights
expect. A checkpoint records the convention (``input_norm``); one made before it is loaded
as it was trained (no normalisation), with a log line.

With ``model.targets=global6`` it learns the VinDr-CXR release's 6 diagnoses instead (one
sigmoid each, BCE; the readers' majority per image from ``data.global_labels``:
:mod:`cxrdet.data.global_labels`); its "No finding" output stays the filter's input
(P(abnormal) = 1 - P(No finding)), and validation logs ``val/AUC/<diagnosis>`` with ``val/AUC``
their mean.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from torchvision import models

from cxrdet.data.classes import GLOBAL6, NO_FINDING_NAME
from cxrdet.data.dataset import unit_float
from cxrdet.models.module import read_checkpoint
from cxrdet.models.schedule import lightning_optimizers
from cxrdet.models.weights import load_weights, no_source

log = logging.getLogger(__name__)
# What torchvision's ImageNet classifiers were trained on (their weights' transforms).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INPUT_NORMS = ("imagenet", "none")  # none: checkpoints made before the module normalised
TARGETS = {"nofinding": 1, "global6": len(GLOBAL6)}  # model.targets → outputs
# arch → (torchvision builder, its weights enum); ImageNet weights by name, e.g. IMAGENET1K_V1
ARCHS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights),
    "resnet50": (models.resnet50, models.ResNet50_Weights),
    "efficientnet_v2_s": (models.efficientnet_v2_s, models.EfficientNet_V2_S_Weights),
    "convnext_tiny": (models.convnext_tiny, models.ConvNeXt_Tiny_Weights),
}


def build_classifier(
    arch: str = "resnet50",
    weights: str | None = None,
    channels_last: bool = False,
    trust_weights: bool = False,
    outputs: int = 1,
) -> nn.Module:
    """A torchvision backbone with ``outputs`` logits; ``weights`` a torchvision name of that
    architecture (read from the cache, as for the detector: :mod:`cxrdet.models.weights`), a
    local file (one that needs full unpickling only with ``trust_weights``), or None (random
    init); ``channels_last``: its convolutions' weights in NHWC order (the GPU's tensor
    cores'; slower on the CPU)."""
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r}: expected one of {', '.join(ARCHS)}")
    builder, weights_enum = ARCHS[arch]
    net = builder(weights=None)
    if not no_source(weights):
        load_weights(net, weights, weights_enum, "model.weights", trust_weights)
    if arch.startswith("resnet"):
        net.fc = nn.Linear(net.fc.in_features, outputs)
    else:  # EfficientNet and ConvNeXt end in a Sequential whose last layer is the Linear
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, outputs)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def filter_figures(probs: torch.Tensor, abnormal: torch.Tensor, low: float, high: float) -> dict:
    """What the "No finding" filter would do with these P(abnormal): the accuracy of calling an
    image abnormal from ``low`` and from ``high`` up, and the share of images in each band
    (below ``low``: the row becomes "No finding"; ``low``-``high``: a line is appended; from
    ``high`` up: the row is left alone)."""
    abnormal = abnormal.bool()
    below, above = probs < low, probs >= high
    return {
        "acc_low": float(((probs >= low) == abnormal).float().mean()),
        "acc_high": float((above == abnormal).float().mean()),
        "share_below_low": float(below.float().mean()),
        "share_between": float((~below & ~above).float().mean()),
        "share_above_high": float(above.float().mean()),
    }


FILTER_FIGURES = ("acc_low", "acc_high", "share_below_low", "share_between", "share_above_high")
CLASSIFIER_LOGS = ("train/loss", "val/loss", "val/AUC", "val/images") + tuple(
    f"val/{k}" for k in FILTER_FIGURES
)


class NoFindingModule(pl.LightningModule):
    """The classifier with SGD + warmup-cosine, as :class:`cxrdet.models.module.DetectorModule`.

    Args:
        model: ``arch`` and ``weights`` (:func:`build_classifier`).
        optim: optimiser config with ``_target_`` and ``_partial_: true``.
        scheduler: LR scheduler config (``_partial_``, called with ``total_steps``), or None.
        low, high: the filter's thresholds, for the logged accuracies and band shares.
        input_norm: ``imagenet`` (the input normalised as the weights expect) or ``none`` (how
            checkpoints made before were trained); recorded in the checkpoint.
        image_size: the side of the images it trains on (``data.image_size``), recorded in the
            checkpoint: images of another size (the detector's, in ``predict.py`` and
            ``cxrdet cv``) are resized to it first (bilinear, antialiased). None: as given.
        targets: ``nofinding`` (P(a finding)) or ``global6`` (the release's 6 diagnoses; the
            data module's targets carry them as ``diagnoses``).
        temperature: P(abnormal)'s logit is divided by it at prediction
            (:meth:`p_abnormal`); 1 until ``cxrdet calibrate`` fits one on the validation
            images and writes it into the checkpoint (training never uses it).
        trust_weights: as :class:`cxrdet.models.module.DetectorModule`'s; not a hyper-parameter.
    """

    LOGS = (
        "train/loss",
        "val/loss",
        "val/AUC",
        "val/images",
        *(f"val/{k}" for k in FILTER_FIGURES),
    )

    def __init__(
        self,
        model: dict,
        optim: dict,
        scheduler: dict | None = None,
        low: float = 0.08,
        high: float = 0.95,
        input_norm: str = "imagenet",
        image_size: int | None = None,
        targets: str = "nofinding",
        temperature: float = 1.0,
        trust_weights: bool = False,
    ):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm={input_norm!r}: expected one of {', '.join(INPUT_NORMS)}")
        if targets not in TARGETS:
            raise ValueError(f"model.targets={targets!r}: expected one of {', '.join(TARGETS)}")
        self.save_hyperparameters(ignore=["trust_weights"])
        self.net = build_classifier(**model, trust_weights=trust_weights, outputs=TARGETS[targets])
        self.targets = targets
        norm = input_norm == "imagenet"
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if norm else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.loss = nn.BCEWithLogitsLoss()
        self.val_probs: list[torch.Tensor] = []
        self.val_labels: list[torch.Tensor] = []

    def logits(self, images) -> torch.Tensor:
        """Every output's logits, [N, outputs] (a batch of same-sized images: uint8 as the
        loader ships them, or float in [0, 1]); grey images are expanded to three channels."""
        x = unit_float(torch.stack(list(images)))
        size = self.hparams.get("image_size")
        if size and tuple(x.shape[-2:]) != (size, size):
            x = nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return self.net((x - self.mean) / self.std)

    def abnormal(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of P(abnormal) from :meth:`logits`' output, one per image: the one output,
        or with ``global6`` minus the "No finding" diagnosis' logit (sigmoid(-x) =
        1 - sigmoid(x))."""
        if self.targets == "global6":
            return -logits[:, GLOBAL6.index(NO_FINDING_NAME)]
        return logits.squeeze(1)

    def forward(self, images) -> torch.Tensor:
        """Logits of P(abnormal), one per image (:meth:`abnormal`)."""
        return self.abnormal(self.logits(images))

    def p_abnormal(self, logits: torch.Tensor) -> torch.Tensor:
        """P(abnormal) from :meth:`logits`' output, calibrated by the checkpoint's
        ``temperature``."""
        return torch.sigmoid(self.abnormal(logits) / self.hparams.get("temperature", 1.0))

    def labels(self, targets) -> torch.Tensor:
        """What it learns: 1 for an image some reader marked a finding on, 0 for a normal
        image; with ``global6``, each image's 6 diagnoses (0/1)."""
        if self.targets == "global6":
            return torch.tensor(np.stack([t["diagnoses"] for t in targets]), dtype=torch.float32)
        return torch.tensor([0.0 if t["normal"] else 1.0 for t in targets])

    def outputs(self, images) -> torch.Tensor:
        """The logits its loss takes: [N] (nofinding) or [N, 6] (global6)."""
        return self.logits(images) if self.targets == "global6" else self(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss = self.loss(self.outputs(images), self.labels(targets).to(self.device))
        self.log("train/loss", loss, batch_size=len(images))  # ProgressBar shows it
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_probs, self.val_labels, self.val_normal = [], [], []

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        logits, labels = self.outputs(images), self.labels(targets).to(self.device)
        self.log("val/loss", self.loss(logits, labels), batch_size=len(images), sync_dist=True)
        self.val_probs.append(torch.sigmoid(logits).float())
        self.val_labels.append(labels)
        normal = [1.0 if t["normal"] else 0.0 for t in targets]
        self.val_normal.append(torch.tensor(normal, device=self.device))

    def on_validation_epoch_end(self) -> None:
        if not self.val_probs:
            return
        probs = self.all_gather(torch.cat(self.val_probs))
        labels = self.all_gather(torch.cat(self.val_labels))
        abnormal = 1.0 - self.all_gather(torch.cat(self.val_normal)).reshape(-1)
        if self.targets == "global6":
            width = len(GLOBAL6)
            probs, labels = probs.reshape(-1, width), labels.reshape(-1, width)
            aucs = {name: auc_or_none(probs[:, k], labels[:, k]) for k, name in enumerate(GLOBAL6)}
            self.log_dict({f"val/AUC/{n}": v for n, v in aucs.items() if v is not None})
            scored = [v for v in aucs.values() if v is not None]
            auc = sum(scored) / len(scored) if scored else 0.0
            p_abnormal = 1.0 - probs[:, GLOBAL6.index(NO_FINDING_NAME)]
        else:
            probs, labels = probs.reshape(-1), labels.reshape(-1)
            auc, p_abnormal = auc_or_none(probs, labels) or 0.0, probs
        self.log("val/AUC", auc, prog_bar=True)
        self.log("val/images", float(len(probs)))
        figures = filter_figures(p_abnormal, abnormal, self.hparams.low, self.hparams.high)
        self.log_dict({f"val/{k}": v for k, v in figures.items()})

    def configure_optimizers(self):
        return lightning_optimizers(
            self,
            self.hparams.optim,
            self.hparams.scheduler,
            lambda: int(self.trainer.estimated_stepping_batches),
        )


def auc_or_none(probs: torch.Tensor, labels: torch.Tensor) -> float | None:
    """ROC AUC, or None without both kinds of image (no AUC to speak of)."""
    if not bool(labels.min() < 1 <= labels.max()):
        return None
    return float(binary_auroc(probs, labels.long()))


def load_classifier(
    ckpt_path: str, trust: bool = False, opt_in: str = "trust_checkpoint=true"
) -> NoFindingModule:
    """Load a trained classifier (on the CPU) for inference, never fetching weights again: the
    checkpoint holds every trained tensor, so the ImageNet source it started from is dropped.
    ``trust`` and ``opt_in``: :func:`cxrdet.models.module.read_checkpoint`."""
    hparams, state, model_cfg = read_checkpoint(ckpt_path, trust, opt_in)
    if "arch" not in model_cfg:
        raise ValueError(f"{ckpt_path}: a detector checkpoint, not a classifier (no model.arch)")
    model_cfg["weights"] = None
    input_norm = hparams.get("input_norm", "none")
    if "input_norm" not in hparams:
        log.info("%s: made before the input was normalised: loaded as trained (none)", ckpt_path)
    module = NoFindingModule(
        model_cfg,
        hparams["optim"],
        hparams.get("scheduler"),
        hparams["low"],
        hparams["high"],
        input_norm=input_norm,
        image_size=hparams.get("image_size"),  # older checkpoints: the images as given
        targets=hparams.get("targets", "nofinding"),
        temperature=hparams.get("temperature", 1.0),
    )
    module.load_state_dict(state)
    return module.eval()
