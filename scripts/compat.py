"""``make compat``: the provider on each Airflow it claims, each in its own virtual environment.

For every Airflow version given (default: the oldest and the newest supported) this script
- creates ``.venv-compat-<version>`` (reused while pyproject.toml is unchanged) with that Airflow and the
  provider's wheel built from this checkout, under a pip constraint so Airflow itself is never moved;
- on a fresh SQLite ``AIRFLOW_HOME`` checks that
  (a) ``airflow providers get airflow-provider-crm`` shows the provider,
  (b) both connection types are registered with every declared form field (tests/compat/check_forms.py),
      ``airflow providers hooks`` imports both hooks and ``airflow connections add --conn-type`` takes them,
  (c) the example DAGs in dags/ parse with no import errors,
  (d) a Pipedrive export and a Pipefy create-card task run against ``crm-sandbox`` (installed with the
      wheel's ``sandbox`` extra; ``airflow dags test`` on tests/compat/dags/crm_compat_check.py).
It prints a PASS or FAIL line per check (with the command's last output lines on a failure) and a
summary, and exits 1 if anything failed. Standard library only: it runs with the system Python.

    python3 scripts/compat.py 3.0.6 3.3.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".compat"
DEFAULT_VERSIONS = ["3.0.6", "3.3.2"]
PROVIDER = "airflow-provider-crm"
EXAMPLE_DAG_IDS = sorted(
    m for p in (REPO / "dags").glob("*.py") for m in re.findall(r'dag_id="([^"]+)"', p.read_text())
)
# Airflow pins only lower bounds; a release resolved today gets libraries newer than it was built with.
# Airflow's answer is its constraints file per release (raw.githubusercontent.com/apache/airflow/
# constraints-<version>/...), which CI cannot reach. Where the newest libraries break Airflow itself,
# these caps hold the compat venv to ones of the release's time. 3.0.6 with fastapi 0.165 / cadwyn 9
# answers every task's start (PATCH /task-instances/<id>/run) with 422; 3.2.2 fails it with
# "PydanticUserError: Model 'TITerminalStatePayload' needs a discriminator field" (fastapi 0.165 / cadwyn 9)
# and, with those capped, "'State' object has no attribute 'svcs_registry'" (svcs 26). Any DAG, provider or
# not. 3.1 caps fastapi itself (<0.118); 3.3.2 caps it (<0.137) and works with svcs 26.
ERA_PINS = {"3.0.": ["fastapi<0.117", "cadwyn<5.5"], "3.2.": ["fastapi<0.137", "cadwyn<8", "svcs<26"]}
HOOKS = {"pipefy": "airflow_provider_crm.hooks.pipefy.PipefyHook",
         "pipedrive": "airflow_provider_crm.hooks.pipedrive.PipedriveHook"}


def log(line: str) -> None:
    print(line, flush=True)


def tail(text: str, lines: int = 25) -> str:
    kept = [x for x in text.splitlines() if x.strip()][-lines:]
    return "\n".join(f"      | {x}" for x in kept)


def last_json_list(output: str) -> list:
    """The JSON list a CLI command printed with ``-o json``, among its log and warning lines."""
    for line in reversed(output.splitlines()):
        if line.startswith("["):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, list):
                return value
    raise ValueError("no JSON list in the output")


def provider_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert match, "no version in pyproject.toml"
    return match.group(1)


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return subprocess.CompletedProcess(cmd, 124, out, f"timed out after {timeout:.0f} s")


class Failed(Exception):
    """A step failed; the message says what, and carries the output's tail."""


def build_wheel(python: Path) -> Path:
    out = WORK / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    proc = run([str(python), "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)], cwd=WORK)
    wheels = list(out.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise Failed(f"building the wheel failed\n{tail(proc.stdout + proc.stderr)}")
    return wheels[0]


class Venv:
    def __init__(self, version: str) -> None:
        self.version = version
        self.path = REPO / f".venv-compat-{version}"
        self.bin = self.path / "bin"
        self.python = self.bin / "python"
        self.stamp = self.path / ".compat-stamp"
        # Airflow 3.0's connection form is built from wtforms fields: without the FAB provider (and so
        # wtforms and flask-appbuilder) no provider's extra fields appear. 3.1+ build it without FAB.
        self.requirement = (f"apache-airflow[fab]=={version}" if version.startswith("3.0.")
                            else f"apache-airflow=={version}")

        self.pins = [pin for prefix, pins in ERA_PINS.items() if version.startswith(prefix) for pin in pins]

    def wanted_stamp(self) -> str:
        digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
        return f"{self.requirement} {' '.join(self.pins)} {digest} {sys.version_info[:2]}"

    def create(self) -> bool:
        """Make sure the venv exists with that Airflow; True when it was (re)built."""
        if self.stamp.exists() and self.stamp.read_text() == self.wanted_stamp() and self.python.exists():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        proc = run([sys.executable, "-m", "venv", str(self.path)])
        if proc.returncode != 0:
            raise Failed(f"python -m venv failed\n{tail(proc.stdout + proc.stderr)}")
        proc = run([str(self.python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], cwd=WORK)
        if proc.returncode != 0:
            raise Failed(f"upgrading pip failed\n{tail(proc.stdout + proc.stderr)}")
        return True

    def install(self, wheel: Path, rebuilt: bool) -> None:
        constraints = WORK / f"constraints-{self.version}.txt"
        # the constraint keeps pip from "upgrading" Airflow to satisfy anything else
        constraints.write_text("\n".join([f"apache-airflow=={self.version}",
                                           f"apache-airflow-core=={self.version}", *self.pins, ""]))
        if rebuilt:
            # the sandbox extra: (d) runs crm-sandbox from this venv
            cmd = [str(self.python), "-m", "pip", "install", "--quiet", self.requirement, f"{wheel}[sandbox]",
                   "-c", str(constraints)]
        else:  # same dependencies as last time: only this checkout's code changed
            cmd = [str(self.python), "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                   str(wheel)]
        proc = run(cmd, cwd=WORK, timeout=1200)
        if proc.returncode != 0:
            raise Failed(f"pip install failed\n{tail(proc.stdout + proc.stderr)}")
        installed = run([str(self.python), "-c", "import airflow; print(airflow.__version__)"], cwd=WORK)
        if installed.stdout.strip() != self.version:
            raise Failed(f"pip installed Airflow {installed.stdout.strip()!r}, not {self.version}\n"
                         f"{tail(installed.stderr)}")
        self.stamp.write_text(self.wanted_stamp())


class Checks:
    def __init__(self, venv: Venv) -> None:
        self.venv = venv
        self.base = WORK / venv.version
        shutil.rmtree(self.base, ignore_errors=True)
        self.home = self.base / "home"
        self.home.mkdir(parents=True)
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith("AIRFLOW") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env = {
            **inherited,
            "PATH": f"{venv.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(venv.path),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__CRM__RATE_LIMIT_DIR": str(self.base / "ratelimit"),
        }
        self.results: list[tuple[str, bool]] = []

    def airflow(self, *args: str, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
        # cwd is a scratch directory: the checkout must not shadow the installed package
        return run([str(self.venv.bin / "airflow"), *args], env={**self.env, **(env or {})}, cwd=self.home,
                   timeout=timeout)

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.results.append((name, ok))
        log(f"  {'PASS' if ok else 'FAIL'} [{self.venv.version}] {name}: {detail}")

    def step(self, name: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail = fn()
        except Failed as exc:
            self.record(name, False, f"{exc} ({time.monotonic() - started:.0f} s)")
        else:
            self.record(name, True, f"{detail} ({time.monotonic() - started:.0f} s)")

    @staticmethod
    def expect(proc: subprocess.CompletedProcess[str], what: str) -> str:
        output = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise Failed(f"{what} exited {proc.returncode}\n{tail(output)}")
        return output

    # -- the checks ----------------------------------------------------------------------------------
    def db_migrate(self) -> str:
        self.expect(self.airflow("db", "migrate"), "airflow db migrate")
        return "fresh SQLite metadata database"

    def provider_get(self) -> str:
        output = self.expect(self.airflow("providers", "get", PROVIDER), f"airflow providers get {PROVIDER}")
        version = provider_version()
        if not re.search(rf"{re.escape(PROVIDER)}\s*\|\s*{re.escape(version)}\b", output):
            raise Failed(f"{PROVIDER} {version} not in the output\n{tail(output)}")
        return f"{PROVIDER} {version}"

    def connection_forms(self) -> str:
        proc = run([str(self.venv.python), str(REPO / "tests" / "compat" / "check_forms.py")], env=self.env,
                   cwd=self.home, timeout=300)
        output = self.expect(proc, "tests/compat/check_forms.py")
        found = [x.strip() for x in output.splitlines() if x.startswith("  ")]
        return "every declared field shown, secrets as passwords:\n" + "\n".join(f"      {x}" for x in found)

    def hooks_and_conn_add(self) -> str:
        output = self.expect(self.airflow("providers", "hooks"), "airflow providers hooks")
        if "Error when importing hook" in output:
            bad = [x.split("|")[0].strip() for x in output.splitlines() if "Error when importing hook" in x]
            raise Failed(f"`airflow providers hooks`: Error when importing hook! for {', '.join(bad)}")
        rows = [line for line in output.splitlines() if any(c in line for c in HOOKS.values())]
        if len(rows) != len(HOOKS):
            raise Failed(f"`airflow providers hooks` lists {len(rows)} of our hooks\n{tail(output)}")
        for conn_type in HOOKS:
            add = self.expect(self.airflow("connections", "add", f"compat_{conn_type}", "--conn-type", conn_type,
                                           "--conn-password", "compat-token", "--conn-extra",
                                           '{"plan": "ultimate"}'), f"airflow connections add --conn-type {conn_type}")
            # 3.0 echoes the URI (pipefy://...), 3.3 a table with a conn_type column
            taken = f"{conn_type}://" in add or re.search(rf"\|\s*{conn_type}\s*\|", add)
            if "invalid" in add.lower() or "generic" in add.lower() or "Successfully added" not in add or not taken:
                raise Failed(f"--conn-type {conn_type} was not taken as is\n{tail(add)}")
        return f"both hooks import; `connections add --conn-type {'/'.join(HOOKS)}` takes them without warning"

    def example_dags(self) -> str:
        # --local parses the files here; without it the command reads the (still empty) database
        errors = self.airflow("dags", "list-import-errors", "--local", "-o", "json")
        listed = self.airflow("dags", "list", "--local", "-o", "json", "--columns", "dag_id")
        try:
            found = last_json_list(errors.stdout)
            dag_ids = sorted(d["dag_id"] for d in last_json_list(listed.stdout))
        except (ValueError, KeyError, TypeError) as exc:
            raise Failed(f"unreadable CLI output ({exc})\n{tail(errors.stdout + errors.stderr + listed.stdout)}") \
                from exc
        if found:
            raise Failed(f"{len(found)} import error(s):\n" + "\n".join(
                f"      | {e.get('filepath') or e.get('filename')}: "
                f"{str(e.get('error') or e.get('stack_trace') or e).strip().splitlines()[-1]}" for e in found))
        if dag_ids != EXAMPLE_DAG_IDS:
            raise Failed(f"parsed {dag_ids}, expected {EXAMPLE_DAG_IDS}")
        return f"{len(dag_ids)} DAGs parsed, no import errors ({', '.join(dag_ids)})"

    def tasks_against_sandbox(self) -> str:
        info_file = self.base / "sandbox.json"
        with (self.base / "sandbox.log").open("w") as sandbox_log:
            # answers of 50 ms: the export reads in parallel slices and forks its page encoder, as it does
            # for users on a fast plan (clients/pipedrive/export_lines.py)
            sandbox = subprocess.Popen([str(self.venv.bin / "crm-sandbox"), "--port", "0", "--info-file",
                                        str(info_file), "--latency-ms", "50"], stdout=sandbox_log,
                                       stderr=subprocess.STDOUT,
                                       cwd=self.home, env=self.env)
        try:
            deadline = time.monotonic() + 30
            while not info_file.exists():
                if sandbox.poll() is not None or time.monotonic() > deadline:
                    raise Failed(f"crm-sandbox did not start\n{tail((self.base / 'sandbox.log').read_text())}")
                time.sleep(0.1)
            time.sleep(0.2)
            info = json.loads(info_file.read_text())
            return self._run_compat_dag(info)
        finally:
            sandbox.terminate()
            try:
                sandbox.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sandbox.kill()

    def _run_compat_dag(self, info: dict) -> str:
        root = info["pipedrive_url"].rsplit("/pipedrive", 1)[0]
        mark = f"{self.venv.version}-{int(time.time())}"
        output_dir = self.base / "output"
        env = {
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "tests" / "compat" / "dags"),
            "CRM_COMPAT_OUTPUT": str(output_dir),
            "CRM_COMPAT_MARK": mark,
            "AIRFLOW_CONN_PIPEFY_DEFAULT": json.dumps({
                "conn_type": "pipefy", "host": info["pipefy_url"], "password": next(iter(info["pipefy_tokens"]))}),
            "AIRFLOW_CONN_PIPEDRIVE_DEFAULT": json.dumps({
                "conn_type": "pipedrive", "host": info["pipedrive_url"],
                "password": next(iter(info["pipedrive_tokens"])), "extra": {"plan": "ultimate", "seats": 5}}),
        }
        logical = time.strftime("%Y-%m-%dT00:00:00+00:00", time.gmtime())
        proc = self.airflow("dags", "test", "crm_compat_check", logical, env=env)
        output = self.expect(proc, "airflow dags test crm_compat_check")
        if re.search(r"state=failed|Task failed|Marking task as FAILED", output, re.I):
            raise Failed(f"a task failed\n{tail(output, 40)}")
        export = output_dir / "pipedrive" / "organizations.jsonl"
        with urllib.request.urlopen(f"{root}/pipedrive/_state/organizations", timeout=10) as answer:
            live = [o for o in json.load(answer) if not o.get("is_deleted") and not o.get("is_archived")]
        exported = len(export.read_text().splitlines()) if export.exists() else 0
        if not live or exported != len(live):
            raise Failed(f"exported {exported} organizations, the sandbox has {len(live)}\n{tail(output, 40)}")
        forked = re.search(r"Encoding export pages in (\d) worker process", output)
        if len(os.sched_getaffinity(0)) > 1 and not forked:
            raise Failed(f"the export did not encode its pages in a worker process\n{tail(output, 40)}")
        with urllib.request.urlopen(f"{root}/pipefy/_state", timeout=10) as answer:
            cards = [c for c in json.load(answer)["cards"] if c.get("title") == f"Compat check {mark}"]
        if len(cards) != 1:
            raise Failed(f"{len(cards)} cards titled 'Compat check {mark}' in the sandbox\n{tail(output, 40)}")
        return (f"Pipedrive export wrote {exported} organizations"
                f"{f' through {forked.group(1)} worker process(es)' if forked else ''}, Pipefy card "
                f"{cards[0]['id']} created in pipe 301")

    def all(self) -> bool:
        self.step("airflow db migrate", self.db_migrate)
        self.step("(a) provider discovered", self.provider_get)
        self.step("(b) connection forms", self.connection_forms)
        self.step("(b) hooks and conn types", self.hooks_and_conn_add)
        self.step("(c) example DAGs import", self.example_dags)
        self.step("(d) tasks against the sandbox", self.tasks_against_sandbox)
        return all(ok for _, ok in self.results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", default=DEFAULT_VERSIONS, help="Airflow versions")
    parser.add_argument("--fresh", action="store_true", help="rebuild the virtual environments")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    summary: list[tuple[str, bool, str]] = []
    wheel: Path | None = None
    for version in args.versions:
        started = time.monotonic()
        log(f"== Airflow {version}: {REPO.name}/.venv-compat-{version}")
        venv = Venv(version)
        if args.fresh:
            shutil.rmtree(venv.path, ignore_errors=True)
        try:
            rebuilt = venv.create()
            wheel = wheel or build_wheel(venv.python)
            venv.install(wheel, rebuilt)
        except Failed as exc:
            log(f"  FAIL [{version}] install: {exc}")
            summary.append((version, False, f"install failed after {time.monotonic() - started:.0f} s"))
            continue
        installed = time.monotonic() - started
        log(f"  PASS [{version}] install: {' '.join([venv.requirement, *venv.pins])} + {wheel.name}[sandbox] "
            f"({'new venv' if rebuilt else 'venv reused'}, {installed:.0f} s)")
        checks = Checks(venv)
        ok = checks.all()
        failed = [name for name, passed in checks.results if not passed]
        total = time.monotonic() - started
        summary.append((version, ok, f"{total:.0f} s (install {installed:.0f} s, checks {total - installed:.0f} s)"
                        + ("" if ok else f"; failed: {', '.join(failed)}")))
    log("== compatibility summary")
    for version, ok, detail in summary:
        log(f"  {'PASS' if ok else 'FAIL'} Airflow {version}: {detail}")
    return 0 if summary and all(ok for _, ok, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
