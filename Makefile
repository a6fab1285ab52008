# Everything the project needs is installed by this file: `make run`, `make test`.
# `make run` installs the runtime lock only (requirements.lock); `make test` adds the
# development lock (requirements-dev.lock: tests, browser driver, pip-tools). Both
# install with `pip install --require-hashes`: exactly the tested versions.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# pytest-xdist: two workers (the machine's cores), a test file per worker at a time so
# that a module's server and simulator fixtures start once; PARALLEL= runs in one process
PARALLEL ?= -n 2 --dist loadfile
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
# pip-compile flags shared by both locks; no --upgrade: existing pins (and, with
# --reuse-hashes, their hashes) are kept, so a re-lock after adding one pin only
# resolves what is new
LOCK_FLAGS := --quiet --generate-hashes --reuse-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links

.PHONY: install install-dev install-browser install-nginx deploy run simulator migrate test test-fast lint bench docs lock clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): requirements.lock | $(PY)
	$(PIP) install --quiet --require-hashes -r requirements.lock
	touch $@

$(DEV): requirements-dev.lock $(RUNTIME)
	$(PIP) install --quiet --require-hashes -r requirements-dev.lock
	touch $@

install: $(RUNTIME) ## the runtime requirements only (what the server needs)

install-dev: $(DEV) ## runtime plus development requirements

run: install ## the server on the demo default: SQLite + embedded simulator + demo user
	$(PY) app.py

simulator: install ## the exchange simulator alone on 127.0.0.1:9100, replaying the real XRPUSDT path
	$(PY) -m exchanges.simulator --host 127.0.0.1 --port 9100 \
		--replay XRPUSDT=exchanges/simulator/data/XRPUSDT_perp_5m_2021-11-15_to_2021-11-21.csv

migrate: install ## alembic upgrade head on DATABASE_URL (default: the demo SQLite file)
	$(PY) -m alembic upgrade head

install-browser: ## Debian's chromium for tests/browser (apt-get, only when /usr/bin/chromium is missing)
	sh scripts/install-browser.sh

install-nginx: ## Debian's nginx for `make deploy` and tests/e2e/test_scaleout.py (apt-get, only when /usr/sbin/nginx is missing)
	sh scripts/install-nginx.sh

# P processes (default 2) behind nginx on LISTEN (default 127.0.0.1:8080), ports from
# BASE_PORT (5001); settings from .env (README "Deploy"); Ctrl-C stops everything
P ?= 2
deploy: install ## migrations, P gunicorn processes and nginx in front, in the foreground
	P=$(P) VENV=$(VENV) sh scripts/deploy.sh

test: install-dev ## the whole suite (unit, integration on SQLite and PostgreSQL, end-to-end, browser)
	sh scripts/install-browser.sh
	sh scripts/install-nginx.sh
	$(PY) -m pytest -q $(PARALLEL)

test-fast: install-dev ## the suite without the tests that start server processes (pytest -m "not e2e")
	$(PY) -m pytest -q -m "not e2e" $(PARALLEL)

lint: install-dev ## ruff and mypy against lint-baseline.json (a file may only lose findings)
	$(PY) scripts/lint.py

bench: install ## benchmarks (not tests): prints figures
	$(PY) -m bench.push_latency --clients 200
	$(PY) -m bench.push_latency --clients 1000
	$(PY) -m bench.streams --clients 1000
	$(PY) -m bench.streams --clients 1000 --egress-ips 4
	$(PY) -m bench.ledger
	if command -v npm >/dev/null 2>&1; then (cd bench/node_bare && npm ci --no-audit --no-fund); \
	else echo "npm not found: bench.fanout runs without the Node socket.io baseline"; fi
	$(PY) -m bench.fanout --db postgresql --queue redis://127.0.0.1:6379/0
	$(PY) -m bench.storm
	sh scripts/install-nginx.sh
	$(PY) -m bench.scaleout
	$(PY) -m bench.chaos --seeds 50 --db sqlite
	$(PY) -m bench.chaos --seeds 20 --first 101 --db postgresql

docs: install ## regenerate docs/openapi.json from the app
	$(PY) scripts/dump_openapi.py

# Re-resolve the locks after editing requirements.txt or requirements-dev.txt. The
# development lock is constrained by the runtime lock, so both agree on every version.
lock: install-dev ## regenerate requirements.lock and requirements-dev.lock (pip-tools)
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --output-file requirements.lock requirements.txt
	$(VENV)/bin/pip-compile $(LOCK_FLAGS) --constraint requirements.lock \
		--output-file requirements-dev.lock requirements-dev.txt

clean:
	rm -rf $(VENV) var .pytest_cache
