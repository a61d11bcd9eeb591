"""The package as a user installs it: build the wheel, install it into a fresh virtualenv, and
run the signup example end to end with the installed `stepwise` command (not this checkout)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from procs import free_port, wait_until

ROOT = Path(__file__).parents[2]


@pytest.mark.timeout(600)
def test_the_wheel_installs_and_runs_an_example(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(dist), str(ROOT)], check=True, timeout=300)
    [wheel] = dist.glob("stepwise_engine-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   timeout=300)
    stepwise = str(venv / "bin" / "stepwise")
    helped = subprocess.run([stepwise, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "dev" in helped.stdout and "server" in helped.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import stepwise, importlib.metadata as m; print(stepwise.__file__);"
                            "print(m.version('stepwise-engine'))"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert str(venv) in where.stdout, where.stdout  # the installed copy, not this checkout

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    shutil.copytree(ROOT / "examples" / "signup", app_dir / "signup")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "dev.log", "w") as log:
        proc = subprocess.Popen([stepwise, "dev", "signup:app", "--port", str(port)],
                                cwd=app_dir, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
                return bool(json.loads(response.read())["ok"])
        wait_until(healthy, 60, "the installed dev server")
        sent = subprocess.run([stepwise, "send", "user.signup",
                               '{"user_id": 42, "email": "ada@example.com"}', "--url", base],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr

        def welcomed() -> bool:
            with urllib.request.urlopen(base + "/api/v1/runs", timeout=5) as response:
                runs = json.loads(response.read())["runs"]
            return any(r["function_id"] == "send-welcome-email" and r["status"] == "completed"
                       for r in runs)
        began = time.monotonic()
        wait_until(welcomed, 60, "the welcome email run")
        assert time.monotonic() - began < 60
        for asset in ("/runs", "/assets/app.js", "/assets/vendor/uPlot.iife.min.js"):
            with urllib.request.urlopen(base + asset, timeout=5) as response:
                assert response.status == 200 and response.read(), asset  # in the wheel
    finally:
        proc.terminate()
        proc.wait(30)
