"""Drift figures of real customer populations against the default model (issue 5's proofs).

`python bench/drift_real_data.py [--cdnow PATH/TO/CDNOW_master.txt]` prints one line per population.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.datafiles import normalise_ids, read_table  # noqa: E402
from app.metrics.evaluation import population_drift  # noqa: E402
from app.scoring.model import SegmentModel  # noqa: E402
from app.settings import DEFAULT_MODELS_DIR  # noqa: E402
from app.training.rfm import TransactionColumns, compute_rfm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--cdnow",
        type=Path,
        help="CDNOW_master.txt (Fader & Hardie), scored by the Online Retail model",
    )
    args = parser.parse_args()
    model = SegmentModel.load(DEFAULT_MODELS_DIR)
    columns = TransactionColumns(
        "CustomerID", "InvoiceDate", quantity="Quantity", price="UnitPrice", invoice="InvoiceNo"
    )
    raw = read_table(
        ROOT / "data" / "online-retail" / "online_retail.csv.gz", [*columns.needed(), "Country"]
    )
    rfm = compute_rfm(raw, columns).features
    populations: list[tuple[str, pd.DataFrame]] = [
        ("training customers, a random half", rfm.sample(frac=0.5, random_state=1)),
        ("the last month alone (recency <= 30 days)", rfm[rfm["recency_days"] <= 30]),
    ]
    ids = normalise_ids(raw["CustomerID"])
    for country in ("Germany", "France"):
        members = set(ids[raw["Country"] == country].dropna())
        populations.append((f"customers from {country}", rfm[rfm.index.isin(members)]))
    times = pd.to_datetime(raw["InvoiceDate"])
    for cutoff in (date(2011, 4, 1), date(2011, 7, 1), date(2011, 10, 1)):
        earlier = compute_rfm(raw[times < pd.Timestamp(cutoff)], columns, cutoff).features
        populations.append((f"RFM as of {cutoff} (history so far)", earlier))
    if args.cdnow:
        cdnow = pd.read_csv(args.cdnow, sep=r"\s+", dtype={"customer_id": str, "date": str})
        cd_columns = TransactionColumns("customer_id", "date", amount="dollar_value")
        populations.append(
            (
                "CDNOW customers (RFM as of 1998-07-01)",
                compute_rfm(cdnow, cd_columns, date(1998, 7, 1)).features,
            )
        )
    print(f"model {model.version}; PSI bands: < 0.1 stable, 0.1-0.25 warning, > 0.25 alert")
    print(
        f"{'population':<42} {'customers':>9} {'segment PSI':>11} {'JS':>6}  per feature: PSI / share outside training"
    )
    for name, frame in populations:
        f = population_drift(model, frame)
        detail = "  ".join(f"{k} {v.psi:.3f}/{v.outside_share:.2f}" for k, v in f.features.items())
        print(
            f"{name:<42} {f.samples:>9} {f.segment_psi:>11.3f} {f.segment_js_distance:>6.3f}  {detail}"
        )


if __name__ == "__main__":
    main()
