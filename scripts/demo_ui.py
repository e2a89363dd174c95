"""``make demo-ui``: the example DAGs in Airflow's UI against a local sandbox, until Ctrl+C.

Starts ``crm-sandbox`` (with a little latency, so that exports log progress lines) and
``airflow standalone`` in .demo-ui/, stores the connections ``pipefy_default`` and ``pipedrive_default``
in the metadata database (so that they show, and can be tested, under Admin -> Connections), then
prints the UI's address and login. Trigger a DAG from the UI and open its task logs and extra links
(they lead to the sandbox's read-only pages). Ctrl+C stops both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / ".demo-ui"
BIN = Path(sys.executable).parent
PORT = int(os.environ.get("CRM_DEMO_UI_PORT", "8080"))
LATENCY_MS = os.environ.get("CRM_DEMO_UI_LATENCY_MS", "300")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start; see {log}")
        time.sleep(1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def main() -> int:
    if not _free(PORT):
        raise SystemExit(f"port {PORT} is taken: set CRM_DEMO_UI_PORT to another one")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop both on SIGTERM too
    (HOME / "airflow").mkdir(parents=True, exist_ok=True)
    info_file = HOME / "sandbox.json"
    info_file.unlink(missing_ok=True)
    sandbox_log = HOME / "sandbox.log"
    sandbox = subprocess.Popen([str(BIN / "crm-sandbox"), "--port", "0", "--info-file", str(info_file),
                                "--latency-ms", LATENCY_MS, "--deals", "5000"],
                               stdout=sandbox_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    airflow: subprocess.Popen | None = None
    try:
        _wait("crm-sandbox", info_file.exists, sandbox, sandbox_log, 60)
        info = json.loads(info_file.read_text())
        home = HOME / "airflow"
        url = f"http://localhost:{PORT}"
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__API__PORT": str(PORT),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{PORT}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CRM__RATE_LIMIT_DIR": str(HOME / "ratelimit"),
            "CRM_DEMO_OUTPUT": str(HOME / "output"),
        }
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True,
                       stdout=(HOME / "db-migrate.log").open("w"), stderr=subprocess.STDOUT)
        for conn_id, conn_type, host, token, extra in (
                ("pipefy_default", "pipefy", info["pipefy_url"], next(iter(info["pipefy_tokens"])),
                 {"plan": "unlimited"}),
                ("pipedrive_default", "pipedrive", info["pipedrive_url"], next(iter(info["pipedrive_tokens"])),
                 {"plan": "ultimate", "seats": 5})):
            subprocess.run([str(BIN / "airflow"), "connections", "delete", conn_id], env=env,
                           capture_output=True)
            subprocess.run([str(BIN / "airflow"), "connections", "add", conn_id, "--conn-type", conn_type,
                            "--conn-host", host, "--conn-password", token, "--conn-extra", json.dumps(extra)],
                           env=env, check=True, capture_output=True)
        airflow_log = HOME / "standalone.log"
        airflow = subprocess.Popen([str(BIN / "airflow"), "standalone"], env=env, stdout=airflow_log.open("w"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        print(f"sandbox: {info['control_url'].rsplit('/', 1)[0]}; starting Airflow (a minute or two; log: "
              f"{airflow_log.relative_to(REPO)}) ...", flush=True)
        _wait("airflow standalone", lambda: _answers(f"http://127.0.0.1:{PORT}/api/v2/monitor/health"), airflow,
              airflow_log, 300)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        _wait("the admin password", passwords.exists, airflow, airflow_log, 60)
        login = json.loads(passwords.read_text())
        user, password = next(iter(login.items()))
        print(f"\nAirflow UI: {url}\n  login: {user} / {password} (from {passwords.relative_to(REPO)})\n"
              "  DAGs: unpause and trigger crm_nightly_exports or crm_contacts_upsert, then open a task: Logs "
              "shows progress and the summary, the extra link opens the sandbox's page of the records.\n"
              "  Admin -> Connections: pipefy_default and pipedrive_default point at the sandbox (Test works).\n"
              "Ctrl+C stops Airflow and the sandbox.", flush=True)
        while airflow.poll() is None:
            time.sleep(1)
        print(f"airflow standalone exited; see {airflow_log}")
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (airflow, sandbox):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        print("stopped Airflow and the sandbox", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
