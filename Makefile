# Everything the project needs is installed by this file: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-browser run simulator migrate test test-fast bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: install ## the server on the demo default: SQLite + embedded simulator + demo user
	$(PY) app.py

simulator: install ## the exchange simulator alone on 127.0.0.1:9100, replaying the real XRPUSDT path
	$(PY) -m exchanges.simulator --host 127.0.0.1 --port 9100 \
		--replay XRPUSDT=exchanges/simulator/data/XRPUSDT_perp_5m_2021-11-15_to_2021-11-21.csv

migrate: install ## alembic upgrade head on DATABASE_URL (default: the demo SQLite file)
	$(PY) -m alembic upgrade head

install-browser: ## Debian's chromium for tests/browser (apt-get, only when /usr/bin/chromium is missing)
	sh scripts/install-browser.sh

test: install ## the whole suite (unit, integration on SQLite and PostgreSQL, end-to-end, browser)
	sh scripts/install-browser.sh
	$(PY) -m pytest -q

bench: install ## benchmarks (not tests): prints figures
	$(PY) -m bench.push_latency --clients 200
	$(PY) -m bench.push_latency --clients 1000
	$(PY) -m bench.streams --clients 1000
	$(PY) -m bench.streams --clients 1000 --egress-ips 4
	$(PY) -m bench.ledger

clean:
	rm -rf $(VENV) var .pytest_cache
