"""Gemini calls end on time, whatever the server does.

A local server on 127.0.0.1 (the real google-genai client pointed at it) trickles its answer
one byte at a time, or answers every request with 429 and a long ``Retry-After``: one request
must end at ``timeout_seconds`` of wall-clock time and a run's explanations within
``max_seconds_per_run``, each incident keeping its offline text with the reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from google import genai  # noqa: F401 - imported here so the timings below exclude its import

from anomaly_pipelines.core.explain import GeminiExplainer
from anomaly_pipelines_tests.core.test_gemini import MODEL, _facts

KEY = "AIzaTEST-deadline-key-0123456789"


class HostileServer:
    """``trickle``: 200 with a large Content-Length, then one byte every 50 ms for 8 s; ``throttle``:
    429 with ``Retry-After: 5`` to every request."""

    def __init__(self, mode: str) -> None:
        self.requests = 0
        self.stop_event = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.requests += 1
                try:
                    if mode == "throttle":
                        body = b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}'
                        self.send_response(429)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Retry-After", "5")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    give_up = time.monotonic() + 8  # then end the body short (bounds old code)
                    while not owner.stop_event.wait(0.05) and time.monotonic() < give_up:
                        self.wfile.write(b" ")  # a byte at a time: every read succeeds
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def trickle() -> Iterator[HostileServer]:
    server = HostileServer("trickle")
    yield server
    server.stop()


@pytest.fixture
def throttle() -> Iterator[HostileServer]:
    server = HostileServer("throttle")
    yield server
    server.stop()


def test_a_trickling_server_cannot_stretch_one_request(trickle: HostileServer) -> None:
    explainer = GeminiExplainer(
        MODEL, KEY, base_url=trickle.url, timeout_seconds=0.5, max_retries=1, backoff_seconds=0.01
    )
    started = time.monotonic()
    result = explainer.explain(_facts())
    elapsed = time.monotonic() - started
    explainer.close()
    assert result.explainer == "offline"
    assert "within 0.5 s" in result.fallback_reason
    assert trickle.requests == 2  # the request and its one retry, each cut at 0.5 s
    assert elapsed < 3.0, elapsed


def test_retry_after_waits_stop_at_the_runs_deadline(throttle: HostileServer) -> None:
    explainer = GeminiExplainer(
        MODEL, KEY, base_url=throttle.url, timeout_seconds=5, max_retries=3,
        backoff_seconds=0.01, max_backoff_seconds=30.0, max_seconds_per_run=1.0,
    )
    started = time.monotonic()
    results = [explainer.explain(_facts(customer)) for customer in ("acme", "globex", "initech")]
    elapsed = time.monotonic() - started
    assert [r.explainer for r in results] == ["offline"] * 3
    assert "would pass the run's explanation time" in results[0].fallback_reason
    assert elapsed < 2.5, elapsed  # not 3 incidents x 3 retries x 5 s
    assert throttle.requests == 1


def test_a_run_out_of_time_sends_nothing_more(throttle: HostileServer) -> None:
    explainer = GeminiExplainer(
        MODEL, KEY, base_url=throttle.url, timeout_seconds=5, max_seconds_per_run=0.0
    )
    result = explainer.explain(_facts())
    assert result.explainer == "offline" and "explanation time of 0 s per run used up" in result.fallback_reason
    assert throttle.requests == 0
