"""One definition of the features: all of Online Retail sent as purchase events gives every
customer exactly the RFM features training computed from the same rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

import orjson
import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from app.clock import ManualClock
from app.datafiles import normalise_ids, read_table
from app.main import create_app
from app.training.rfm import RFM_FEATURES, TransactionColumns, rfm_features
from tests.conftest import DEFAULT_MODELS, ONLINE_RETAIL, clear_tables, make_settings

pytestmark = pytest.mark.slow
COLUMNS = TransactionColumns(
    "CustomerID", "InvoiceDate", quantity="Quantity", price="UnitPrice", invoice="InvoiceNo"
)
TRAINING_DATE = date(2011, 12, 10)  # the default model's as_of: the day after the last row


def online_retail_events() -> list[dict[str, object]]:
    """Every row with a customer, as a shop would send it: cancellations included."""
    raw = read_table(ONLINE_RETAIL, COLUMNS.needed())
    frame = pd.DataFrame(
        {
            "customer": normalise_ids(raw["CustomerID"]),
            "time": pd.to_datetime(raw["InvoiceDate"], format="ISO8601"),
            "amount": pd.to_numeric(raw["Quantity"]) * pd.to_numeric(raw["UnitPrice"]),
            "order": raw["InvoiceNo"].str.strip(),
        }
    ).dropna(subset=["customer"])
    return [
        {
            "event_id": f"or-{index}",
            "customer_id": customer,
            "occurred_at": moment.isoformat() + "Z",
            "amount": amount,
            "type": "order",
            "order_id": order,
        }
        for index, customer, moment, amount, order in zip(
            frame.index,
            frame["customer"],
            frame["time"],
            frame["amount"],
            frame["order"],
            strict=True,
        )
    ]


def test_live_features_of_every_online_retail_customer_equal_the_training_table(
    database_url: str, online_retail_rfm: pd.DataFrame
) -> None:
    clear_tables(database_url)
    events = online_retail_events()
    clock = ManualClock(datetime(2011, 12, 10, tzinfo=UTC))
    settings = make_settings(database_url, DEFAULT_MODELS)
    with TestClient(create_app(settings, clock)) as client:
        for start in range(0, len(events), 10_000):
            body = orjson.dumps({"events": events[start : start + 10_000]})
            response = client.post(
                "/v1/events", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, response.text[:500]
    engine = create_engine(database_url)
    with engine.connect() as conn:
        aggregates = conn.execute(
            text("SELECT customer_id, last_purchase_at, orders, spend FROM customer_activity")
        ).all()
        latest: dict[str, dict[str, float]] = dict(
            conn.execute(
                text(
                    "SELECT DISTINCT ON (a.customer_id) a.customer_id, a.features "
                    "FROM assignments AS a ORDER BY a.customer_id, a.assigned_at DESC, a.id DESC"
                )
            ).all()
        )
    engine.dispose()
    live = pd.DataFrame(
        [
            rfm_features(last.astimezone(UTC).date(), orders, spend, TRAINING_DATE)
            for _, last, orders, spend in aggregates
        ],
        index=pd.Index([row[0] for row in aggregates], name="customer_id"),
        columns=list(RFM_FEATURES),
    ).astype(online_retail_rfm.dtypes.to_dict())
    live = live.sort_index()
    assert len(live) == len(online_retail_rfm) == 4339
    pd.testing.assert_frame_equal(live, online_retail_rfm, check_exact=True)
    # and each customer's stored segment was scored from exactly those features
    stored = pd.DataFrame(list(latest.values()), index=list(latest))[list(RFM_FEATURES)]
    stored = stored.sort_index()
    stored.index.name = "customer_id"
    pd.testing.assert_frame_equal(
        stored.astype(online_retail_rfm.dtypes.to_dict()), online_retail_rfm, check_exact=True
    )
