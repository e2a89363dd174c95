"""A real Airflow installation for end-to-end tests: its own AIRFLOW_HOME with a migrated SQLite DB."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


class AirflowEnv:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CRM__RATE_LIMIT_DIR": str(home / "ratelimit"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [AIRFLOW, *args], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"airflow {' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
                f"STDERR:\n{proc.stderr[-4000:]}"
            )
        return proc


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowEnv]:
    env = AirflowEnv(tmp_path_factory.mktemp("airflow-home"))
    env.run("db", "migrate")
    yield env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sandbox_connections(info: dict[str, Any], pipefy_id: str = "pipefy_default",
                        pipedrive_id: str = "pipedrive_default", *, pipefy_extra: dict[str, Any] | None = None,
                        pipedrive_extra: dict[str, Any] | None = None) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` variables pointing two connection ids at a sandbox (the sandbox's default
    tokens; extras, e.g. a plan or a limit override, replace the defaults)."""
    pipefy: dict[str, Any] = {"conn_type": "pipefy", "host": info["pipefy_url"], "password": "sandbox-pipefy-token"}
    if pipefy_extra:
        pipefy["extra"] = pipefy_extra
    return {
        f"AIRFLOW_CONN_{pipefy_id.upper()}": json.dumps(pipefy),
        f"AIRFLOW_CONN_{pipedrive_id.upper()}": json.dumps({
            "conn_type": "pipedrive", "host": info["pipedrive_url"], "password": "sandbox-pipedrive-token",
            "extra": pipedrive_extra or {"plan": "ultimate", "seats": 5}}),
    }


class StandaloneAirflow:
    """``airflow standalone`` (scheduler, dag processor, triggerer, API server) on free loopback ports,
    with Airflow's default configuration apart from where things live, and helpers to watch it."""

    def __init__(self, root: Path, dags: Path, env: dict[str, str]) -> None:
        self.root = root
        self.home = root / "home"
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__TRIGGERER__TRIGGERER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # a two-core CI machine running every component and several tasks answers the task
            # processes' calls in more than the default 5 s at times (3.1.1+; ignored before)
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
            "AIRFLOW__CRM__RATE_LIMIT_DIR": str(root / "ratelimit"),
            **env,
        }
        self.env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
        self.log_path = root / "standalone.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StandaloneAirflow:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([AIRFLOW, "standalone"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for_dags(self, *dag_ids: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while True:
            listed = self.cli("dags", "list").stdout
            if all(dag_id in listed for dag_id in dag_ids):
                return
            assert self.alive() and time.monotonic() < deadline, self.tail()
            time.sleep(3)

    def wait_for_api(self, timeout: float = 180) -> None:
        """Until the API server answers: tasks started before it listens fail at once (connection refused)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert self.alive() and time.monotonic() < deadline, self.tail()
            time.sleep(2)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the metadata database (SQLite) directly: far quicker than a CLI call per poll."""
        for _ in range(20):
            try:
                with closing(sqlite3.connect(self.home / "airflow.db", timeout=10)) as db:
                    return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError:  # locked by a writer, or not migrated yet
                time.sleep(0.5)
        raise AssertionError(f"metadata database unreadable: {sql}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT run_id, state, run_type, logical_date, data_interval_start, data_interval_end "
                          "FROM dag_run WHERE dag_id = ? ORDER BY run_after, id", dag_id)
        keys = ("run_id", "state", "run_type", "logical_date", "data_interval_start", "data_interval_end")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def return_value(self, dag_id: str, run_id: str, task_id: str) -> Any:
        rows = self.query("SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? "
                          "AND key = 'return_value'", dag_id, run_id, task_id)
        value = rows[0][0] if rows else None
        while isinstance(value, (str, bytes)):  # stored as JSON text (once or twice encoded)
            value = json.loads(value)
        return value

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "".join(p.read_text(errors="replace") for p in sorted(folder.rglob("*.log")))

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = next((r for r in self.runs(dag_id) if r["run_id"] == run_id), None)
            if run and run["state"] in ("success", "failed"):
                return run
            assert self.alive() and time.monotonic() < deadline, f"{dag_id} {run_id}: {run}\n{self.tail()}"
            time.sleep(2)
