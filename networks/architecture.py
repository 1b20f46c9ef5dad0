"""The C2FNAS architecture: topology rules, cell wiring, topology enumeration and the ``c2fnas-arch/1`` file.

A topology is the level of each of the ``N`` cells (level ``l`` is ``1 / 2**l`` of the input, ``1 <= l <= 4``).
The stem sits at level 1 and counts as cell 0. A topology is valid when every step between consecutive cells
(the stem included) is -1, 0 or +1 level, the last cell is at level 1, and every "down" step comes before every
"up" step (U-shape).
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import jsonschema

from networks.fileio import atomic_write_json

__all__ = [
    "FORMAT",
    "OPS",
    "NUM_LEVELS",
    "STEM_LEVEL",
    "ArchitectureError",
    "Architecture",
    "CellWiring",
    "topology_error",
    "topology_wiring",
    "enumerate_topologies",
    "load_architecture",
    "save_architecture",
    "DEFAULT_ARCHITECTURE_FILE",
    "default_architecture",
]

FORMAT = "c2fnas-arch/1"
OPS: Tuple[str, ...] = ("2D", "3D", "P3D")
NUM_LEVELS = 4
STEM_LEVEL = 1
SCHEMA_FILE = Path(__file__).with_name("c2fnas_arch.schema.json")
DEFAULT_ARCHITECTURE_FILE = Path(__file__).with_name("c2fnas_panc.json")


class ArchitectureError(ValueError):
    """An architecture (file or object) breaks a rule of ``c2fnas-arch/1``; the message names the source and rule."""


def topology_error(levels: Sequence[int], num_levels: int = NUM_LEVELS) -> Optional[str]:
    """Return the first rule that ``levels`` breaks, or ``None`` for a valid topology."""
    if len(levels) == 0:
        return "a topology needs at least one cell"
    previous, went_up_at = STEM_LEVEL, -1
    for i, level in enumerate(levels, start=1):
        if isinstance(level, bool) or not isinstance(level, numbers.Integral) or not 1 <= level <= num_levels:
            return f"cell {i} is at level {level!r}; levels are integers from 1 to {num_levels}"
        step = level - previous
        if abs(step) > 1:
            source = "the stem (level 1)" if i == 1 else f"cell {i - 1} (level {previous})"
            return f"cell {i} (level {level}) is {abs(step)} levels from {source}; each step must be -1, 0 or +1"
        if step < 0 and went_up_at < 0:
            went_up_at = i
        elif step > 0 and went_up_at > 0:
            return (
                f"not U-shaped: cell {i} steps down to level {level} after cell {went_up_at} stepped up; "
                "every down step must come before every up step"
            )
        previous = level
    if levels[-1] != STEM_LEVEL:
        return f"the path ends at level {levels[-1]} (cell {len(levels)}); it must end at level 1"
    return None


class CellWiring(NamedTuple):
    """How cell ``i`` (1-based) is fed: its level, the transition from cell ``i-1`` and its optional second input.

    ``second`` indexes the outputs list where 0 is the stem and ``j`` is cell ``j``; -1 means no second input.
    """

    level: int
    transition: str  # "down", "up" or "same"
    second: int


def topology_wiring(levels: Sequence[int]) -> List[CellWiring]:
    """Wire a valid topology (see ``topology_error``).

    An "up" cell takes the encoder skip: the output of the last cell before the ascent that sits at its level
    (the stem counts as at level 1). Any other cell takes the output of cell ``i-2`` if it is at the same level
    (the stem counts as cell 0). At most one second input per cell.
    """
    error = topology_error(levels)
    if error:
        raise ArchitectureError(f"invalid topology {list(levels)}: {error}")
    all_levels = [STEM_LEVEL, *levels]  # index j = output j (0 = stem)
    first_up = next((i for i in range(1, len(all_levels)) if all_levels[i] < all_levels[i - 1]), len(all_levels))
    wiring = []
    for i in range(1, len(all_levels)):
        level, step = all_levels[i], all_levels[i] - all_levels[i - 1]
        if step < 0:
            second = max(j for j in range(first_up) if all_levels[j] == level)
            transition = "up"
        else:
            second = i - 2 if i >= 2 and all_levels[i - 2] == level else -1
            transition = "down" if step > 0 else "same"
        wiring.append(CellWiring(level, transition, second))
    return wiring


@lru_cache(maxsize=64)
def _enumerate(num_cells: int, num_levels: int, min_depth: int, max_depth: int) -> Tuple[Tuple[int, ...], ...]:
    found: List[Tuple[int, ...]] = []

    def extend(path: List[int], going_up: bool) -> None:
        remaining = num_cells - len(path)
        level = path[-1] if path else STEM_LEVEL
        if remaining == 0:
            if level == STEM_LEVEL and max(path) >= min_depth:
                found.append(tuple(path))
            return
        for step in (-1, 0, 1):
            nxt = level + step
            # prune: cannot go below 1, above max_depth, down after up, or too far from level 1 to return in time
            if nxt < 1 or nxt > max_depth or (step > 0 and going_up) or nxt - STEM_LEVEL > remaining - 1:
                continue
            extend(path + [nxt], going_up or step < 0)

    extend([], False)
    return tuple(found)


def enumerate_topologies(
    num_cells: int = 12, num_levels: int = NUM_LEVELS, min_depth: int = 1, max_depth: Optional[int] = None
) -> List[Tuple[int, ...]]:
    """All valid topologies of ``num_cells`` cells whose deepest level lies in ``[min_depth, max_depth]``.

    Returned in lexicographic order of the level sequence. For 12 cells and 4 levels: 1,486 in all, 924 reaching
    level 4 (``min_depth=4``, the default search space).
    """
    max_depth = num_levels if max_depth is None else max_depth
    if not 1 <= min_depth <= max_depth <= num_levels or num_cells < 1:
        raise ValueError(
            f"need num_cells >= 1 and 1 <= min_depth <= max_depth <= num_levels, got num_cells={num_cells}, "
            f"min_depth={min_depth}, max_depth={max_depth}, num_levels={num_levels}"
        )
    return list(_enumerate(num_cells, num_levels, min_depth, max_depth))


@dataclass(frozen=True)
class Architecture:
    """A C2FNAS architecture: one level and (optionally, before the fine stage) one op per cell."""

    levels: Tuple[int, ...]
    ops: Optional[Tuple[str, ...]] = None
    provenance: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))
        if self.ops is not None:
            object.__setattr__(self, "ops", tuple(self.ops))
        _check_rules(self.to_dict(), "<Architecture>")

    @property
    def num_cells(self) -> int:
        return len(self.levels)

    def with_ops(self, ops: Sequence[str], **provenance: Any) -> "Architecture":
        """The same topology with other ops (and provenance entries added)."""
        return Architecture(self.levels, tuple(ops), {**self.provenance, **provenance})

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"format": FORMAT, "levels": list(self.levels)}
        if self.ops is not None:
            out["ops"] = list(self.ops)
        if self.provenance:
            out["provenance"] = dict(self.provenance)
        return out

    @classmethod
    def from_dict(cls, obj: Any, source: str = "<dict>") -> "Architecture":
        """Validate ``obj`` (schema, then topology rules) and build it; ``source`` names it in errors."""
        _check_rules(obj, source)
        return cls(tuple(obj["levels"]), tuple(obj["ops"]) if "ops" in obj else None, dict(obj.get("provenance", {})))

    def __str__(self) -> str:
        ops = ",".join(self.ops) if self.ops else "-"
        return f"levels={','.join(map(str, self.levels))} ops={ops}"


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _check_rules(obj: Any, source: str) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(obj))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ArchitectureError(f"{source}: not a valid {FORMAT} architecture: {error.message} (at {where})")
    levels, ops = obj["levels"], obj.get("ops")
    if ops is not None and len(ops) != len(levels):
        raise ArchitectureError(
            f"{source}: wrong length: {len(levels)} levels but {len(ops)} ops; there must be one op per cell"
        )
    rule = topology_error(levels)
    if rule:
        raise ArchitectureError(f"{source}: invalid topology {levels}: {rule}")


def load_architecture(path: Union[str, os.PathLike]) -> Architecture:
    """Read and validate a ``c2fnas-arch/1`` JSON file; any problem raises one ``ArchitectureError`` naming ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ArchitectureError(f"{path}: cannot read architecture file: {e.strerror or e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArchitectureError(f"{path}: not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    return Architecture.from_dict(obj, source=str(path))


def save_architecture(arch: Union[Architecture, Mapping[str, Any]], path: Union[str, os.PathLike]) -> Path:
    """Validate and write an architecture as 4-space indented JSON, atomically."""
    if not isinstance(arch, Architecture):
        arch = Architecture.from_dict(arch, source=str(path))
    return atomic_write_json(path, arch.to_dict())


def default_architecture() -> Architecture:
    """C2FNAS-Panc as reconstructed in the design (see ``c2fnas_panc.json``)."""
    return load_architecture(DEFAULT_ARCHITECTURE_FILE)
