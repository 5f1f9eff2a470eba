# The README's two commands: `make demo` and `make test`. Everything else helps them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo demo-local e2e bench chaos lint typecheck pytest clean install browser promtool

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: installing python3-venv"; \
	  apt-get install -y python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The dashboard test drives Debian's headless chromium through chromedriver; the TLS
# test makes its certificates with the openssl command.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  && command -v openssl >/dev/null || { \
	  echo "installing Debian's chromium, chromium-driver and openssl (for the dashboard and TLS tests)"; \
	  apt-get update -qq >/dev/null || true; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver openssl \
	    >/dev/null; }

# promtool (Debian's prometheus package) checks /metrics in the tests. Only the one
# binary is taken out of the package, into the venv: no service is installed or started.
# If it cannot be fetched, that test is skipped and says so.
promtool: $(STAMP)
	@command -v promtool >/dev/null || test -x $(VENV)/bin/promtool || { \
	  echo "fetching promtool from Debian's prometheus package (for the /metrics test)"; \
	  tmp=$$(mktemp -d) && (cd $$tmp && apt-get download -qq prometheus >/dev/null 2>&1 \
	    && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool \
	       > $(CURDIR)/$(VENV)/bin/promtool.part \
	    && mv $(CURDIR)/$(VENV)/bin/promtool.part $(CURDIR)/$(VENV)/bin/promtool \
	    && chmod +x $(CURDIR)/$(VENV)/bin/promtool) \
	  || { rm -f $(CURDIR)/$(VENV)/bin/promtool.part; \
	       echo "promtool not available: its test will be skipped"; }; rm -rf $$tmp; }

lint: $(STAMP)
	$(VENV)/bin/ruff check gobucket_py tests bench examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict gobucket_py

pytest: $(STAMP) browser promtool
	PYTHONHASHSEED=0 $(PY) -m pytest -q

test: lint typecheck pytest

# The main job: three local nodes, backup jobs overflowing from node 1, ~70% drained.
demo: $(STAMP)
	$(PY) -m examples.cluster.run_local $(if $(HOLD),--hold $(HOLD))

# The single-node version of the same job.
demo-local: $(STAMP)
	$(PY) examples/local_backup.py

# The docker-compose demo, its --scale variant and the swarm stack end to end
# (needs a Docker Engine; builds offline).
e2e: $(STAMP)
	$(PY) -m pytest -q -s -m docker tests/test_docker_e2e.py tests/test_deploy.py

# bench peers starts a private redis-server (Debian's package) for its arq rows; without
# it those rows say they were skipped.
bench: $(STAMP)
	@command -v redis-server >/dev/null || { \
	  echo "installing Debian's redis-server (for the arq rows of bench peers)"; \
	  apt-get update -qq >/dev/null || true; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null \
	  || echo "redis-server not available: the arq rows of bench peers will be skipped"; }
	$(PY) -m bench

# The ledger chaos test at full size (make test runs it with 10,000 tasks), with its
# replicas variants (kill -9 of one node, and of two at once: 100,000 tasks each, here
# only), then the seeded in-memory nemesis with 2,000 seeds, with and without replicas
# (backups taking over at presumed loss, and at death: promote_after=0), and 1,000
# one-crash-at-a-time seeds with replicas (make test runs 100 of each); a
# failing seed prints the one command that replays it (fixed hash seed: exact replays).
chaos: $(STAMP)
	status=0; \
	CHAOS_TASKS=$${CHAOS_TASKS:-100000} CHAOS_REPLICAS=1 $(PY) -m pytest -q -s tests/test_chaos.py \
	  || status=1; \
	PYTHONHASHSEED=0 NEMESIS_SEEDS=$${NEMESIS_SEEDS:-2000} \
	  NEMESIS_REPLICA_SEEDS=$${NEMESIS_REPLICA_SEEDS:-2000} NEMESIS_CRASH_SEEDS=$${NEMESIS_CRASH_SEEDS:-1000} \
	  NEMESIS_LATE_SEEDS=$${NEMESIS_LATE_SEEDS:-1000} NEMESIS_LOST_SEEDS=$${NEMESIS_LOST_SEEDS:-1000} \
	  $(PY) -m pytest -q tests/test_nemesis.py \
	  || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
