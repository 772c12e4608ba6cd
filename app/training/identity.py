"""Segment identities across retrains: which new segments are the old ones, and which are new.

Campaigns are keyed on segment ids and keys, not on KMeans cluster numbers, so a retrained model
keeps the id, key and name of every segment that is still the same group of customers; a new
segment gets an id and key no ancestor ever used, and a vanished one is retired for good.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from app.scoring.manifest import (
    KeptSegment,
    Lineage,
    Manifest,
    RetiredSegment,
    SegmentIdentity,
)
from app.scoring.model import SegmentModel
from app.training.naming import RFM_ARCHETYPES


@dataclass(frozen=True)
class SegmentMatch:
    new_cluster: int
    old_cluster: int
    distance: float  # between the centroids, in the previous model's scaled space
    overlap: float  # share of the new segment's customers the previous model put in the old one


@dataclass(frozen=True)
class Matching:
    matches: list[SegmentMatch]
    new_clusters: list[int]  # new segments that match no old one
    vanished_clusters: list[int]  # old segments that match no new one


@dataclass(frozen=True)
class Identity:
    """What a new cluster is called: the first sentence of its description comes with it."""

    id: int
    key: str
    name: str
    sentence: str


def check_same_features(previous: Manifest, features: Mapping[str, str]) -> None:
    """Segments can only be compared in one space: both models must take the same features."""
    had = previous.feature_types()
    if had != dict(features):
        raise ValueError(
            f"the previous model {previous.version} takes features {sorted(had.items())}, "
            f"this training {sorted(features.items())}: segment identities can only be carried "
            "over between models with the same features; train without --previous instead"
        )


def match_segments(
    previous: SegmentModel, frame: pd.DataFrame, labels: np.ndarray, k: int
) -> Matching:
    """Pair the new model's segments (`labels` of `frame`, 0..k-1) with the previous model's.

    Both sets of centroids are put in the previous model's space: the new training frame goes
    through the previous model's fitted feature transform, where its KMeans centroids live, and
    each new centroid is the mean of its training members there. The cost of a pair is the
    Euclidean distance between the centroids, and the pairing is the optimal one-to-one
    assignment (Hungarian). A pair counts as the same group of customers only if the new
    centroid falls in the old segment's region, i.e. the old centroid nearest to the new
    centroid is that old segment's (the previous model would assign the new centroid to it);
    otherwise the new segment is new and the old one vanished.
    """
    pipeline = previous.artifact.pipeline
    space = pipeline[:-1].transform(frame[previous.feature_names])
    kmeans = pipeline[-1]
    old_centres = np.asarray(kmeans.cluster_centers_, dtype=np.float64)
    old_labels = kmeans.predict(space)

    # KMeans leaves no cluster empty; were one ever empty, it would count as new
    present = [c for c in range(k) if (labels == c).any()]
    new_centres = np.vstack([space[labels == c].mean(axis=0) for c in present])
    cost = np.linalg.norm(new_centres[:, None, :] - old_centres[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    matches = []
    for row, old in zip(rows.tolist(), cols.tolist(), strict=True):
        if cost[row, old] > cost[row].min():
            continue  # the new centroid lies in another old segment's region
        new = present[row]
        members = labels == new
        matches.append(
            SegmentMatch(
                new_cluster=new,
                old_cluster=old,
                distance=float(cost[row, old]),
                overlap=float((old_labels[members] == old).mean()),
            )
        )
    matched_new = {m.new_cluster for m in matches}
    matched_old = {m.old_cluster for m in matches}
    return Matching(
        matches=sorted(matches, key=lambda m: m.new_cluster),
        new_clusters=[c for c in range(k) if c not in matched_new],
        vanished_clusters=[c for c in range(len(old_centres)) if c not in matched_old],
    )


def carry_identities(
    previous: Manifest,
    matching: Matching,
    fresh: list[tuple[str, str, str]],
    rfm_percentiles: np.ndarray | None = None,
) -> tuple[list[Identity], Lineage]:
    """The identity of each new cluster, and the lineage that explains it.

    `fresh` is the (key, name, sentence) the naming gave each new cluster on its own. Kept
    segments take the old id, key and name; new ones get ids above every id an ancestor used and
    keys none used. RFM models (`rfm_percentiles`: each cluster's recency, frequency and monetary
    percentiles) name new segments after the archetypes no kept or retired segment has.
    """
    old_by_cluster = {s.cluster: s for s in previous.segments}
    retired_before = previous.lineage.retired if previous.lineage else []
    used_ids = {s.id for s in previous.segments} | {r.id for r in retired_before}
    taken_keys = {s.key for s in previous.segments} | {r.key for r in retired_before}

    identities: dict[int, Identity] = {}
    kept = []
    for match in matching.matches:
        old = old_by_cluster[match.old_cluster]
        sentence = fresh[match.new_cluster][2]
        if rfm_percentiles is not None and old.key in RFM_ARCHETYPES:
            sentence = RFM_ARCHETYPES[old.key][1]  # the fresh one may describe another archetype
        identities[match.new_cluster] = Identity(old.id, old.key, old.name, sentence)
        kept.append(
            KeptSegment(
                id=old.id,
                key=old.key,
                old_cluster=match.old_cluster,
                new_cluster=match.new_cluster,
                centroid_distance=round(match.distance, 4),
                overlap=round(match.overlap, 4),
            )
        )

    names = {c: fresh[c] for c in matching.new_clusters}
    if rfm_percentiles is not None:
        names |= _unused_archetypes(matching.new_clusters, rfm_percentiles, taken_keys)
    next_id = max(used_ids, default=-1) + 1
    for cluster in matching.new_clusters:
        key, name, sentence = names[cluster]
        key, name = _unused_key(key, name, taken_keys)
        taken_keys.add(key)
        identities[cluster] = Identity(next_id, key, name, sentence)
        next_id += 1

    vanished = [old_by_cluster[c] for c in matching.vanished_clusters]
    lineage = Lineage(
        previous_version=previous.version,
        matches=sorted(kept, key=lambda m: m.id),
        new_segments=[
            SegmentIdentity(id=i.id, key=i.key, name=i.name)
            for i in (identities[c] for c in matching.new_clusters)
        ],
        vanished_segments=[SegmentIdentity(id=s.id, key=s.key, name=s.name) for s in vanished],
        retired=[
            *retired_before,
            *(
                RetiredSegment(id=s.id, key=s.key, name=s.name, last_version=previous.version)
                for s in vanished
            ),
        ],
    )
    return [identities[c] for c in range(len(fresh))], lineage


def describe_lineage(manifest: Manifest) -> str:
    """One line for the operator: what was kept (with overlaps), what is new, what vanished."""
    lineage = manifest.lineage
    if lineage is None:
        return f"{manifest.version} was not retrained from a previous model"
    kept = ", ".join(f"{m.key} {m.overlap:.2f} overlap" for m in lineage.matches)
    new = ", ".join(f"{s.key} (id {s.id})" for s in lineage.new_segments) or "none"
    vanished = ", ".join(f"{s.key} (id {s.id})" for s in lineage.vanished_segments) or "none"
    return (
        f"from {lineage.previous_version}: kept {len(lineage.matches)} segments ({kept or '-'}), "
        f"new: {new}, vanished: {vanished}"
    )


def _unused_archetypes(
    clusters: list[int], percentiles: np.ndarray, taken: set[str]
) -> dict[int, tuple[str, str, str]]:
    """Nearest free archetype per new cluster (one each, Hungarian, as `name_rfm_segments`)."""
    free = [k for k in RFM_ARCHETYPES if k not in taken]
    if not clusters or not free:
        return {}
    targets = np.array([RFM_ARCHETYPES[k][2] for k in free])
    points = percentiles[clusters]
    cost = ((points[:, None, :] - targets[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)  # more clusters than free names: some get none
    named = {}
    for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
        name, sentence, _ = RFM_ARCHETYPES[free[col]]
        named[clusters[row]] = (free[col], name, sentence)
    return named


def _unused_key(key: str, name: str, taken: set[str]) -> tuple[str, str]:
    """`key`, or `key_2`, `key_3` … (and the name numbered alike) if an ancestor used it."""
    if key not in taken:
        return key, name
    suffix = 2
    while f"{key[:60]}_{suffix}" in taken:
        suffix += 1
    return f"{key[:60]}_{suffix}", f"{name} ({suffix})"
