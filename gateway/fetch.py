"""Fetching image URLs without becoming a proxy into the gateway's network.

Only http(s). Each hop's host is resolved here, every resolved address must be
public (unless private URLs are allowed), and the request goes to the checked IP
(Host header and TLS SNI keep the name), so a second DNS answer cannot swap in
an internal address. Redirects are followed here, each one checked the same way.
A total timeout and a byte cap bound the download. Nothing is decompressed: the
request asks for `identity` and a response in any other Content-Encoding (a
gzip bomb, stacked encodings) is refused, so the cap counts the bytes kept.
"""
import asyncio
import ipaddress
import socket
import urllib.parse

import httpx

from face_contract.errors import InvalidInput

REDIRECTS = {301, 302, 303, 307, 308}


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a connection to `ip` is refused by default, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_unspecified:  # 0.0.0.0 / :: reach this host
        return "an unspecified (this host) address"
    if ip.is_link_local:  # 169.254.169.254 and fe80::/10: cloud metadata services live here
        return "a link-local (cloud metadata) address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


class UrlFetcher:
    def __init__(self, allow_private: bool, max_bytes: int, timeout_s: float,
                 max_redirects: int = 5):
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects

    def refusal(self, ip) -> str | None:
        return None if self.allow_private else address_refusal(ip)

    async def fetch(self, url: str, field: str = "image") -> bytes:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url, field)
        except TimeoutError:
            raise InvalidInput(f"{field}: fetching the image URL timed out after "
                               f"{self.timeout_s:g} s") from None
        except (ValueError, httpx.InvalidURL) as exc:
            raise InvalidInput(f"{field}: malformed image URL: {exc}") from None
        except httpx.HTTPError as exc:
            raise InvalidInput(f"{field}: the image URL could not be fetched: "
                               f"{type(exc).__name__}: {exc}") from None

    async def _follow(self, url: str, field: str) -> bytes:
        for _ in range(self.max_redirects + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise InvalidInput(f"{field}: only http and https image URLs are fetched, "
                                   f"not {parts.scheme or 'a scheme-less'} URL")
            if not parts.hostname:
                raise InvalidInput(f"{field}: the image URL has no host")
            ip = await self._checked_address(parts, field)
            # A fresh client per hop: no pooled connection made for another name gets reused.
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                         timeout=self.timeout_s) as client:
                target = httpx.URL(url).copy_with(host=str(ip))
                headers = {"Host": parts.netloc.rpartition("@")[2], "Accept": "image/*",
                           "Accept-Encoding": "identity"}
                extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
                async with client.stream("GET", target, headers=headers,
                                         extensions=extensions) as response:
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        url = urllib.parse.urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(f"{field}: the image URL answered HTTP "
                                           f"{response.status_code}")
                    return await self._read_capped(response, field)
        raise InvalidInput(f"{field}: the image URL redirected more than "
                           f"{self.max_redirects} times")

    async def _checked_address(self, parts: urllib.parse.SplitResult, field: str):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise InvalidInput(f"{field}: cannot resolve image URL host "
                               f"'{parts.hostname}': {exc.strerror}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        for ip in addresses:  # a name that mixes public and internal answers is refused too
            reason = self.refusal(ip)
            if reason:
                raise InvalidInput(
                    f"{field}: image URL refused: host '{parts.hostname}' resolves to {ip}, "
                    f"{reason}; URLs to non-public addresses are off unless the gateway "
                    f"runs with --allow-private-urls")
        return addresses[0]

    async def _read_capped(self, response: httpx.Response, field: str) -> bytes:
        encodings = [e.strip().lower() for e in
                     ",".join(response.headers.get_list("content-encoding")).split(",")]
        if any(e not in ("", "identity") for e in encodings):
            raise InvalidInput(f"{field}: the image URL answered with Content-Encoding "
                               f"'{', '.join(e for e in encodings if e)}'; only uncompressed "
                               f"(identity) responses are accepted")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise InvalidInput(f"{field}: the image at the URL is {declared} bytes, over the "
                               f"{self.max_bytes} byte limit")
        chunks, size = [], 0
        async for chunk in response.aiter_raw():  # raw: never decoded here
            size += len(chunk)
            if size > self.max_bytes:
                raise InvalidInput(f"{field}: the image at the URL is over the "
                                   f"{self.max_bytes} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)
