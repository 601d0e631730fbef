"""GeminiExplainer against a local server speaking Gemini's generateContent REST protocol.

The real google-genai client is pointed at 127.0.0.1; the server answers like the API does
(candidates / error envelopes), so retries, timeouts, budgets, the cache, the answer check and
secret handling are exercised end to end without the internet.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from anomaly_pipelines.core.config import ExplainConfig
from anomaly_pipelines.core.explain import (
    GeminiExplainer,
    IncidentFacts,
    OfflineExplainer,
    explain_incidents,
    find_incidents,
    make_explainer,
    root_causes,
)
from anomaly_pipelines.core.explain import gemini as gemini_module

KEY = "AIzaTEST-secret-key-0123456789abcdef"
MODEL = "gemini-2.5-flash"
_ROUTE = re.compile(r"^/v1(?:beta)?/models/(?P<model>[^:/]+):generateContent$")

Behaviour = str | tuple[str, Any]


def compose_answer(facts: dict[str, Any]) -> dict[str, str]:
    """What a well-behaved model writes: the facts' own strings, rephrased."""
    headline = f"{facts['customer']}: {facts['impact_short']} cost {facts['direction']}"
    detail = (
        f"Spend was {facts['actual_cost']} against {facts['expected_cost']} expected "
        f"({facts['impact_pct']}) in {facts['period']}."
    )
    if facts["root_causes"]:
        top = facts["root_causes"][0]
        detail += f" Most of it comes from {top['dimension']} {top['value']} ({top['impact']}); review it."
    return {"headline": headline, "detail": detail}


class FakeGemini:
    """A scripted generateContent endpoint. Each request takes the next behaviour from
    ``script`` (then ``default``): "answer", "timeout", "malformed", ("status", code),
    ("json", dict) for a custom answer object, ("text", str) for raw answer text."""

    def __init__(self) -> None:
        self.script: list[Behaviour] = []
        self.default: Behaviour = "answer"
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(
                    self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}"
                )
                route = _ROUTE.match(self.path)
                with fake._lock:
                    fake.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    behaviour = fake.script.pop(0) if fake.script else fake.default
                if route is None:
                    return self._send(
                        404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
                    )
                kind, arg = (behaviour, None) if isinstance(behaviour, str) else behaviour
                if kind == "timeout":
                    fake.release.wait(10)  # longer than the client's timeout; freed at teardown
                    return self._send(200, _envelope("{}", route["model"]))
                if kind == "malformed":
                    return self._raw(200, b'{"candidates": [ {"content": ')
                if kind == "status":
                    code, message = arg if isinstance(arg, tuple) else (arg, "backend error")
                    status = {429: "RESOURCE_EXHAUSTED", 400: "INVALID_ARGUMENT"}.get(
                        code, "INTERNAL"
                    )
                    return self._send(
                        code, {"error": {"code": code, "message": message, "status": status}}
                    )
                if kind == "throttle":  # a real 429: the wait in a header or in RetryInfo
                    where, seconds = arg
                    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds}s"}
                    error = {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}
                    if where == "body":
                        error["details"] = [detail]
                    headers = {"Retry-After": str(seconds)} if where == "header" else {}
                    return self._raw(429, json.dumps({"error": error}).encode("utf-8"), headers)
                if kind == "text":
                    return self._send(200, _envelope(arg, route["model"]))
                prompt = body["contents"][0]["parts"][0]["text"]
                facts = json.loads(prompt.split("\n", 1)[1])
                answer = arg(facts) if kind == "json" else compose_answer(facts)
                return self._send(200, _envelope(json.dumps(answer), route["model"]))

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                self._raw(code, json.dumps(payload).encode("utf-8"))

            def _raw(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _envelope(text: str, model: str) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 200,
            "candidatesTokenCount": 60,
            "totalTokenCount": 260,
        },
        "modelVersion": model,
    }


@pytest.fixture
def server() -> Iterator[FakeGemini]:
    fake = FakeGemini()
    yield fake
    fake.stop()


def _scores_and_usage(
    customer: str = "acme", bump: float = 90.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    days = pd.date_range("2024-01-01", periods=40, freq="D", tz="UTC")
    rows = []
    for i, day in enumerate(days):
        for service, cost in (("Compute", 60.0), ("Database", 30.0), ("Storage", 10.0)):
            extra = bump if (30 <= i <= 32 and service == "Database") else 0.0
            rows.append(
                {
                    "customer_id": customer,
                    "timestamp": day,
                    "service": service,
                    "cost": cost + extra,
                }
            )
    usage = pd.DataFrame(rows)
    total = usage.groupby("timestamp", as_index=False)["cost"].sum()
    scores = total.assign(
        customer_id=customer,
        expected_cost=100.0,
        hybrid_score=[3.0 if 30 <= i <= 32 else 0.1 for i in range(40)],
        is_anomaly=[30 <= i <= 32 for i in range(40)],
        reasons="residual",
    )
    return scores, usage


def _facts(customer: str = "acme", bump: float = 90.0) -> IncidentFacts:
    scores, usage = _scores_and_usage(customer, bump)
    incident = find_incidents(scores).iloc[0]
    return IncidentFacts.from_row(incident, root_causes(incident, usage))


def _explainer(server: FakeGemini, **kwargs: Any) -> GeminiExplainer:
    options: dict[str, Any] = {
        "base_url": server.url,
        "timeout_seconds": 5,
        "backoff_seconds": 0.01,
        "max_retries": 3,
    }
    options.update(kwargs)
    return GeminiExplainer(MODEL, KEY, **options)


def test_success_uses_the_checked_answer(server: FakeGemini) -> None:
    facts = _facts()
    explainer = _explainer(server, temperature=0.3, max_output_tokens=200)
    result = explainer.explain(facts)
    assert result.explainer == "gemini"
    assert result.fallback_reason == ""
    assert result.headline == compose_answer(facts.presented())["headline"]
    assert facts.presented()["actual_cost"] in result.detail
    assert len(server.requests) == 1
    request = server.requests[0]
    assert f"/models/{MODEL}:generateContent" in request["path"]
    assert request["headers"]["x-goog-api-key"] == KEY  # the key is used, in a header
    config = request["body"]["generationConfig"]
    assert config["temperature"] == pytest.approx(0.3)
    assert config["maxOutputTokens"] == 200
    assert config["responseMimeType"] == "application/json"
    prompt = request["body"]["contents"][0]["parts"][0]["text"]
    assert facts.presented()["impact"] in prompt and "Database" in prompt
    assert "Copy every amount" in json.dumps(request["body"]["systemInstruction"])
    assert explainer.usage() == {
        "model": MODEL,
        "calls": 1,
        "retries": 0,
        "answers": 1,
        "cache_hits": 0,
        "fallbacks": 0,
        "max_calls": 50,
    }


@pytest.mark.parametrize("status", [429, 408, 503])
def test_transient_status_then_success_is_retried(server: FakeGemini, status: int) -> None:
    server.script = [("status", status)]
    explainer = _explainer(server)
    result = explainer.explain(_facts())
    assert result.explainer == "gemini" and result.fallback_reason == ""
    assert len(server.requests) == 2
    assert explainer.usage()["calls"] == 2 and explainer.usage()["retries"] == 1


@pytest.mark.parametrize("where", ["header", "body"])
def test_the_servers_retry_delay_is_obeyed(
    server: FakeGemini, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(gemini_module.time, "sleep", waits.append)  # record, don't wait
    server.script = [("throttle", (where, 7)), ("throttle", (where, 99))]
    explainer = _explainer(server, backoff_seconds=0.01, max_backoff_seconds=30.0)
    result = explainer.explain(_facts())
    assert result.explainer == "gemini" and len(server.requests) == 3
    # 7 s as asked; 99 s is more than our longest backoff, so that is used instead
    assert waits == [7.0, 30.0]


def test_repeated_500s_end_in_the_offline_fallback(server: FakeGemini) -> None:
    server.default = ("status", 500)
    facts = _facts()
    explainer = _explainer(server, max_retries=2)
    result = explainer.explain(facts)
    offline = OfflineExplainer().explain(facts)
    assert result.explainer == "offline"
    assert (result.headline, result.detail) == (offline.headline, offline.detail)
    assert "500" in result.fallback_reason and "3 attempt" in result.fallback_reason
    assert len(server.requests) == 3  # 1 + max_retries: the SDK added no retries of its own
    assert explainer.usage()["fallbacks"] == 1


def test_sdk_retries_are_off(server: FakeGemini) -> None:
    server.default = ("status", 503)
    result = _explainer(server, max_retries=0).explain(_facts())
    assert result.explainer == "offline"
    assert len(server.requests) == 1


def test_timeouts_are_retried_then_fall_back(server: FakeGemini) -> None:
    server.default = "timeout"
    explainer = _explainer(server, timeout_seconds=0.3, max_retries=1)
    result = explainer.explain(_facts())
    assert result.explainer == "offline"
    assert "timeout" in result.fallback_reason.lower()
    assert len(server.requests) == 2


def test_timeout_then_success(server: FakeGemini) -> None:
    server.script = ["timeout"]
    result = _explainer(server, timeout_seconds=0.3).explain(_facts())
    assert result.explainer == "gemini"
    assert len(server.requests) == 2


def test_malformed_body_falls_back_without_retry(server: FakeGemini) -> None:
    server.default = "malformed"
    result = _explainer(server).explain(_facts())
    assert result.explainer == "offline"
    assert result.fallback_reason  # names the parse error
    assert len(server.requests) == 1  # not transient: retrying would not help


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (("text", "Sure! Here is the explanation you asked for."), "not JSON"),
        (("text", "[1, 2]"), "not a JSON object"),
        (("json", lambda f: {"headline": "ok"}), "lacks"),
        (("json", lambda f: {"headline": "  ", "detail": "x"}), "empty"),
        (("text", ""), "empty answer"),
    ],
)
def test_unusable_answers_fall_back(server: FakeGemini, behaviour: Behaviour, reason: str) -> None:
    server.default = behaviour
    result = _explainer(server).explain(_facts())
    assert result.explainer == "offline"
    assert reason in result.fallback_reason


def test_too_long_answer_falls_back(server: FakeGemini) -> None:
    server.default = (
        "json",
        lambda f: {
            "headline": f"{f['customer']}: " + "very " * 30 + "expensive",
            "detail": "Check it.",
        },
    )
    result = _explainer(server).explain(_facts())
    assert result.explainer == "offline"
    assert "headline too long" in result.fallback_reason
    server.default = ("json", lambda f: {"headline": "Cost up", "detail": "Check it. " * 100})
    result = _explainer(server, max_detail_chars=300).explain(_facts())
    assert "detail too long" in result.fallback_reason


def test_invented_figures_are_rejected_but_rounded_facts_pass(server: FakeGemini) -> None:
    facts = _facts()
    server.default = (
        "json",
        lambda f: {
            "headline": "Cost up",
            "detail": f"Spend rose by {f['impact']}, about $9,999.99 a month.",
        },
    )
    result = _explainer(server).explain(facts)
    assert result.explainer == "offline"
    assert "9,999.99" in result.fallback_reason
    assert (facts.presented()["impact"], facts.presented()["impact_pct"]) == ("+$270.00", "+90.0%")
    # "$270", "90%" and "3 days" are the facts, rounded: accepted
    server.default = (
        "json",
        lambda f: {"headline": "acme: cost up $270", "detail": "Up 90% over 3 days in Database."},
    )
    assert _explainer(server).explain(facts).explainer == "gemini"
    # a figure near, but not equal to, a fact is still an invented figure
    server.default = (
        "json",
        lambda f: {"headline": "acme: cost up $280", "detail": "Up 90% over 3 days."},
    )
    assert "280" in _explainer(server).explain(facts).fallback_reason


def test_cache_means_no_second_call(server: FakeGemini, tmp_path: Path) -> None:
    facts = _facts()
    first = _explainer(server, cache_dir=tmp_path / "cache").explain(facts)
    assert len(server.requests) == 1
    rerun = _explainer(server, cache_dir=tmp_path / "cache")  # a new run, same data
    again = rerun.explain(facts)
    assert len(server.requests) == 1
    assert (again.headline, again.detail, again.explainer) == (
        first.headline,
        first.detail,
        "gemini",
    )
    assert rerun.usage()["cache_hits"] == 1 and rerun.usage()["calls"] == 0
    rerun.explain(_facts(bump=150.0))  # different facts: a new question
    assert len(server.requests) == 2
    # failures are not cached: the next run asks again
    server.default = ("status", 500)
    _explainer(server, cache_dir=tmp_path / "cache", max_retries=0).explain(_facts(bump=200.0))
    _explainer(server, cache_dir=tmp_path / "cache", max_retries=0).explain(_facts(bump=200.0))
    assert len(server.requests) == 4


def test_call_budget_caps_requests_per_run(
    server: FakeGemini, caplog: pytest.LogCaptureFixture
) -> None:
    explainer = _explainer(server, max_calls=2)
    server.script = [("status", 429)]
    first = explainer.explain(_facts())  # 429 + success: both count
    later = [explainer.explain(_facts(bump=b)) for b in (150.0, 160.0, 170.0)]
    assert first.explainer == "gemini"
    assert [r.explainer for r in later] == ["offline"] * 3
    assert all("budget" in r.fallback_reason for r in later)
    assert len(server.requests) == 2
    assert explainer.usage()["calls"] == 2 and explainer.usage()["fallbacks"] == 3
    budget_lines = [r for r in caplog.records if "budget" in r.getMessage()]
    assert len(budget_lines) == 1  # said once per run, not once per incident


def test_the_key_never_leaks(
    server: FakeGemini, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, including the SDK's and httpx's
    server.script = [
        "answer",
        ("status", (400, f"API key not valid. Please pass a valid API key. Got: {KEY}")),
        ("status", 500),
        "timeout",
        ("text", f"{KEY}"),
    ]
    explainer = _explainer(server, cache_dir=tmp_path / "cache", timeout_seconds=0.3, max_retries=1)
    results = [explainer.explain(_facts(bump=b)) for b in (90.0, 100.0, 110.0, 120.0)]
    assert [r.explainer for r in results] == ["gemini", "offline", "offline", "offline"]
    assert "[redacted]" in results[1].fallback_reason  # the echoed key was scrubbed, not dropped
    assert all(q["headers"].get("x-goog-api-key") == KEY for q in server.requests)
    texts = [caplog.text, repr(explainer), json.dumps(explainer.usage())]
    texts += [str(record.getMessage()) for record in caplog.records]
    texts += [f"{r.headline} {r.detail} {r.fallback_reason}" for r in results]
    texts += [p.read_text(encoding="utf-8") for p in (tmp_path / "cache").glob("*")]
    for text in texts:
        assert KEY not in text
    scores, usage = _scores_and_usage()
    server.default = ("status", (403, f"denied for key {KEY}"))
    frame = explain_incidents(
        scores, usage, ExplainConfig(), explainer=_explainer(server, max_retries=0)
    )
    assert frame["explainer"].tolist() == ["offline"]
    assert KEY not in frame.to_json() and KEY not in caplog.text


def test_explain_incidents_with_gemini(server: FakeGemini) -> None:
    a_scores, a_usage = _scores_and_usage("acme")
    b_scores, b_usage = _scores_and_usage("<b>globex</b>", bump=-25.0)
    scores = pd.concat([a_scores, b_scores], ignore_index=True)
    usage = pd.concat([a_usage, b_usage], ignore_index=True)
    explainer = _explainer(server)
    frame = explain_incidents(scores, usage, ExplainConfig(), explainer=explainer)
    assert frame["explainer"].tolist() == ["gemini", "gemini"]
    assert frame["fallback_reason"].tolist() == ["", ""]
    assert set(frame["customer_id"]) == {"acme", "<b>globex</b>"}
    assert explainer.usage()["answers"] == 2


def test_make_explainer_follows_the_config(server: FakeGemini) -> None:
    offline = make_explainer(ExplainConfig())
    assert isinstance(offline, OfflineExplainer) and offline.fallback_reason == ""
    no_key = make_explainer(ExplainConfig(explainer="gemini"), api_key="")
    assert isinstance(no_key, OfflineExplainer)
    assert no_key.explain(_facts()).fallback_reason == "GEMINI_API_KEY is not set"
    config = ExplainConfig(
        explainer="gemini", gemini_base_url=server.url, cache_dir=None, max_calls_per_run=7
    )
    gemini = make_explainer(config, api_key=KEY)
    assert isinstance(gemini, GeminiExplainer)
    assert gemini.explain(_facts()).explainer == "gemini"
    assert gemini.usage()["max_calls"] == 7


def test_a_raising_explainer_never_fails_the_run() -> None:
    class Broken:
        name = "broken"

        def explain(self, facts: IncidentFacts) -> Any:
            raise RuntimeError(f"connection reset while using {KEY}")

    scores, usage = _scores_and_usage()
    frame = explain_incidents(scores, usage, ExplainConfig(), explainer=Broken())
    assert frame["explainer"].tolist() == ["offline"]
    assert frame["fallback_reason"].tolist() == ["broken failed: RuntimeError"]
    assert KEY not in frame.to_json()


def test_constructor_requires_a_key() -> None:
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        GeminiExplainer(MODEL, "")
