"""Hostile catalogue URLs: every address form that reaches the machine itself, the
cloud metadata service or the cluster network is refused before any byte is sent;
bodies that lie about their size or drip forever are cut off; a record's fields
never become a file path in the cache."""

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.data.cache_paths import resolve
from shared.data.fetch import Fetcher, FetchError, FetchPolicy, check_address, is_public_address
from shared.data.image_cache import cache_images
from tests.image_server import jpeg_bytes

NON_PUBLIC = [
    "127.0.0.1",
    "127.8.8.8",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.9",
    "192.168.1.1",
    "169.254.169.254",  # AWS/GCP/Azure metadata
    "100.100.100.200",  # Alibaba metadata, CGNAT space (not "private" to ipaddress)
    "100.64.0.1",
    "198.18.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fd00:ec2::254",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1",  # NAT64 of metadata / loopback
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
]
PUBLIC = ["8.8.8.8", "151.101.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize("addr", NON_PUBLIC)
def test_non_public_addresses_are_refused(addr):
    assert not is_public_address(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_pass(addr):
    assert is_public_address(ipaddress.ip_address(addr))


def _resolver(mapping):
    def fake(host, *a, **k):
        addrs = mapping[host]
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in addrs]

    return fake


def test_hostname_resolving_to_a_private_address_is_refused(monkeypatch):
    """DNS names are judged by what they resolve to; one bad address among good ones is enough."""
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        _resolver(
            {
                "rebind.example": ["127.0.0.1"],
                "mixed.example": ["8.8.8.8", "10.0.0.5"],
                "meta.example": ["::ffff:169.254.169.254"],
                "ok.example": ["8.8.8.8"],
            }
        ),
    )
    for host in ("rebind.example", "mixed.example", "meta.example"):
        with pytest.raises(FetchError) as e:
            check_address(host, f"http://{host}/x.jpg", allow_private=False)
        assert e.value.reason == "blocked_address" and host in str(e.value)
    check_address("ok.example", "http://ok.example/x.jpg", allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/x.jpg",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/x.jpg",  # ... in hex
        "http://[::1]/x.jpg",
        "http://[::ffff:127.0.0.1]/x.jpg",
        "http://169.254.169.254/computeMetadata/v1/",
        "http://metadata.google.internal.localhost/x.jpg",
    ],
)
def test_encoded_loopback_and_metadata_urls_never_connect(url):
    f = Fetcher(FetchPolicy(retries=0))
    with pytest.raises(FetchError) as e:
        f.fetch(url)
    assert e.value.reason in ("blocked_address", "dns_error")
    assert f.stats["requests"] == 0  # refused before any request


@pytest.mark.parametrize(
    "url,reason",
    [
        ("file:///etc/passwd", "blocked_scheme"),
        ("/etc/passwd", "blocked_scheme"),
        ("../../etc/passwd", "blocked_scheme"),
        ("ftp://example.org/a.jpg", "blocked_scheme"),
        ("gopher://example.org/a", "blocked_scheme"),
        ("javascript:alert(1)", "blocked_scheme"),
    ],
)
def test_cluster_policy_refuses_local_and_odd_schemes(url, reason):
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy()).fetch(url)
    assert e.value.reason == reason


class _Hostile(BaseHTTPRequestHandler):
    """Bodies that lie: no Content-Length and endless, or dripping slowly; a redirect loop."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\xff" * 65536
            try:
                for _ in range(10_000):  # 655 MB if nobody stops reading
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                return
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"\xff" * 100)
                    self.wfile.flush()
                    time.sleep(0.1)  # each read well inside timeout_s: only the per-image budget stops it
            except (BrokenPipeError, ConnectionResetError):
                return
        elif self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/svg":
            body = b"<svg xmlns='http://www.w3.org/2000/svg'/>"
            self.send_response(200)
            self.send_header("Content-Type", "image/svg+xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture(scope="module")
def hostile():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


LOCAL = dict(allow_private_networks=True, per_host_rate=0, backoff_s=0.01, retries=0)


def test_body_without_length_is_cut_at_max_bytes(hostile):
    t0 = time.monotonic()
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(**LOCAL, max_bytes=1_000_000)).fetch(f"{hostile}/endless")
    assert e.value.reason == "too_large" and time.monotonic() - t0 < 10


def test_dripping_body_is_cut_at_the_time_budget(hostile):
    t0 = time.monotonic()
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(**LOCAL, timeout_s=2.0, max_seconds_per_image=0.6)).fetch(f"{hostile}/drip")
    assert e.value.reason == "timeout" and time.monotonic() - t0 < 3


def test_redirect_loop_stops_at_the_cap(hostile):
    f = Fetcher(FetchPolicy(**LOCAL, max_redirects=3))
    with pytest.raises(FetchError) as e:
        f.fetch(f"{hostile}/loop")
    assert e.value.reason == "too_many_redirects" and f.stats["requests"] == 4


def test_content_type_allow_list_is_configurable(hostile):
    """SVG is an image/ type (the default lets it through, and decoding then rejects it);
    a stricter allow-list refuses it before the body is read."""
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(**LOCAL, content_types=("image/jpeg", "image/png"))).fetch(f"{hostile}/svg")
    assert e.value.reason == "bad_content_type"


def test_cache_names_come_from_content_hashes_only(tmp_path):
    """Record fields that look like paths never become one: the image lands under its hash."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg_bytes(220, 200, seed=5))
    cache = tmp_path / "cache"
    rec = {
        "image_id": "../../../../tmp/evil",
        "image_url": str(src / "a.jpg"),
        "taxon": "../../etc",
        "region": "/etc/passwd",
        "license": "CC0",
    }
    rep = cache_images([rec], cache, resize=100, min_side=100, policy=FetchPolicy(allow_local_paths=True), workers=1)
    (entry,) = rep.cached
    files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.jpg"))
    assert files == [entry["cache_path"]] and entry["cache_path"] == f"{entry['sha256'][:2]}/{entry['sha256']}.jpg"
    assert not (tmp_path / "evil").exists() and not list(tmp_path.glob("**/evil*"))
    # a tampered index entry cannot point outside the cache either
    with pytest.raises(ValueError, match="escapes the cache"):
        resolve(cache, {**entry, "cache_path": "../../etc/passwd"})


def test_dns_rebinding_is_caught_at_connect_before_a_byte_is_sent(monkeypatch):
    """The name check passes (DNS said public), then the connect lands on loopback: the
    socket's peer address is judged before the request goes out, so the server sees nothing."""
    import shared.data.fetch as fetch

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(fetch, "check_address", lambda host, url, allow_private: None)  # first answer: public
        url = f"http://127.0.0.1:{httpd.server_address[1]}/internal-admin"
        with pytest.raises(FetchError) as e:
            Fetcher(FetchPolicy(retries=0)).fetch(url)
        assert e.value.reason == "blocked_address" and "connected to 127.0.0.1" in str(e.value)
        assert hits == []
        # the same fetch with private networks allowed (local runs) does connect
        assert Fetcher(FetchPolicy(retries=0, allow_private_networks=True)).fetch(url) == b""
        assert hits == ["/internal-admin"]
    finally:
        httpd.shutdown()
