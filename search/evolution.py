"""Aging (regularised) evolution, Real et al. 2019, with JSON-able state so that a killed search resumes exactly.

A candidate is any JSON-able value (a topology or an op list, as lists); ``key(candidate)`` identifies it.
Each cycle: draw ``sample_size`` members of the population, mutate the fittest, evaluate the child, add it and
drop the oldest member. The randomness of cycle ``c`` is ``rng(seed, name, c)``, so it does not depend on when the
process was restarted.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional

from search.space import rng

__all__ = ["AgingEvolution"]


class AgingEvolution:
    """Regularised evolution over candidates.

    Args:
        name: a label that separates this evolution's random streams from others with the same seed.
        population_size: P, the number of living candidates; the first P are random.
        sample_size: S, the tournament size.
        cycles: the number of children after the initial population (total evaluations: P + cycles).
        seed: the seed of every random decision.
        random_candidate: ``f(rng) -> candidate`` for the initial population.
        mutate: ``f(rng, parent) -> child``.
        fitness: ``f(candidate) -> float``, higher is better (may be cached by the caller).
    """

    def __init__(
        self,
        name: str,
        population_size: int,
        sample_size: int,
        cycles: int,
        seed: int,
        random_candidate: Callable[[random.Random], Any],
        mutate: Callable[[random.Random, Any], Any],
        fitness: Callable[[Any], float],
    ):
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"need 1 <= sample_size <= population_size, got {sample_size} and {population_size}")
        self.name, self.population_size, self.sample_size, self.cycles = name, population_size, sample_size, cycles
        self.seed, self.random_candidate, self.mutate, self.fitness = seed, random_candidate, mutate, fitness
        self.population: List[int] = []  # indices into history, oldest first
        self.history: List[Dict[str, Any]] = []  # every evaluated candidate, in order

    @property
    def total(self) -> int:
        return self.population_size + self.cycles

    @property
    def done(self) -> bool:
        return len(self.history) >= self.total

    def step(self) -> Dict[str, Any]:
        """Evaluate the next candidate (initial population first, then one aging cycle) and return its record."""
        n = len(self.history)
        if n < self.population_size:
            candidate, parent = self.random_candidate(rng(self.seed, self.name, "init", n)), None
        else:
            r = rng(self.seed, self.name, "cycle", n - self.population_size)
            tournament = r.sample(self.population, self.sample_size)
            parent = max(tournament, key=lambda i: (self.history[i]["fitness"], -i))
            candidate = self.mutate(r, self.history[parent]["candidate"])
        record = {
            "index": n,
            "cycle": max(0, n - self.population_size + 1) if n >= self.population_size else 0,
            "candidate": _jsonable(candidate),
            "fitness": float(self.fitness(candidate)),
            "parent": parent,
        }
        self.history.append(record)
        self.population.append(n)
        if len(self.population) > self.population_size:
            self.population.pop(0)
        return record

    def run(self, after_step: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        """Step until done, calling ``after_step(record)`` after each evaluation; return the best record."""
        while not self.done:
            record = self.step()
            if after_step is not None:
                after_step(record)
        return self.best()

    def best(self) -> Dict[str, Any]:
        """The fittest candidate ever evaluated (earliest on ties)."""
        return max(self.history, key=lambda h: (h["fitness"], -h["index"]))

    def state_dict(self) -> Dict[str, Any]:
        return {"population": list(self.population), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.population = list(state["population"])
        self.history = [dict(h) for h in state["history"]]


def _jsonable(candidate: Any) -> Any:
    if isinstance(candidate, (list, tuple)):
        return [_jsonable(c) for c in candidate]
    return candidate
