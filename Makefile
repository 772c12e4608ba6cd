# Each target creates .venv if it is missing; the lock files pin what CI tested.
PYTHON ?= python3
PORT ?= 8000
SEGMENTS_LOG_FORMAT ?= text
VENV := .venv
BIN := $(VENV)/bin
TRAIN_DATA := data/online-retail/online_retail.csv.gz
DEFAULT_MODEL := online-retail-rfm-k5

.PHONY: serve test lint model bench lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve: requirements-local.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements-local.lock && $(BIN)/pip install -q --no-deps -e . && touch $@

# --no-deps: the lock is the whole resolved set (uv's, with pyproject's [tool.uv] override)
$(VENV)/.test: requirements-test.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-deps -r requirements-test.lock && $(BIN)/pip install -q --no-deps -e . && touch $@ $(VENV)/.serve

serve: $(VENV)/.serve  ## migrate and serve the default model on 127.0.0.1:$(PORT) (embedded PostgreSQL unless DATABASE_URL); logs as text for a person
	SEGMENTS_LOG_FORMAT=$(SEGMENTS_LOG_FORMAT) $(BIN)/segments serve --migrate --host 127.0.0.1 --port $(PORT)

test: $(VENV)/.test  ## the whole suite, on TEST_DATABASE_URL's PostgreSQL or an embedded one
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff format --check . && $(BIN)/ruff check . && $(BIN)/mypy app tests bench

model: $(VENV)/.serve  ## retrain the default model from the committed Online Retail data
	rm -rf models/$(DEFAULT_MODEL) && $(BIN)/segments train transactions $(TRAIN_DATA) --customer CustomerID --time InvoiceDate --quantity Quantity --price UnitPrice --invoice InvoiceNo --currency GBP --k-range 5-7 --version $(DEFAULT_MODEL) --out models && echo $(DEFAULT_MODEL) > models/DEFAULT

bench: $(VENV)/.test  ## real servers under wrk, PostgreSQL on 127.0.0.1; writes bench/RESULTS.md (BEFORE=REV: also that commit, alternating)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) && $(BIN)/python bench/run.py $(if $(BEFORE),--before $(BEFORE))

lock:  ## re-pin after editing pyproject.toml (needs uv: pip install uv); the service image, make serve, make test
	uv pip compile pyproject.toml -q --python-version 3.11 -o requirements.lock && uv pip compile pyproject.toml -q --python-version 3.11 --extra embedded --extra chart -o requirements-local.lock && uv pip compile pyproject.toml -q --python-version 3.11 --extra embedded --extra chart --extra test -o requirements-test.lock

clean:  ## the venv and caches; the embedded database in .segments/ stays (remove it by hand)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
