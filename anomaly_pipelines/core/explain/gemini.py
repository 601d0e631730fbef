"""Gemini phrases the offline explainer's verified facts; it never supplies numbers.

The model gets the facts with every figure already formatted and must answer with a headline and
a detail text. The answer is used only if it is non-empty, within the length limits and mentions
no figure that is absent from the facts; otherwise, and on any error, the incident keeps its
offline explanation with the reason recorded. Retries (429, 5xx, timeouts) are ours, with
exponential backoff, inside wall-clock limits per request and per run; the SDK's own retries are switched off so one call is one request and the
per-run call budget is exact. Validated answers are cached on disk by the facts, so
re-materialising the same data does not call the API again.

The API key lives only in the client; every recorded reason is scrubbed of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote

from anomaly_pipelines.core.explain.incidents import IncidentFacts
from anomaly_pipelines.core.explain.offline import Explanation, OfflineExplainer

logger = logging.getLogger(__name__)

PROMPT_VERSION = "2"
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class GeminiFailure(Exception):
    """A reason the answer cannot be used; its text is recorded as the fallback reason."""


class BudgetExhausted(GeminiFailure):
    """This run has sent as many requests as it may."""


class DeadlineExhausted(BudgetExhausted):
    """This run's explanation stage has used its wall-clock time."""


def canonical_number(token: str) -> str:
    """``1,450.30`` -> ``1450.3``, ``001`` -> ``1``: one spelling per value for the answer check."""
    try:
        value = Decimal(token.replace(",", "")).normalize()
    except InvalidOperation:
        return token
    return format(value, "f")


def allowed_figures(facts: IncidentFacts) -> set[str]:
    """Every figure an answer may mention: those written in the facts (including date parts and
    digits in ids) plus the raw figures rounded to 0-2 decimals, in units, thousands or millions,
    so "$1.2k" or "55%" for a fact of $1,234.56 or +54.9% is accepted but no new number is."""
    text = json.dumps(facts.presented(), ensure_ascii=False)
    allowed = {canonical_number(t) for t in _NUMBER.findall(text)}
    allowed.add(canonical_number(str(facts.steps)))
    for value in facts.raw_numbers():
        for scale in (1.0, 1e3, 1e6):
            for places in (0, 1, 2):
                allowed.add(canonical_number(f"{abs(value) / scale:.{places}f}"))
    return allowed


def unknown_figures(text: str, allowed: set[str]) -> list[str]:
    return [t for t in _NUMBER.findall(text) if canonical_number(t) not in allowed]


def _is_timeout(exc: BaseException) -> bool:
    # The SDK raises its HTTP library's timeout classes (httpx's, or a vendored copy of it), so
    # match by class name rather than importing one particular library.
    return isinstance(exc, TimeoutError) or any("Timeout" in k.__name__ for k in type(exc).__mro__)


def _status_code(exc: BaseException) -> int | None:
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        return int(exc.code) if exc.code is not None else None
    return None


def _server_delay(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait before retrying: a ``Retry-After`` header, or the
    ``RetryInfo`` detail Google puts in a 429 body (``"retryDelay": "17s"``)."""
    from google.genai import errors

    if not isinstance(exc, errors.APIError):
        return None
    headers = getattr(exc.response, "headers", None)
    header = headers.get("retry-after") if headers is not None else None
    if header is not None:
        with contextlib.suppress(ValueError):  # the HTTP-date form is not worth parsing here
            return max(float(header), 0.0)
    error = exc.details.get("error", {}) if isinstance(exc.details, dict) else {}
    for detail in error.get("details", []) if isinstance(error, dict) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            with contextlib.suppress(ValueError):
                return max(float(str(detail.get("retryDelay", "")).rstrip("s")), 0.0)
    return None


class GeminiExplainer:
    """Explanations written by a Gemini model, checked, cached and with an offline fallback."""

    name = "gemini"

    def __init__(
        self,
        model: str,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout_seconds: float = 20,
        max_output_tokens: int = 128,
        temperature: float = 0.2,
        max_calls: int = 50,
        max_retries: int = 3,
        cache_dir: Path | None = None,
        max_headline_chars: int = 70,
        max_detail_chars: int = 700,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        thinking_budget: int | None = 0,
        max_seconds_per_run: float | None = 300.0,
    ) -> None:
        if not api_key:
            raise ValueError("GeminiExplainer needs an API key (set GEMINI_API_KEY)")
        self.model = model
        self.base_url = base_url
        self.timeout_seconds = float(timeout_seconds)
        self.max_output_tokens = int(max_output_tokens)
        self.temperature = float(temperature)
        self.max_calls = int(max_calls)
        self.max_retries = int(max_retries)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.backoff_seconds = float(backoff_seconds)
        self.max_backoff_seconds = float(max_backoff_seconds)
        # Gemini 2.5 "thinking" tokens count against max_output_tokens; with a small token limit
        # they can use it all and leave no answer. 0 switches thinking off (flash models);
        # None leaves the model's default (needed for models that cannot switch it off).
        self.thinking_budget = thinking_budget
        # Wall-clock limits. The SDK's timeout applies per read, so a server trickling a byte
        # at a time (or 429s with long Retry-After) could hold a run for minutes:
        # ``timeout_seconds`` bounds each request as a whole, ``max_seconds_per_run`` every
        # request, retry and wait of this explainer (one per run); None: no run limit.
        self.max_seconds_per_run = None if max_seconds_per_run is None else float(max_seconds_per_run)
        self._started: float | None = None
        self._retry_at = 0.0  # monotonic time before which the server asked us not to call
        self.offline = OfflineExplainer(max_headline_chars, max_detail_chars)
        self.__api_key = api_key
        self._client: Any = None
        self._calls = 0
        self._retries = 0
        self._cache_hits = 0
        self._fallbacks = 0
        self._answers = 0
        self._budget_logged = False

    def __repr__(self) -> str:  # the default repr would not show the key, but be explicit
        return f"GeminiExplainer(model={self.model!r}, base_url={self.base_url!r})"

    def usage(self) -> dict[str, Any]:
        """Counters for run metadata: requests sent (retries included), answers used, cache
        hits and fallbacks. Contains no secret."""
        return {
            "model": self.model,
            "calls": self._calls,
            "retries": self._retries,
            "answers": self._answers,
            "cache_hits": self._cache_hits,
            "fallbacks": self._fallbacks,
            "max_calls": self.max_calls,
        }

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def _remaining(self) -> float:
        """Seconds left of this run's explanation time (infinite without a limit)."""
        if self.max_seconds_per_run is None:
            return float("inf")
        if self._started is None:
            self._started = time.monotonic()
        return self.max_seconds_per_run - (time.monotonic() - self._started)

    def explain(self, facts: IncidentFacts) -> Explanation:
        fallback = self.offline.explain(facts)
        key = self._cache_key(facts)
        cached = self._cache_get(key, facts)
        if cached is not None:
            self._cache_hits += 1
            return cached
        try:
            headline, detail = self._check(self._ask(facts), facts)
        except Exception as exc:  # the pipeline never fails because the LLM did
            self._fallbacks += 1
            reason = self._scrub(_describe(exc))
            if isinstance(exc, BudgetExhausted):
                # One line per run, not one per remaining incident.
                if not self._budget_logged:
                    self._budget_logged = True
                    logger.warning("Gemini %s; remaining incidents keep offline text", reason)
                return Explanation(fallback.headline, fallback.detail, fallback.explainer, reason)
            logger.warning(
                "Gemini explanation of incident %s not used: %s", facts.incident_id, reason
            )
            return Explanation(fallback.headline, fallback.detail, fallback.explainer, reason)
        self._answers += 1
        self._cache_put(key, headline, detail)
        return Explanation(headline, detail, self.name)

    # -- the request ------------------------------------------------------------------------

    def _client_or_new(self) -> Any:
        if self._client is None:
            from google import genai
            from google.genai import types

            options = types.HttpOptions(
                base_url=self.base_url,
                timeout=max(int(self.timeout_seconds * 1000), 1),  # milliseconds
                retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours
            )
            self._client = genai.Client(
                api_key=self.__api_key, vertexai=False, http_options=options
            )
        return self._client

    def _request_config(self) -> Any:
        from google.genai import types

        limits = self.offline
        system = (
            "You explain cloud cost anomalies to engineers and finance teams in plain English. "
            "Use only the facts given as JSON. Copy every amount, percentage, date and count "
            "exactly as written there; never calculate, convert or invent a number. Answer with "
            'a JSON object {"headline": ..., "detail": ...}. The headline has at most '
            f"{limits.max_headline_chars} characters and names the customer, the change and the "
            f"main cause if known. The detail has at most {limits.max_detail_chars} characters: "
            "what happened, the likely cause from root_causes (if any), and one concrete next step."
        )
        thinking = (
            types.ThinkingConfig(thinking_budget=self.thinking_budget)
            if self.thinking_budget is not None
            else None
        )
        return types.GenerateContentConfig(
            system_instruction=system,
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            response_mime_type="application/json",
            thinking_config=thinking,
            # No tools are offered; this only silences the SDK's per-call AFC log line.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    def _ask(self, facts: IncidentFacts) -> str:
        """Answer text of one successful request; retries 429, 5xx and timeouts with backoff."""
        client = self._client_or_new()
        config = self._request_config()
        prompt = "Facts:\n" + json.dumps(facts.presented(), indent=1, ensure_ascii=False)
        delay = self.backoff_seconds
        for attempt in range(self.max_retries + 1):
            if self._calls >= self.max_calls:
                raise BudgetExhausted(f"call budget of {self.max_calls} requests per run used up")
            remaining = self._remaining()
            if remaining <= 0:
                raise DeadlineExhausted(
                    f"explanation time of {self.max_seconds_per_run:g} s per run used up "
                    "(explain.max_seconds_per_run)"
                )
            if self._retry_at - time.monotonic() >= remaining:
                raise DeadlineExhausted(
                    "the server asked to wait beyond this run's explanation time "
                    f"({self.max_seconds_per_run:g} s, explain.max_seconds_per_run)"
                )
            self._calls += 1
            try:
                # A fresh client after a request was cut off (its connection was dropped).
                client = self._client_or_new()
                response = self._generate(client, prompt, config, min(self.timeout_seconds, remaining))
            except Exception as exc:
                status = _status_code(exc)
                transient = (
                    _is_timeout(exc)
                    or status in (408, 429)
                    or (status is not None and 500 <= status < 600)
                )
                if not transient:
                    raise
                if attempt == self.max_retries:
                    raise GeminiFailure(
                        f"gave up after {attempt + 1} attempt(s): {self._scrub(_describe(exc))}"
                    ) from exc
                self._retries += 1
                # A server that says how long to wait is obeyed (up to our own longest backoff).
                wait = min(max(delay, _server_delay(exc) or 0.0), self.max_backoff_seconds)
                if wait >= self._remaining():
                    self._retry_at = time.monotonic() + wait  # later incidents need not ask
                    raise GeminiFailure(
                        f"gave up after {attempt + 1} attempt(s): waiting {wait:.1f} s for a retry "
                        "would pass the run's explanation time (explain.max_seconds_per_run): "
                        f"{self._scrub(_describe(exc))}"
                    ) from exc
                logger.info(
                    "Gemini request for incident %s failed (%s); retry %d in %.2fs",
                    facts.incident_id,
                    self._scrub(_describe(exc)),
                    attempt + 1,
                    wait,
                )
                time.sleep(wait)
                delay = min(delay * 2, self.max_backoff_seconds)
                continue
            return _answer_text(response)
        raise GeminiFailure("no attempt made (max_retries < 0)")

    def _generate(self, client: Any, prompt: str, config: Any, deadline: float) -> Any:
        """One request that returns within ``deadline`` seconds of wall-clock time or raises
        ``TimeoutError``. The SDK call runs in a daemon thread; when the deadline passes, the
        client is dropped (and closed in the background) so the stalled connection goes with it
        and the next request opens a fresh one."""
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def call() -> None:
            try:
                outcome["response"] = client.models.generate_content(
                    model=self.model, contents=prompt, config=config
                )
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=call, name="gemini-request", daemon=True).start()
        if not done.wait(max(deadline, 0.0)):
            if self._client is client:
                self._client = None
            threading.Thread(target=_close_quietly, args=(client,), daemon=True).start()
            raise TimeoutError(f"no complete answer within {deadline:.1f} s (wall clock)")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["response"]

    def _check(self, text: str, facts: IncidentFacts) -> tuple[str, str]:
        """Parse and verify an answer; raise GeminiFailure with the reason it is unusable."""
        body = _FENCE.sub("", text.strip())
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise GeminiFailure(f"answer is not JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise GeminiFailure("answer is not a JSON object")
        headline, detail = data.get("headline"), data.get("detail")
        if not isinstance(headline, str) or not isinstance(detail, str):
            raise GeminiFailure("answer lacks a text 'headline' or 'detail'")
        headline, detail = " ".join(headline.split()), " ".join(detail.split())
        if not headline or not detail:
            raise GeminiFailure("answer has an empty headline or detail")
        if len(headline) > self.offline.max_headline_chars:
            raise GeminiFailure(
                f"headline too long ({len(headline)} > {self.offline.max_headline_chars} characters)"
            )
        if len(detail) > self.offline.max_detail_chars:
            raise GeminiFailure(
                f"detail too long ({len(detail)} > {self.offline.max_detail_chars} characters)"
            )
        unknown = unknown_figures(f"{headline} {detail}", allowed_figures(facts))
        if unknown:
            raise GeminiFailure(
                f"answer mentions figure(s) not in the facts: {', '.join(unknown[:5])}"
            )
        return headline, detail

    # -- cache ------------------------------------------------------------------------------

    def _cache_key(self, facts: IncidentFacts) -> str:
        # Anything that changes what a valid answer looks like is part of the key.
        material = json.dumps(
            {
                "facts": facts.cache_key(),
                "model": self.model,
                "prompt": PROMPT_VERSION,
                "temperature": self.temperature,
                "headline": self.offline.max_headline_chars,
                "detail": self.offline.max_detail_chars,
            },
            sort_keys=True,
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def _cache_get(self, key: str, facts: IncidentFacts) -> Explanation | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{key}.json"
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            headline, detail = self._check(json.dumps(entry), facts)
        except (OSError, ValueError, GeminiFailure) as exc:
            logger.warning(
                "ignoring unusable explanation cache entry %s: %s", path.name, _describe(exc)
            )
            return None
        return Explanation(headline, detail, self.name)

    def _cache_put(self, key: str, headline: str, detail: str) -> None:
        if self.cache_dir is None:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path = self.cache_dir / f"{key}.json"
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(
                json.dumps(
                    {"headline": headline, "detail": detail, "model": self.model},
                    ensure_ascii=False,
                ),
                encoding="utf-8",
            )
            os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new entry
        except OSError as exc:  # a read-only cache costs API calls, not the run
            logger.warning("could not write explanation cache: %s", _describe(exc))

    def _scrub(self, text: str) -> str:
        for secret in {self.__api_key, quote(self.__api_key, safe="")}:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text


def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close()


def _answer_text(response: Any) -> str:
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        feedback = getattr(response, "prompt_feedback", None)
        blocked = getattr(feedback, "block_reason", None)
        raise GeminiFailure(
            f"no answer (blocked: {blocked})" if blocked else "no answer candidates"
        )
    finish = getattr(candidates[0], "finish_reason", None)
    finish_name = getattr(finish, "name", str(finish)) if finish is not None else ""
    if finish_name == "MAX_TOKENS":
        raise GeminiFailure("answer cut off at max_output_tokens")
    text = response.text
    if not text or not text.strip():
        raise GeminiFailure(f"empty answer (finish reason {finish_name or 'unknown'})")
    return text


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    text = text if len(text) <= 300 else text[:299] + "…"
    if isinstance(exc, GeminiFailure):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
