"""Safe image-URL fetching: schemes, non-public addresses (after DNS, on every redirect), caps."""
import asyncio
import ipaddress

import pytest

from face_contract.errors import InvalidInput
from gateway.fetch import UrlFetcher, address_refusal
from gateway_support import image_server

IMAGE = b"\xff\xd8\xff\xe0" + b"jpeg bytes" * 100


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
    ("172.16.5.4", "private"), ("fd00::1", "private"), ("169.254.169.254", "link-local"),
    ("fe80::1", "link-local"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("100.64.0.1", "not a public"), ("224.0.0.1", "not a public"),
])
def test_non_public_addresses_are_refused(address, reason):
    assert reason in address_refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_pass(address):
    assert address_refusal(ipaddress.ip_address(address)) is None


def fetch(fetcher, url):
    return asyncio.run(fetcher.fetch(url, "img"))


@pytest.fixture(scope="module")
def server():
    with image_server({"face.jpg": IMAGE, "big.jpg": b"x" * 5000}, slow_s=2.0) as srv:
        yield srv


def test_loopback_url_is_refused_by_default_without_connecting(server):
    hits = len(server.hits)
    for url in (f"{server.url}/face.jpg", f"http://localhost:{server.server_address[1]}/face.jpg"):
        with pytest.raises(InvalidInput, match="loopback address.*--allow-private-urls"):
            fetch(UrlFetcher(False, 10_000, 5), url)
    assert len(server.hits) == hits  # refused before any request was sent


def test_loopback_url_is_fetched_when_allowed(server):
    assert fetch(UrlFetcher(True, 10_000, 5), f"{server.url}/face.jpg") == IMAGE
    # By name too: the gateway resolves it and connects to the checked address.
    port = server.server_address[1]
    assert fetch(UrlFetcher(True, 10_000, 5), f"http://localhost:{port}/face.jpg") == IMAGE


@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "file:///etc/passwd",
                                 "gopher://x/1"])
def test_only_http_and_https(url):
    with pytest.raises(InvalidInput, match="only http and https"):
        fetch(UrlFetcher(True, 10_000, 5), url)


class LoopbackOnly127001(UrlFetcher):
    """Treats 127.0.0.1 as public and every other address by the default rule."""

    def refusal(self, ip):
        return None if str(ip) == "127.0.0.1" else address_refusal(ip)


def test_every_redirect_is_checked(server):
    port = server.server_address[1]
    # Allowed hop, then a redirect to another loopback address: refused at the second hop.
    url = f"{server.url}/redirect?to=http://127.0.0.2:{port}/face.jpg"
    with pytest.raises(InvalidInput, match="127.0.0.2, a loopback address"):
        fetch(LoopbackOnly127001(False, 10_000, 5), url)
    # The same redirect chain to an allowed address is followed.
    url = f"{server.url}/redirect?to={server.url}/face.jpg"
    assert fetch(LoopbackOnly127001(False, 10_000, 5), url) == IMAGE


def test_redirect_loops_end(server):
    url = f"{server.url}/redirect?to=/redirect?to=/redirect?to=/face.jpg"
    assert fetch(UrlFetcher(True, 10_000, 5, max_redirects=3), url) == IMAGE
    with pytest.raises(InvalidInput, match="redirected more than 2 times"):
        fetch(UrlFetcher(True, 10_000, 5, max_redirects=2), url)


def test_byte_cap_from_content_length_and_while_reading(server):
    with pytest.raises(InvalidInput, match="5000 bytes, over the 4000 byte limit"):
        fetch(UrlFetcher(True, 4000, 5), f"{server.url}/big.jpg")
    with pytest.raises(InvalidInput, match="over the 4000 byte limit"):
        fetch(UrlFetcher(True, 4000, 5), f"{server.url}/chunked/big.jpg")
    assert fetch(UrlFetcher(True, 5000, 5), f"{server.url}/chunked/big.jpg") == b"x" * 5000


def test_timeout_and_http_errors(server):
    with pytest.raises(InvalidInput, match="timed out after 0.5 s"):
        fetch(UrlFetcher(True, 10_000, 0.5), f"{server.url}/slow")
    with pytest.raises(InvalidInput, match="answered HTTP 404"):
        fetch(UrlFetcher(True, 10_000, 5), f"{server.url}/missing.jpg")
    with pytest.raises(InvalidInput, match="malformed image URL"):
        fetch(UrlFetcher(True, 10_000, 5), "http://example.com:99999/a.jpg")
