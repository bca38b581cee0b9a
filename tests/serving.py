"""`mlflow models serve` on 127.0.0.1 for tests: start a served model, send it requests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serving(model_uri: str) -> Iterator[str]:
    """The URL of ``model_uri`` served by ``mlflow models serve`` on a free local port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
            "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def invoke(url: str, body: dict, wait_s: float = 90):
    """POST ``body`` (MLflow's JSON: ``inputs`` or ``dataframe_split``, ``params``) to
    ``/invocations`` once the server answers ``/ping``; return the predictions."""
    deadline = time.time() + wait_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    data = json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"]
