# One command each for the jobs the README and CI name.
PYTHON ?= python3
DATA_DIR ?= $(HOME)/.cortex-server

.PHONY: install run test test-unit test-inprocess test-e2e lint typecheck bench bench-quick cluster

install:
	$(PYTHON) -m pip install -q -e '.[dev]'

run: install
	cortex-server serve --demo --data-dir $(DATA_DIR)

# Three replicas on PostgreSQL + Redis behind HAProxy, a demo node through HAProxy (server/cluster_demo.py).
cluster: install
	$(PYTHON) -m server.cluster_demo --data-dir $(DATA_DIR)-cluster

lint:
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .

typecheck:
	$(PYTHON) -m mypy

test: install lint typecheck
	$(PYTHON) -m pytest -q -p no:cacheprovider

# One test tier each (markers from tests/tiers.py; `make test` runs all three).
test-unit test-inprocess test-e2e: install
	$(PYTHON) -m pytest -q -p no:cacheprovider -m $(patsubst test-%,%,$@)

bench: install
	$(PYTHON) -m bench

bench-quick: install
	$(PYTHON) -m bench --quick
