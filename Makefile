# Embudo: `make dev` runs everything locally, `make test` proves it. See README.md.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LOCAL := deploy/local

.PHONY: install infra-up infra-down dev stop test lint bench demo logs dlq rebuild-metrics

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## KAFKA_BROKERS=3 for a three-broker cluster (deploy/local/kafka.sh).
KAFKA_BROKERS ?= 1
infra-up:
	$(LOCAL)/postgres.sh start
	KAFKA_BROKERS=$(KAFKA_BROKERS) $(LOCAL)/kafka.sh start

infra-down:
	KAFKA_BROKERS=$(KAFKA_BROKERS) $(LOCAL)/kafka.sh stop
	$(LOCAL)/postgres.sh stop

## Kafka, Postgres and the four services in the background; logs in .run/logs/.
dev: install infra-up
	$(LOCAL)/services.sh start

## Stops the services, then the broker and the database.
stop:
	$(LOCAL)/services.sh stop
	$(MAKE) infra-down

## Every test, integration and end-to-end included, against the real broker and database.
test: install infra-up
	$(LOCAL)/browser.sh install
	@# The engine, the compose CLI and the stand-in images for tests/e2e/test_docker_compose.py (cached:
	@# under a second when warm). Not fatal here: that test then fails saying why.
	-deploy/docker/docker.sh prepare
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Benchmarks on this machine; numbers go to docs/benchmarks.md.
bench: install infra-up
	$(PY) -m bench.run $(BENCH_ARGS)

## Believable demo traffic through the public APIs of the running stack (`make dev` first).
demo: install
	$(PY) deploy/demo.py $(DEMO_ARGS)

## The consumers' dead-letter topics: make dlq DLQ_ARGS='list' (or 'show …', 'replay …'); docs/operations.md.
DLQ_ARGS ?= list
dlq: install
	$(PY) -m shared.dlq $(DLQ_ARGS)

## Rebuild the metrics projection from the topics next to the live one, then switch over
## (the service keeps running; uses the same EMBUDO_* settings); docs/operations.md.
rebuild-metrics: install
	$(PY) -m services.metrics.rebuild $(ARGS)
