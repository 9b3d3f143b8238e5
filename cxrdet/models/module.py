"""LightningModule: Faster R-CNN training, validation loss without BatchNorm drift, AP40, mAP40."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from cxrdet.data.labels import CLASS_NAMES
from cxrdet.evaluation.evaluator import original_predictions
from cxrdet.models.detector import build_fasterrcnn, resolved_batchnorm
from cxrdet.models.safe_load import safe_load
from cxrdet.models.schedule import lightning_optimizers

log = logging.getLogger(__name__)
LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
# What the detector logs itself; the evaluation callbacks log the rest (AP40, mAP40, COCO AP).
DETECTOR_LOGS = ("train/loss", "val/loss", *(f"{s}/{k}" for s in ("train", "val") for k in LOSSES))


@contextmanager
def loss_mode(model: nn.Module):
    """Train mode (so torchvision returns losses) with every BatchNorm in eval mode.

    This is how the seed's LossEvalHook measured validation loss, minus its trap: in train mode
    BatchNorm would normalise with batch statistics and update its running buffers from
    validation images. Restores each module's previous mode on exit.
    """
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


@contextmanager
def rpn_head_once(rpn: nn.Module):
    """The RPN head's outputs computed once per set of features and reused: its two convolution
    layers have no mode-dependent part, so the train-mode and eval-mode RPN passes over the same
    features would compute the same thing twice (a 3x3 convolution over every FPN level)."""
    head, cache = rpn.head, {}

    def forward(x):
        key = tuple(id(t) for t in x)
        if key not in cache:
            cache[key] = type(head).forward(head, x)
        return cache[key]

    head.forward = forward  # an instance attribute: nn.Module calls it instead
    try:
        yield
    finally:
        del head.forward


def losses_and_detections(model: nn.Module, images: list, targets: list) -> tuple[dict, list]:
    """The validation losses (as :func:`loss_mode` measures them) and the detections of the same
    images, from one backbone + FPN pass where the two can share it (``model`` in eval mode, as
    Lightning validates).

    The RPN and the ROI heads run twice on the shared features: in train mode for the losses,
    in eval mode for the detections (the RPN head's convolutions once: :func:`rpn_head_once`).
    BatchNorm is in eval mode in both, so the features are the same either way. They are
    shared when training and testing resize to the same size (one training size equal to the
    test size: the default); with several training sizes, or a test size of its own, the loss
    is measured at a drawn training size as in training, and the detections take a second pass
    at the test size. The random draws (resize, ROI sampling) come in the same order as in two
    separate calls.
    """
    transform = model.transform
    original_sizes = [tuple(im.shape[-2:]) for im in images]
    with rpn_head_once(model.rpn):
        with loss_mode(model):
            image_list, loss_targets = transform(images, targets)
            features = model.backbone(image_list.tensors)
            proposals, rpn_losses = model.rpn(image_list, features, loss_targets)
            sizes = image_list.image_sizes
            _, roi_losses = model.roi_heads(features, proposals, sizes, loss_targets)
        losses = {**rpn_losses, **roi_losses}
        if set(transform.train_sizes) != {transform.test_size}:
            return losses, model(images)
        proposals, _ = model.rpn(image_list, features)
        detections, _ = model.roi_heads(features, proposals, sizes)
    return losses, transform.postprocess(detections, sizes, original_sizes)


class DetectorModule(pl.LightningModule):
    """Faster R-CNN R50-FPN with SGD + warmup-cosine and a validation loss; validation's
    detections go to the evaluation callbacks (AP40, mAP40, COCO AP: ``evaluation=``).

    Args:
        model: keyword arguments of :func:`cxrdet.models.detector.build_fasterrcnn` (plain values).
        optim: optimiser config with ``_target_`` and ``_partial_: true``.
        scheduler: LR scheduler config with ``_target_`` and ``_partial_: true``, called with the
            optimiser and ``total_steps``; or None for a constant LR.
        class_names: names of the trained classes, for per-class logging.
        on_nonfinite: a NaN/inf training loss ``stop``s the run (naming the step and the
            losses; the checkpoints written so far stay) or is ``skip``ped (no update).
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
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be stop or skip, got {on_nonfinite!r}")
        model = resolved_batchnorm(model)  # recorded in the checkpoint as resolved
        self.save_hyperparameters(ignore=["trust_weights"])
        self.model = build_fasterrcnn(**model, trust_weights=trust_weights)
        self.class_names = list(class_names or CLASS_NAMES[: model.get("num_classes", 14)])
        self.schedule_steps: int | None = None  # the LR schedule's length, kept in checkpoints
        self.resumed_from: tuple[int, int] | None = None  # (its schedule length, step) on resume
        self.skip_update = False  # on_nonfinite=skip: this step's gradients are dropped

    def forward(self, images, targets=None):
        return self.model(images, targets)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        skip = self.hparams.on_nonfinite == "skip"
        statistics = [b.clone() for b in self.batchnorm_statistics()] if skip else []
        losses = self.model(list(images), list(targets))
        loss = sum(losses.values())
        n = len(images)
        finite = bool(torch.isfinite(loss))
        if not self.everywhere(finite):  # under DDP every rank takes the same decision
            message = self.nonfinite_message(None if finite else losses, targets)
            if skip:  # the forward pass updated trainable BatchNorm's statistics: undo it
                for kept, now in zip(statistics, self.batchnorm_statistics()):
                    now.copy_(kept)
                log.warning("%s: batch skipped", message)
                return self.skipped_step_loss()
            raise FloatingPointError(
                f"{message}. Lower optim.lr, set trainer.gradient_clip_val, or "
                "on_nonfinite=skip; the checkpoints written so far are intact."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=n)
        return loss

    def batchnorm_statistics(self) -> list[torch.Tensor]:
        """The running statistics of trainable BatchNorm (random init), which every training
        forward pass updates."""
        return [
            b
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        ]

    def everywhere(self, finite: bool) -> bool:
        """Whether the loss is finite on every rank (one process: on this one)."""
        trainer = self._trainer
        if trainer is None:
            return finite
        return trainer.strategy.reduce_boolean_decision(finite, all=True)

    def nonfinite_message(self, losses: dict | None, targets) -> str:
        """The step, the losses and the images of every rank whose loss is not finite
        (``losses`` None: this rank's is)."""
        detail = None
        if losses is not None:
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            detail = f"{values}; images {', '.join(t['image_id'] for t in targets)}"
        details = [detail]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            details = [None] * dist.get_world_size()
            dist.all_gather_object(details, detail)
            details = [f"rank {r}: {d}" for r, d in enumerate(details) if d is not None]
        return f"non-finite loss at step {self.global_step} ({'; '.join(d for d in details if d)})"

    def skipped_step_loss(self) -> torch.Tensor:
        """A zero loss over every trainable parameter, and no update from it.

        Under DDP every rank must run backward (the gradient all-reduce waits for all) and
        Lightning refuses a ``None`` loss, so a skipped step backpropagates zeros, and
        :meth:`on_before_optimizer_step` then drops the gradients, so that the optimiser leaves
        the weights, momentum and weight decay as they were.
        """
        self.skip_update = True
        return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.skip_update:
            optimizer.zero_grad(set_to_none=True)
            self.skip_update = False

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
    ckpt_path: str, trust: bool = False, opt_in: str = "trust_checkpoint=true"
) -> DetectorModule:
    """Load a trained DetectorModule (on the CPU) for inference, never fetching weights again.

    The checkpoint holds every trained tensor; the weight sources training started from are
    dropped (keeping the BatchNorm kind and eps they implied) so that loading works offline.
    ``trust`` and ``opt_in``: :func:`read_checkpoint`.
    """
    hparams, state, model_cfg = read_checkpoint(ckpt_path, trust, opt_in)
    model_cfg = resolved_batchnorm(model_cfg)  # older checkpoints did not record it
    model_cfg.update(weights=None, weights_backbone=None, head_init="torchvision")
    module = DetectorModule(
        model=model_cfg,
        optim=hparams["optim"],
        scheduler=hparams.get("scheduler"),
        class_names=hparams.get("class_names"),
    )
    module.load_state_dict(state)
    return module
