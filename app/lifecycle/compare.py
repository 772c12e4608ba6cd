"""What switching models would do to real customers, before anyone switches.

Both models score the same customers: those in the store (their current assignment's
features) or a file. Because retraining keeps segment keys for segments that are still the
same group, "moved" means "would get another segment key": the share that moves is what a
campaign team feels. The adjusted Rand index says how alike the two partitions are whatever
they are called (1 = identical, 0 = chance).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from sklearn.metrics import adjusted_rand_score
from sqlalchemy import Engine

from app.scoring.model import SegmentModel
from app.scoring.offline import OfflineInputError, feature_frame
from app.store import history

DEFAULT_SAMPLE = 20_000  # stored customers a comparison scores unless asked for more
MIN_SAMPLE, MAX_SAMPLE = 100, 200_000  # the bounds both doors take


@dataclass(frozen=True)
class SegmentChange:
    key: str
    old_name: str | None  # None: the segment is new in the new model
    new_name: str | None  # None: the segment vanished
    old_customers: int  # of the compared customers, in it under the old model
    new_customers: int
    stayed: int  # in it under both
    # training profile medians per numeric feature (None where the model lacks the segment)
    old_medians: dict[str, float] | None
    new_medians: dict[str, float] | None


@dataclass(frozen=True)
class Comparison:
    old_version: str
    new_version: str
    customers: int  # scored by both
    skipped: int  # in the sample but not scorable by both (other features)
    transitions: dict[str, dict[str, int]]  # old key -> new key -> customers
    moved_share: float  # customers whose segment key would change
    agreement: float  # 1 - moved_share
    adjusted_rand_index: float
    segments: list[SegmentChange]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    old: SegmentModel, new: SegmentModel, features: pd.DataFrame, skipped: int = 0
) -> Comparison:
    """Score `features` (one row per customer, both models' features) with both models."""
    if features.empty:
        if (differ := different_features(old, new)) is not None:
            raise OfflineInputError(
                f"{differ}, and no stored customer has both; compare them on a file with every "
                "column both need (`segments models compare OLD NEW --input FILE`)"
            )
        raise OfflineInputError("there are no customers to compare the models on")
    old_scores = old.score_frame(features).clusters
    new_scores = new.score_frame(features).clusters
    old_keys = [old.segment_keys_by_cluster[int(c)] for c in old_scores]
    new_keys = [new.segment_keys_by_cluster[int(c)] for c in new_scores]
    pairs = Counter(zip(old_keys, new_keys, strict=True))
    transitions: dict[str, dict[str, int]] = {}
    for (before, after), count in sorted(pairs.items()):
        transitions.setdefault(before, {})[after] = count
    moved = sum(count for (before, after), count in pairs.items() if before != after)
    old_counts, new_counts = Counter(old_keys), Counter(new_keys)
    keys = list(old.segments_by_key) + [
        k for k in new.segments_by_key if k not in old.segments_by_key
    ]
    segments = [
        SegmentChange(
            key=key,
            old_name=old.segment_names.get(key),
            new_name=new.segment_names.get(key),
            old_customers=old_counts[key],
            new_customers=new_counts[key],
            stayed=pairs[key, key],
            old_medians=_medians(old, key),
            new_medians=_medians(new, key),
        )
        for key in keys
    ]
    return Comparison(
        old_version=old.version,
        new_version=new.version,
        customers=len(features),
        skipped=skipped,
        transitions=transitions,
        moved_share=round(moved / len(features), 6),
        agreement=round(1 - moved / len(features), 6),
        adjusted_rand_index=round(float(adjusted_rand_score(old_scores, new_scores)), 6),
        segments=segments,
    )


def stored_features(
    engine: Engine, models: list[SegmentModel], sample: int
) -> tuple[pd.DataFrame, int]:
    """The current features of up to `sample` stored customers that every model can score,
    and how many others were skipped (stored under a model with other features)."""
    with engine.connect() as conn:
        rows = history.latest_features(conn, sample)
    names = sorted({n for m in models for n in m.feature_names})
    usable = [(cid, f) for cid, f in rows if all(n in f for n in names)]
    frame = pd.DataFrame([f for _, f in usable], index=[cid for cid, _ in usable], columns=names)
    if frame.empty:
        return frame, len(rows)
    return checked_features(frame, models), len(rows) - len(usable)


def checked_features(table: pd.DataFrame, models: list[SegmentModel]) -> pd.DataFrame:
    """The features every model needs from a table's columns (a file's, or stored features),
    checked against each model's schema."""
    try:
        checked = [feature_frame(m, table) for m in models]
    except OfflineInputError as exc:
        if (differ := different_features(*models)) is not None:
            raise OfflineInputError(f"{differ}: {exc}") from exc
        raise
    return pd.concat(checked, axis=1).loc[:, lambda f: ~f.columns.duplicated()]


def different_features(*models: SegmentModel) -> str | None:
    """What sets the models apart when they do not take the same features (None if they do):
    they can only be compared on customers that have every feature of both."""
    takes = {m.version: m.manifest.feature_types() for m in models}
    if len({tuple(sorted(t.items())) for t in takes.values()}) <= 1:
        return None
    listed = "; ".join(f"{version} takes {', '.join(t)}" for version, t in takes.items())
    return f"the models take different features ({listed})"


def _medians(model: SegmentModel, key: str) -> dict[str, float] | None:
    segment = model.segments_by_key.get(key)
    if segment is None:
        return None
    return {name: profile.median for name, profile in segment.numeric_profile.items()}
