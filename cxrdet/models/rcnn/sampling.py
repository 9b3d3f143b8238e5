"""The positive/negative sampler of the RPN and the box head, for a whole batch at once.

torchvision's ``BalancedPositiveNegativeSampler`` takes, per image, up to
``batch_size_per_image * positive_fraction`` positives (label >= 1) at random and fills the
batch with negatives (label 0); label -1 is ignored. It finds them with ``torch.where`` and
draws with ``randperm``, image by image. :class:`BalancedSampler` draws the same way in
distribution without either: each element gets a random key, and the positives and negatives
with the largest keys are taken by ``topk`` over masked keys, the counts staying on the device.

Tests hand both samplers the same fixed choice (:func:`first_keys` and :class:`FirstSampler`:
the first elements by index), so that the batched and the per-image paths can be compared
loss for loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler


def random_keys(labels: Tensor) -> Tensor:
    """Uniform keys in [0, 1), one per element: a uniformly random subset is taken."""
    return torch.rand(labels.shape, device=labels.device)


def first_keys(labels: Tensor) -> Tensor:
    """Keys that fall with the index, in [0, 1): the first elements are taken."""
    n = labels.shape[-1]
    keys = 1.0 - torch.arange(n, device=labels.device, dtype=torch.float32) / n
    return keys.expand(labels.shape)


class BalancedSampler:
    """Positive and negative masks ``[N, K]`` of ``labels`` ``[N, K]`` (-1 ignored, 0
    negative, >= 1 positive): per row up to ``batch_size_per_image * positive_fraction``
    positives and ``batch_size_per_image`` in all, as torchvision's sampler counts them.
    ``keys`` chooses among the candidates (the largest keys win): :func:`random_keys`, or
    :func:`first_keys` for a fixed choice."""

    def __init__(
        self,
        batch_size_per_image: int,
        positive_fraction: float,
        keys: Callable[[Tensor], Tensor] = random_keys,
    ):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.keys = keys

    def __call__(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        keys = self.keys(labels)
        most_positive = int(self.batch_size_per_image * self.positive_fraction)
        pos = self.take(torch.where(labels >= 1, keys, -1.0), most_positive, None)
        wanted = self.batch_size_per_image - pos.sum(dim=1, keepdim=True)
        neg = self.take(torch.where(labels == 0, keys, -1.0), self.batch_size_per_image, wanted)
        return pos, neg

    @staticmethod
    def take(keys: Tensor, most: int, wanted: Tensor | None) -> Tensor:
        """A mask of the elements with the largest non-negative keys, at most ``most`` per row
        and, where given, fewer than ``wanted`` [N, 1] of them."""
        k = min(most, keys.shape[1])
        values, index = keys.topk(k, dim=1)
        chosen = values >= 0
        if wanted is not None:
            chosen &= torch.arange(k, device=keys.device) < wanted
        return torch.zeros_like(keys, dtype=torch.bool).scatter_(1, index, chosen)


class FirstSampler(BalancedPositiveNegativeSampler):
    """torchvision's sampler taking the first positives and negatives by index instead of a
    random draw: the reference path's counterpart of ``BalancedSampler(keys=first_keys)``."""

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        pos_masks, neg_masks = [], []
        for labels in matched_idxs:
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pos = torch.zeros_like(labels, dtype=torch.uint8)
            neg = torch.zeros_like(labels, dtype=torch.uint8)
            pos[positive[:num_pos]] = 1
            neg[negative[:num_neg]] = 1
            pos_masks.append(pos)
            neg_masks.append(neg)
        return pos_masks, neg_masks
