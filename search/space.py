"""The search space: valid topologies, their features, seeded K-means clusters, sampling and mutation.

All randomness comes from ``rng(seed, *keys)``: a ``random.Random`` that is a pure function of its keys, so a
decision (the path of iteration 1234, the mutation of cycle 7) is the same on every rank and after a resume.
"""

from __future__ import annotations

import random
from typing import List, Sequence, Tuple

import torch

from networks import NUM_LEVELS, OPS, enumerate_topologies

__all__ = ["rng", "SearchSpace", "kmeans", "topology_features", "random_ops", "mutate_ops"]

Topology = Tuple[int, ...]


def rng(seed: int, *keys: object) -> random.Random:
    """A random generator determined by ``seed`` and ``keys`` alone (string seeding is stable across runs)."""
    return random.Random(":".join(str(k) for k in (seed, *keys)))


def topology_features(topologies: Sequence[Topology], num_levels: int = NUM_LEVELS) -> torch.Tensor:
    """One-hot levels, ``(N, num_cells * num_levels)`` float64."""
    levels = torch.tensor(topologies, dtype=torch.long) - 1
    return torch.nn.functional.one_hot(levels, num_levels).flatten(1).double()


def kmeans(features: torch.Tensor, k: int, seed: int, max_iterations: int = 100) -> torch.Tensor:
    """Lloyd's K-means with k-means++ seeding from ``torch.Generator(seed)``; returns labels ``(N,)`` in 0..k-1.

    Clusters are numbered by their first member, so the labelling is a function of the data and the seed alone.
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot make {k} clusters of {n} topologies")
    generator = torch.Generator().manual_seed(seed)
    centres = features[torch.randint(n, (1,), generator=generator)]
    while centres.shape[0] < k:  # k-means++: next centre with probability proportional to squared distance
        d2 = torch.cdist(features, centres).min(1).values.square()
        choice = torch.multinomial(d2 / d2.sum(), 1, generator=generator) if d2.sum() > 0 else torch.tensor([0])
        centres = torch.cat([centres, features[choice]])
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(max_iterations):
        new_labels = torch.cdist(features, centres).argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        for c in range(k):
            members = features[labels == c]
            if len(members) == 0:  # an empty cluster takes the point farthest from its centre
                far = torch.cdist(features, centres).gather(1, labels[:, None]).squeeze(1).argmax()
                centres[c], labels[far] = features[far], c
            else:
                centres[c] = members.mean(0)
    first_member = {}
    for i, c in enumerate(labels.tolist()):
        first_member.setdefault(c, i)
    order = sorted(first_member, key=first_member.get)
    return torch.tensor([order.index(c) for c in labels.tolist()], dtype=torch.long)


def random_ops(r: random.Random, num_cells: int, ops: Sequence[str] = OPS) -> Tuple[str, ...]:
    """One op per cell, uniformly."""
    return tuple(r.choice(ops) for _ in range(num_cells))


def mutate_ops(r: random.Random, parent: Sequence[str], ops: Sequence[str] = OPS) -> Tuple[str, ...]:
    """Change the op of one random cell to another candidate op."""
    child = list(parent)
    cell = r.randrange(len(child))
    child[cell] = r.choice([op for op in ops if op != child[cell]])
    return tuple(child)


class SearchSpace:
    """Every valid topology for the options, clustered by seeded K-means over one-hot level features.

    Args:
        num_cells: cells per network (12 in the paper).
        min_depth / max_depth: the deepest level a topology reaches lies in this range (the default space, like the
            paper's U-Net-like prior, requires level 4: 924 topologies for 12 cells).
        num_clusters: K of the K-means (8 by default).
        seed: K-means seed.
    """

    def __init__(
        self,
        num_cells: int = 12,
        num_levels: int = NUM_LEVELS,
        min_depth: int = 4,
        max_depth: int = 4,
        num_clusters: int = 8,
        seed: int = 0,
    ):
        self.num_cells, self.num_levels = num_cells, num_levels
        self.min_depth, self.max_depth = min_depth, max_depth
        self.topologies: List[Topology] = enumerate_topologies(num_cells, num_levels, min_depth, max_depth)
        self.num_clusters = min(num_clusters, len(self.topologies))
        self.seed = seed
        labels = kmeans(topology_features(self.topologies, num_levels), self.num_clusters, seed).tolist()
        self.clusters: List[List[Topology]] = [
            [t for t, c in zip(self.topologies, labels) if c == k] for k in range(self.num_clusters)
        ]

    def options(self) -> dict:
        """The options that define the space (written into architecture provenance)."""
        return {
            "num_cells": self.num_cells,
            "num_levels": self.num_levels,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            "num_clusters": self.num_clusters,
            "kmeans_seed": self.seed,
            "num_topologies": len(self.topologies),
        }

    def cluster_of(self, topology: Sequence[int]) -> int:
        """The cluster that holds ``topology``; ``ValueError`` when it is not in the space."""
        for k, members in enumerate(self.clusters):
            if tuple(topology) in members:
                return k
        raise ValueError(f"topology {list(topology)} is not in this search space ({self.options()})")

    @staticmethod
    def mutate_topology(r: random.Random, parent: Topology, members: Sequence[Topology]) -> Topology:
        """A valid neighbour of ``parent`` within ``members``: uniformly among those at the smallest Hamming
        distance (number of cells whose level differs) greater than zero."""
        distances = [(sum(a != b for a, b in zip(parent, t)), t) for t in members if tuple(t) != tuple(parent)]
        if not distances:
            return tuple(parent)
        nearest = min(d for d, _ in distances)
        return tuple(r.choice([t for d, t in distances if d == nearest]))
