"""Fetching image bytes by URL, politely and safely: http(s) with a per-host
concurrency cap and rate limit, retries with backoff on 5xx/timeouts, 429
Retry-After honoured; gs:// through google-cloud-storage; file:// and local
paths only when the policy allows them (local runs). Catalogue URLs are
untrusted: loopback, link-local (cloud metadata) and private addresses are
refused unless allowed, checked on the resolved address, again on the address
the socket actually connected to (DNS rebinding), and after every redirect; downloads are capped in size, time and content type."""
from __future__ import annotations

import email.utils
import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable
from urllib.parse import urljoin, urlparse

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from shared import gcs


class FetchError(Exception):
    """A URL could not be fetched; `reason` is a short stable code."""

    def __init__(self, reason: str, url: str, detail: str = ""):
        self.reason, self.url, self.detail = reason, url, detail
        super().__init__(f"{reason}: {url}" + (f" ({detail})" if detail else ""))


@dataclass
class FetchPolicy:
    allow_local_paths: bool = False
    allowed_schemes: tuple = ("http", "https", "gs")
    host_allowlist: list = field(default_factory=list)  # empty: any host
    allow_private_networks: bool = False
    max_redirects: int = 3
    max_bytes: int = 30_000_000
    content_types: tuple = ("image/",)
    timeout_s: float = 20.0        # per request (connect and each read)
    max_seconds_per_image: float = 120.0
    retries: int = 4
    backoff_s: float = 0.5
    max_retry_after_s: float = 30.0
    per_host_concurrency: int = 4
    per_host_rate: float = 10.0    # requests per second per host; 0 = unlimited

    @classmethod
    def from_dict(cls, d: dict | None) -> "FetchPolicy":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"cache.fetch: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
        for k in ("allowed_schemes", "content_types"):
            if k in d:
                d[k] = tuple(d[k])
        for f in fields(cls):  # KFP passes dict parameters as JSON: a byte cap of 64 arrives as 64.0
            v = d.get(f.name)
            if isinstance(f.default, int) and not isinstance(f.default, bool) and isinstance(v, float):
                if not v.is_integer():
                    raise ValueError(f"cache.fetch.{f.name}: expected a whole number, got {v!r}")
                d[f.name] = int(v)
        return cls(**d)


def check_address(host: str, url: str, allow_private: bool) -> None:
    """Refuse hosts that resolve to loopback, link-local, private or reserved addresses."""
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise FetchError("dns_error", url, str(e)) from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if not is_public_address(ip):
            raise FetchError("blocked_address", url, f"{host} resolves to {ip}")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True only for globally routable unicast addresses. Not just private ranges:
    shared/CGNAT space (100.64/10 holds some clouds' metadata services), and IPv6
    forms that carry an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by the
    address they carry, so ::ffff:127.0.0.1 or 64:ff9b::a9fe:a9fe are refused too."""
    if ip.is_multicast or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        carried = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None,
                   ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None]
        return all(is_public_address(v4) for v4 in carried if v4 is not None)
    return True


class BlockedPeer(Exception):
    """The socket connected to a non-public address (raised before any byte is sent)."""


class _PeerCheck:
    """Connection mixin: once TCP is connected, and before the request (or the TLS hello)
    is sent, the address actually connected to must be public. `check_address` resolves
    the name separately from the connect, so a DNS answer that changes in between
    (rebinding) would otherwise reach an internal address."""

    def _new_conn(self):
        sock = super()._new_conn()
        if self.proxy is None:  # through a proxy the peer is the proxy; check_address judged the target
            peer = ipaddress.ip_address(sock.getpeername()[0].split("%")[0])
            if not is_public_address(peer):
                sock.close()
                raise BlockedPeer(f"{self.host} connected to {peer}")
        return sock


class _CheckedHTTPConnection(_PeerCheck, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_PeerCheck, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _PeerCheckedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


class _HostGate:
    """Per-host concurrency cap and minimum interval between request starts."""

    def __init__(self, concurrency: int, rate: float):
        self.sem = threading.BoundedSemaphore(max(1, concurrency))
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.lock = threading.Lock()
        self.next_start = 0.0
        self.blocked_until = 0.0  # set by a 429 Retry-After for the whole host

    def __enter__(self):
        self.sem.acquire()
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start, self.blocked_until)
            self.next_start = start + self.interval
        if start > now:
            time.sleep(start - now)
        return self

    def __exit__(self, *exc):
        self.sem.release()


def parse_retry_after(value: str | None, cap: float) -> float:
    if not value:
        return 1.0
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        if when is None:
            return 1.0
        return min(cap, max(0.0, when.timestamp() - time.time()))


class Fetcher:
    """Thread-safe fetcher applying a FetchPolicy."""

    def __init__(self, policy: FetchPolicy | None = None, sleep: Callable[[float], None] = time.sleep):
        self.policy = policy or FetchPolicy()
        self.sleep = sleep
        self._gates: dict[str, _HostGate] = {}
        self._lock = threading.Lock()
        self._session = requests.Session()
        if not self.policy.allow_private_networks:
            for prefix in ("http://", "https://"):
                self._session.mount(prefix, _PeerCheckedAdapter())
        self._gcs = None
        self.stats = {"requests": 0, "retries": 0}

    def _gate(self, host: str) -> _HostGate:
        with self._lock:
            if host not in self._gates:
                self._gates[host] = _HostGate(self.policy.per_host_concurrency, self.policy.per_host_rate)
            return self._gates[host]

    def fetch(self, url: str) -> bytes:
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
            return self._fetch_local(url, parsed)
        if scheme not in self.policy.allowed_schemes:
            raise FetchError("blocked_scheme", url, f"scheme {scheme!r} not in {self.policy.allowed_schemes}")
        if scheme == "gs":
            return self._fetch_gcs(url, parsed)
        return self._fetch_http(url)

    def _fetch_local(self, url: str, parsed) -> bytes:
        if not self.policy.allow_local_paths:
            raise FetchError("blocked_scheme", url, "local paths are not allowed by the fetch policy")
        path = parsed.path if parsed.scheme == "file" else url
        if not os.path.isfile(path):
            raise FetchError("not_found", url)
        size = os.path.getsize(path)
        if size > self.policy.max_bytes:
            raise FetchError("too_large", url, f"{size} bytes > {self.policy.max_bytes}")
        try:  # bounded read: a file that grows, or a /proc file that claims 0 bytes
            with open(path, "rb") as f:
                data = f.read(self.policy.max_bytes + 1)
        except OSError as e:  # unreadable: this record's failure, not the cache's
            raise FetchError("not_readable", url, e.strerror or type(e).__name__) from None
        if len(data) > self.policy.max_bytes:
            raise FetchError("too_large", url, f"> {self.policy.max_bytes} bytes")
        return data

    def _fetch_gcs(self, url: str, parsed) -> bytes:
        bucket, blob_name = parsed.netloc, parsed.path.lstrip("/")
        if not bucket or not blob_name:
            raise FetchError("bad_url", url, "expected gs://bucket/object")
        if self._gcs is None:
            self._gcs = gcs.client()
        from google.api_core import exceptions as gexc

        try:  # the client retries transient errors itself (its default retry policy)
            blob = self._gcs.bucket(bucket).get_blob(blob_name)
            if blob is None:
                raise FetchError("not_found", url)
            if blob.size and blob.size > self.policy.max_bytes:
                raise FetchError("too_large", url, f"{blob.size} bytes > {self.policy.max_bytes}")
            # ranged read: an object replaced by a bigger one after get_blob is still cut at the cap
            data = blob.download_as_bytes(start=0, end=self.policy.max_bytes)
        except gexc.GoogleAPICallError as e:  # one object's failure, not the run's
            code = getattr(e, "code", None)
            raise FetchError("not_found" if code == 404 else f"http_{code}" if code else "gcs_error",
                             url, str(e)[:200]) from None
        except (ConnectionError, TimeoutError, gexc.RetryError) as e:
            raise FetchError("connection_error", url, str(e)[:200]) from None
        if len(data) > self.policy.max_bytes:
            raise FetchError("too_large", url, f"> {self.policy.max_bytes} bytes")
        return data

    def _fetch_http(self, url: str) -> bytes:
        p = self.policy
        deadline = time.monotonic() + p.max_seconds_per_image
        attempt = 0
        while True:
            try:
                return self._http_once(url, deadline)
            except FetchError as e:
                retriable = e.reason in ("timeout", "connection_error") or e.reason.startswith("http_5")
                if e.reason == "http_429":
                    if attempt >= p.retries:
                        raise FetchError("http_429_exhausted", url, e.detail) from None
                    wait = float(e.detail.split("=")[1]) if e.detail.startswith("retry_after=") else 1.0
                elif retriable and attempt < p.retries:
                    wait = p.backoff_s * (2 ** attempt)
                else:
                    raise
                if time.monotonic() + wait > deadline:
                    raise FetchError("timeout", url, "time budget per image exhausted") from None
                attempt += 1
                self.stats["retries"] += 1
                self.sleep(wait)

    def _http_once(self, url: str, deadline: float) -> bytes:
        p = self.policy
        current = url
        for _ in range(p.max_redirects + 1):
            parsed = urlparse(current)
            if parsed.scheme not in ("http", "https") or parsed.scheme not in p.allowed_schemes:
                raise FetchError("blocked_scheme", url, f"redirect to {current}")
            host = parsed.hostname or ""
            if p.host_allowlist and host not in p.host_allowlist:
                raise FetchError("blocked_host", url, f"{host} not in the host allow-list")
            check_address(host, url, p.allow_private_networks)
            gate = self._gate(host)
            with gate:
                self.stats["requests"] += 1
                try:
                    r = self._session.get(current, stream=True, allow_redirects=False,
                                          timeout=(p.timeout_s, p.timeout_s))
                except BlockedPeer as e:
                    raise FetchError("blocked_address", url, str(e)) from None
                except requests.Timeout:
                    raise FetchError("timeout", url) from None
                except requests.RequestException as e:
                    raise FetchError("connection_error", url, type(e).__name__) from None
                try:
                    if r.status_code in (301, 302, 303, 307, 308):
                        loc = r.headers.get("Location")
                        if not loc:
                            raise FetchError("bad_redirect", url)
                        current = urljoin(current, loc)
                        continue
                    if r.status_code == 429:
                        wait = parse_retry_after(r.headers.get("Retry-After"), p.max_retry_after_s)
                        gate.blocked_until = time.monotonic() + wait
                        raise FetchError("http_429", url, f"retry_after={wait}")
                    if r.status_code != 200:
                        raise FetchError(f"http_{r.status_code}", url)
                    ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if ctype and not any(ctype.startswith(t) for t in p.content_types) \
                            and ctype != "application/octet-stream":
                        raise FetchError("bad_content_type", url, ctype)
                    declared = r.headers.get("Content-Length")
                    if declared and declared.isdigit() and int(declared) > p.max_bytes:
                        raise FetchError("too_large", url, f"{declared} bytes > {p.max_bytes}")
                    chunks, size = [], 0
                    # A read blocks until its chunk is full: a server dripping a byte a second
                    # never trips the per-read timeout, so a watchdog cuts the socket at the
                    # image's deadline.
                    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (r,))
                    watchdog.daemon = True
                    watchdog.start()
                    try:
                        for chunk in r.iter_content(65536):
                            size += len(chunk)
                            if size > p.max_bytes:
                                raise FetchError("too_large", url, f"> {p.max_bytes} bytes")
                            if time.monotonic() > deadline:
                                raise FetchError("timeout", url, "time budget per image exhausted")
                            chunks.append(chunk)
                    except (requests.RequestException, OSError, ValueError, AttributeError) as e:
                        # a cut socket surfaces as any of these, depending on where the read was
                        if time.monotonic() >= deadline:
                            raise FetchError("timeout", url, "time budget per image exhausted") from None
                        raise FetchError("timeout" if "timed out" in str(e).lower() else "connection_error",
                                         url, type(e).__name__) from None
                    finally:
                        watchdog.cancel()
                    return b"".join(chunks)
                finally:
                    r.close()
        raise FetchError("too_many_redirects", url, f"> {p.max_redirects}")


def _cut(response: requests.Response) -> None:
    """Shut the response's socket down so that a read blocked on it returns at once."""
    # urllib3 hands the socket to http.client's response once headers are read; there
    # is no public handle to it, so look where either library keeps it.
    for path in (("connection", "sock"), ("_fp", "fp", "raw", "_sock")):
        obj: Any = response.raw
        for attr in path:
            obj = getattr(obj, attr, None)
        if isinstance(obj, socket.socket):
            try:
                obj.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return


def fetch_policy_summary(policy: FetchPolicy) -> dict[str, Any]:
    return {f.name: getattr(policy, f.name) for f in fields(policy)}
