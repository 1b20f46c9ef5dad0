"""Data for the search: a deterministic stream of training patches and a validation Dice evaluator.

Training item ``k`` (the ``k``-th patch dict ever drawn) is a pure function of ``(seed, k)``: its case comes from a
seeded permutation of the training cases per pass, and the random augmentation is re-seeded with ``(seed, k)``.
So the batch of iteration ``i`` is the same whatever the number of workers, after a resume, and (partitioned by
rank) under DDP.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from monai.data import CacheDataset, Dataset, list_data_collate
from monai.inferers import sliding_window_inference
from monai.networks.utils import one_hot

from networks.labels import argmax
from search.dice import dice_from_totals, dice_per_case, dice_totals
from search.distributed import all_reduce_sum
from search.space import rng

__all__ = ["cached_dataset", "PatchStream", "DiceEvaluator"]


def cached_dataset(data: Sequence[dict], transform: Callable, cache_rate: float = 1.0, num_workers: int = 0) -> Dataset:
    """The deterministic preprocessing of ``data``, computed once and kept in memory for ``cache_rate`` of the cases."""
    if cache_rate <= 0:
        return Dataset(list(data), transform)
    return CacheDataset(list(data), transform, cache_rate=cache_rate, num_workers=max(1, num_workers), progress=False)


class _IndexedPatches(torch.utils.data.Dataset):
    def __init__(self, cases: Dataset, augmentation: Optional[Callable], seed: int):
        self.cases, self.augmentation, self.seed = cases, augmentation, seed
        self._order: Tuple[int, List[int]] = (-1, [])  # (pass, case order) of the last pass used

    def __len__(self) -> int:  # items are indexed by draw number, unbounded
        return 2**62

    def case_index(self, k: int) -> int:
        n = len(self.cases)
        epoch = k // n
        if self._order[0] != epoch:
            order = list(range(n))
            rng(self.seed, "order", epoch).shuffle(order)
            self._order = (epoch, order)
        return self._order[1][k % n]

    def __getitem__(self, k: int):
        item = self.cases[self.case_index(k)]
        if self.augmentation is None:
            return item
        if hasattr(self.augmentation, "set_random_state"):
            self.augmentation.set_random_state(seed=rng(self.seed, "augment", k).randrange(2**31))
        return self.augmentation(item)


class PatchStream:
    """Training batches: ``batch_size`` draws per iteration and rank, each ``augmentation(preprocessed case)``.

    Args:
        cases: preprocessed training cases (e.g. ``cached_dataset(...)``), dicts with ``image`` and ``label``.
        augmentation: random MONAI transforms (crops, flips...), re-seeded for every draw; may return a list of
            patches (``num_samples``), which are flattened into the batch.
        batch_size: draws per iteration and rank.
        seed: the stream's seed.
    """

    def __init__(
        self,
        cases: Dataset,
        augmentation: Optional[Callable],
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(cases) == 0:
            raise ValueError("the training set is empty: the search needs at least one training case")
        self.dataset = _IndexedPatches(cases, augmentation, seed)
        self.batch_size, self.num_workers, self.rank, self.world_size = batch_size, num_workers, rank, world_size

    def draws(self, iteration: int) -> List[int]:
        """Draw numbers of (0-based) ``iteration`` on this rank."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def batches(self, start: int, stop: int) -> Iterator[dict]:
        """Batches of iterations ``start`` .. ``stop - 1``."""
        indices = [k for i in range(start, stop) for k in self.draws(i)]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=indices,
            num_workers=self.num_workers,
            collate_fn=list_data_collate,
            persistent_workers=False,
        )
        return iter(loader)


class DiceEvaluator:
    """The project's mean Dice (``search.dice``) of a predictor on validation volumes, by sliding-window inference.
    With ``soft``, the same formula on the softmax probabilities instead of the one-hot argmax (a soft Dice).

    The preprocessed volumes are read once (``cases``) and kept. Under DDP each rank is given its own share of the
    cases (possibly none) and the per-class sums and counts are added over ranks, so every rank gets the Dice of the
    whole validation set.

    Args:
        cases: preprocessed validation cases (dicts with ``image`` ``(C, *S)`` and ``label`` ``(1, *S)``).
        num_classes: classes including background.
        roi_size, sw_batch_size, overlap: sliding-window settings.
    """

    def __init__(
        self,
        cases: Dataset,
        num_classes: int,
        roi_size: Sequence[int],
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        device: torch.device = torch.device("cpu"),
        amp: bool = False,
        soft: bool = False,
    ):
        self.cases = [(_plain(case["image"]), _plain(case["label"])) for case in (cases[i] for i in range(len(cases)))]
        self.num_classes, self.roi_size = num_classes, tuple(roi_size)
        self.sw_batch_size, self.overlap, self.device, self.amp = sw_batch_size, overlap, torch.device(device), amp
        self.soft = soft

    @torch.inference_mode()
    def per_class(self, predictor: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Dice per case and foreground class, ``(cases, num_classes - 1)`` (``dice_per_case``; of the softmax
        probabilities with ``soft``)."""
        rows = []
        for image, label in self.cases:
            with torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda"):
                logits = sliding_window_inference(
                    image[None].to(self.device), self.roi_size, self.sw_batch_size, predictor, overlap=self.overlap
                )
            prediction = (
                logits.float().softmax(1) if self.soft else one_hot(argmax(logits, 1, keepdim=True), self.num_classes)
            )
            truth = one_hot(label[None].to(self.device).long(), self.num_classes)
            rows.append(dice_per_case(prediction, truth).cpu())
        return torch.cat(rows).float() if rows else torch.empty(0, self.num_classes - 1)

    def dice(self, predictor: Callable[[torch.Tensor], torch.Tensor]) -> Tuple[float, List[float]]:
        """``(mean Dice, Dice per foreground class)`` over all ranks' cases (NaN where nothing was counted)."""
        return dice_from_totals(all_reduce_sum(dice_totals(self.per_class(predictor))))

    def __call__(self, predictor: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """The mean Dice over all ranks' cases (NaN when no class has a value)."""
        return self.dice(predictor)[0]


def _plain(x) -> torch.Tensor:
    """A plain tensor from a MetaTensor, tensor or array (no metadata tracking in the hot loop)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
