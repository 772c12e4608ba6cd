"""Retraining with --previous: segments that are still the same customers keep their identity."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from app.cli import cli
from app.datafiles import read_table
from app.errors import ModelNotFound, ModelRefused
from app.lifecycle.compare import compare
from app.lifecycle.registry import ModelRegistry
from app.scoring.artifact import load_artifact, write_artifact
from app.scoring.manifest import Manifest
from app.scoring.model import SegmentModel
from app.training.fit import fit_model
from app.training.identity import Matching, carry_identities
from app.training.naming import RFM_ARCHETYPES
from app.training.rfm import TransactionColumns, compute_rfm
from app.training.train import RFM_PLAN, train_customers, train_transactions
from tests.conftest import (
    BANK_CLIENTS,
    DEFAULT_MODELS,
    ONLINE_RETAIL,
    clear_tables,
    synthetic_transactions,
)

RETAIL_COLUMNS = TransactionColumns(
    "CustomerID", "InvoiceDate", quantity="Quantity", price="UnitPrice", invoice="InvoiceNo"
)
SYNTHETIC_COLUMNS = TransactionColumns("customer", "time", amount="amount", invoice="invoice")
BANK_NUMERIC = ["age", "balance"]
BANK_CATEGORICAL = ["job", "marital", "education", "housing"]


def _assert_identities_carried(old: Manifest, new: Manifest) -> None:
    """Kept segments have the old id, key and name; new ones reuse nothing an ancestor used."""
    lineage = new.lineage
    assert lineage is not None
    assert lineage.previous_version == old.version
    old_by_cluster = old.segment_by_cluster()
    new_by_cluster = new.segment_by_cluster()
    for match in lineage.matches:
        before, after = old_by_cluster[match.old_cluster], new_by_cluster[match.new_cluster]
        assert (after.id, after.key, after.name) == (before.id, before.key, before.name)
        assert (match.id, match.key) == (before.id, before.key)
    kept_ids = {m.id for m in lineage.matches}
    assert {s.id for s in lineage.new_segments} == {s.id for s in new.segments} - kept_ids
    assert {s.id for s in lineage.vanished_segments} == {s.id for s in old.segments} - kept_ids
    retired_before = {(r.id, r.key) for r in old.lineage.retired} if old.lineage else set()
    ever_used_ids = {s.id for s in old.segments} | {i for i, _ in retired_before}
    ever_used_keys = {s.key for s in old.segments} | {k for _, k in retired_before}
    for segment in lineage.new_segments:
        assert segment.id > max(ever_used_ids)
        assert segment.key not in ever_used_keys
    # retired: cumulative, and nothing retired is in use now
    retired_now = {(r.id, r.key) for r in lineage.retired}
    vanished = {(s.id, s.key) for s in lineage.vanished_segments}
    assert retired_now == retired_before | vanished
    assert not {i for i, _ in retired_now} & {s.id for s in new.segments}
    assert not {k for _, k in retired_now} & {s.key for s in new.segments}
    # the drift baseline is keyed by the carried keys
    assert set(new.drift_baseline.segment_shares) == {s.key for s in new.segments}


def test_nine_then_twelve_months_of_online_retail_keep_their_segments(tmp_path: Path) -> None:
    raw = read_table(ONLINE_RETAIL, RETAIL_COLUMNS.needed())
    when = pd.to_datetime(raw["InvoiceDate"], format="ISO8601")
    assert when.min() >= pd.Timestamp("2010-12-01")
    assert when.max() < pd.Timestamp("2011-12-10")
    nine_months = tmp_path / "online_retail_to_2011-08.csv"
    raw[when < pd.Timestamp("2011-09-01")].to_csv(nine_months, index=False)

    first = train_transactions(
        nine_months,
        RETAIL_COLUMNS,
        out_dir=tmp_path / "models",
        as_of=date(2011, 9, 1),  # the day after the last transaction of the extract
        k=5,
        version="retail-9m",
    )
    old = SegmentModel.load(first)
    second = train_transactions(
        ONLINE_RETAIL,
        RETAIL_COLUMNS,
        out_dir=tmp_path / "models",
        as_of=date(2011, 12, 10),
        k=5,
        version="retail-12m",
        previous=old,
    )
    new = SegmentModel.load(second).manifest
    assert (old.manifest.training_data.as_of, new.training_data.as_of) == (
        "2011-09-01",
        "2011-12-10",
    )
    _assert_identities_carried(old.manifest, new)
    lineage = new.lineage
    assert lineage is not None
    assert len(lineage.matches) >= 4
    # most of each kept segment's customers were in it nine months before too
    assert all(m.overlap >= 0.5 for m in lineage.matches)
    by_id = {s.id: s for s in new.segments}
    print()
    for m in lineage.matches:
        print(
            f"kept {m.key:<16} id {m.id}  cluster {m.old_cluster}->{m.new_cluster}  "
            f"distance {m.centroid_distance:.3f}  overlap {m.overlap:.3f}  "
            f"share {by_id[m.id].share:.1%}"
        )
    print(f"new {[s.key for s in lineage.new_segments]}")
    print(f"vanished {[s.key for s in lineage.vanished_segments]}")

    # the comparison report on all twelve months' customers: most keep their segment key
    customers = compute_rfm(raw, RETAIL_COLUMNS).features
    report = compare(old, SegmentModel.load(second), customers)
    assert report.customers == len(customers) > 4000
    assert report.agreement > 0.6
    assert report.adjusted_rand_index > 0.3
    kept = {m.key for m in lineage.matches}
    assert all(report.transitions[key].get(key, 0) > 0 for key in kept)
    print(
        f"compare: {report.moved_share:.1%} of {report.customers} customers move, "
        f"agreement {report.agreement:.1%}, adjusted Rand index {report.adjusted_rand_index:.3f}"
    )


def test_retraining_on_the_same_data_keeps_every_segment(tmp_path: Path) -> None:
    data = synthetic_transactions(tmp_path / "tx.csv")
    first = train_transactions(
        data, SYNTHETIC_COLUMNS, out_dir=tmp_path / "models", k=4, version="one"
    )
    old = SegmentModel.load(first)
    second = train_transactions(
        data, SYNTHETIC_COLUMNS, out_dir=tmp_path / "models", k=4, version="two", previous=old
    )
    new = load_artifact(second).manifest
    lineage = new.lineage
    assert lineage is not None
    assert len(lineage.matches) == 4
    assert all(m.overlap == 1.0 and m.centroid_distance < 1e-6 for m in lineage.matches)
    assert (lineage.new_segments, lineage.vanished_segments, lineage.retired) == ([], [], [])
    assert new.segments == old.manifest.segments  # ids, keys, names, descriptions, profiles
    assert new.drift_baseline == old.manifest.drift_baseline


def test_more_then_fewer_segments_never_reuse_an_id_or_key(tmp_path: Path) -> None:
    data = synthetic_transactions(tmp_path / "tx.csv", customers=300, seed=3)
    out = tmp_path / "models"
    four = load_artifact(
        train_transactions(data, SYNTHETIC_COLUMNS, out_dir=out, k=4, version="k4")
    )
    six = load_artifact(
        train_transactions(
            data,
            SYNTHETIC_COLUMNS,
            out_dir=out,
            k=6,
            version="k6",
            previous=SegmentModel(four),
        )
    )
    _assert_identities_carried(four.manifest, six.manifest)
    grown = six.manifest.lineage
    assert grown is not None
    assert len(grown.new_segments) >= 2  # six segments, at most four of them old
    assert sorted(s.id for s in grown.new_segments) == list(range(4, 4 + len(grown.new_segments)))
    # RFM: new segments are named after archetypes no kept or retired segment has
    assert all(s.key in RFM_ARCHETYPES for s in grown.new_segments)
    assert len({s.key for s in six.manifest.segments}) == 6

    three = load_artifact(
        train_transactions(
            data,
            SYNTHETIC_COLUMNS,
            out_dir=out,
            k=3,
            version="k3",
            previous=SegmentModel(six),
        )
    )
    _assert_identities_carried(six.manifest, three.manifest)
    shrunk = three.manifest.lineage
    assert shrunk is not None
    assert len(shrunk.vanished_segments) >= 3
    ever_used = {s.id for s in four.manifest.segments} | {s.id for s in six.manifest.segments}
    assert all(s.id > max(ever_used) for s in shrunk.new_segments)
    assert {r.last_version for r in shrunk.retired} <= {"k4", "k6"}

    # growing again: the new segments skip the ids and keys retired two models back
    five = load_artifact(
        train_transactions(
            data,
            SYNTHETIC_COLUMNS,
            out_dir=out,
            k=5,
            version="k5",
            previous=SegmentModel(three),
        )
    )
    _assert_identities_carried(three.manifest, five.manifest)
    regrown = five.manifest.lineage
    assert regrown is not None
    assert regrown.new_segments
    assert all(s.id > max(ever_used) for s in regrown.new_segments)
    retired_keys = {r.key for r in shrunk.retired}
    assert not retired_keys & {s.key for s in five.manifest.segments}
    assert {(r.id, r.key) for r in shrunk.retired} <= {(r.id, r.key) for r in regrown.retired}


def test_new_keys_that_an_ancestor_used_get_a_suffix(bank_model_dir: Path) -> None:
    old = load_artifact(bank_model_dir).manifest
    # as if every segment were replaced by one that the naming calls the same
    nothing_kept = Matching(matches=[], new_clusters=[0, 1, 2, 3, 4], vanished_clusters=[3, 4])
    fresh = [(s.key, s.name, "Sentence.") for s in sorted(old.segments, key=lambda s: s.cluster)]
    identities, lineage = carry_identities(old, nothing_kept, fresh)
    assert [i.id for i in identities] == [5, 6, 7, 8, 9]
    assert [i.key for i in identities] == [f"{key}_2" for key, _, _ in fresh]
    assert [i.name for i in identities] == [f"{name} (2)" for _, name, _ in fresh]
    old_by_cluster = old.segment_by_cluster()
    assert [s.id for s in lineage.vanished_segments] == [old_by_cluster[3].id, old_by_cluster[4].id]
    assert [r.last_version for r in lineage.retired] == ["test-bank-k5"] * 2


def test_customer_table_retrain_through_the_cli(bank_model_dir: Path, tmp_path: Path) -> None:
    args = ["train", "customers", str(BANK_CLIENTS), "--id", "client_id"]
    args += ["--numeric", ",".join(BANK_NUMERIC), "--categorical", ",".join(BANK_CATEGORICAL)]
    args += ["--segments", "5", "--out", str(tmp_path), "--version", "bank-again"]
    result = CliRunner().invoke(cli, [*args, "--previous", str(bank_model_dir)])
    assert result.exit_code == 0, result.output
    assert "from test-bank-k5: kept 5 segments" in result.stderr
    assert "new: none, vanished: none" in " ".join(result.stderr.split())
    old = load_artifact(bank_model_dir).manifest
    new = load_artifact(tmp_path / "bank-again").manifest
    _assert_identities_carried(old, new)
    assert new.segments == old.segments


def test_different_features_are_refused(bank_model_dir: Path, tmp_path: Path) -> None:
    bank = SegmentModel.load(bank_model_dir)
    data = synthetic_transactions(tmp_path / "tx.csv", customers=100)
    with pytest.raises(ValueError, match="same features"):
        train_transactions(data, SYNTHETIC_COLUMNS, out_dir=tmp_path, k=4, previous=bank)
    with pytest.raises(ValueError, match="same features"):  # same names, age now a category
        train_customers(
            BANK_CLIENTS,
            id_column="client_id",
            numeric=["balance"],
            categorical=["age", *BANK_CATEGORICAL],
            out_dir=tmp_path,
            k=5,
            previous=bank,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["tx.csv"]  # refused before fitting


def test_lineage_round_trips_through_the_artifact(tmp_path: Path, rfm_model_dir: Path) -> None:
    previous = SegmentModel.load(rfm_model_dir)
    data = synthetic_transactions(tmp_path / "tx.csv", customers=240, seed=11)
    rfm = compute_rfm(read_table(data), SYNTHETIC_COLUMNS, date(2024, 7, 1))
    fitted = fit_model(
        rfm.features,
        RFM_PLAN,
        kind="rfm",
        version="round-trip",
        training_data=previous.manifest.training_data,
        k=5,
        previous=previous,
    )
    assert fitted.manifest.lineage is not None
    loaded = load_artifact(write_artifact(fitted.pipeline, fitted.manifest, tmp_path)).manifest
    assert loaded.lineage == fitted.manifest.lineage
    assert loaded.segments == fitted.manifest.segments
    # manifests written before lineage existed still load, without one
    assert load_artifact(DEFAULT_MODELS).manifest.lineage is None


def test_previous_is_a_folder_a_registered_version_or_active(
    database_url: str, rfm_model_dir: Path, tmp_path: Path
) -> None:
    """--previous resolves as `segments models compare` does (ModelRegistry.resolve)."""
    clear_tables(database_url)
    engine = create_engine(database_url)

    def retrain(previous: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            cli,
            [
                "train",
                "customers",
                str(BANK_CLIENTS),
                "--id",
                "client_id",
                "--numeric",
                "age,balance",
                "--segments",
                "4",
                "--out",
                str(tmp_path),
                "--version",
                f"retrained-{len(list(tmp_path.iterdir()))}",
                "--previous",
                previous,
            ],
            env={"DATABASE_URL": database_url},
        )
        return result.exit_code, " ".join(result.output.split())

    try:
        registry = ModelRegistry(engine)
        assert registry.resolve(str(rfm_model_dir), folders=True).version == "test-rfm-k4"
        with pytest.raises(ModelRefused, match="no active model"):
            registry.resolve("active")
        registry.register(load_artifact(rfm_model_dir))
        assert registry.resolve("test-rfm-k4").version == "test-rfm-k4"
        registry.activate("test-rfm-k4")
        assert registry.resolve("active").version == "test-rfm-k4"
        with pytest.raises(ModelNotFound):
            registry.resolve("never-trained")
        with pytest.raises(ModelNotFound):  # HTTP never loads a folder of the server's
            registry.resolve(str(rfm_model_dir))
        code, output = retrain("never-trained")
        assert code == 2
        assert "--previous never-trained: no such model folder" in output
    finally:
        engine.dispose()
        clear_tables(database_url)
