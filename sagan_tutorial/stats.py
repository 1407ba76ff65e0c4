"""A figure over a few training seeds, and two such sets compared: the statistics the book's
experiments report.

:func:`mean_interval` gives a mean over seeds with its 95% interval (Student's t);
:func:`difference_interval` the difference between two means with its 95% interval (Welch's
t). :func:`summarize` turns an experiment's results into one row per variant, and
:func:`compare` sets variants against a baseline, calling a difference only where its interval
excludes zero (:func:`differs`).
"""

from __future__ import annotations

import math

__all__ = [
    "SCORES",
    "by_score",
    "compare",
    "compare_scores",
    "difference_interval",
    "differs",
    "mean_interval",
    "score_table",
    "summarize",
]

# Student's t at 97.5% for 1 to 30 degrees of freedom: 95% intervals over a few seeds.
# fmt: off
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
# fmt: on


def mean_interval(values) -> tuple[float, float, float, float]:
    """Mean, standard deviation and 95% interval (Student's t) of the mean of a few values, such
    as one figure over training seeds; std and interval are NaN for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_interval needs at least one value, got none")
    if len(values) > len(_T975) + 1:
        raise ValueError(f"mean_interval takes at most {len(_T975) + 1} values, got {len(values)}")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, math.nan, math.nan, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = _T975[len(values) - 2] * std / math.sqrt(len(values))
    return mean, std, mean - half, mean + half


def summarize(results: dict, key: str = "fid") -> list[dict]:
    """One row per variant: its per-seed values of ``key``, mean, std and 95% interval of the
    mean over seeds (no interval from a single seed)."""
    rows = []
    for variant, records in results["variants"].items():
        values = [record[key] for record in records if key in record]
        if not values:
            continue
        mean, std, low, high = mean_interval(values)
        rows.append(
            {
                "variant": variant,
                "values": values,
                "seeds": [r["seed"] for r in records if key in r],
                "mean": mean,
                "std": std,
                "low": low,
                "high": high,
            }
        )
    return rows


def difference_interval(a, b) -> tuple[float, float, float]:
    """Mean of ``b`` minus mean of ``a`` (two sets of values, such as one figure over the
    training seeds of two variants) and its 95% interval: Welch's t, with the
    Welch-Satterthwaite degrees of freedom rounded down (a slightly wider interval). NaN
    interval when either set has a single value."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    mean_a, std_a, _, _ = mean_interval(a)
    mean_b, std_b, _, _ = mean_interval(b)
    gap = mean_b - mean_a
    if len(a) < 2 or len(b) < 2:
        return gap, math.nan, math.nan
    va, vb = std_a**2 / len(a), std_b**2 / len(b)
    if va + vb == 0:
        return gap, gap, gap
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = _T975[min(max(int(df), 1), len(_T975)) - 1]
    half = t * math.sqrt(va + vb)
    return gap, gap - half, gap + half


def differs(a: dict, b: dict) -> bool:
    """True when the 95% interval (Welch) of the difference between the means of two
    :func:`summarize` rows excludes zero."""
    _, low, high = difference_interval(a["values"], b["values"])
    return not math.isnan(low) and (low > 0 or high < 0)


def compare(results: dict, baseline: str, variants: list[str], key: str = "fid") -> list[dict]:
    """Each of ``variants`` against ``baseline`` (all variants of one results file): a
    :func:`summarize` row with ``gap`` (its mean minus the baseline's), the gap's 95% interval
    ``gap_low``, ``gap_high`` (:func:`difference_interval`) and ``verdict`` ("lower" or
    "higher" where that interval excludes zero, else "the data cannot tell"); the baseline's
    own row comes first, with gap 0 and no verdict."""
    rows = {row["variant"]: row for row in summarize(results, key)}
    missing = [v for v in [baseline, *variants] if v not in rows]
    if missing:
        raise ValueError(f"expected variants of {sorted(rows)}, got {missing}")
    base = rows[baseline]
    out = [{**base, "gap": 0.0, "gap_low": 0.0, "gap_high": 0.0, "verdict": ""}]
    for variant in variants:
        row = rows[variant]
        gap, low, high = difference_interval(base["values"], row["values"])
        verdict = "the data cannot tell"
        if low > 0 or high < 0:  # as differs(base, row), from the interval at hand (NaN: False)
            verdict = "lower" if gap < 0 else "higher"
        out.append({**row, "gap": gap, "gap_low": low, "gap_high": high, "verdict": verdict})
    return out


# The three generators each experiment run scores (see sagan_tutorial.experiments.finish_run).
SCORES = {
    "EMA (shipped)": "EMA, G's statistics",
    "EMA, standing statistics": "EMA, standing statistics",
    "raw G": "raw G",
}


def by_score(results: dict, score: str) -> dict:
    """``results`` with each run's ``fid`` (and its interval) taken from its EMA study's
    ``score`` ("raw G", "EMA, G's statistics" or "EMA, standing statistics")."""
    variants = {}
    for variant, records in results["variants"].items():
        rows = []
        for record in records:
            study = record.get("ema_study", {}).get(score)
            if study is None:
                raise ValueError(
                    f"expected runs scored as {score!r}, got {sorted(record.get('ema_study', {}))}"
                )
            rows.append({**record, **{k: study[k] for k in ("fid", "fid_low", "fid_high")}})
        variants[variant] = rows
    return {**results, "variants": variants}


def compare_scores(results: dict, baseline: str, variants: list[str]) -> dict[str, list[dict]]:
    """:func:`compare` under each of the three scores of :data:`SCORES`, by its label."""
    return {
        label: compare(by_score(results, score), baseline, variants)
        for label, score in SCORES.items()
    }


def score_table(scored: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a Markdown table of :func:`compare_scores`: per variant its number of
    seeds and, under each score, its per-seed FIDs and (against the baseline, the first row)
    the gap with its 95% interval."""
    header = ["variant", "seeds", *(f"{label}: FID per seed; gap [95%]" for label in scored)]
    columns = list(scored.values())
    rows = []
    for k, first in enumerate(columns[0]):
        cells = [first["variant"], str(len(first["values"]))]
        for column in columns:
            row = column[k]
            seeds = ", ".join(f"{v:.2f}" for v in row["values"])
            if k:
                seeds += f"; {row['gap']:+.2f} [{row['gap_low']:+.2f}, {row['gap_high']:+.2f}]"
            cells.append(seeds)
        rows.append(cells)
    return header, rows
