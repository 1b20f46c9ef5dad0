"""The one Dice of this project: search fitness, checkpoint selection, evaluation reports and benchmarks all use it.

Its definition is ``DICE_DEFINITION`` below, written once: every report carries it and the method document
(``bundle/docs/method.md``) quotes it. A per-case value is NaN (not 1, not 0) where a class is absent from both the
prediction and the label, and the mean Dice is NaN when no class has a value. So a rare class (a tumour present in
few cases) weighs as much as a common one, and a case does not weigh more because it holds more classes. MONAI's
``DiceMetric`` averages each case over classes first (``reduction="mean"``) and, with ``ignore_empty``, ignores
false positives on classes a label lacks; neither matches this definition.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from monai.metrics import CumulativeIterationMetric

__all__ = [
    "DICE_DEFINITION",
    "dice_per_case",
    "dice_totals",
    "dice_from_totals",
    "reduce_dice",
    "dice_report",
    "ForegroundDice",
]

DICE_DEFINITION = (
    "foreground classes only; per case and class 2 |P ∩ L| / (|P| + |L|), no value where the class is absent from "
    "both the prediction and the label (a class predicted where the label has none gives 0); per class, the mean "
    "over the cases with a value; the mean Dice is the mean over the classes with a value"
)


def dice_per_case(prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Dice per case and foreground class, ``(B, C - 1)`` float32, NaN where the class is in neither.

    Args:
        prediction, label: one-hot ``(B, C, *spatial)`` (channel 0 is the background and is left out).
    """
    if prediction.shape != label.shape or prediction.ndim < 3:
        raise ValueError(f"expected two one-hot (B, C, *spatial) tensors, got {prediction.shape} and {label.shape}")
    p, y = prediction[:, 1:].flatten(2).float(), label[:, 1:].flatten(2).float()
    intersection, total = (p * y).sum(-1), p.sum(-1) + y.sum(-1)
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.full_like(total, math.nan))


def dice_totals(per_case: torch.Tensor) -> torch.Tensor:
    """``(2, C - 1)``: per class, the sum of the case values and the number of cases with a value (summable over
    ranks or batches)."""
    present = ~per_case.isnan()
    return torch.stack([torch.where(present, per_case, 0.0).sum(0), present.sum(0)]).double()


def dice_from_totals(totals: torch.Tensor) -> Tuple[float, List[float]]:
    """``(mean Dice, per-class Dice)`` from ``dice_totals``; NaN where nothing was counted."""
    sums, counts = totals[0], totals[1]
    per_class = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))
    counted = per_class[~per_class.isnan()]
    return (float(counted.mean()) if counted.numel() else math.nan), per_class.tolist()


def reduce_dice(per_case: torch.Tensor) -> Tuple[float, List[float]]:
    """``(mean Dice, per-class Dice)`` of ``(cases, C - 1)`` per-case values (``dice_per_case``)."""
    return dice_from_totals(dice_totals(torch.as_tensor(per_case).reshape(-1, per_case.shape[-1])))


def dice_report(per_case: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """A JSON-able report: ``mean_dice``, ``cases``, ``per_class`` (by name) and the definition."""
    mean, per_class = reduce_dice(per_case)
    names = list(class_names) if class_names is not None else [f"class{i + 1}" for i in range(len(per_class))]
    if len(names) != len(per_class):
        raise ValueError(f"{len(names)} class names for {len(per_class)} foreground classes")
    return {
        "mean_dice": mean,
        "cases": int(per_case.shape[0]),
        "per_class": dict(zip(names, per_class)),
        "definition": DICE_DEFINITION,
    }


class ForegroundDice(CumulativeIterationMetric):
    """The project's Dice as a MONAI metric: buffers ``dice_per_case`` of each batch (gathered over ranks by MONAI's
    ``Cumulative``) and aggregates them with ``reduce_dice``. Use it through MONAI's ``IgniteMetricHandler``; its
    details (``engine.state.metric_details``) are the per-case values."""

    def _compute_tensor(self, y_pred: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if y is None:
            raise ValueError("ForegroundDice needs labels")
        return dice_per_case(torch.as_tensor(y_pred), torch.as_tensor(y))

    def aggregate(self) -> torch.Tensor:
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return torch.tensor(reduce_dice(buffer)[0], dtype=torch.float64)  # exactly reduce_dice's float
