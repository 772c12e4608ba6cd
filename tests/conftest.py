"""Shared fixtures: a real PostgreSQL (TEST_DATABASE_URL's server, else an embedded one the
session starts), small real models, and the app behind a real ASGI HTTP client with its
lifespan running."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from app.audience.erasure import IdHasher
from app.clock import SystemClock
from app.errors import AppError
from app.lifecycle.holder import ModelHolder
from app.lifecycle.shadow import ShadowScorer
from app.main import create_app
from app.scoring.model import SegmentModel
from app.service.assignments import AssignmentService, AssignmentWriter
from app.service.idempotency import PendingRow
from app.service.store import Store
from app.settings import PROJECT_ROOT, Settings
from app.store.embedded import embedded_database
from app.store.group_commit import GroupCommitter
from app.store.migrate import upgrade
from app.training.rfm import TransactionColumns
from app.training.train import train_customers, train_transactions

BANK_CLIENTS = Path(__file__).parent / "data" / "bank_clients.csv"
DEFAULT_MODELS = PROJECT_ROOT / "models"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") == "true" and not os.environ.get("TEST_DATABASE_URL"):
        pytest.exit(
            "CI=true but TEST_DATABASE_URL is not set: the suite must run on PostgreSQL",
            returncode=3,
        )


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server to make test databases on: TEST_DATABASE_URL's (CI), or else an
    embedded one this session starts and stops, so `make test` needs no PostgreSQL installed."""
    with ExitStack() as running:
        server = os.environ.get("TEST_DATABASE_URL")
        if not server:
            folder = tmp_path_factory.mktemp("embedded") / "postgres"
            server = running.enter_context(embedded_database(folder)).url.render_as_string(
                hide_password=False
            )
        yield server


@contextmanager
def new_database(server: str) -> Iterator[str]:
    """A new, empty database on the server for the block (dropped afterwards); its URL."""
    base = make_url(server).set(drivername="postgresql+psycopg")
    name = f"segments_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.exit(f"cannot reach PostgreSQL at {base!r}: {exc}", returncode=3)
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_url(postgres_server: str) -> Iterator[str]:
    """A fresh database of this run on that server, migrated once."""
    with new_database(postgres_server) as url:
        upgrade(url)
        yield url


@pytest.fixture
def empty_database_url(postgres_server: str) -> Iterator[str]:
    """A database nothing has migrated yet."""
    with new_database(postgres_server) as url:
        yield url


SYNTHETIC = TransactionColumns(customer="customer", time="time", amount="amount", invoice="invoice")


def synthetic_transactions(path: Path, customers: int = 400, seed: int = 7) -> Path:
    """Transactions of four kinds of customer (recent big spenders, lapsed, one-off, regulars)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str | None, pd.Timestamp, float]] = []
    end = pd.Timestamp("2024-06-30")
    for c in range(customers):
        kind = c % 4
        orders = [int(rng.integers(15, 30)), int(rng.integers(1, 3)), 1, int(rng.integers(4, 9))][
            kind
        ]
        last_gap = [
            rng.integers(0, 10),
            rng.integers(200, 360),
            rng.integers(100, 300),
            rng.integers(10, 60),
        ][kind]
        spend = [400.0, 30.0, 15.0, 80.0][kind]
        for o in range(orders):
            when = end - pd.Timedelta(days=int(last_gap) + 7 * o)
            rows.append((f"INV{c}-{o}", f"C{c:04d}", when, max(1.0, rng.normal(spend, spend / 5))))
    # noise the trainer must drop: a cancellation and a row without customer
    rows.append(("CINV0-0", "C0000", end, -50.0))
    rows.append(("INVX", None, end, 20.0))
    frame = pd.DataFrame(rows, columns=["invoice", "customer", "time", "amount"])
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def rfm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small RFM model fitted on synthetic transactions (fast, and its segments are clear-cut)."""
    root = tmp_path_factory.mktemp("rfm")
    data = synthetic_transactions(root / "transactions.csv")
    return train_transactions(data, SYNTHETIC, out_dir=root / "models", k=4, version="test-rfm-k4")


@pytest.fixture(scope="session")
def rfm_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another RFM model (other customers, k=5): a genuine candidate to replace test-rfm-k4."""
    root = tmp_path_factory.mktemp("rfm-b")
    data = synthetic_transactions(root / "transactions.csv", customers=480, seed=11)
    return train_transactions(data, SYNTHETIC, out_dir=root / "models", k=5, version="test-rfm-k5")


@pytest.fixture(scope="session")
def rfm_model_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-rfm-k4 trained again under another version name: the same model, segment for segment."""
    root = tmp_path_factory.mktemp("rfm-twin")
    data = synthetic_transactions(root / "transactions.csv")
    return train_transactions(
        data, SYNTHETIC, out_dir=root / "models", k=4, version="test-rfm-k4-twin"
    )


@pytest.fixture(scope="session")
def bank_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A customer-table model on real bank clients (numeric and categorical features)."""
    return train_customers(
        BANK_CLIENTS,
        id_column="client_id",
        numeric=["age", "balance"],
        categorical=["job", "marital", "education", "housing"],
        out_dir=tmp_path_factory.mktemp("bank"),
        k=5,
        version="test-bank-k5",
    )


TEST_ERASURE_KEY = "tests-erasure-key"  # what servers and services in the tests hash ids with
TEST_ID_HASH = IdHasher(TEST_ERASURE_KEY)
CLEARED_TABLES = (
    "assignments",
    "memberships",
    "membership_events",
    "model_versions",
    "erasure_tombstones",
    "erasure_audit",
    "purchase_events",
    "customer_orders",
    "customer_activity",
    "idempotency_keys",
)


def clear_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        for table in CLEARED_TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
    engine.dispose()


@contextmanager
def store_on(database_url: str) -> Iterator[Store]:
    """The service's Store on the test database (its engine disposed afterwards)."""
    engine = create_engine(database_url)
    try:
        yield Store(engine)
    finally:
        engine.dispose()


@contextmanager
def assignment_service(
    database_url: str, model_dir: Path, max_batch: int = 100_000
) -> Iterator[AssignmentService]:
    """The service's AssignmentService on the test database, outside any app: for scoring
    batches (and storing them with `assign_batch`) as the service does."""
    with store_on(database_url) as store:
        models = ModelHolder(SegmentModel.load(model_dir))
        writer = AssignmentWriter(store, TEST_ID_HASH)
        committer: GroupCommitter[PendingRow, str | AppError | None] = GroupCommitter(
            writer.write_rows, max_rows=1, max_wait_seconds=0
        )
        yield AssignmentService(
            models,
            store,
            writer,
            committer,
            ShadowScorer(models),
            clock=SystemClock(),
            max_batch=max_batch,
        )


def make_settings(database_url: str, model_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "model_dir": model_dir,
        "drift_cache_seconds": 0,
        # most tests are about something else: tests/auth exercise the keys
        "allow_anonymous": True,
        "erasure_key": TEST_ERASURE_KEY,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, rfm_model_dir: Path) -> Settings:
    return make_settings(database_url, rfm_model_dir)


@pytest.fixture
def client(settings: Settings, database_url: str) -> Iterator[TestClient]:
    """The app with its real lifespan, over an empty store."""
    clear_tables(database_url)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def count_rows(database_url: str, table: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        value = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return int(value)


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


ONLINE_RETAIL = PROJECT_ROOT / "data" / "online-retail" / "online_retail.csv.gz"


@pytest.fixture(scope="session")
def online_retail_rfm() -> pd.DataFrame:
    """The real customers the default model was trained on, as RFM features."""
    from app.datafiles import read_table
    from app.training.rfm import compute_rfm

    columns = TransactionColumns(
        "CustomerID", "InvoiceDate", quantity="Quantity", price="UnitPrice", invoice="InvoiceNo"
    )
    return compute_rfm(read_table(ONLINE_RETAIL, columns.needed()), columns).features
