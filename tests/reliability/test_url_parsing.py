"""URLs that read as one host to one parser and another to the HTTP client (issue 12,
"Hostile catalogue data"): backslashes, userinfo, percent-encoded or invisible
characters, trailing dots, IDNA look-alikes, '#'/'?' before '@', odd ports and
brackets. The fetch policy must judge the host requests actually connects to and
refuse what parsers disagree on (`ambiguous_url`), before any request is sent.

No test here reaches anything but 127.0.0.1: every test that fetches replaces the
resolver (the `dns` fixture) so that every host name leads to the local image server
and is recorded, which makes a URL that slips past the policy show up as a hit on that
server and as the name requests asked for."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from hypothesis import example, given
from hypothesis import strategies as st
from urllib3.util import parse_url

from shared.data.fetch import Fetcher, FetchError, FetchPolicy
from shared.data.image_cache import cache_images
from tests.image_server import ImageServer, jpeg_bytes
from tests.reliability.fuzzing import fuzz_settings, write_counts  # noqa: E402

ALLOWLIST = ["allowed.example", "*.cdn.example", "bücher.example"]
POLICY = {
    "allow_private_networks": True,  # the server is on loopback; the URL policy is under test here
    "host_allowlist": ALLOWLIST,
    "retries": 0,
    "per_host_rate": 0,
    "timeout_s": 2.0,
}
TRIED: Counter = Counter()
# the project's fuzz settings (tests/reliability/test_fuzz_inputs.py): a fixed set in CI,
# fresh draws when PLANTID_FUZZ_EXAMPLES asks for more
FUZZ = fuzz_settings()


def on_allowlist(host: str) -> bool:
    """The test's own reading of ALLOWLIST, independent of shared.data.fetch: `host` as a
    client connects to it (lowercase, punycode)."""
    host = host.lower().removesuffix(".")
    return host in ("allowed.example", "xn--bcher-kva.example") or host.endswith(".cdn.example")


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts(TRIED)


@pytest.fixture(scope="module")
def server():
    with ImageServer() as s:
        s.add("a.jpg", jpeg_bytes(seed=3))
        s.add("a@2x.jpg", jpeg_bytes(seed=4))
        yield s


@pytest.fixture
def dns(monkeypatch, server) -> list[tuple[str, int]]:
    """Every name resolves to the image server, and (name, port) is recorded: what the
    HTTP client asks the resolver for is the host it connects to. 127.0.0.1 keeps the
    port asked for (the redirect server); any other address fails, never connects."""
    asked: list[tuple[str, int]] = []

    def resolve(host, port, *args, **kwargs):
        asked.append((host, int(port)))
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port))]
        if str(ip) == "127.0.0.1":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))]
        raise socket.gaierror(socket.EAI_NONAME, f"test resolver: {host} is not reachable from tests")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return asked


# (trick, URL, the reason it is refused). Every host name in them reaches the image
# server, so a URL let through would fetch /img/a.jpg.
TRICKS = [
    ("backslash-then-at", "http://allowed.example\\@evil.example/img/a.jpg", "ambiguous_url"),
    ("backslash-in-host", "http://evil.example\\.allowed.example/img/a.jpg", "ambiguous_url"),
    # urllib.parse reads allowed.example, requests connects to evil.example: what the old check let through
    ("port-backslash-at", "http://evil.example:80\\@allowed.example/img/a.jpg", "ambiguous_url"),
    ("backslash-slashes", "http:\\\\evil.example\\img\\a.jpg", "ambiguous_url"),
    ("backslash-in-path", "http://evil.example/\\@allowed.example/img/a.jpg", "ambiguous_url"),
    ("userinfo", "http://allowed.example@evil.example/img/a.jpg", "ambiguous_url"),
    ("credentials", "http://user:pass@allowed.example/img/a.jpg", "ambiguous_url"),
    ("two-ats", "http://allowed.example@evil.example@allowed.example/img/a.jpg", "ambiguous_url"),
    ("sub-delim-at", "http://evil.example;@allowed.example/img/a.jpg", "ambiguous_url"),
    ("port-then-at", "http://allowed.example:80@evil.example/img/a.jpg", "ambiguous_url"),
    ("brackets-then-at", "http://[::1]@allowed.example/img/a.jpg", "ambiguous_url"),
    ("pct-dot", "http://allowed.example%2eevil.example/img/a.jpg", "ambiguous_url"),
    ("pct-at", "http://evil.example%40allowed.example/img/a.jpg", "ambiguous_url"),
    ("pct-allowed", "http://allowed%2Eexample/img/a.jpg", "ambiguous_url"),
    ("tab-before-at", "http://evil.example\t@allowed.example/img/a.jpg", "ambiguous_url"),
    ("newline-before-at", "http://evil.example\n@allowed.example/img/a.jpg", "ambiguous_url"),
    ("crlf-in-host", "http://allowed.example\r\n.evil.example/img/a.jpg", "ambiguous_url"),
    ("nul-in-host", "http://evil.example\x00.allowed.example/img/a.jpg", "ambiguous_url"),
    ("tab-in-scheme", "ht\ttp://evil.example/img/a.jpg", "ambiguous_url"),
    ("space-in-host", "http://evil.example allowed.example/img/a.jpg", "ambiguous_url"),
    ("zero-width-space", "http://allo\u200bwed.example/img/a.jpg", "ambiguous_url"),
    ("leading-space", " http://evil.example/img/a.jpg", "ambiguous_url"),
    ("trailing-newline", "http://allowed.example/img/a.jpg\n", "ambiguous_url"),
    ("trailing-dot-evil", "http://allowed.example.evil.example./img/a.jpg", "blocked_host"),
    ("double-trailing-dot", "http://allowed.example../img/a.jpg", "ambiguous_url"),
    ("uppercase-evil", "http://ALLOWED.EXAMPLE.EVIL.example/img/a.jpg", "blocked_host"),
    ("cyrillic-a", "http://\u0430llowed.example/img/a.jpg", "blocked_host"),
    ("punycode-look-alike", "http://xn--llowed-2nf.example/img/a.jpg", "blocked_host"),
    ("ideographic-dot", "http://allowed\u3002example/img/a.jpg", "ambiguous_url"),
    ("fullwidth", "http://\uff41llowed.example/img/a.jpg", "ambiguous_url"),
    ("hash-before-at", "http://evil.example#@allowed.example/img/a.jpg", "blocked_host"),
    ("query-before-at", "http://evil.example?@allowed.example/img/a.jpg", "blocked_host"),
    ("hex-port", "http://allowed.example:0x50/img/a.jpg", "ambiguous_url"),
    ("port-out-of-range", "http://allowed.example:65616/img/a.jpg", "ambiguous_url"),
    ("two-ports", "http://allowed.example:80:80/img/a.jpg", "ambiguous_url"),
    ("name-in-brackets", "http://[allowed.example]/img/a.jpg", "ambiguous_url"),
    ("mapped-loopback", "http://[::ffff:7f00:1]/img/a.jpg", "blocked_host"),
    ("substring-prefix", "http://evilallowed.example/img/a.jpg", "blocked_host"),
    ("allowed-as-subdomain", "http://allowed.example.evil.example/img/a.jpg", "blocked_host"),
    ("wildcard-apex", "http://cdn.example/img/a.jpg", "blocked_host"),
    ("one-slash", "http:/evil.example/img/a.jpg", "bad_url"),
    ("no-slashes", "http:evil.example/img/a.jpg", "bad_url"),
]


@pytest.mark.parametrize("url,reason", [(u, r) for _, u, r in TRICKS], ids=[t for t, _, _ in TRICKS])
def test_trick_urls_are_refused_before_any_request(server, dns, url, reason):
    before = sum(server.hits.values())
    f = Fetcher(FetchPolicy(**POLICY))
    with pytest.raises(FetchError) as e:
        f.fetch(url)
    assert e.value.reason == reason, str(e.value)
    assert e.value.detail  # the record's report says why
    assert f.stats["requests"] == 0 and dns == []  # nothing resolved, nothing connected
    assert sum(server.hits.values()) == before


@pytest.mark.parametrize(
    "url,host,port",
    [
        ("http://allowed.example/img/a.jpg", "allowed.example", 80),
        ("http://ALLOWED.Example./img/a.jpg", "allowed.example", 80),  # case and trailing dot
        ("http://img.cdn.example/img/a.jpg", "img.cdn.example", 80),  # allowed subdomain
        ("http://a.b.cdn.example/img/a.jpg", "a.b.cdn.example", 80),
        ("http://allowed.example:8080/img/a.jpg", "allowed.example", 8080),  # explicit port
        ("http://bücher.example/img/a.jpg", "xn--bcher-kva.example", 80),  # IDNA, either spelling
        ("http://xn--bcher-kva.example/img/a.jpg", "xn--bcher-kva.example", 80),
        ("http://allowed.example/img/a.jpg#@evil.example", "allowed.example", 80),  # '@' after '#'
    ],
)
def test_legitimate_urls_on_the_allowlist_are_fetched(server, dns, url, host, port):
    assert Fetcher(FetchPolicy(**POLICY)).fetch(url) == server.images["a.jpg"]
    assert dns == [(host, port)]


def test_at_sign_in_the_path_is_not_userinfo(server, dns):
    url = "http://allowed.example/img/a@2x.jpg"
    assert Fetcher(FetchPolicy(**POLICY)).fetch(url) == server.images["a@2x.jpg"]
    assert dns == [("allowed.example", 80)]


def test_trick_urls_fail_per_record_and_the_run_goes_on(server, dns, tmp_path):
    recs = [
        {
            "image_id": "good",
            "image_url": "http://allowed.example/img/a.jpg",
            "taxon": "Rosa canina",
            "region": "EU_SW",
            "license": "CC0",
        },
        {
            "image_id": "trick",
            "image_url": "http://evil.example:80\\@allowed.example/img/a.jpg",
            "taxon": "Rosa canina",
            "region": "EU_SW",
            "license": "CC0",
        },
    ]
    rep = cache_images(
        recs,
        tmp_path,
        resize=64,
        min_side=50,
        policy=FetchPolicy(**POLICY),
        workers=1,
        max_fail_rate=1.0,
        progress=lambda d, t: None,
    )
    assert [c["image_id"] for c in rep.cached] == ["good"]
    (fail,) = rep.failures
    assert fail["image_id"] == "trick" and fail["reason"] == "ambiguous_url" and "backslash" in fail["detail"]
    assert [h for h, _ in dns] == ["allowed.example"]


class _Redirect(BaseHTTPRequestHandler):
    location = ""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_response(302)
        self.send_header("Location", type(self).location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def redirector():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/go"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize(
    "location,reason",
    [
        ("http://allowed.example/img/a.jpg", None),  # the chain works: the refusals below are the policy's
        ("http://evil.example:80\\@allowed.example/img/a.jpg", "ambiguous_url"),
        ("http://allowed.example@evil.example/img/a.jpg", "ambiguous_url"),
        ("http://allowed.example\t/img/a.jpg", "ambiguous_url"),  # urljoin would drop the tab
        ("//evil.example/img/a.jpg", "blocked_host"),
    ],
)
def test_redirects_to_trick_urls_are_refused(server, dns, redirector, location, reason):
    _Redirect.location = location
    f = Fetcher(FetchPolicy(**{**POLICY, "host_allowlist": [*ALLOWLIST, "127.0.0.1"]}))
    before = sum(server.hits.values())
    if reason is None:
        assert f.fetch(redirector) == server.images["a.jpg"]
        return
    with pytest.raises(FetchError) as e:
        f.fetch(redirector)
    assert e.value.reason == reason and e.value.url == redirector
    assert f.stats["requests"] == 1 and sum(server.hits.values()) == before


ALLOWED_FORMS = [
    "allowed.example",
    "ALLOWED.Example",
    "allowed.example.",
    "img.cdn.example",
    "bücher.example",
    "xn--bcher-kva.example",
]
EVIL_FORMS = [
    "evil.example",
    "allowed.example.evil.example",
    "evilallowed.example",
    "cdn.example",
    "\u0430llowed.example",
    "127.0.0.1",
    "[::1]",
    "evil.example.",
]
# Half the separators drawn are these, the ones urllib.parse and urllib3 split apart (a
# backslash ends the authority for urllib3 only; tab and newline vanish for urllib.parse only).
CONFUSING = ["\\@", ":80\\@", "\\", "\\\\@", ":8080\\@", "\\.", "\t@", "\n@", "@"]
SEPARATORS = [
    ":pass@",
    "@@",
    "#@",
    "?@",
    "/@",
    "/\\@",
    "#",
    "?",
    "/",
    ".",
    ":",
    ";",
    "%40",
    "%2e",
    "%5c",
    "%09",
    "\t",
    "\n",
    "\r\n",
    " ",
    "\x00",
    "\u3002",
    "\u200b",
    "\u00ad",
    "[",
    "]",
    "",
]
PORTS = [":80", ":8080", ":", ":0x50", ":65536", ": 80", ":80:80"]
SCHEMES = ["HTTP://", "http:/", "http:\\\\", " http://", "http:///", "http:", "ht\ttp://"]
PATHS = ["/img/a.jpg", "/img/a@2x.jpg", "", "/img/a.jpg#@evil.example", "?@evil.example/img/a.jpg"]


@st.composite
def tricky_urls(draw) -> str:
    """Allowed and evil hosts, as often one as the other, joined by separators that
    parsers read differently, behind a scheme and before a port and path (each mostly
    plain, sometimes odd)."""
    host = st.sampled_from(EVIL_FORMS) | st.sampled_from(ALLOWED_FORMS)
    sep = st.sampled_from(CONFUSING) | st.sampled_from(SEPARATORS)
    odd = st.integers(0, 3).map(lambda n: n == 0)  # one time in four
    pairs = draw(st.sampled_from([0, 0, 1, 1, 2]))
    authority = draw(host) + "".join(draw(sep) + draw(host) for _ in range(pairs))
    return (
        (draw(st.sampled_from(SCHEMES)) if draw(odd) else "http://")
        + authority
        + (draw(st.sampled_from(PORTS)) if draw(odd) else "")
        + draw(st.sampled_from(PATHS))
    )


@FUZZ
@given(url=tricky_urls())
@example(url="http://evil.example:80\\@allowed.example/img/a.jpg")
@example(url="http://evil.example\\@allowed.example/img/a.jpg")
@example(url="http://evil.example\t@allowed.example/img/a.jpg")
@example(url="http://allowed.example@evil.example/img/a.jpg")
@example(url="http://allowed.example.evil.example/img/a.jpg")
@example(url="http://evil.example#@allowed.example/img/a.jpg")
def test_whatever_the_policy_accepts_connects_to_an_allowed_host(server, dns, url):
    TRIED["url_parsing"] += 1
    dns.clear()
    before = sum(server.hits.values())
    f = Fetcher(FetchPolicy(**POLICY))  # a fresh pool each time: every connection is resolved anew
    try:
        f.fetch(url)
    except FetchError as e:
        if f.stats["requests"] == 0:  # refused by the policy: nothing resolved, nothing reached
            assert e.reason in ("ambiguous_url", "blocked_host", "bad_url", "blocked_scheme"), str(e)
            assert dns == [] and sum(server.hits.values()) == before
            return
    assert f.stats["requests"] == 1
    # accepted: the host requests asked the resolver for, ...
    assert dns and all(on_allowlist(host) for host, _ in dns), (url, dns)
    # ... the host urllib3 reads in the original text, and where requests' own adapter would
    # connect for the original text, are all on the allow-list
    assert on_allowlist(parse_url(url).host or ""), url
    adapter = requests.adapters.HTTPAdapter()
    pool = adapter.build_connection_pool_key_attributes(requests.Request("GET", url).prepare(), True)[0]
    assert on_allowlist(pool["host"] or ""), (url, pool)
