"""Offline detected once and fast (issue 23.7): one HEAD request decides, and an unreachable Hub
switches the process to the cache before any Hub client retries."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from empo.hub import OFFLINE_VARIABLES, offline_unless_reachable


@pytest.fixture
def online_env(monkeypatch):
    for name in (*OFFLINE_VARIABLES, "HF_ENDPOINT"):
        monkeypatch.setenv(name, "")  # recorded, so the test leaves the environment as it was
        monkeypatch.delenv(name)
    return monkeypatch


def test_an_unreachable_hub_makes_the_process_offline_at_once(online_env):
    import os

    online_env.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    start = time.monotonic()
    assert offline_unless_reachable(timeout_s=3.0)
    assert time.monotonic() - start < 3.0
    assert all(os.environ[name] == "1" for name in OFFLINE_VARIABLES)


def test_a_hub_that_answers_leaves_the_process_online(online_env):
    import os

    class Head(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - the stdlib's name
            self.send_response(404)  # any answer means reachable
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Head)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert not offline_unless_reachable()
        assert not [name for name in OFFLINE_VARIABLES if name in os.environ]
    finally:
        server.shutdown()


def test_hf_hub_offline_is_taken_as_said_without_a_request(online_env):
    online_env.setenv("HF_HUB_OFFLINE", "1")
    online_env.setenv("HF_ENDPOINT", "http://10.255.255.1")  # would hang until the timeout
    start = time.monotonic()
    assert offline_unless_reachable(timeout_s=5.0) and time.monotonic() - start < 1.0
