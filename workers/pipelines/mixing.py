"""How a dataset job's usable rows become its splits: mixing by weight, shuffle, `max_examples`, validation.

Weights (app/schemas/datasets.py, `MixOptions.weight`): source i gives `w_i / sum(w)` of the output. The output
has N rows, the largest number every source can supply its share of (`N ≤ usable_i · sum(w) / w_i` for every i),
and at most the job's `max_examples`. Each source's count is its share of N rounded down, the few rows left over
going to the sources with the largest remainders (largest-remainder apportionment, so the counts add up to N);
its rows are a seeded random sample without repeats, kept in read order until the final shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.schemas.datasets import DatasetSpec


def weighted_counts(available: Sequence[int], weights: Sequence[float], cap: int | None) -> list[int]:
    """Rows to take per source so each gives its weight's share of the largest output all of them can feed."""
    total = float(sum(weights))
    n = min(math.floor(a * total / w + 1e-9) for a, w in zip(available, weights, strict=True))
    if cap is not None:
        n = min(n, cap)
    quotas = [n * w / total for w in weights]
    counts = [min(a, math.floor(q + 1e-9)) for a, q in zip(available, quotas, strict=True)]
    rest = n - sum(counts)
    for i in sorted(range(len(counts)), key=lambda i: (counts[i] - quotas[i], i)):
        if rest <= 0:
            break
        if counts[i] < available[i]:
            counts[i] += 1
            rest -= 1
    return counts


def split_order(spec: DatasetSpec, kept: np.ndarray, source_of: np.ndarray, n_sources: int,
                weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(train rows, validation rows, rows taken per source) as indices into the kept rows' arrays.

    `kept` lists the usable rows (after dedupe) in read order; `source_of[i]` is row i's source."""
    rng = np.random.default_rng(spec.seed)
    if weights is not None:
        per_source = [kept[source_of[kept] == s] for s in range(n_sources)]
        counts = weighted_counts([len(p) for p in per_source], weights, spec.max_examples)
        chosen = np.concatenate([rows[np.sort(rng.choice(len(rows), size=c, replace=False))]
                                 for rows, c in zip(per_source, counts, strict=True)])
    else:
        chosen = kept
    order = rng.permutation(chosen) if spec.shuffle else chosen
    if spec.max_examples is not None:
        order = order[: spec.max_examples]
    if spec.validation_rows is not None:
        n_val = min(spec.validation_rows, len(order) - 1)
    elif spec.validation_fraction is not None:
        n_val = min(int(round(len(order) * spec.validation_fraction)), len(order) - 1)
    else:
        n_val = 0
    taken = np.bincount(source_of[order], minlength=n_sources).tolist() if len(order) else [0] * n_sources
    return order[n_val:], order[:n_val], taken
