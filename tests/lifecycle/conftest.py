"""Models that take the same features as the session's `rfm_model_dir`, for switching between."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.training.rfm import TransactionColumns
from app.training.train import train_transactions
from tests.conftest import synthetic_transactions

COLUMNS = TransactionColumns(customer="customer", time="time", amount="amount", invoice="invoice")


@pytest.fixture(scope="session")
def rfm_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another RFM model (other customers, k=5): a genuine candidate to replace test-rfm-k4."""
    root = tmp_path_factory.mktemp("rfm-b")
    data = synthetic_transactions(root / "transactions.csv", customers=480, seed=11)
    return train_transactions(data, COLUMNS, out_dir=root / "models", k=5, version="test-rfm-k5")


@pytest.fixture(scope="session")
def rfm_model_twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-rfm-k4 trained again under another version name: the same model, segment for segment."""
    root = tmp_path_factory.mktemp("rfm-twin")
    data = synthetic_transactions(root / "transactions.csv")
    return train_transactions(
        data, COLUMNS, out_dir=root / "models", k=4, version="test-rfm-k4-twin"
    )
