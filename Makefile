# Each target creates .venv if it is missing; the lock files pin what CI tested.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TRAIN_DATA := data/online-retail/online_retail.csv.gz
DEFAULT_MODEL := online-retail-rfm-k5

.PHONY: serve test lint model bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements.lock && $(BIN)/pip install -q --no-deps -e . && touch $@

$(VENV)/.test: requirements-test.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements-test.lock && $(BIN)/pip install -q --no-deps -e . && touch $@ $(VENV)/.serve

serve: $(VENV)/.serve  ## migrate the database (SQLite ./segments.db unless DATABASE_URL) and serve on :8000
	$(BIN)/segments migrate && $(BIN)/segments serve --host 127.0.0.1 --port 8000

test: $(VENV)/.test  ## the whole suite; on PostgreSQL when TEST_DATABASE_URL is set
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff format --check . && $(BIN)/ruff check . && $(BIN)/mypy app tests bench

model: $(VENV)/.serve  ## retrain the default model from the committed Online Retail data
	rm -rf models/$(DEFAULT_MODEL) && $(BIN)/segments train transactions $(TRAIN_DATA) --customer CustomerID --time InvoiceDate --quantity Quantity --price UnitPrice --invoice InvoiceNo --k-range 5-7 --version $(DEFAULT_MODEL) --out models && echo $(DEFAULT_MODEL) > models/DEFAULT

bench: $(VENV)/.test  ## real servers under wrk (Debian's wrk package), PostgreSQL on 127.0.0.1; writes bench/RESULTS.md
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) && $(BIN)/python bench/run.py

lock:  ## re-pin dependencies after editing pyproject.toml (needs uv: pip install uv)
	uv pip compile pyproject.toml -q --python-version 3.11 -o requirements.lock && uv pip compile pyproject.toml -q --python-version 3.11 --extra test -o requirements-test.lock

clean:
	rm -rf $(VENV) segments.db segments.db-* .pytest_cache .mypy_cache .ruff_cache
