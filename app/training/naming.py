"""Names a marketer can use, derived from each segment's profile rather than its cluster number."""

from __future__ import annotations

import re

import numpy as np
from scipy.optimize import linear_sum_assignment

# The usual RFM vocabulary, each placed where its customers sit as percentiles (0 = worst,
# 1 = best) of recency (1 = bought most recently), frequency and monetary value.
RFM_ARCHETYPES: dict[str, tuple[str, str, tuple[float, float, float]]] = {
    "champions": ("Champions", "Bought recently, buy often and spend the most.", (0.9, 0.9, 0.9)),
    "loyal": (
        "Loyal customers",
        "Buy regularly and spend well; fairly recent.",
        (0.65, 0.75, 0.75),
    ),
    "potential_loyalists": (
        "Potential loyalists",
        "Recent customers with a few orders and average spend.",
        (0.8, 0.5, 0.5),
    ),
    "new_customers": (
        "New customers",
        "Bought very recently, for the first time or so.",
        (0.9, 0.1, 0.15),
    ),
    "promising": ("Promising", "Recent shoppers who have not spent much yet.", (0.7, 0.3, 0.3)),
    "need_attention": (
        "Need attention",
        "Middling recency, frequency and spend: worth a nudge.",
        (0.5, 0.5, 0.5),
    ),
    "about_to_sleep": (
        "About to sleep",
        "Below-average recency, few orders, low spend.",
        (0.35, 0.3, 0.3),
    ),
    "at_risk": (
        "At risk",
        "Used to buy often and spend well, but not for a long time.",
        (0.2, 0.7, 0.7),
    ),
    "cant_lose": (
        "Can't lose them",
        "Among the biggest spenders once, now gone quiet.",
        (0.1, 0.9, 0.9),
    ),
    "hibernating": (
        "Hibernating",
        "Last bought long ago, few orders, low spend.",
        (0.25, 0.2, 0.2),
    ),
    "lost": ("Lost", "Lowest recency, frequency and spend.", (0.05, 0.05, 0.05)),
}


def name_rfm_segments(percentiles: np.ndarray) -> list[tuple[str, str, str]]:
    """(key, name, description) for each segment, given its (recency, frequency, monetary) percentiles.

    Each segment gets the nearest archetype, and no two segments the same one: an optimal
    assignment (Hungarian) over squared distances, so names stay unique and follow the profiles.
    """
    keys = list(RFM_ARCHETYPES)
    targets = np.array([RFM_ARCHETYPES[k][2] for k in keys])
    cost = ((percentiles[:, None, :] - targets[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    named: list[tuple[str, str, str]] = [("", "", "")] * len(percentiles)
    for row, col in zip(rows, cols, strict=True):
        key = keys[col]
        named[row] = (key, RFM_ARCHETYPES[key][0], RFM_ARCHETYPES[key][1])
    return named


def slug(text: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = "s_" + cleaned
    return cleaned[:64]


def name_descriptive_segments(
    numeric_z: list[dict[str, float]], category_lift: list[dict[str, tuple[str, float]]]
) -> list[tuple[str, str, str]]:
    """Names from what sets each segment apart: its most unusual features.

    numeric_z[i][feature] is how far segment i's median sits from the overall median, in overall
    standard deviations; category_lift[i][feature] is the segment's most over-represented
    category and how much more common it is there (segment share minus overall share).
    """
    named: list[tuple[str, str, str]] = []
    used: set[str] = set()
    for z_scores, lifts in zip(numeric_z, category_lift, strict=True):
        traits: list[tuple[float, str]] = []
        for feature, z in z_scores.items():
            level = "High" if z > 0 else "Low"
            traits.append((abs(z), f"{level} {feature.replace('_', ' ')}"))
        for feature, (category, lift) in lifts.items():
            # a lift of 0.5 (e.g. 90% vs 40%) is about as telling as a one-SD shift
            traits.append((2 * lift, f"Mostly {category} {feature.replace('_', ' ')}"))
        traits.sort(key=lambda t: -t[0])
        words = [t[1] for t in traits if t[0] >= 0.25] or ["Typical customers"]
        # take two traits, more if that is what it takes to be unique
        for count in range(min(2, len(words)), len(words) + 1):
            name = ", ".join(words[:count])
            if slug(name) not in used:
                break
        key = slug(name)
        suffix = 2
        while key in used:
            key, suffix = f"{slug(name)[:60]}_{suffix}", suffix + 1
        used.add(key)
        description = "Stands out by: " + "; ".join(words[:4]).lower() + "."
        named.append((key, name, description))
    return named
