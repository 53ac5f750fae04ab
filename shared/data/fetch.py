"""Fetching image bytes by URL, politely and safely: http(s) with a per-host
concurrency cap and rate limit, retries with backoff on 5xx/timeouts, 429
Retry-After honoured; gs:// through google-cloud-storage; file:// and local
paths only when the policy allows them (local runs). Catalogue URLs are
untrusted: loopback, link-local (cloud metadata) and private addresses are
refused unless allowed, checked on the resolved address, again on the address
the socket actually connected to (DNS rebinding), and after every redirect;
downloads are capped in size, time and content type.

An http(s) URL is judged on the host the HTTP client will connect to, not on a
second parser's reading of it (`judge_http_url`): a URL that urllib.parse and
urllib3 (the parser requests uses) read differently, or that carries userinfo,
a backslash, whitespace, control characters or percent-encoding in its host,
is refused as `ambiguous_url`; what is sent is the URL re-serialised from the
judged parse. `host_allowlist` matches the normalised host (lowercase, no
trailing dot, IDNA): an entry is that host exactly, `*.example.org` its
subdomains at a dot boundary, never a substring.

gs:// image URLs are read with the pod's own credentials, which can read far more than
the catalogue's photos (the pipeline's artifacts, other teams' buckets): they are refused
unless their bucket is in `gcs_bucket_allowlist` (empty by default), and a failure is
reported by a short reason (not_found, permission_denied, ...), never the API's error text
(which names projects, service accounts and request URLs)."""

from __future__ import annotations

import email.utils
import ipaddress
import os
import re
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urljoin, urlparse, urlsplit

import idna
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Url, parse_url

from shared.io import gcs


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
    timeout_s: float = 20.0  # per request (connect and each read)
    max_seconds_per_image: float = 120.0
    retries: int = 4
    backoff_s: float = 0.5
    max_retry_after_s: float = 30.0
    per_host_concurrency: int = 4
    per_host_rate: float = 10.0  # requests per second per host; 0 = unlimited
    gcs_bucket_allowlist: list = field(default_factory=list)  # empty: no gs:// image URL at all

    def __post_init__(self) -> None:
        HostAllowlist(self.host_allowlist)  # a bad entry fails here, naming it, not per URL later
        check_bucket_allowlist(self.gcs_bucket_allowlist)

    @classmethod
    def from_dict(cls, d: dict | None) -> FetchPolicy:
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


# GCS bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, -, _ and .
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# Google API errors by HTTP status -> the short reason a per-record report carries.
_GCS_REASONS = {
    400: "bad_request",
    401: "permission_denied",
    403: "permission_denied",
    404: "not_found",
    412: "precondition_failed",
    416: "empty_object",
    429: "rate_limited",
}


def check_bucket_allowlist(entries: object) -> set[str]:
    """FetchPolicy.gcs_bucket_allowlist as a set of bucket names; ValueError naming a bad entry."""
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
        raise ValueError(f"cache.fetch.gcs_bucket_allowlist: expected a list of bucket names, got {entries!r}")
    names = set()
    for entry in entries:
        if not isinstance(entry, str) or not _BUCKET_RE.fullmatch(entry):
            raise ValueError(
                f"cache.fetch.gcs_bucket_allowlist: {entry!r} is not a bucket name (lowercase, no gs:// or path)"
            )
        names.add(entry)
    return names


def gcs_reason(error: BaseException) -> str:
    """The short reason for a Google API error (its HTTP status), without its message."""
    code = getattr(error, "code", None)
    if isinstance(code, int):
        return _GCS_REASONS.get(code, "gcs_unavailable" if code >= 500 else f"gcs_http_{code}")
    return "gcs_error"


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
        carried = [
            ip.ipv4_mapped,
            ip.sixtofour,
            ip.teredo[1] if ip.teredo else None,
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None,
        ]
        return all(is_public_address(v4) for v4 in carried if v4 is not None)
    return True


# Hosts are compared as DNS names: letters, digits, '-' and '_' per label (after IDNA).
_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}")
# Characters some parsers delete or split on while others keep them: C0, DEL and C1 controls
# (urllib.parse silently drops tab, CR and LF anywhere in a URL) and the backslash (a path
# separator to WHATWG and to urllib3's authority rule, part of the host to urllib.parse).
_CONFUSING_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_SCHEME_AUTHORITY_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(//)?([^/?#]*)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_host(host: str) -> str:
    """The form hosts are compared in: an IP literal compressed (IPv6 without brackets),
    a name lowercased, IDNA-encoded label by label as urllib3 does, one trailing dot
    removed. ValueError for anything that is not a plain host name or address."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        if bare != host:
            raise ValueError(f"{host!r}: brackets around something that is not an IPv6 address") from None
    name = host.removesuffix(".")
    labels = []
    for label in name.split("."):
        if not label.isascii():
            try:  # the same call urllib3 makes for a non-ASCII label
                label = idna.encode(label.lower(), strict=True, std3_rules=True).decode("ascii")
            except idna.IDNAError as e:
                raise ValueError(f"{host!r}: not a valid IDNA label ({e})") from None
        label = label.lower()
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(f"{host!r}: label {label!r} is empty or not letters, digits, '-', '_'")
        labels.append(label)
    normal = ".".join(labels)
    if len(normal) > 253:
        raise ValueError(f"{host!r}: longer than 253 characters")
    return normal


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class HostAllowlist:
    """FetchPolicy.host_allowlist, normalised like the hosts it is matched against. An
    entry names that host exactly (as before this class existed); `*.example.org` or
    `.example.org` names the subdomains of example.org, matched at a dot boundary, so
    neither `evilexample.org` nor `example.org.evil.com` matches. An empty list allows
    any host (the FetchPolicy default)."""

    def __init__(self, entries: Iterable[str]):
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
            raise ValueError(f"cache.fetch.host_allowlist: expected a list of host names, got {entries!r}")
        self.exact: set[str] = set()
        self.parents: set[str] = set()
        for entry in entries:
            if not isinstance(entry, str) or not entry.strip():
                raise ValueError(f"cache.fetch.host_allowlist: {entry!r} is not a host name")
            text = entry.strip()
            wildcard = text.startswith(("*.", "."))
            try:
                host = normalise_host(text[2:] if text.startswith("*.") else text[1:] if wildcard else text)
            except ValueError as e:
                raise ValueError(
                    f"cache.fetch.host_allowlist: {entry!r} is not a host name (no scheme, port or path): {e}"
                ) from None
            if wildcard and _is_ip(host):
                raise ValueError(f"cache.fetch.host_allowlist: {entry!r}: an address has no subdomains")
            (self.parents if wildcard else self.exact).add(host)

    def __bool__(self) -> bool:
        return bool(self.exact or self.parents)

    def allows(self, host: str) -> bool:
        """`host` must already be normalised (normalise_host)."""
        if host in self.exact:
            return True
        if _is_ip(host):  # 1.2.3.4 is no subdomain of "3.4"
            return False
        return any(host.endswith("." + parent) for parent in self.parents)


@dataclass(frozen=True)
class HttpTarget:
    """An http(s) URL as the HTTP client will use it: `host` (normalised) and `port` are
    where requests connects, `url` is what is handed to requests (re-serialised from the
    parse that was judged, so no later parser reads the original text)."""

    scheme: str
    host: str
    port: int
    url: str


_POOL_KEY_ADAPTER = HTTPAdapter()


def judge_http_url(url: str, client: requests.Session | None = None) -> HttpTarget:
    """Parse an http(s) URL the way requests will and return where it connects. Refuses
    (FetchError `ambiguous_url`) a URL that urllib.parse and urllib3 read differently
    (scheme, host or port), one with userinfo, a backslash, a control character, or
    whitespace or percent-encoding in its authority, and checks that the URL sent leads
    requests' own adapter (the session's, when `client` is given) to the judged host.

    Long: one ordered chain of security checks on one URL (each later check relies on the
    earlier refusals); kept in one place so the order stays reviewable."""

    def ambiguous(detail: str) -> FetchError:
        return FetchError("ambiguous_url", url, detail)

    if not isinstance(url, str):
        raise FetchError("bad_url", repr(url), "not text")
    bad = _CONFUSING_RE.search(url)
    if bad:
        what = (
            "a backslash (a '/' to some parsers, part of the host to others)"
            if bad.group() == "\\"
            else f"control character U+{ord(bad.group()):04X} (deleted by some parsers, refused by others)"
        )
        raise ambiguous(f"{what} at position {bad.start()}")
    if url != url.strip():
        raise ambiguous("leading or trailing whitespace")
    m = _SCHEME_AUTHORITY_RE.match(url)
    if not m:
        raise FetchError("bad_url", url, "no scheme")
    scheme = m.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise FetchError("blocked_scheme", url, f"scheme {scheme!r} is not http(s)")
    # the authority as the longest reading sees it (up to the first '/', '?' or '#')
    authority = m.group(3)
    if not m.group(2) or not authority:
        raise FetchError("bad_url", url, "no host")
    if "@" in authority:
        raise ambiguous(
            f"userinfo ('@') in the authority {authority!r}: the host is what follows "
            "the last '@' to some readers and credentials are never sent"
        )
    odd = [c for c in authority if c.isspace() or unicodedata.category(c) in ("Zs", "Zl", "Zp", "Cf")]
    if odd:
        raise ambiguous(f"whitespace or invisible character U+{ord(odd[0]):04X} in the authority")
    if "%" in authority:
        raise ambiguous(f"percent-encoding in the authority {authority!r}")

    try:
        split = urlsplit(url)
        split_host, split_port = split.hostname, split.port
    except ValueError as e:
        raise ambiguous(f"urllib.parse cannot read it: {e}") from None
    try:
        parsed = parse_url(url)
    except ValueError as e:  # urllib3's LocationParseError is a ValueError
        raise ambiguous(f"urllib3 cannot read it: {e}") from None
    if split.username is not None or split.password is not None or parsed.auth is not None:
        raise ambiguous("userinfo in the URL")
    if split.scheme != parsed.scheme or split.scheme != scheme:
        raise ambiguous(f"parsers disagree on the scheme: {split.scheme!r} / {parsed.scheme!r}")
    if not split_host or not parsed.host:
        raise FetchError("bad_url", url, "no host")
    try:
        host = normalise_host(parsed.host)
        split_normal = normalise_host(split_host)
    except ValueError as e:
        raise ambiguous(f"not a valid host: {e}") from None
    if host != split_normal:
        raise ambiguous(
            f"parsers disagree on the host: urllib.parse reads {split_normal!r}, urllib3 (requests) reads {host!r}"
        )
    if split_port != parsed.port:
        raise ambiguous(f"parsers disagree on the port: {split_port!r} / {parsed.port!r}")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[scheme]

    send = Url(
        scheme=scheme,
        host=f"[{host}]" if ":" in host else host,
        port=parsed.port,
        path=parsed.path or "/",
        query=parsed.query,
    ).url
    # Ask requests itself where it would connect for the URL we send: its adapter derives
    # the connection pool's host and port from the prepared URL.
    adapter = client.get_adapter(send) if client is not None else _POOL_KEY_ADAPTER
    try:
        prepared = requests.Request("GET", send).prepare()
        pool_key = getattr(adapter, "build_connection_pool_key_attributes", None)
        if pool_key is not None:
            target = pool_key(prepared, True)[0]
        else:
            sent = urlparse(prepared.url)
            target = {"scheme": sent.scheme, "host": sent.hostname, "port": sent.port}
    except (requests.RequestException, ValueError) as e:
        raise ambiguous(f"requests cannot prepare it: {e}") from None
    got = (
        target["scheme"],
        target["host"],
        target["port"] if target["port"] is not None else _DEFAULT_PORTS.get(target["scheme"]),
    )
    if got != (scheme, host, port):
        raise ambiguous(f"requests would connect to {got[1]}:{got[2]}, the URL reads {host}:{port}")
    return HttpTarget(scheme, host, port, send)


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
        self._allowlist = HostAllowlist(self.policy.host_allowlist)
        self._buckets = check_bucket_allowlist(self.policy.gcs_bucket_allowlist)
        self._gcs = None
        self.stats = {"requests": 0, "retries": 0}

    def _gate(self, host: str) -> _HostGate:
        with self._lock:
            if host not in self._gates:
                self._gates[host] = _HostGate(self.policy.per_host_concurrency, self.policy.per_host_rate)
            return self._gates[host]

    def fetch(self, url: str) -> bytes:
        try:
            parsed = urlparse(url)
        except ValueError as e:  # brackets around a name, an NFKC '/' in the host: one record's failure
            reason = "ambiguous_url" if re.match(r"\s*https?:", url, re.IGNORECASE) else "bad_url"
            raise FetchError(reason, url, f"urllib.parse cannot read it: {e}") from None
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
        if bucket not in self._buckets:  # before any client exists: the pod's credentials read nothing
            raise FetchError(
                "blocked_bucket",
                url,
                f"bucket {bucket!r} is not in cache.fetch.gcs_bucket_allowlist "
                f"({sorted(self._buckets) or 'empty: gs:// image URLs are refused'})",
            )
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
            # the reason and status only: the API's text names projects, accounts and request URLs
            raise FetchError(gcs_reason(e), url, f"{type(e).__name__} (HTTP {getattr(e, 'code', '?')})") from None
        except (ConnectionError, TimeoutError, gexc.RetryError) as e:
            raise FetchError("connection_error", url, type(e).__name__) from None
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
                    wait = p.backoff_s * (2**attempt)
                else:
                    raise
                if time.monotonic() + wait > deadline:
                    raise FetchError("timeout", url, "time budget per image exhausted") from None
                attempt += 1
                self.stats["retries"] += 1
                self.sleep(wait)

    def _http_once(self, url: str, deadline: float) -> bytes:
        """One GET with its redirects, each hop judged by the URL policy, the body read within the size and time limits.

        Long: the hops, peer checks and limits share the open response's state; split, each piece would need all of it.
        """
        p = self.policy
        current = url
        for hop in range(p.max_redirects + 1):
            try:  # every hop judged on the host requests will connect to
                target = judge_http_url(current, self._session)
            except FetchError as e:  # reported against the record's URL, naming the hop
                raise FetchError(
                    e.reason, url, e.detail if hop == 0 else f"redirect to {current!r}: {e.detail}"
                ) from None
            if target.scheme not in p.allowed_schemes:
                raise FetchError("blocked_scheme", url, f"redirect to {current}")
            host = target.host
            if self._allowlist and not self._allowlist.allows(host):
                raise FetchError("blocked_host", url, f"{host} not in the host allow-list")
            check_address(host, url, p.allow_private_networks)
            gate = self._gate(host)
            with gate:
                self.stats["requests"] += 1
                try:
                    r = self._session.get(
                        target.url, stream=True, allow_redirects=False, timeout=(p.timeout_s, p.timeout_s)
                    )
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
                        if _CONFUSING_RE.search(loc):  # urljoin would drop a tab or CR before we saw it
                            raise FetchError(
                                "ambiguous_url",
                                url,
                                f"redirect to {loc!r}: control character or backslash in the Location header",
                            )
                        current = urljoin(target.url, loc)
                        continue
                    if r.status_code == 429:
                        wait = parse_retry_after(r.headers.get("Retry-After"), p.max_retry_after_s)
                        gate.blocked_until = time.monotonic() + wait
                        raise FetchError("http_429", url, f"retry_after={wait}")
                    if r.status_code != 200:
                        raise FetchError(f"http_{r.status_code}", url)
                    ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if (
                        ctype
                        and not any(ctype.startswith(t) for t in p.content_types)
                        and ctype != "application/octet-stream"
                    ):
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
                        raise FetchError(
                            "timeout" if "timed out" in str(e).lower() else "connection_error", url, type(e).__name__
                        ) from None
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
