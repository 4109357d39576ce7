# Two commands on a fresh Linux machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-slow test-kafka lint format bench clean system-deps

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/syncline demo

# PostgreSQL server binaries for the throwaway test server (skipped when
# SYNCLINE_TEST_PG_DSN points at a server with wal_level=logical), and Debian's
# chromium for the dashboard test (Playwright drives it; no browser download).
system-deps:
	@scripts/system-deps.sh

# The Kafka transport tests run against Tansu (a Kafka-protocol broker from PyPI) unless
# SYNCLINE_KAFKA_BOOTSTRAP names a real broker; see docs/transports.md for what that covers.
test: setup system-deps lint
	SYNCLINE_KAFKA_LOCAL=$${SYNCLINE_KAFKA_LOCAL:-tansu} PYTHON=$(BIN)/python $(BIN)/pytest -rxXs

test-slow: setup system-deps
	$(BIN)/pytest -m slow

# Kafka transport tests against a throwaway local broker (scripts/kafka-local.sh):
# KAFKA_BROKER=kafka fetches Apache Kafka with Maven; KAFKA_BROKER=tansu uses Tansu from PyPI.
# With SYNCLINE_KAFKA_BOOTSTRAP=host:port set, that broker is used instead.
KAFKA_BROKER ?= kafka
KAFKA_TESTS := tests/test_transport_kafka.py tests/test_config_kafka.py tests/pg/test_pipeline_kafka_pg.py

test-kafka: setup system-deps
	SYNCLINE_KAFKA_LOCAL=$(KAFKA_BROKER) PYTHON=$(BIN)/python $(BIN)/pytest -rxXs $(KAFKA_TESTS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: setup system-deps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info src/*.egg-info
