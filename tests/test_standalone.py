"""`bin/airflow standalone` as a user runs it: it comes up healthy, and Ctrl+C (SIGINT) or SIGTERM
to it leaves nothing running (no scheduler, API server, dag-processor, triggerer or worker)."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as response:
            return json.load(response)["scheduler"]["status"] == "healthy"
    except (OSError, ValueError, KeyError):
        return False


def airflow_processes(home: str) -> list[str]:
    """Processes whose environment holds this AIRFLOW_HOME (every component of this standalone)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if f"AIRFLOW_HOME={home}".encode() in handle.read().split(b"\0"):
                    with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                        command = cmd.read().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{pid}: {command}")
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_standalone_stops_completely(tmp_path, sig, status):
    home, port = str(tmp_path / "airflow-home"), free_port()
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/"}
    log = open(tmp_path / "standalone.log", "wb")
    # restore_signals + a fresh session: SIGINT is delivered as a terminal's Ctrl+C would be
    process = subprocess.Popen([os.path.join(ROOT, "bin", "airflow"), "standalone"], env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not healthy(port):
            assert process.poll() is None, (tmp_path / "standalone.log").read_text()[-3000:]
            time.sleep(2)
        assert healthy(port), "standalone did not come up in 300 s"
        assert len(airflow_processes(home)) >= 4  # scheduler, api-server, dag-processor, triggerer, ...
        process.send_signal(sig)
        assert process.wait(timeout=90) == status
        time.sleep(1)
        assert airflow_processes(home) == []
        assert not healthy(port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for line in airflow_processes(home):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
