import pytest
import requests

from shared.data.fetch import (
    Fetcher,
    FetchError,
    FetchPolicy,
    HostAllowlist,
    judge_http_url,
    normalise_host,
    parse_retry_after,
)
from tests.image_server import ImageServer, jpeg_bytes

LOCAL = dict(allow_private_networks=True, backoff_s=0.01, timeout_s=1.0, per_host_rate=0)


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_seconds=2.0, huge_bytes=300_000) as s:
        s.add("a.jpg", jpeg_bytes(seed=1))
        yield s


def test_ok_404_and_retries(server):
    f = Fetcher(FetchPolicy(**LOCAL), sleep=lambda s: None)
    assert f.fetch(f"{server.base}/img/a.jpg") == server.images["a.jpg"]
    with pytest.raises(FetchError) as e:
        f.fetch(f"{server.base}/missing.jpg")
    assert e.value.reason == "http_404" and server.hits["/missing.jpg"] == 1  # 404 not retried
    assert f.fetch(f"{server.base}/500once/a.jpg") == server.images["a.jpg"]
    assert server.hits["/500once/a.jpg"] == 2
    assert f.fetch(f"{server.base}/redirect/a.jpg") == server.images["a.jpg"]


def test_429_honours_retry_after_then_succeeds(server):
    waits = []
    f = Fetcher(FetchPolicy(**LOCAL), sleep=waits.append)
    assert f.fetch(f"{server.base}/429once/a.jpg") == server.images["a.jpg"]
    assert server.hits["/429once/a.jpg"] == 2 and waits == [1.0]
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(**{**LOCAL, "retries": 2}), sleep=lambda s: None).fetch(f"{server.base}/429always")
    assert e.value.reason == "http_429_exhausted" and server.hits["/429always"] == 3


def test_timeout_size_and_content_type(server):
    f = Fetcher(FetchPolicy(**{**LOCAL, "retries": 0, "timeout_s": 0.3}))
    with pytest.raises(FetchError) as e:
        f.fetch(f"{server.base}/slow")
    assert e.value.reason == "timeout"
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy(**{**LOCAL, "max_bytes": 100_000})).fetch(f"{server.base}/huge")
    assert e.value.reason == "too_large"
    with pytest.raises(FetchError) as e:
        f.fetch(f"{server.base}/html")
    assert e.value.reason == "bad_content_type"


def test_default_policy_refuses_loopback_metadata_and_redirects(server):
    f = Fetcher(FetchPolicy())
    before = sum(server.hits.values())
    for url in (
        f"{server.base}/img/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/x.jpg",
        "http://10.0.0.8/x.jpg",
    ):
        with pytest.raises(FetchError) as e:
            f.fetch(url)
        assert e.value.reason == "blocked_address", url
    assert sum(server.hits.values()) == before  # no connection was made


def test_redirect_target_is_checked_after_each_hop(server, monkeypatch):
    """The first hop is let through (as if public); its redirect to loopback is refused."""
    import shared.data.fetch as fetch

    real, calls = fetch.check_address, []

    def first_hop_public(host, url, allow_private):
        calls.append(host)
        if len(calls) > 1:
            real(host, url, allow_private)

    monkeypatch.setattr(fetch, "check_address", first_hop_public)
    # the server is on loopback: the connect-time peer check would stop the first hop itself
    monkeypatch.setattr(fetch, "_PeerCheckedAdapter", requests.adapters.HTTPAdapter)
    f = Fetcher(FetchPolicy(**{**LOCAL, "allow_private_networks": False}))
    with pytest.raises(FetchError) as e:
        f.fetch(f"{server.base}/redirect-loopback")
    assert e.value.reason == "blocked_address" and len(calls) == 2
    assert server.hits["/redirect-loopback"] == 1


def test_redirect_cap_and_allowlist(server):
    f = Fetcher(FetchPolicy(**{**LOCAL, "max_redirects": 0}))
    with pytest.raises(FetchError) as e:
        f.fetch(f"{server.base}/redirect/a.jpg")
    assert e.value.reason == "too_many_redirects"
    f = Fetcher(FetchPolicy(**{**LOCAL, "host_allowlist": ["images.example.org"]}))
    with pytest.raises(FetchError) as e:
        f.fetch(f"{server.base}/img/a.jpg")
    assert e.value.reason == "blocked_host"


def test_allowlist_matches_normalised_hosts_exactly_or_at_a_dot_boundary():
    allow = HostAllowlist(
        ["Images.Example.org.", "*.cdn.example", ".static.example", "bücher.example", "10.0.0.1", "[::1]"]
    )
    for host in (
        "images.example.org",
        "a.cdn.example",
        "a.b.cdn.example",
        "x.static.example",
        "xn--bcher-kva.example",
        "10.0.0.1",
        "::1",
    ):
        assert allow.allows(normalise_host(host)), host
    for host in (
        "example.org",
        "evilimages.example.org",
        "images.example.org.evil.com",
        "cdn.example",
        "evilcdn.example",
        "cdn.example.evil",
        "bucher.example",
        "10.0.0.10",
        "0.0.0.1",
    ):
        assert not allow.allows(normalise_host(host)), host
    assert normalise_host("IMAGES.example.ORG.") == "images.example.org"
    assert normalise_host("[0:0::1]") == "::1" and normalise_host("BÜCHER.example") == "xn--bcher-kva.example"
    for bad in ("a..b", ".a", "a b", "[a.org]", "a%2eb", "a" * 64 + ".org", "a/b", "a:80"):
        with pytest.raises(ValueError):
            normalise_host(bad)


@pytest.mark.parametrize(
    "entries",
    [
        ["https://images.example.org"],
        ["images.example.org:443"],
        ["images.example.org/photos"],
        ["*.10.0.0.1"],
        [""],
        [None],
        "images.example.org",
    ],
)
def test_allowlist_entries_that_are_not_hosts_fail_when_the_policy_is_built(entries):
    with pytest.raises(ValueError, match="host_allowlist"):
        FetchPolicy.from_dict({"host_allowlist": entries})


def test_judged_host_is_where_requests_connects(monkeypatch):
    """The judge asks requests' own adapter where the URL it sends connects; should a
    future requests or urllib3 read it differently, the URL is refused, not fetched."""
    assert judge_http_url("HTTP://Allowed.Example.:8080/a.jpg#x").url == "http://allowed.example:8080/a.jpg"
    session = requests.Session()
    adapter = session.get_adapter("http://allowed.example/")
    monkeypatch.setattr(
        adapter,
        "build_connection_pool_key_attributes",
        lambda request, verify, cert=None: ({"scheme": "http", "host": "evil.example", "port": None}, {}),
    )
    with pytest.raises(FetchError) as e:
        judge_http_url("http://allowed.example/a.jpg", session)
    assert e.value.reason == "ambiguous_url" and "evil.example" in e.value.detail


def test_schemes_and_local_paths(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"abc")
    with pytest.raises(FetchError) as e:
        Fetcher(FetchPolicy()).fetch(str(p))
    assert e.value.reason == "blocked_scheme"
    f = Fetcher(FetchPolicy(allow_local_paths=True))
    assert f.fetch(str(p)) == b"abc" and f.fetch(f"file://{p}") == b"abc"
    with pytest.raises(FetchError) as e:
        f.fetch(str(tmp_path / "nope.jpg"))
    assert e.value.reason == "not_found"
    with pytest.raises(FetchError) as e:
        f.fetch("ftp://example.org/x.jpg")
    assert e.value.reason == "blocked_scheme"
    with pytest.raises(ValueError, match="unknown key"):
        FetchPolicy.from_dict({"max_byte": 1})


def test_retry_after_parsing():
    assert parse_retry_after("3", 30) == 3.0
    assert parse_retry_after("999", 30) == 30.0
    assert parse_retry_after(None, 30) == 1.0
    assert 0.0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 30) <= 30


class _FakeBlob:
    def __init__(self, data: bytes, size=None):
        self.data, self.size = data, len(data) if size is None else size

    def download_as_bytes(self, start=0, end=None):
        return self.data[start : None if end is None else end + 1]  # GCS ranges are inclusive


class _FakeGCS:
    """google.cloud.storage.Client over a dict {bucket: {name: blob or exception}}."""

    def __init__(self, objects):
        self.objects = objects

    def bucket(self, name):
        client = self

        class _Bucket:
            def get_blob(self, blob_name):
                got = client.objects.get(name, {}).get(blob_name)
                if isinstance(got, Exception):
                    raise got
                return got

        return _Bucket()


def test_gcs_failures_named():
    """API errors the emulator cannot produce (403, 503, a size that lies): see test_gcs.py
    for fetches against a real GCS server."""
    from google.api_core import exceptions as gexc

    img = jpeg_bytes(200, 150, seed=2)
    fake = _FakeGCS(
        {
            "plants": {
                "a.jpg": _FakeBlob(img),
                "big.jpg": _FakeBlob(b"x" * (len(img) + 1)),
                "lying.jpg": _FakeBlob(b"x" * 100, size=10),
                "denied.jpg": gexc.Forbidden("no access to plants/denied.jpg"),
                "busy.jpg": gexc.ServiceUnavailable("try later"),
            }
        }
    )
    f = Fetcher(FetchPolicy(max_bytes=len(img), gcs_bucket_allowlist=["plants"]))
    f._gcs = fake
    assert f.fetch("gs://plants/a.jpg") == img
    reasons = {}
    for name in ("missing.jpg", "big.jpg", "denied.jpg", "busy.jpg"):
        with pytest.raises(FetchError) as e:
            f.fetch(f"gs://plants/{name}")
        reasons[name] = e.value.reason
    assert reasons == {
        "missing.jpg": "not_found",
        "big.jpg": "too_large",
        "denied.jpg": "permission_denied",
        "busy.jpg": "gcs_unavailable",
    }
    small = Fetcher(FetchPolicy(max_bytes=50, gcs_bucket_allowlist=["plants"]))
    small._gcs = fake
    with pytest.raises(FetchError, match="too_large"):  # metadata said 10 bytes: the ranged read still cuts
        small.fetch("gs://plants/lying.jpg")
    with pytest.raises(FetchError, match="bad_url"):
        f.fetch("gs://plants")
