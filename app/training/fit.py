"""Fitting a segmentation pipeline and describing it: k search, profiles, names, drift baseline."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version

import numpy as np
import pandas as pd
from scipy.stats import skew
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.metrics import davies_bouldin_score, silhouette_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from app.scoring.manifest import (
    DriftBaseline,
    FeatureBaseline,
    FeatureSpec,
    KScore,
    Lineage,
    Manifest,
    NumericProfile,
    ParitySample,
    Quality,
    SegmentSpec,
    TrainingData,
)
from app.scoring.model import SegmentModel
from app.training.identity import (
    Identity,
    carry_identities,
    check_same_features,
    match_segments,
)
from app.training.naming import name_descriptive_segments, name_rfm_segments

DEFAULT_K_RANGE = (4, 8)
SILHOUETTE_SAMPLE = 10_000
DRIFT_BINS = 10
PARITY_ROWS = 64
SKEW_FOR_LOG = 1.0


@dataclass
class FeaturePlan:
    """What the caller knows about the features before fitting."""

    numeric: list[str]
    categorical: list[str] = field(default_factory=list)
    integer: set[str] = field(default_factory=set)
    # allowed ranges that come from the feature's meaning (e.g. recency is never negative);
    # a numeric feature without one gets a range derived from the training data
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


@dataclass
class FittedModel:
    pipeline: Pipeline
    manifest: Manifest  # artifact_sha256 is filled in when the artifact is written


def build_pipeline(frame: pd.DataFrame, plan: FeaturePlan, k: int, seed: int) -> Pipeline:
    """Scaling (log first where a non-negative feature is skewed), one-hot encoding, then KMeans."""
    skewed = [c for c in plan.numeric if _wants_log(frame[c])]
    plain = [c for c in plan.numeric if c not in skewed]
    steps: list[tuple[str, object, list[str]]] = []
    if skewed:
        log_scale = Pipeline(
            [
                ("log1p", FunctionTransformer(np.log1p, feature_names_out="one-to-one")),
                ("scale", StandardScaler()),
            ]
        )
        steps.append(("log_scaled", log_scale, skewed))
    if plain:
        steps.append(("scaled", StandardScaler(), plain))
    if plan.categorical:
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64)
        steps.append(("onehot", encoder, plan.categorical))
    features = ColumnTransformer(steps, remainder="drop", verbose_feature_names_out=False)
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed)
    return Pipeline([("features", features), ("kmeans", kmeans)])


def fit_model(
    frame: pd.DataFrame,
    plan: FeaturePlan,
    *,
    kind: str,
    version: str | None,
    training_data: TrainingData,
    k: int | None = None,
    k_range: tuple[int, int] = DEFAULT_K_RANGE,
    seed: int = 0,
    previous: SegmentModel | None = None,
) -> FittedModel:
    """Fit on one row per customer; choose k by silhouette over `k_range` unless `k` is given.

    With `previous`, segments that are still the same customers keep its ids, keys and names.
    """
    if previous is not None:
        check_same_features(previous.manifest, _planned_types(plan))
    columns = plan.numeric + plan.categorical
    frame = frame[columns].copy()
    for name in plan.categorical:
        frame[name] = frame[name].astype("string").fillna("unknown").astype(object)
    for name in plan.numeric:
        frame[name] = frame[name].astype(np.float64)
    if len(frame) < 20:
        raise ValueError(f"{len(frame)} customers is too few to segment; give at least 20")

    candidates = [k] if k is not None else list(range(k_range[0], k_range[1] + 1))
    scores: list[KScore] = []
    fitted: dict[int, tuple[Pipeline, np.ndarray]] = {}
    for candidate in candidates:
        if candidate >= len(frame):
            raise ValueError(f"k={candidate} needs more than {len(frame)} customers")
        pipeline = build_pipeline(frame, plan, candidate, seed).fit(frame)
        labels = pipeline.predict(frame)
        space = pipeline.named_steps["features"].transform(frame)
        sample = min(SILHOUETTE_SAMPLE, len(frame))
        scores.append(
            KScore(
                k=candidate,
                silhouette=round(
                    float(silhouette_score(space, labels, sample_size=sample, random_state=seed)), 4
                ),
                davies_bouldin=round(float(davies_bouldin_score(space, labels)), 4),
                inertia=round(float(pipeline.named_steps["kmeans"].inertia_), 4),
            )
        )
        fitted[candidate] = (pipeline, labels)
    best = max(scores, key=lambda s: (s.silhouette, -s.k))
    pipeline, labels = fitted[best.k]

    feature_specs = _feature_specs(frame, plan, pipeline)
    numeric_profiles, category_profiles = _profiles(frame, plan, labels, best.k)
    fresh, percentiles = _fresh_names(frame, plan, numeric_profiles, category_profiles, kind)
    identities = [Identity(c, *names) for c, names in enumerate(fresh)]
    lineage: Lineage | None = None
    if previous is not None:
        # before the drift baseline, whose segment shares are keyed by segment key
        matching = match_segments(previous, frame, labels, best.k)
        identities, lineage = carry_identities(previous.manifest, matching, fresh, percentiles)
    segments = _segments(frame, plan, labels, numeric_profiles, category_profiles, identities)
    baseline = _drift_baseline(frame, plan, labels, segments)
    parity = _parity_sample(frame, labels, seed)
    chosen_version = version or automatic_version(
        kind,
        best.k,
        _training_inputs(plan, training_data, k, k_range, seed, previous),
    )
    manifest = Manifest(
        version=chosen_version,
        kind="rfm" if kind == "rfm" else "customers",
        trained_at=datetime.now(UTC),
        artifact_file="pipeline.skops",
        artifact_sha256="0" * 64,
        library_versions={p: package_version(p) for p in ("scikit-learn", "numpy", "skops")},
        random_seed=seed,
        training_data=training_data,
        features=feature_specs,
        segments=segments,
        quality=Quality(
            silhouette=best.silhouette,
            davies_bouldin=best.davies_bouldin,
            k_search=scores,
            k_chosen_by="user" if k is not None else "silhouette",
        ),
        drift_baseline=baseline,
        parity_sample=parity,
        lineage=lineage,
    )
    return FittedModel(pipeline, manifest)


def automatic_version(kind: str, k: int, inputs: dict[str, object]) -> str:
    """`<date>-<kind>-k<k>-<hash>`: the hash is the first six hex digits of the sha256 of what
    the model is fitted from (the data file's content and every option that shapes the fit), so
    two models trained the same day with the same k on other data never share a version, and
    the same data with the same options, which fit the same model, get the same one."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return f"{datetime.now(UTC):%Y-%m-%d}-{kind}-k{k}-{digest[:6]}"


def _training_inputs(
    plan: FeaturePlan,
    data: TrainingData,
    k: int | None,
    k_range: tuple[int, int],
    seed: int,
    previous: SegmentModel | None,
) -> dict[str, object]:
    # not the file's name (the same content under another name fits the same model)
    return {
        "data": data.model_dump(mode="json", exclude={"file_name"}),
        "numeric": plan.numeric,
        "categorical": plan.categorical,
        "k": k if k is not None else list(k_range),
        "seed": seed,
        "previous": previous.version if previous is not None else None,
    }


def _planned_types(plan: FeaturePlan) -> dict[str, str]:
    types = {n: "integer" if n in plan.integer else "number" for n in plan.numeric}
    return types | dict.fromkeys(plan.categorical, "category")


def _wants_log(values: pd.Series) -> bool:
    return bool(values.min() >= 0 and abs(float(skew(values))) > SKEW_FOR_LOG)


def _feature_specs(frame: pd.DataFrame, plan: FeaturePlan, pipeline: Pipeline) -> list[FeatureSpec]:
    logged: set[str] = set()
    for name, _, cols in pipeline.named_steps["features"].transformers_:
        if name == "log_scaled":
            logged.update(cols)
    specs = []
    for name in plan.numeric:
        if name in plan.ranges:
            low, high = plan.ranges[name]
        else:
            # no range known from the feature's meaning: allow the training span again on each
            # side (non-negative data stays non-negative), so new-but-plausible values pass
            lo, hi = float(frame[name].min()), float(frame[name].max())
            span = max(hi - lo, 1.0)
            low, high = (0.0 if lo >= 0 else lo - span), hi + span
        specs.append(
            FeatureSpec(
                name=name,
                type="integer" if name in plan.integer else "number",
                description=plan.descriptions.get(name, ""),
                minimum=low,
                maximum=high,
                log_transformed=name in logged,
            )
        )
    for name in plan.categorical:
        specs.append(
            FeatureSpec(
                name=name,
                type="category",
                description=plan.descriptions.get(name, ""),
                categories=sorted(frame[name].unique().tolist()),
            )
        )
    return specs


def _profiles(
    frame: pd.DataFrame, plan: FeaturePlan, labels: np.ndarray, k: int
) -> tuple[list[dict[str, NumericProfile]], list[dict[str, dict[str, float]]]]:
    numeric_profiles: list[dict[str, NumericProfile]] = []
    category_profiles: list[dict[str, dict[str, float]]] = []
    for cluster in range(k):
        members = frame[labels == cluster]
        numeric_profiles.append(
            {
                name: NumericProfile(
                    median=round(float(members[name].median()), 4),
                    p25=round(float(members[name].quantile(0.25)), 4),
                    p75=round(float(members[name].quantile(0.75)), 4),
                )
                for name in plan.numeric
            }
        )
        category_profiles.append(
            {
                name: {
                    str(c): round(float(s), 4)
                    for c, s in members[name].value_counts(normalize=True).items()
                }
                for name in plan.categorical
            }
        )
    return numeric_profiles, category_profiles


def _fresh_names(
    frame: pd.DataFrame,
    plan: FeaturePlan,
    numeric_profiles: list[dict[str, NumericProfile]],
    category_profiles: list[dict[str, dict[str, float]]],
    kind: str,
) -> tuple[list[tuple[str, str, str]], np.ndarray | None]:
    """(key, name, sentence) per cluster from its profile; for RFM also the percentiles used."""
    if kind == "rfm":
        # where each segment's medians fall among all training customers (1 = best)
        percentiles = np.array(
            [
                [
                    1.0 - _percentile(frame["recency_days"], p["recency_days"].median),
                    _percentile(frame["frequency"], p["frequency"].median),
                    _percentile(frame["monetary"], p["monetary"].median),
                ]
                for p in numeric_profiles
            ]
        )
        return name_rfm_segments(percentiles), percentiles
    spread = {n: float(frame[n].std()) or 1.0 for n in plan.numeric}
    overall = {n: float(frame[n].median()) for n in plan.numeric}
    numeric_z = [
        {n: (p[n].median - overall[n]) / spread[n] for n in plan.numeric} for p in numeric_profiles
    ]
    overall_shares = {n: frame[n].value_counts(normalize=True) for n in plan.categorical}
    lifts = []
    for profile in category_profiles:
        lift: dict[str, tuple[str, float]] = {}
        for n, shares in profile.items():
            gains = {c: share - float(overall_shares[n].get(c, 0.0)) for c, share in shares.items()}
            top = max(gains, key=gains.__getitem__)
            lift[n] = (top, gains[top])
        lifts.append(lift)
    return name_descriptive_segments(numeric_z, lifts), None


def _segments(
    frame: pd.DataFrame,
    plan: FeaturePlan,
    labels: np.ndarray,
    numeric_profiles: list[dict[str, NumericProfile]],
    category_profiles: list[dict[str, dict[str, float]]],
    identities: list[Identity],
) -> list[SegmentSpec]:
    k = len(identities)
    sizes = np.bincount(labels, minlength=k)
    segments = []
    for cluster, identity in enumerate(identities):
        figures = ", ".join(
            f"median {n.replace('_', ' ')} {_fmt(numeric_profiles[cluster][n].median)}"
            for n in plan.numeric
        )
        share = float(sizes[cluster]) / len(frame)
        segments.append(
            SegmentSpec(
                id=identity.id,
                cluster=cluster,
                key=identity.key,
                name=identity.name,
                description=f"{identity.sentence} {figures}; {share:.0%} of training customers.",
                share=round(share, 6),
                size=int(sizes[cluster]),
                numeric_profile=numeric_profiles[cluster],
                category_profile=category_profiles[cluster],
            )
        )
    return segments


def _drift_baseline(
    frame: pd.DataFrame, plan: FeaturePlan, labels: np.ndarray, segments: list[SegmentSpec]
) -> DriftBaseline:
    counts = np.bincount(labels, minlength=len(segments))
    segment_shares = {s.key: round(float(counts[s.cluster]) / len(frame), 6) for s in segments}
    features: dict[str, FeatureBaseline] = {}
    for name in plan.numeric:
        values = frame[name].to_numpy()
        quantiles = np.quantile(values, np.linspace(0, 1, DRIFT_BINS + 1)[1:-1])
        edges = sorted({round(float(q), 6) for q in quantiles})
        bins = np.searchsorted(np.asarray(edges), values, side="left")
        shares = np.bincount(bins, minlength=len(edges) + 1) / len(values)
        features[name] = FeatureBaseline(
            edges=edges,
            shares=[round(float(s), 6) for s in shares],
            minimum=float(values.min()),
            maximum=float(values.max()),
        )
    for name in plan.categorical:
        categories = sorted(frame[name].unique().tolist())
        observed = frame[name].value_counts(normalize=True)
        shares_list = [round(float(observed.get(c, 0.0)), 6) for c in categories] + [0.0]
        features[name] = FeatureBaseline(categories=categories, shares=shares_list)
    return DriftBaseline(segment_shares=segment_shares, features=features)


def _parity_sample(frame: pd.DataFrame, labels: np.ndarray, seed: int) -> ParitySample:
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(frame), size=min(PARITY_ROWS, len(frame)), replace=False))
    rows = []
    for record in frame.iloc[picks].to_dict(orient="records"):
        rows.append({str(k): (v if isinstance(v, str) else float(v)) for k, v in record.items()})
    return ParitySample(rows=rows, labels=[int(labels[i]) for i in picks])


def _percentile(values: pd.Series, value: float) -> float:
    return float((values < value).mean() + 0.5 * (values == value).mean())


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"
