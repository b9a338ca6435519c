"""Shared HTTP transport for every HTTP provider: retries, error mapping, credential scoping, downloads.

Two rules drive the design (docs/providers.md §5): credentials are attached per request and only for the provider's
own hosts, and a create POST is never retried once it may have reached the provider (the job may exist and
bill). Output files are fetched by a separate client that holds no credentials at all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import ipaddress
import json
import logging
import math
import random
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx

from bot import __version__
from bot.errors import ProviderError

log = logging.getLogger(__name__)

USER_AGENT = f"fillbot/{__version__} (+https://github.com/fillbot/fillbot)"

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0, write=60.0)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MESSAGE_CAP = 300
MAX_BODY_BYTES = 2 * 1024 * 1024  # a status answer is a few KB of JSON
MAX_CREATE_BODY_BYTES = 64 * 1024 * 1024  # a held create may carry its finished pictures inline as data: URIs
_ERROR_BODY_CAP = 64 * 1024
_REQUEST_BUDGET = 120.0  # seconds one attempt may take in all, however slowly the bytes arrive
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_URL_RE = re.compile(r"(?:https?|ftp|wss?)://\S+|www\.\S+", re.IGNORECASE)
_SECRET_RE = re.compile(
    r"\b(Bearer|Token|x-key|Authorization)(\s*[:=]\s*|\s+)(Bearer\s+|Token\s+|Key\s+)?[^\s,;&\"']+"
    r"|\b(token|key|api_key|apikey|signature|sig|secret|password)=[^\s&\"']+"
    r"|\br8_[A-Za-z0-9]+|whsec_[A-Za-z0-9+/=]+",
    re.IGNORECASE,
)
_CONTENT_POLICY_CODES = frozenset({"content_policy_violation"})
_RESETS_IN_RE = re.compile(
    r"resets?\s+in\s+~?\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|minutes?)?\b", re.IGNORECASE
)


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent requests are retried: exponential backoff with ±20% jitter, hints honoured up to a cap."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (0-based) when the server gave no hint."""
        delay = self.base_delay * 2.0**retry * random.uniform(0.8, 1.2)
        return max(0.0, min(self.max_delay, delay))

    def delay(self, retry: int, hint: float | None) -> float | None:
        """Delay before retry number `retry`: the server's hint when it gave one, else backoff. None when the
        hint is longer than `max_delay`: retrying sooner than asked is pointless, so the caller gives up and
        reports the wait instead."""
        if hint is None:
            return self.backoff(retry)
        if hint > self.max_delay:
            return None
        return max(0.0, float(hint))


def clean_text(text: str, cap: int = _MESSAGE_CAP) -> str:
    """Provider text made safe to show: no URLs, no credentials, one line, capped."""
    text = _SECRET_RE.sub("[redacted]", text)
    text = _URL_RE.sub("[link]", text)
    text = " ".join(text.split())
    return text if len(text) <= cap else text[: cap - 1].rstrip() + "…"


def _log_text(text: str, cap: int = 2000) -> str:
    """Provider text for DEBUG logs: credentials redacted, length capped (bodies may echo data URIs)."""
    text = _SECRET_RE.sub("[redacted]", text)
    return text if len(text) <= cap else text[:cap] + f"…[{len(text) - cap} more chars]"


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait: `Retry-After` (seconds or HTTP date), a JSON body's `retry_after`
    (BFL) or Replicate's "resets in ~Ns" body text; None when there is no usable hint."""
    header = response.headers.get("retry-after", "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            when = email.utils.parsedate_to_datetime(header) if _looks_like_date(header) else None
            if when is not None and when.tzinfo is not None:
                return max(0.0, when.timestamp() - time.time())
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return None
    body = _parse_body(response)
    if isinstance(body, Mapping):
        hinted = _seconds(body.get("retry_after"))
        if hinted is not None:
            return hinted
    match = _RESETS_IN_RE.search(text[:4000])
    if match is None:
        return None
    value, unit = float(match.group(1)), (match.group(2) or "s").lower()
    if unit == "ms":
        return value / 1000
    if unit.startswith("m"):
        return value * 60
    return value


def _seconds(value: Any) -> float | None:
    """A non-negative finite number of seconds from a JSON number or numeric string, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _looks_like_date(value: str) -> bool:
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError, IndexError):
        return False


def _parse_body(response: httpx.Response) -> Any:
    """The JSON body, or None when it is empty, HTML or not valid JSON."""
    content = response.content
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting hits the C stack guard
        return None


def _field_name(raw: Any) -> str:
    if isinstance(raw, list):
        parts = [str(p) for p in raw if p not in ("body", "input")]
        return ".".join(parts)
    name = str(raw or "")
    return name.removeprefix("input.") if name != "input" else ""


def _field_problems(details: Any) -> list[str]:
    """`field: problem` lines from a `details` object ({field: problem or [problems]}) or list of strings."""
    if isinstance(details, Mapping):
        lines = []
        for name, problem in details.items():
            texts = problem if isinstance(problem, list) else [problem]
            said = "; ".join(str(t) for t in texts if isinstance(t, str | int | float) and str(t).strip())
            lines.append(f"{_field_name(name)}: {said}" if said else str(name))
        return lines
    if isinstance(details, list):
        return [item for item in details if isinstance(item, str) and item.strip()]
    return []


def _problems(body: Any) -> list[str]:
    """Readable `field: problem` lines from any of the three error shapes (plus gateway envelopes)."""
    if not isinstance(body, Mapping):
        return [body] if isinstance(body, str) and body.strip() else []
    fields = body.get("invalid_fields")
    if isinstance(fields, list) and fields:
        lines = []
        for item in fields:
            if not isinstance(item, Mapping):
                continue
            name, desc = _field_name(item.get("field")), str(item.get("description") or item.get("type") or "")
            if item.get("type") == "additional_property_not_allowed" and not desc:
                desc = "unexpected option"
            lines.append(f"{name}: {desc}" if name else desc)
        if lines:
            return lines
    detail = body.get("detail")
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if isinstance(item, Mapping):
                name, msg = _field_name(item.get("loc")), str(item.get("msg") or item.get("type") or "")
                lines.append(f"{name}: {msg}" if name else msg)
            elif isinstance(item, str):
                lines.append(item)
        return lines
    if isinstance(detail, str) and detail.strip():
        # Replicate's 422 detail is a "- input.x: problem" list; keep its lines readable.
        lines = [
            line.strip().removeprefix("- ").removeprefix("input.").removeprefix("input: ")
            for line in detail.splitlines()
            if line.strip()
        ]
        return lines
    fields = _field_problems(body.get("details"))
    if fields:
        # BFL's `{"error", "message": "Invalid request parameters", "details": {field: problem}}`: the fields
        # are the useful part.
        return fields
    for key in ("message", "error", "msg", "title"):
        value = body.get(key)
        if isinstance(value, Mapping):
            inner = value.get("message") or value.get("msg")
            if isinstance(inner, str) and inner.strip():
                return [inner]
        elif isinstance(value, str) and value.strip():
            return [value]
    data = body.get("data")
    if isinstance(data, Mapping):
        return _problems({k: v for k, v in data.items() if k in ("error", "message")})
    return []


def is_content_policy(body: Any) -> bool:
    """True when an error body's code says the provider's content policy refused the job: BFL's top-level
    `error` code, or the OpenAI-style `error.code` that aggregators answer with."""
    if not isinstance(body, Mapping):
        return False
    error = body.get("error")
    code = error.get("code") if isinstance(error, Mapping) else error
    return isinstance(code, str) and code.strip().lower() in _CONTENT_POLICY_CODES


def content_policy_message(label: str) -> str:
    return (
        f"{label} refused this request under its content policy, so nothing was charged; "
        "try a different prompt or picture."
    )


def wait_text(seconds: float) -> str:
    """"about 5 s" or "about 2 minutes": how long a user should wait before trying again."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    return f"about {round(seconds / 60)} minutes"


def error_for_response(label: str, response: httpx.Response) -> ProviderError:
    """Turn a non-2xx response into a ProviderError whose message is safe to show a Discord user.

    Raw provider text stays in the DEBUG log: 402 bodies carry billing URLs and some gateways answer HTML.
    """
    status = response.status_code
    body = _parse_body(response)
    try:
        raw = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        raw = "<undecodable body>"
    log.debug("%s answered HTTP %s (%s): %s", label, status, response.headers.get("content-type", "?"), _log_text(raw))
    if 400 <= status <= 499 and is_content_policy(body):
        return ProviderError("moderated", content_policy_message(label))
    problems = [clean_text(str(p), 160) for p in _problems(body) if str(p).strip()]
    reason = clean_text("; ".join(problems)) if problems else ""
    if status in (400, 422):
        if reason:
            return ProviderError("invalid_input", f"{label} refused the request: {reason}")
        return ProviderError("invalid_input", f"{label} refused the request as invalid (HTTP {status}).")
    if status in (401, 403):
        return ProviderError("auth", f"{label} rejected the bot's API key — the bot's operator must check it.")
    if status == 402:
        return ProviderError(
            "billing", f"{label} says the bot's account has run out of credit — the bot's operator must top it up."
        )
    if status == 404:
        return ProviderError("not_found", f"{label} could not find that model or job (it may have expired).")
    if status == 429:
        wait = retry_after(response)
        when = f" in {wait_text(wait)}" if wait is not None else " in a minute"
        return ProviderError("rate_limited", f"{label} is rate-limiting the bot; try again{when}.", retry_after=wait)
    if 500 <= status <= 599:
        return ProviderError("unavailable", f"{label} is having trouble (HTTP {status}); try again in a few minutes.")
    return ProviderError("failed", f"{label} answered with an unexpected error (HTTP {status}).")


def _not_json(label: str) -> ProviderError:
    return ProviderError(
        "bad_response", f"{label} returned a response that is not valid JSON (a gateway page or a cut-off reply)."
    )


def maybe_submitted(label: str, why: str) -> ProviderError:
    """The create may have reached the provider (a job may exist and bill): say so, and never resend it."""
    return ProviderError(
        "maybe_submitted",
        f"{label} {why}, so the job may have been submitted; check before retrying to avoid paying twice.",
    )


def _transport_error(label: str, exc: Exception) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("unavailable", f"{label} did not answer in time; try again in a few minutes.")
    return ProviderError("unavailable", f"{label} could not be reached; try again in a few minutes.")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g}"


@dataclass
class CreateAttempt:
    """Whether a create request has been handed to the network (from then on a failure may leave a billed job)."""

    sent: bool = False


_CREATE: ContextVar[CreateAttempt | None] = ContextVar("fillbot_create_attempt", default=None)


@contextlib.contextmanager
def watch_create() -> Iterator[CreateAttempt]:
    """Notes whether `ProviderHTTP.post_json` sent a create within the block (same task), so a failure around it
    can say truthfully whether the job may exist."""
    attempt = CreateAttempt()
    token = _CREATE.set(attempt)
    try:
        yield attempt
    finally:
        _CREATE.reset(token)


class BodyTooLarge(Exception):
    """A response body went past its cap while streaming (the rest was never read)."""


async def buffered(response: httpx.Response, cap: int) -> httpx.Response:
    """A streamed response read into memory, at most `cap` decoded bytes (BodyTooLarge past it; a declared
    length past it fails before reading). The copy drops the transfer headers that described the wire bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdecimal() and len(declared) < 20 and int(declared) > cap:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            raise BodyTooLarge
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=response.request)


class ProviderHTTP:
    """One long-lived httpx.AsyncClient per provider. Credentials are attached per request and ONLY for trusted
    hosts, so a URL taken from a response can never carry the key elsewhere."""

    def __init__(
        self,
        *,
        label: str,
        base_url: str,
        auth_headers: Mapping[str, str],
        trusted: Callable[[httpx.URL], bool] | None = None,
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
        max_body: int = MAX_BODY_BYTES,
        max_create_body: int = MAX_CREATE_BODY_BYTES,
        budget: float = _REQUEST_BUDGET,
    ) -> None:
        self.label = label
        self.max_body = max_body
        self.max_create_body = max_create_body
        self.budget = budget
        self.base_url = httpx.URL(base_url.rstrip("/"))
        if self.base_url.scheme not in ("http", "https") or not self.base_url.host:
            raise ValueError(f"{label}: base URL must be an absolute http(s) URL")
        self._auth = dict(auth_headers)
        self._trusted = trusted
        self.retry = retry
        self.timeout = timeout or DEFAULT_TIMEOUT
        # No redirects: a redirect is never followed with credentials, and providers do not need them.
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    def url(self, path: str) -> httpx.URL:
        """`base_url + "/" + path`; `path` segments must already be quoted by the caller."""
        return httpx.URL(str(self.base_url) + "/" + path.lstrip("/"))

    def is_trusted(self, url: str | httpx.URL) -> bool:
        try:
            target = httpx.URL(url) if isinstance(url, str) else url
        except httpx.InvalidURL:
            return False
        if target.scheme not in ("http", "https") or not target.host:
            return False
        if self._trusted is not None:
            return self._trusted(target)
        return _origin(target) == _origin(self.base_url)

    def _resolve(self, url: str | httpx.URL) -> httpx.URL:
        if isinstance(url, httpx.URL):
            return url
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise ProviderError("bad_response", f"{self.label} returned an unusable address.") from None
        return parsed if parsed.scheme else self.url(url)

    def _checked(self, url: str | httpx.URL) -> httpx.URL:
        target = self._resolve(url)
        if not self.is_trusted(target):
            log.warning("%s: refusing to send credentials to untrusted host %s", self.label, target.host or "?")
            raise ProviderError(
                "bad_response", f"{self.label} pointed the bot at an unexpected address; the bot refused to follow it."
            )
        return target

    def _json_or_error(self, response: httpx.Response) -> Any:
        if not response.is_success:
            raise error_for_response(self.label, response)
        body = _parse_body(response)
        if body is None:
            log.debug("%s sent a non-JSON %s body: %s", self.label, response.status_code, _log_text(response.text))
            raise _not_json(self.label)
        return body

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        *,
        json: Any,
        headers: Mapping[str, str],
        limits: httpx.Timeout,
        cap: int,
        budget: float,
    ) -> httpx.Response:
        """One request, its body read into memory up to `cap` bytes and within `budget` seconds in all, so a
        hostile or broken server can neither fill memory nor hold the job by dripping bytes. Running out of
        time counts as an httpx read timeout."""
        request = self._client.build_request(method, url, json=json, headers=dict(headers), timeout=limits)
        try:
            async with asyncio.timeout(budget):
                response = await self._client.send(request, stream=True)
                try:
                    return await buffered(response, cap)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout("the whole answer took too long", request=request) from None

    def _too_large(self, method: str, url: httpx.URL, cap: int) -> None:
        log.warning("%s %s %s: answer larger than %s MB, not read", self.label, method, url.path, _mb(cap))

    async def get_json(self, url: str | httpx.URL) -> Any:
        """GET with retries on 429/5xx/timeouts/resets; refuses untrusted absolute URLs before sending."""
        return await self.request_json("GET", url, retry=True)

    async def request_json(self, method: str, url: str | httpx.URL, *, json: Any = None, retry: bool) -> Any:
        """Any idempotent request; with `retry`, transient faults are retried like a GET."""
        target = self._checked(url)
        attempts = max(1, self.retry.attempts) if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._send(
                    method,
                    target,
                    json=json,
                    headers=self._auth,
                    limits=self.timeout,
                    cap=self.max_body,
                    budget=self.budget,
                )
            except BodyTooLarge:
                self._too_large(method, target, self.max_body)
                raise ProviderError("bad_response", f"{self.label} sent an answer far larger than expected.") from None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                log.info(
                    "%s %s %s: %s (attempt %d/%d)",
                    self.label,
                    method,
                    target.path,
                    type(exc).__name__,
                    attempt + 1,
                    attempts,
                )
                if last:
                    raise _transport_error(self.label, exc) from exc
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            delay = self.retry.delay(attempt, retry_after(response)) if response.status_code in RETRY_STATUSES else None
            if delay is not None and not last:
                log.info(
                    "%s %s %s: HTTP %d, retrying in %.2f s (attempt %d/%d)",
                    self.label,
                    method,
                    target.path,
                    response.status_code,
                    delay,
                    attempt + 1,
                    attempts,
                )
                await asyncio.sleep(delay)
                continue
            return self._json_or_error(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_json(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> tuple[int, Any]:
        """A create POST: retried only on a clean 429 (no job made) and never once it may have reached the
        provider, because the job may exist and bill."""
        target = self._checked(path)
        timeout = (
            self.timeout
            if read_timeout is None
            else httpx.Timeout(
                connect=self.timeout.connect, read=read_timeout, write=self.timeout.write, pool=self.timeout.pool
            )
        )
        sent_headers = {**(headers or {}), **self._auth}
        # A held create (sync mode) may rightly take its whole read timeout to answer.
        budget = self.budget if read_timeout is None else max(self.budget, read_timeout + (timeout.connect or 0.0))
        attempts = max(1, self.retry.attempts)
        for attempt in range(attempts):
            attempt_seen = _CREATE.get()
            if attempt_seen is not None:
                attempt_seen.sent = True
            try:
                response = await self._send(
                    "POST", target, json=dict(body), headers=sent_headers, limits=timeout, cap=self.max_create_body,
                    budget=budget,
                )
            except BodyTooLarge:
                self._too_large("POST", target, self.max_create_body)
                raise maybe_submitted(self.label, "sent a reply far larger than expected") from None
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing was sent: safe to report as a plain outage.
                raise _transport_error(self.label, exc) from exc
            except httpx.TimeoutException as exc:
                raise maybe_submitted(self.label, "did not answer in time") from exc
            except httpx.TransportError as exc:
                raise maybe_submitted(self.label, "dropped the connection") from exc
            status = response.status_code
            delay = self.retry.delay(attempt, retry_after(response)) if status == 429 else None
            if delay is not None and attempt < attempts - 1:
                log.info("%s POST %s: rate-limited, retrying in %.2f s", self.label, target.path, delay)
                await asyncio.sleep(delay)
                continue
            if status >= 500:
                log.debug("%s POST %s: HTTP %d: %s", self.label, target.path, status, _log_text(response.text))
                raise maybe_submitted(self.label, f"had a server error (HTTP {status})")
            if not response.is_success:
                raise error_for_response(self.label, response)
            parsed = _parse_body(response)
            if parsed is None:
                log.debug("%s POST %s: non-JSON %d body: %s", self.label, target.path, status, _log_text(response.text))
                raise maybe_submitted(self.label, "accepted the request but returned an unreadable reply")
            return status, parsed
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._client.aclose()


# Addresses no result file lives at, allowed or not: cloud instance-metadata services (AWS/GCP/Azure/OpenStack,
# ECS task metadata, Alibaba), whose answers carry machine credentials.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MSG_REFUSED_ADDRESS = (
    "The provider pointed the bot at a result address it does not fetch from, so the result was not downloaded. "
    "The job finished at the provider, so it may be charged."
)


def address_refused(address: str, *, allow_private: bool) -> bool:
    """True when a download must not connect to `address`: metadata services always; loopback, private,
    link-local, shared, reserved and multicast addresses unless `allow_private` (local set-ups and tests)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # a link-local scope id changes nothing here
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _METADATA:
        return True
    return not allow_private and (not ip.is_global or ip.is_multicast)


class ByteBudget:
    """The bytes one job's downloads may still take together, shared by its outputs' concurrent downloads."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.remaining = total

    def take(self, size: int) -> None:
        self.remaining -= size
        if self.remaining < 0:
            raise ProviderError(
                "bad_response",
                f"The provider's result files are larger than the {_mb(self.total)} MB limit per job, so the "
                "bot stopped downloading them. The job finished at the provider, so it may be charged.",
            )


class Downloader:
    """Fetches output files with a separate client that has NO credentials, capped in size (streamed, aborts
    past the cap) and in time, so a file host never sees a key and a hostile URL cannot exhaust memory or hold a
    job. Provider-given URLs are untrusted: each hop's host is resolved here and the connection goes to the
    address that was checked (no second lookup a rebinding DNS server could answer differently); redirects are
    followed by hand, re-checked, at most `max_redirects` times."""

    def __init__(
        self,
        *,
        max_bytes: int,
        max_job_bytes: int | None = None,
        deadline: float = 120.0,
        allow_private: bool = False,
        max_redirects: int = 5,
        timeout: httpx.Timeout | None = None,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_job_bytes = max_job_bytes or max_bytes
        self.deadline = deadline
        self.allow_private = allow_private
        self.max_redirects = max_redirects
        self.retry = retry
        # No keep-alive: connections are made to a checked address with the file host's name for TLS, and a
        # pooled connection must never serve another host name that happens to share the address.
        self._client = httpx.AsyncClient(
            timeout=timeout or DEFAULT_TIMEOUT,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": USER_AGENT},
        )

    def new_budget(self) -> ByteBudget:
        return ByteBudget(self.max_job_bytes)

    def _too_big(self) -> ProviderError:
        return ProviderError(
            "bad_response",
            f"The result file is larger than the {_mb(self.max_bytes)} MB limit, so the bot stopped downloading it. "
            "The job finished at the provider, so it may be charged.",
        )

    async def fetch(self, ref: str, budget: ByteBudget | None = None) -> bytes:
        """Bytes of an http(s) URL, a `data:` URI or naked base64 (WaveSpeed's base64 output); `budget` is the
        job's shared byte allowance (a fresh one when None)."""
        budget = budget or self.new_budget()
        ref = ref.strip()
        lowered = ref[:8].lower()
        if lowered.startswith(("http://", "https://")):
            data = await self._fetch_url(ref, budget)
        elif lowered.startswith("data:"):
            data = self._decode_data_uri(ref)
            budget.take(len(data))
        elif "://" in ref[:16]:
            log.warning("download: refusing a result address with scheme %r", ref.partition(":")[0][:16])
            raise ProviderError("bad_response", MSG_REFUSED_ADDRESS)
        else:
            data = self._decode_base64(ref)
            budget.take(len(data))
        return data

    def _decode_base64(self, text: str) -> bytes:
        compact = "".join(text.split())
        if len(compact) * 3 // 4 > self.max_bytes + 3:
            raise self._too_big()
        try:
            data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError("bad_response", "The provider returned a result that is not a file.") from None
        if not data:
            raise ProviderError("bad_response", "The provider returned an empty result file.")
        if len(data) > self.max_bytes:
            raise self._too_big()
        return data

    def _decode_data_uri(self, uri: str) -> bytes:
        header, sep, payload = uri.partition(",")
        if not sep:
            raise ProviderError("bad_response", "The provider returned a broken data URI.")
        if header.lower().endswith(";base64"):
            return self._decode_base64(payload)
        if len(payload) > self.max_bytes * 3:
            raise self._too_big()
        data = unquote_to_bytes(payload)
        if len(data) > self.max_bytes:
            raise self._too_big()
        return data

    async def _fetch_url(self, url: str, budget: ByteBudget) -> bytes:
        """The whole download, retries included, within `deadline`: a server that drips bytes slower than the
        read timeout notices cannot hold the job or its provider slot."""
        try:
            async with asyncio.timeout(self.deadline):
                return await self._fetch_with_retries(url, budget)
        except TimeoutError:
            log.info("download: stopped after the %.0f s deadline", self.deadline)
            raise ProviderError(
                "timed_out",
                f"The result file took longer than {wait_text(self.deadline).removeprefix('about ')} to download, "
                "so the bot stopped. The job finished at the provider, so it may be charged.",
            ) from None

    async def _fetch_with_retries(self, url: str, budget: ByteBudget) -> bytes:
        attempts = max(1, self.retry.attempts)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._open(url)
                try:
                    status = response.status_code
                    if status in (401, 403, 404, 410):
                        raise ProviderError(
                            "expired",
                            "The result file is no longer available (the provider deletes results after a while).",
                        )
                    wait = None
                    if status == 429:  # the only error body worth reading: it may carry a wait hint
                        wait = retry_after(await buffered(response, _ERROR_BODY_CAP))
                    elif status in RETRY_STATUSES:
                        wait = retry_after(response)
                    delay = self.retry.delay(attempt, wait) if status in RETRY_STATUSES else None
                    if delay is not None and not last:
                        log.info("download: HTTP %d, retrying in %.2f s", status, delay)
                        await asyncio.sleep(delay)
                        continue
                    if status == 429:
                        raise ProviderError(
                            "rate_limited", "The result file host is rate-limiting the bot.", retry_after=wait
                        )
                    if status >= 500:
                        raise ProviderError("unavailable", f"The result file host had an error (HTTP {status}).")
                    if not response.is_success:
                        raise ProviderError("failed", f"The result file could not be downloaded (HTTP {status}).")
                    declared = response.headers.get("content-length", "")
                    if declared.isdecimal() and len(declared) < 20 and int(declared) > self.max_bytes:
                        raise self._too_big()
                    data = await self._read_capped(response, budget)
                finally:
                    await response.aclose()
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                log.info("download: %s (attempt %d/%d)", type(exc).__name__, attempt + 1, attempts)
                if last:
                    raise ProviderError(
                        "unavailable",
                        "The result file could not be downloaded. The job finished at the provider, so it may be "
                        "charged.",
                    ) from exc
                await asyncio.sleep(self.retry.backoff(attempt))
                continue
            if not data:
                raise ProviderError("bad_response", "The provider returned an empty result file.")
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_capped(self, response: httpx.Response, budget: ByteBudget) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_big()
            budget.take(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)

    async def _open(self, url: str) -> httpx.Response:
        """GET `url`, following up to `max_redirects` redirects, every hop checked; the caller closes it."""
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL:
            raise ProviderError("bad_response", "The provider returned a result address the bot cannot use.") from None
        for _ in range(self.max_redirects + 1):
            request = await self._pinned(target)
            response = await self._client.send(request, stream=True)
            location = response.headers.get("location") if response.status_code in _REDIRECTS else None
            if location is None:
                return response
            await response.aclose()
            try:
                target = target.join(location)
            except httpx.InvalidURL:
                raise ProviderError("bad_response", MSG_REFUSED_ADDRESS) from None
        log.warning("download: more than %d redirects", self.max_redirects)
        raise ProviderError(
            "bad_response",
            "The result file's address redirected too many times, so the bot stopped following it. The job "
            "finished at the provider, so it may be charged.",
        )

    async def _pinned(self, url: httpx.URL) -> httpx.Request:
        """A request for `url` that connects to an address checked here: the host is resolved once (off the event
        loop), every address it has must be allowed, and the URL is rewritten to the first one, keeping the host
        name for the Host header and TLS (SNI and certificate checks)."""
        if url.scheme not in ("http", "https") or not url.host:
            log.warning("download: refusing a result address with scheme %r", url.scheme[:16])
            raise ProviderError("bad_response", MSG_REFUSED_ADDRESS)
        host = url.raw_host.decode("ascii")
        port = url.port or _DEFAULT_PORTS[url.scheme]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(f"cannot resolve the file host: {type(exc).__name__}") from exc
        addresses = [str(info[4][0]) for info in infos]
        refused = [a for a in addresses if address_refused(a, allow_private=self.allow_private)]
        if refused or not addresses:
            log.warning("download: refusing host %r, which resolves to %s", host, ", ".join(refused) or "nothing")
            raise ProviderError("bad_response", MSG_REFUSED_ADDRESS)
        address = addresses[0].split("%", 1)[0]
        pinned = url.copy_with(host=address, username=None, password=None)
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        return self._client.build_request("GET", pinned, headers={"Host": url.netloc.decode("ascii")},
                                          extensions=extensions)

    async def aclose(self) -> None:
        await self._client.aclose()
