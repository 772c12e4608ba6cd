"""The fitted pipeline compiled to plain numpy arrays: the same labels, without pandas.

scikit-learn spends milliseconds per call on a one-row DataFrame (most of it in the
ColumnTransformer's bookkeeping); the arithmetic itself is microseconds. At load we read the
fitted parameters out of the pipeline (scaling, log1p, one-hot categories, centroids) and score
with the same floating-point operations in the same order, so the labels are exactly
scikit-learn's. A step we do not know raises UnsupportedPipeline and the caller falls back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler


class UnsupportedPipeline(Exception):
    """The pipeline has a step the compiler does not know; score with scikit-learn instead."""


@dataclass(frozen=True)
class _NumericColumn:
    feature: int  # position in the numeric input matrix
    out: int  # column in the model space
    log1p: bool
    mean: float
    scale: float


@dataclass(frozen=True)
class _OneHot:
    feature: int  # position in the categorical inputs
    out: int  # first column in the model space
    index: dict[str, int]  # category -> offset; unknown categories get no column (all zeros)


class CompiledScorer:
    def __init__(
        self,
        numeric_names: Sequence[str],
        categorical_names: Sequence[str],
        numeric: list[_NumericColumn],
        onehots: list[_OneHot],
        width: int,
        centers: np.ndarray,
    ) -> None:
        self.numeric_names = list(numeric_names)
        self.categorical_names = list(categorical_names)
        self._numeric = numeric
        self._onehots = onehots
        self._width = width
        # vectorised numeric transform: gather, log1p where asked, then (x - mean) / scale
        self._num_in = np.array([c.feature for c in numeric], dtype=np.intp)
        self._num_out = np.array([c.out for c in numeric], dtype=np.intp)
        self._num_log = np.array([c.log1p for c in numeric], dtype=bool)
        self._num_mean = np.array([c.mean for c in numeric], dtype=np.float64)
        self._num_scale = np.array([c.scale for c in numeric], dtype=np.float64)
        self._any_log = bool(self._num_log.any())
        self._all_log = bool(self._num_log.all())
        # numeric features only, already in model-space order: the scaled matrix *is* the space
        self._numeric_is_space = not onehots and self._num_out.tolist() == list(range(width))
        self._centers = np.ascontiguousarray(centers, dtype=np.float64)
        self._centers_t = np.ascontiguousarray(self._centers.T)
        self._center_sq = np.einsum("ij,ij->i", self._centers, self._centers)

    @classmethod
    def from_pipeline(
        cls, pipeline: Pipeline, numeric_names: Sequence[str], categorical_names: Sequence[str]
    ) -> CompiledScorer:
        if len(pipeline.steps) != 2:
            raise UnsupportedPipeline("expected exactly a ColumnTransformer then KMeans")
        features, kmeans = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(features, ColumnTransformer) or not isinstance(kmeans, KMeans):
            raise UnsupportedPipeline("expected exactly a ColumnTransformer then KMeans")
        numeric: list[_NumericColumn] = []
        onehots: list[_OneHot] = []
        out = 0
        for name, transformer, columns in features.transformers_:
            if transformer == "drop" or name == "remainder":
                if transformer != "drop":
                    raise UnsupportedPipeline(f"remainder {transformer!r} is not 'drop'")
                continue
            log1p, scaler = _unpack_numeric(transformer)
            if scaler is not None:
                for position, column in enumerate(columns):
                    if column not in numeric_names:
                        raise UnsupportedPipeline(f"{column} is scaled but not a numeric feature")
                    mean = float(scaler.mean_[position]) if scaler.with_mean else 0.0
                    scale = float(scaler.scale_[position]) if scaler.with_std else 1.0
                    numeric.append(
                        _NumericColumn(numeric_names.index(column), out, log1p, mean, scale)
                    )
                    out += 1
            elif isinstance(transformer, OneHotEncoder):
                if transformer.drop is not None or transformer.handle_unknown != "ignore":
                    raise UnsupportedPipeline(
                        "only OneHotEncoder(drop=None, handle_unknown='ignore')"
                    )
                if getattr(transformer, "_infrequent_enabled", False):
                    raise UnsupportedPipeline("OneHotEncoder with infrequent categories")
                for position, column in enumerate(columns):
                    if column not in categorical_names:
                        raise UnsupportedPipeline(
                            f"{column} is one-hot encoded but not categorical"
                        )
                    categories = [str(c) for c in transformer.categories_[position]]
                    index = {c: i for i, c in enumerate(categories)}
                    onehots.append(_OneHot(categorical_names.index(column), out, index))
                    out += len(categories)
            else:
                raise UnsupportedPipeline(f"unknown transformer {type(transformer).__name__}")
        centers = np.asarray(kmeans.cluster_centers_, dtype=np.float64)
        if centers.shape[1] != out:
            raise UnsupportedPipeline(
                f"the transformers give {out} columns, the centroids {centers.shape[1]}"
            )
        return cls(numeric_names, categorical_names, numeric, onehots, out, centers)

    def transform(self, numeric: np.ndarray, categorical: Sequence[Sequence[str]]) -> np.ndarray:
        """Model-space rows from a (rows, numeric features) float matrix and categorical columns."""
        rows = numeric.shape[0]
        values = numeric[:, self._num_in]
        if self._all_log:
            np.log1p(values, out=values)
        elif self._any_log:
            values[:, self._num_log] = np.log1p(values[:, self._num_log])
        values -= self._num_mean
        values /= self._num_scale
        if self._numeric_is_space:
            return values
        space = np.zeros((rows, self._width), dtype=np.float64)
        if self._numeric:
            space[:, self._num_out] = values
        for onehot in self._onehots:
            column = categorical[onehot.feature]
            offsets = np.fromiter(
                (onehot.index.get(v, -1) for v in column), dtype=np.intp, count=rows
            )
            known = offsets >= 0
            space[np.flatnonzero(known), onehot.out + offsets[known]] = 1.0
        return space

    def nearest(self, space: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster, distance to it, distance to the runner-up) for each model-space row.

        The cluster is chosen as scikit-learn's KMeans.predict does: argmin over
        ||c||^2 - 2 x.c (the ||x||^2 term is the same for every centre), first minimum wins.
        """
        partial = self._center_sq - 2.0 * (space @ self._centers_t)
        if partial.shape[0] == 1:  # one customer: the rest in plain floats, same decisions
            values = partial[0].tolist()
            cluster = values.index(min(values))  # the first minimum, as np.argmin
            x_sq = float(space[0] @ space[0])
            squared = sorted(max(v + x_sq, 0.0) for v in values)
            second = squared[1] if len(squared) > 1 else squared[0]
            return np.array([cluster]), np.array([squared[0] ** 0.5]), np.array([second**0.5])
        clusters = np.argmin(partial, axis=1)
        x_sq = np.einsum("ij,ij->i", space, space)
        squared = np.maximum(partial + x_sq[:, None], 0.0)
        ordered = np.sort(squared, axis=1)
        runner_up = ordered[:, 1] if ordered.shape[1] > 1 else ordered[:, 0]
        return clusters, np.sqrt(ordered[:, 0]), np.sqrt(runner_up)

    def crossing(
        self, numeric: np.ndarray, categorical: Sequence[Sequence[str]], feature: int
    ) -> np.ndarray:
        """For each row, the value of numeric input `feature` (moved up, everything else fixed)
        at which the nearest centre first changes; inf if it never does.

        Along one input the model-space point moves on a line: only that feature's column
        changes, monotonically (log1p and scaling are increasing). On that line each centre's
        argmin term ||c||^2 - 2 x.c is linear in the column's value s, so centre k overtakes the
        current centre j at s = (a_k - a_j) / (2 (c_k - c_j)), where only centres further
        along the axis (c_k > c_j) can overtake; the nearest crossing is the minimum. The
        caller checks the answer with the scorer itself: at the boundary, rounding decides.
        """
        columns = [c for c in self._numeric if c.feature == feature]
        if len(columns) != 1:
            raise UnsupportedPipeline(f"numeric input {feature} is not exactly one model column")
        column = columns[0]
        space = self.transform(numeric.copy(), categorical)
        partial = self._center_sq - 2.0 * (space @ self._centers_t)  # (rows, centres)
        current = np.argmin(partial, axis=1)
        along = self._centers[:, column.out]  # each centre's coordinate on the moving axis
        s_now = space[:, column.out]
        # a_k: the partial term without the moving column's share, so P_k(s) = a_k - 2 s c_k
        offsets = partial + 2.0 * s_now[:, None] * along[None, :]
        rows = np.arange(len(current))
        gain = along[None, :] - along[current][:, None]  # > 0: centre k lies further along
        with np.errstate(divide="ignore", invalid="ignore"):
            meets = (offsets - offsets[rows, current][:, None]) / (2.0 * gain)
        meets = np.where(gain > 0, meets, np.inf)
        s_cross = np.maximum(meets.min(axis=1), s_now)
        inputs = s_cross * column.scale + column.mean
        if column.log1p:
            with np.errstate(over="ignore"):
                inputs = np.expm1(inputs)
        return np.where(np.isfinite(s_cross), inputs, np.inf)


def _unpack_numeric(transformer: object) -> tuple[bool, StandardScaler | None]:
    """(uses log1p, the scaler) for StandardScaler or Pipeline(log1p FunctionTransformer, StandardScaler)."""
    if isinstance(transformer, StandardScaler):
        return False, transformer
    if isinstance(transformer, Pipeline) and len(transformer.steps) == 2:
        first, second = transformer.steps[0][1], transformer.steps[1][1]
        if (
            isinstance(first, FunctionTransformer)
            and first.func is np.log1p
            and first.inverse_func is None
            and not first.kw_args
            and isinstance(second, StandardScaler)
        ):
            return True, second
        raise UnsupportedPipeline("a numeric Pipeline other than log1p then StandardScaler")
    return False, None
