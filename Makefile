# Everything starts from a fresh machine with Python 3.10+ and make: each target creates or reuses
# .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AIRFLOW_VERSION ?= 3.3.2
STAMP := $(VENV)/.installed-$(AIRFLOW_VERSION)
PYTEST_ARGS ?=
BENCH_ARGS ?=
# Airflow versions the compatibility run proves: the newest 3.0.x (the oldest supported) and the newest
COMPAT_AIRFLOW_VERSIONS ?= 3.0.6 3.3.2

.PHONY: venv lint test stress browser celery unit sandbox-tests integration e2e demo demo-ui bench sandbox compat clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10+ is required")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" -e ".[dev,redis,sandbox]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check airflow_provider_crm crm_sandbox tests dags benchmarks scripts
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

sandbox-tests: venv
	$(VENV)/bin/pytest tests/sandbox $(PYTEST_ARGS)

integration: venv
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

# long tests that pytest's addopts leave out of make test (run by .ci/run): the 150-key write-safety
# tests under faults, and the limiter under CPU load (tests/stress: 4 processes on one token beside 2
# busy loops, 5 runs per store)
stress: venv
	$(VENV)/bin/pytest -m stress -s $(PYTEST_ARGS)

# Airflow's UI in headless chromium (Debian chromium + chromium-driver, installed by .ci/run): task logs,
# the connection Test button, an extra link; screenshots in build/screenshots (CRM_SCREENSHOTS)
browser: venv
	$(VENV)/bin/pytest -m browser tests/browser -s $(PYTEST_ARGS)

# Airflow's CeleryExecutor on loopback (tests/e2e/test_celery.py): redis-server, the sandbox, the scheduler,
# dag-processor, api-server, triggerer and two Celery workers sharing one token through the Redis store;
# about 4 minutes, kept out of make test. The Celery provider is the celery extra, added to the venv here.
CELERY_STAMP := $(VENV)/.installed-celery-$(AIRFLOW_VERSION)

$(CELERY_STAMP): $(STAMP)
	$(PY) -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)" -e ".[dev,redis,sandbox,celery]"
	touch $(CELERY_STAMP)

celery: $(CELERY_STAMP)
	$(VENV)/bin/pytest -m celery -s tests/e2e/test_celery.py $(PYTEST_ARGS)

e2e: venv
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

demo: venv
	$(PY) scripts/demo.py

# the example DAGs in Airflow's UI against a sandbox (airflow standalone, port CRM_DEMO_UI_PORT or 8080),
# until Ctrl+C: prints the URL and the login
demo-ui: venv
	$(PY) scripts/demo_ui.py

bench: venv
	$(PY) -m benchmarks $(BENCH_ARGS)

sandbox: venv
	$(VENV)/bin/crm-sandbox --port 8765

# each version in its own .venv-compat-<version>, the provider installed from a wheel of this checkout
compat:
	$(PYTHON) scripts/compat.py $(COMPAT_AIRFLOW_VERSIONS)

clean:
	rm -rf $(VENV) .venv-compat-* .compat .demo .demo-ui build/screenshots .mypy_cache .ruff_cache .pytest_cache
