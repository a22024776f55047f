"""A small JSON-over-HTTP client for the API judge: retries, a safe redirect policy, a key that never leaks.

Security choices (tested in tests/eval/test_api_judge.py):

- Only ``http://`` and ``https://`` URLs are accepted (urllib would also open ``file://`` and ``ftp://``).
  ``http://`` to a host that is not loopback (``localhost``, 127.0.0.0/8, ``::1``) draws a warning: the prompts,
  the answers and the key cross the network unencrypted. Plain ``http://`` to a local server (vLLM, llama.cpp on
  the same machine) is the normal case and draws none.
- Redirects are followed by this client, not by urllib: only 307 and 308 (they keep the POST and its body; a 301,
  302 or 303 would turn it into a body-less GET), at most :data:`MAX_REDIRECTS` hops, to ``http(s)`` URLs only.
  The ``Authorization`` header goes with a redirect only when it stays on the same host and port (or is the
  ``http`` -> ``https`` upgrade of the same host on the default ports); a redirect elsewhere is followed without
  it and a warning names the new host. urllib's own handler would copy every header given to ``Request`` to
  any host (it only drops those added with ``add_unredirected_header``), so its handler is switched off here.
- The key exists only in memory: it is not part of ``repr`` and every error message is scrubbed of it (a server
  that echoes the request in its error body cannot put the key into a log, a results file or a traceback).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Any

MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}


class APIRequestError(RuntimeError):
    """The endpoint gave no usable answer.

    ``fatal`` errors (HTTP 4xx other than 429, a non-JSON body, a redirect that cannot be followed) mean the
    configuration is wrong and every request would fail alike; the others (retries exhausted on timeouts / 5xx /
    429, a reply without the expected content) concern one request only.
    """

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


class InsecureEndpointWarning(UserWarning):
    """An API endpoint reached over plain ``http://`` on a non-loopback host."""


class CredentialsDroppedWarning(UserWarning):
    """A redirect to another host was followed without the Authorization header."""


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` (and ``*.localhost``) and loopback IP addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> urllib.parse.SplitResult:
    """Parse ``url``; an error unless it is ``http(s)://host...``; a warning for plain http to a remote host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"API base URL must be http:// or https:// with a host, got {redact_url(url)!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        warnings.warn(
            f"API endpoint {redact_url(url)} uses plain http:// to a non-local host: prompts, answers and the API "
            "key travel unencrypted; use https://",
            InsecureEndpointWarning,
            stacklevel=3,
        )
    return parts


def redact_url(url: str) -> str:
    """``url`` without a ``user:password@`` part and without its query string (either may carry a secret)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def endpoint_key(url: str) -> str:
    """``url`` normalised for cache keys: lower-case scheme and host, explicit port, no trailing slash, no
    ``user:password@`` part; the query is kept (it can select another deployment, e.g. an API version)."""
    parts = urllib.parse.urlsplit(url)
    scheme, host, port = _origin(parts)
    host = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit((scheme, f"{host}:{port}", parts.path.rstrip("/"), parts.query, ""))


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    return parts.scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)


def keeps_credentials(old_url: str, new_url: str) -> bool:
    """Whether a redirect from ``old_url`` to ``new_url`` may carry the Authorization header: same scheme, host and
    port, or the http -> https upgrade of the same host on the default ports."""
    old_scheme, old_host, old_port = _origin(urllib.parse.urlsplit(old_url))
    new_scheme, new_host, new_port = _origin(urllib.parse.urlsplit(new_url))
    if old_host != new_host:
        return False
    if (old_scheme, old_port) == (new_scheme, new_port):
        return True
    return (old_scheme, old_port, new_scheme, new_port) == ("http", 80, "https", 443)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand every redirect back to the caller as an HTTPError (the client follows them itself, see the module)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


def _retry_after(headers: Any) -> float | None:
    """Seconds from a Retry-After header given as a number (the HTTP-date form is ignored)."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class JSONClient:
    """POST JSON to one URL and decode the JSON reply, with retries and exponential backoff.

    Timeouts, connection errors, HTTP 5xx and 429 are retried ``max_retries`` times (``backoff * 2**attempt``
    seconds, capped at ``max_backoff``, or the server's Retry-After); other 4xx, non-JSON replies and redirects
    that cannot be followed raise a fatal :class:`APIRequestError` at once.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        check_url(url)
        self.url = url
        self._api_key = api_key or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.requests_sent = 0  # HTTP requests actually made (retries and redirect hops included)
        self._count_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JSONClient({redact_url(self.url)!r}, key={'set' if self._api_key else 'none'})"

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced by ``***`` (for every message that may reach a log or a file)."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _error(self, message: str, *, fatal: bool) -> APIRequestError:
        return APIRequestError(self.scrub(message), fatal=fatal)

    def _send(self, data: bytes) -> bytes:
        """One POST, following allowed redirects; HTTPError for the final non-2xx status."""
        url, with_key = self.url, True
        for _ in range(MAX_REDIRECTS + 1):
            request = urllib.request.Request(url, data=data, method="POST")
            request.add_header("Content-Type", "application/json")
            if self._api_key and with_key:
                # Unredirected: even if a redirect handler ran, it would not copy this header.
                request.add_unredirected_header("Authorization", f"Bearer {self._api_key}")
            with self._count_lock:
                self.requests_sent += 1
            try:
                with self._opener.open(request, timeout=self.timeout) as reply:
                    return reply.read()
            except urllib.error.HTTPError as error:
                if error.code not in (301, 302, 303, 307, 308):
                    raise
                location = error.headers.get("Location") if error.headers is not None else None
                error.close()
                if error.code not in (307, 308) or not location:
                    raise self._error(
                        f"HTTP {error.code} redirect from {redact_url(url)} to {location and redact_url(location)!r}: "
                        "only 307/308 keep the POST; set the base URL to the final address",
                        fatal=True,
                    ) from None
                target = urllib.parse.urljoin(url, location)
                if urllib.parse.urlsplit(target).scheme not in _DEFAULT_PORTS:
                    raise self._error(f"redirect to a non-http(s) URL {redact_url(target)!r}", fatal=True) from None
                if with_key and self._api_key and not keeps_credentials(url, target):
                    warnings.warn(
                        f"{redact_url(url)} redirected to another host ({redact_url(target)}): following without "
                        "the Authorization header",
                        CredentialsDroppedWarning,
                        stacklevel=2,
                    )
                    with_key = False
                url = target
        raise self._error(f"more than {MAX_REDIRECTS} redirects from {redact_url(self.url)}", fatal=True)

    def post(self, payload: dict[str, Any]) -> Any:
        """POST ``payload`` as JSON with retries; the decoded JSON body, or :class:`APIRequestError`."""
        data = json.dumps(payload).encode()
        shown = redact_url(self.url)
        last_error = ""
        for attempt in range(self.max_retries + 1):
            delay = min(self.backoff * 2**attempt, self.max_backoff)
            try:
                body = self._send(data)
            except urllib.error.HTTPError as error:  # before URLError: HTTPError is a subclass of it
                if error.code != 429 and error.code < 500:
                    detail = error.read().decode("utf-8", "replace")[:300]
                    raise self._error(f"HTTP {error.code} from {shown}: {detail}", fatal=True) from None
                last_error = f"HTTP {error.code}"
                if (wait := _retry_after(error.headers)) is not None:
                    delay = min(wait, self.max_backoff)
            except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                last_error = "timed out" if isinstance(reason, TimeoutError) else f"{type(reason).__name__}: {reason}"
            else:
                try:
                    return json.loads(body)
                except json.JSONDecodeError:
                    raise self._error(f"non-JSON reply from {shown}: {body[:200]!r}", fatal=True) from None
            if attempt < self.max_retries:
                time.sleep(delay)
        attempts = self.max_retries + 1
        raise self._error(f"{shown} failed after {attempts} attempts: {last_error}", fatal=False)
