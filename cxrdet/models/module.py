"""LightningModule: Faster R-CNN training, validation loss without BatchNorm drift, AP40, mAP40."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

from cxrdet.data.classes import KAGGLE14, of_names
from cxrdet.evaluation.evaluator import original_predictions
from cxrdet.models.detector import build_fasterrcnn, resolved_batchnorm
from cxrdet.models.nonfinite import NonFiniteGuard, zero_momentum
from cxrdet.models.rcnn.validation import losses_and_detections
from cxrdet.models.safe_load import safe_load
from cxrdet.models.schedule import lightning_optimizers

log = logging.getLogger(__name__)
LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
# What the detector logs itself; the evaluation callbacks log the rest (AP40, mAP40, COCO AP).
DETECTOR_LOGS = ("train/loss", "val/loss", *(f"{s}/{k}" for s in ("train", "val") for k in LOSSES))


class DetectorModule(pl.LightningModule):
    """Faster R-CNN R50-FPN with SGD + warmup-cosine and a validation loss; validation's
    detections go to the evaluation callbacks (AP40, mAP40, COCO AP: ``evaluation=``).

    Args:
        model: keyword arguments of :func:`cxrdet.models.detector.build_fasterrcnn` (plain values).
        optim: optimiser config with ``_target_`` and ``_partial_: true``.
        scheduler: LR scheduler config with ``_target_`` and ``_partial_: true``, called with the
            optimiser and ``total_steps``; or None for a constant LR.
        class_names: names of the trained classes, for per-class logging.
        on_nonfinite: a NaN/inf training loss or gradient is never applied, and ``stop``s the
            run (naming the step, the losses and the images; the checkpoints written so far
            stay) or is ``skip``ped (logged); checked on the device, read every
            ``log_every_n_steps`` (:mod:`cxrdet.models.nonfinite`).
        trust_weights: a local ``model.weights`` file that needs full unpickling is loaded
            (train.py's ``trust_checkpoint=true``) instead of refused; not a hyper-parameter.
    """

    LOGS = DETECTOR_LOGS

    def __init__(
        self,
        model: dict,
        optim: dict,
        scheduler: dict | None = None,
        class_names=None,
        on_nonfinite: str = "stop",
        trust_weights: bool = False,
    ):
        super().__init__()
        model = resolved_batchnorm(model)  # recorded in the checkpoint as resolved
        self.save_hyperparameters(ignore=["trust_weights"])
        self.model = build_fasterrcnn(**model, trust_weights=trust_weights)
        if class_names is None:  # checkpoints from before the class sets: Kaggle's
            class_names = KAGGLE14.names[: model.get("num_classes", KAGGLE14.num_findings)]
        self.class_names = list(class_names)
        self.classes = of_names(self.class_names)  # the class set (its "No finding" id)
        self.schedule_steps: int | None = None  # the LR schedule's length, kept in checkpoints
        self.resumed_from: tuple[int, int] | None = None  # (its schedule length, step) on resume
        self.nonfinite = NonFiniteGuard(on_nonfinite)

    def forward(self, images, targets=None):
        return self.model(images, targets)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        self.nonfinite.before_forward(self.model)
        losses = self.model(list(images), list(targets))
        loss = sum(losses.values())
        self.nonfinite.record(loss, losses, [t["image_id"] for t in targets])
        n = len(images)
        # The mean over DDP ranks (an all-reduce queued on the device); shown by ProgressBar:
        # prog_bar=True would make the host wait every step.
        self.log("train/loss", loss, batch_size=n, sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=n, sync_dist=True)
        return loss

    def on_train_start(self) -> None:
        for optimizer in self.trainer.optimizers:
            zero_momentum(optimizer)

    def on_before_optimizer_step(self, optimizer) -> None:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        self.nonfinite.after_backward(
            self.global_step, self.model, optimizer, check_gradients=scaler is None
        )

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        for optimizer in self.trainer.optimizers:
            self.nonfinite.clear_optimizer(optimizer)
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.nonfinite.review()

    def on_validation_start(self) -> None:
        self.nonfinite.review()  # nothing is scored or saved after an unreported bad step

    def on_train_end(self) -> None:
        self.nonfinite.review()

    def validation_step(self, batch, batch_idx) -> dict:
        """Logs the validation losses; returns each image's id, original size, ground truth and
        prediction in original pixels, for the evaluation callbacks to score
        (:mod:`cxrdet.training.evaluation`)."""
        images, targets = list(batch[0]), list(batch[1])
        # Validation loss draws random ROI samples: keep the training RNG streams untouched.
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            losses, detections = losses_and_detections(self.model, images, targets)
        n = len(images)
        self.log("val/loss", sum(losses.values()), prog_bar=True, batch_size=n, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=n, sync_dist=True)
        return {
            "image_ids": [t["image_id"] for t in targets],
            "orig_hws": [t["orig_hw"] for t in targets],
            "truths": [t["truth"] for t in targets],
            "predictions": original_predictions(targets, detections),
        }

    def configure_optimizers(self):
        return lightning_optimizers(
            self.model, self.hparams.optim, self.hparams.scheduler, self.schedule_length
        )

    def schedule_length(self) -> int:
        """The LR schedule's steps (trainer.max_steps), kept in checkpoints; warns when a resumed
        run's differs from the one its checkpoint was made with."""
        total = int(self.trainer.estimated_stepping_batches)
        if self.resumed_from and self.resumed_from[0] != total:
            made_for, step = self.resumed_from
            log.warning(
                "resuming at step %d a LR schedule made for %d steps with trainer.max_steps=%d: "
                "the schedule is stretched to %d steps from here, so the LR jumps (keep "
                "trainer.max_steps=%d to continue it unchanged)",
                step,
                made_for,
                total,
                total,
                made_for,
            )
        self.schedule_steps = total
        return total

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.review()  # stop before a checkpoint of a run that went bad is written
        checkpoint["schedule_steps"] = self.schedule_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called before configure_optimizers on a resume, which compares the two lengths.
        if checkpoint.get("schedule_steps"):
            self.resumed_from = (int(checkpoint["schedule_steps"]), int(checkpoint["global_step"]))


def read_checkpoint(
    ckpt_path: str, trust: bool = False, opt_in: str = "trust_checkpoint=true"
) -> tuple[dict, dict, dict]:
    """A train.py checkpoint's hyper-parameters, state dict and (a copy of) its model config,
    or a ValueError naming the file; tensors and plain values only unless ``trust``
    (:func:`cxrdet.models.safe_load.safe_load`)."""
    ckpt = safe_load(ckpt_path, trust, opt_in)
    try:
        hparams, state = ckpt["hyper_parameters"], ckpt["state_dict"]
        return hparams, state, dict(hparams["model"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{ckpt_path}: not a cxrdet training checkpoint (no model config)") from e


def load_detector(
    ckpt_path: str,
    trust: bool = False,
    opt_in: str = "trust_checkpoint=true",
    for_export: bool = False,
) -> DetectorModule:
    """Load a trained DetectorModule (on the CPU) for inference, never fetching weights again.

    The checkpoint holds every trained tensor; the weight sources training started from are
    dropped (keeping the BatchNorm kind and eps they implied) so that loading works offline.
    ``trust`` and ``opt_in``: :func:`read_checkpoint`. ``for_export``: torchvision's reference
    implementation, eager and in NCHW, which TorchScript and the ONNX exporter take (the
    weights are the same whichever implementation trained them).
    """
    hparams, state, model_cfg = read_checkpoint(ckpt_path, trust, opt_in)
    model_cfg = resolved_batchnorm(model_cfg)  # older checkpoints did not record it
    model_cfg.update(weights=None, weights_backbone=None, head_init="torchvision")
    if for_export:
        model_cfg.update(rcnn_impl="torchvision", compile=False, channels_last=False)
    module = DetectorModule(
        model=model_cfg,
        optim=hparams["optim"],
        scheduler=hparams.get("scheduler"),
        class_names=hparams.get("class_names"),
    )
    module.load_state_dict(state)
    return module
