"""TensorBoard's own HTTP API over a log folder, as its web page reads it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """GET and POST against a running ``tensorboard`` at ``url``."""

    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **query: str) -> Any:
        address = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(address, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def scalar_tags(self) -> dict[str, list[str]]:
        """Run -> its scalar tags (``/data/plugin/scalars/tags``)."""
        return {run: sorted(tags) for run, tags in self.get("/data/plugin/scalars/tags").items()}

    def points(self, run: str, tag: str) -> list[tuple[int, float]]:
        """``(step, value)`` of one scalar series."""
        return [
            (step, value) for _, step, value in self.get("/data/plugin/scalars/scalars", run=run, tag=tag)
        ]

    def experiment(self) -> dict[str, Any]:
        return self.post("/data/plugin/hparams/experiment", {"experimentName": ""})

    def session_groups(self) -> list[dict[str, Any]]:
        body = {
            "experimentName": "",
            "allowedStatuses": STATUSES,
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 1000,
        }
        return self.post("/data/plugin/hparams/session_groups", body).get("sessionGroups", [])


@contextmanager
def tensorboard(logdir: Path, timeout: float = 90) -> Iterator[Served]:
    """``tensorboard --logdir LOGDIR --port <free> --load_fast=false``, its data loaded once before
    it answers; stopped on leaving."""
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--load_fast=false",
        "--reload_task",
        "blocking",
        "--reload_interval",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    served = Served(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                served.get("/data/runs")
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None:
                    raise RuntimeError(f"tensorboard exited: {process.stderr.read()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
