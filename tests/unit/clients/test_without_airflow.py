"""The API clients are plain Python: every module under clients/ imports, and nothing of Airflow loads,
in an interpreter where importing Airflow fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import importlib, pkgutil, sys

    class NoAirflow:
        def find_spec(self, name, path=None, target=None):
            if name == "airflow" or name.startswith("airflow."):
                raise ImportError(f"Airflow is not available here ({name})")
            return None

    sys.meta_path.insert(0, NoAirflow())
    import airflow_provider_crm.clients as clients
    names = [m.name for m in pkgutil.walk_packages(clients.__path__, clients.__name__ + ".")]
    for name in names:
        importlib.import_module(name)
    assert not [m for m in sys.modules if m == "airflow" or m.startswith("airflow.")]
    print(len(names))
""")


def test_every_client_module_imports_without_airflow():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) >= 10  # the Pipedrive and Pipefy client modules were all walked
