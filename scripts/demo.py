"""``make demo``: the example DAGs in a real Airflow against a local sandbox, then a short summary.

Starts ``crm-sandbox``, points the connections at it through environment variables, migrates a
SQLite metadata database in .demo/airflow, runs every example DAG with ``airflow dags test`` and
prints what moved. It stops the sandbox it started and can be run again at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / ".demo"
BIN = Path(sys.executable).parent
# today's run: its data interval holds the deals the "sales team" wins just before
LOGICAL_DATE = time.strftime("%Y-%m-%dT00:00:00+00:00", time.gmtime())
DAG_CONF = {"crm_won_deals_onboarding": {"simulate_onboarding_team": True, "max_deals": 3}}


def sales_team_wins_deals(info: dict, deal_ids: list[int]) -> None:
    """What a salesperson does in Pipedrive's UI, so that today's interval has won deals."""
    token = next(iter(info["pipedrive_tokens"]))
    for deal_id in deal_ids:
        request = urllib.request.Request(
            f"{info['pipedrive_url']}/api/v2/deals/{deal_id}", method="PATCH",
            data=json.dumps({"status": "won"}).encode(),
            headers={"x-api-token": token, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).read()


def start_sandbox() -> tuple[subprocess.Popen, dict]:
    info_file = DEMO / "sandbox.json"
    info_file.unlink(missing_ok=True)
    log = (DEMO / "sandbox.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "crm-sandbox"), "--port", "0", "--info-file", str(info_file), "--latency-ms", "5"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not info_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"crm-sandbox did not start; see {DEMO / 'sandbox.log'}")
        time.sleep(0.1)
    return proc, json.loads(info_file.read_text())


def airflow_env(info: dict) -> dict[str, str]:
    home = DEMO / "airflow"
    pipefy_token = next(iter(info["pipefy_tokens"]))
    pipedrive_token = next(iter(info["pipedrive_tokens"]))
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CRM__RATE_LIMIT_DIR": str(DEMO / "ratelimit"),
        "CRM_DEMO_OUTPUT": str(DEMO / "output"),
        "AIRFLOW_CONN_PIPEFY_DEFAULT": json.dumps({
            "conn_type": "pipefy", "host": info["pipefy_url"], "password": pipefy_token,
            "extra": {"plan": "unlimited"},
        }),
        "AIRFLOW_CONN_PIPEDRIVE_DEFAULT": json.dumps({
            "conn_type": "pipedrive", "host": info["pipedrive_url"], "password": pipedrive_token,
            "extra": {"plan": "ultimate", "seats": 5},
        }),
    }


def run(cmd: list[str], env: dict[str, str], log_name: str) -> int:
    with (DEMO / "logs" / log_name).open("w") as log:
        return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def xcom_summaries(db: Path) -> list[tuple[str, str, object]]:
    con = sqlite3.connect(db)
    rows = con.execute("SELECT dag_id, task_id, value FROM xcom WHERE key = 'return_value' ORDER BY dag_id, task_id").fetchall()
    out = []
    for dag_id, task_id, value in rows:
        with contextlib.suppress(TypeError, ValueError):
            value = json.loads(value)
        out.append((dag_id, task_id, value))
    return out


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "logs").mkdir(parents=True)
    sandbox, info = start_sandbox()
    print(f"sandbox: {info['control_url'].rsplit('/', 1)[0]} (for the length of the demo)")
    failures = []
    try:
        env = airflow_env(info)
        sales_team_wins_deals(info, [1, 5, 9])
        if run([str(BIN / "airflow"), "db", "migrate"], env, "db-migrate.log"):
            raise SystemExit(f"airflow db migrate failed; see {DEMO / 'logs' / 'db-migrate.log'}")
        dag_ids = sorted(
            match for path in (REPO / "dags").glob("*.py")
            for match in re.findall(r'dag_id="([^"]+)"', path.read_text())
        )
        for dag_id in dag_ids:
            t0 = time.monotonic()
            cmd = [str(BIN / "airflow"), "dags", "test", dag_id, LOGICAL_DATE]
            if dag_id in DAG_CONF:
                cmd += ["--conf", json.dumps(DAG_CONF[dag_id])]
            code = run(cmd, env, f"{dag_id}.log")
            status = "ok" if code == 0 else f"FAILED (see .demo/logs/{dag_id}.log)"
            if code:
                failures.append(dag_id)
            print(f"  {dag_id:<45} {status} in {time.monotonic() - t0:.0f}s")
        with urllib.request.urlopen(info["control_url"] + "/counters") as resp:
            counters = json.load(resp)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)

    print("\nWhat moved (task summaries):")
    waits = 0
    for dag_id, task_id, value in xcom_summaries(DEMO / "airflow" / "airflow.db"):
        if isinstance(value, dict):
            waits += int(value.get("rate_limit", {}).get("waits", 0) if isinstance(value.get("rate_limit"), dict) else value.get("waits", 0) or 0)
            keys = ("records", "created", "updated", "unchanged", "failed", "path", "id")
            brief = ", ".join(f"{k}={value[k]}" for k in keys if value.get(k) not in (None, ""))
            print(f"  {dag_id}.{task_id}: {brief or json.dumps(value)[:120]}")
    files = sorted(p for p in (DEMO / "output").rglob("*") if p.is_file()) if (DEMO / "output").exists() else []
    print(f"\nFiles written ({len(files)}):")
    for path in files:
        print(f"  {path.relative_to(REPO)}  {path.stat().st_size:,} bytes")
    print(f"\nAPI requests: {counters['requests']}")
    print(f"HTTP 429s: {sum(counters['rate_limited'].values())}   rate-limit waits: {waits}")
    print(f"Demo finished in {time.monotonic() - started:.0f}s; {len(dag_ids) - len(failures)}/{len(dag_ids)} DAGs green.")
    home = (DEMO / "airflow").relative_to(REPO)
    print(f"\nThe sandbox has stopped; the runs, their task logs and summaries are kept in {home}. To browse "
          "them in Airflow's UI:\n"
          f"  AIRFLOW_HOME={home} AIRFLOW__CORE__DAGS_FOLDER=dags AIRFLOW__CORE__LOAD_EXAMPLES=False "
          f"{(BIN / 'airflow').relative_to(REPO)} standalone\n"
          f"  then open http://localhost:8080 (user admin; the password is in "
          f"{home}/simple_auth_manager_passwords.json.generated). Runs started from there need `make sandbox` "
          "running and its connections; `make demo-ui` starts Airflow, a sandbox and the connections in one go.")
    return 1 if failures or not dag_ids else 0


if __name__ == "__main__":
    sys.exit(main())
