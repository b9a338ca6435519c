"""A hostile provider or file host against the provider layer: forged addresses, dripped and huge answers, too many
outputs, shapes that break parsers. Each attack ends in a typed, truthful ProviderError and costs little."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from bot.config import ProviderSettings, Secret
from bot.errors import ProviderError
from bot.lifecycle.states import State
from bot.providers.base import Handle
from bot.providers.http import MSG_REFUSED_ADDRESS, Downloader, ProviderHTTP, RetryPolicy, address_refused
from bot.providers.remote import as_int
from bot.providers.replicate import ReplicateProvider
from bot.providers.wavespeed import WaveSpeedProvider
from tests.providers.test_http import ScriptServer, Step
from tests.providers.test_replicate import fill_job

FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)
MiB = 1024 * 1024


class Hostile:
    """A local server whose routes misbehave on purpose; counts the bytes it managed to send."""

    def __init__(self) -> None:
        self.sent = 0
        self.hits: list[str] = []
        self.origin = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/drip", self._drip)
        app.router.add_route("*", "/huge", self._huge)
        app.router.add_get("/redirect-metadata", self._to_metadata)
        app.router.add_get("/redirect-file", self._to_file)
        app.router.add_get("/loop", self._loop)
        app.router.add_get("/secret", self._secret)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self.origin = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        """One byte every 2 s: each read arrives well inside any read timeout, the whole never does."""
        self.hits.append("drip")
        stream = web.StreamResponse(headers={"Content-Type": "image/png"})
        await stream.prepare(request)
        try:
            for _ in range(1000):
                await stream.write(b"x")
                self.sent += 1
                await asyncio.sleep(2.0)
        except ConnectionError:  # the client gave up, as it should
            pass
        return stream

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        """A 300 MB JSON answer, streamed without a length."""
        self.hits.append("huge")
        stream = web.StreamResponse(headers={"Content-Type": "application/json"})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        chunk = b'{"pad": "' + b"a" * (MiB - 20) + b'", '
        try:
            for _ in range(300):
                await stream.write(chunk)
                self.sent += len(chunk)
        except (ConnectionError, RuntimeError):
            return stream
        await stream.write_eof()
        return stream

    async def _to_metadata(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/security-credentials/")

    async def _to_file(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    async def _loop(self, request: web.Request) -> web.Response:
        self.hits.append("loop")
        raise web.HTTPFound("/loop")

    async def _secret(self, request: web.Request) -> web.Response:
        self.hits.append("secret")
        return web.Response(body=b"internal admin page", content_type="image/png")


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    server = Hostile()
    await server.start()
    yield server
    await server.stop()


async def _raises(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await awaitable
    return info.value


def _truthful_download_failure(error: ProviderError) -> None:
    """After the provider finished, a job is billed: never invite a retry, never describe the target."""
    assert "try again" not in error.message.lower()
    assert "may be charged" in error.message
    for leak in ("127.0.0.1", "169.254", "localhost", "admin", "passwd", "secret"):
        assert leak not in error.message


# ---- 7: server-side request forgery ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.5", "169.254.10.1", "0.0.0.0", "100.64.0.1", "224.0.0.1",
     "::1", "fe80::1%eth0", "fc00::1", "::ffff:127.0.0.1", "64:ff9b::a00:1", "240.0.0.1"],
)
def test_private_addresses_are_refused_unless_allowed(address: str) -> None:
    assert address_refused(address, allow_private=False)
    assert not address_refused(address, allow_private=True)


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.169.254"])
def test_metadata_addresses_are_refused_even_when_private_is_allowed(address: str) -> None:
    assert address_refused(address, allow_private=True)


def test_public_addresses_pass() -> None:
    assert not address_refused("93.184.216.34", allow_private=False)
    assert not address_refused("2606:2800:220:1:248:1893:25c8:1946", allow_private=False)


@pytest.mark.parametrize("spelling", ["127.0.0.1:{port}", "localhost:{port}", "2130706433:{port}", "[::1]:{port}"])
async def test_loopback_download_is_refused_without_connecting(hostile: Hostile, spelling: str) -> None:
    port = hostile.origin.rsplit(":", 1)[1]
    downloader = Downloader(max_bytes=MiB, retry=FAST)
    try:
        error = await _raises(downloader.fetch(f"http://{spelling.format(port=port)}/secret"))
    finally:
        await downloader.aclose()
    assert error.message == MSG_REFUSED_ADDRESS
    _truthful_download_failure(error)
    assert hostile.hits == []


async def test_redirect_to_private_address_is_refused(hostile: Hostile) -> None:
    """A public file host answering with a redirect into the bot's network: the private hop is never requested."""
    seen: list[str] = []

    def public_host(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": hostile.origin + "/secret"})

    downloader = Downloader(max_bytes=MiB, retry=FAST, transport=httpx.MockTransport(public_host))
    try:
        error = await _raises(downloader.fetch("http://93.184.216.34/out.png"))
    finally:
        await downloader.aclose()
    assert error.message == MSG_REFUSED_ADDRESS
    _truthful_download_failure(error)
    assert seen == ["http://93.184.216.34/out.png"] and hostile.hits == []


async def test_pinned_request_keeps_the_host_name(hostile: Hostile) -> None:
    """The connection goes to the checked address; the file host still sees its own name."""
    seen: list[httpx.Request] = []

    def public_host(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"PNG")

    downloader = Downloader(max_bytes=MiB, transport=httpx.MockTransport(public_host))
    try:
        assert await downloader.fetch("https://user:pw@[2606:2800:220:1:248:1893:25c8:1946]:8443/a.png?x=1") == b"PNG"
    finally:
        await downloader.aclose()
    request = seen[0]
    assert request.url.host == "2606:2800:220:1:248:1893:25c8:1946" and request.url.userinfo == b""
    assert request.headers["host"] == "[2606:2800:220:1:248:1893:25c8:1946]:8443"


@pytest.mark.parametrize("path", ["/redirect-metadata", "/redirect-file"])
async def test_redirect_to_metadata_or_file_is_refused_even_when_private_is_allowed(
    hostile: Hostile, path: str
) -> None:
    downloader = Downloader(max_bytes=MiB, retry=FAST, allow_private=True)
    try:
        error = await _raises(downloader.fetch(hostile.origin + path))
    finally:
        await downloader.aclose()
    assert error.message == MSG_REFUSED_ADDRESS
    _truthful_download_failure(error)


async def test_redirect_loop_stops_at_the_cap(hostile: Hostile) -> None:
    downloader = Downloader(max_bytes=MiB, retry=FAST, allow_private=True, max_redirects=5)
    try:
        error = await _raises(downloader.fetch(hostile.origin + "/loop"))
    finally:
        await downloader.aclose()
    assert "redirected too many times" in error.message
    _truthful_download_failure(error)
    assert hostile.hits == ["loop"] * 6


async def test_other_schemes_are_refused() -> None:
    downloader = Downloader(max_bytes=MiB, allow_private=True)
    try:
        for ref in ("file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://files.example/a.png"):
            assert (await _raises(downloader.fetch(ref))).message == MSG_REFUSED_ADDRESS
    finally:
        await downloader.aclose()


# ---- 8: unbounded work -------------------------------------------------------------------------------------


async def test_dripping_file_host_cannot_outlast_the_deadline(hostile: Hostile) -> None:
    downloader = Downloader(
        max_bytes=MiB, retry=FAST, allow_private=True, deadline=0.5, timeout=httpx.Timeout(5.0)
    )
    started = time.monotonic()
    try:
        error = await _raises(downloader.fetch(hostile.origin + "/drip"))
    finally:
        await downloader.aclose()
    assert time.monotonic() - started < 3.0
    assert error.kind == "timed_out"
    _truthful_download_failure(error)


async def test_huge_poll_answer_is_cut_at_the_cap(hostile: Hostile) -> None:
    http = ProviderHTTP(label="Acme", base_url=hostile.origin, auth_headers={}, retry=FAST)
    try:
        error = await _raises(http.get_json("huge"))
        assert error.kind == "bad_response" and "larger than expected" in error.message
        assert hostile.sent < 64 * MiB  # the client stopped reading long before 300 MB
        create = await _raises(http.post_json("huge", {"prompt": "x"}))
        assert create.kind == "maybe_submitted" and "may have been submitted" in create.message
    finally:
        await http.aclose()


async def test_dripping_api_answer_is_a_timeout(hostile: Hostile) -> None:
    http = ProviderHTTP(label="Acme", base_url=hostile.origin, auth_headers={}, retry=FAST, budget=0.3,
                        timeout=httpx.Timeout(0.2, read=5.0))
    try:
        started = time.monotonic()
        error = await _raises(http.get_json("drip"))
        assert error.kind == "unavailable" and time.monotonic() - started < 3.0
    finally:
        await http.aclose()


def _wavespeed(origin: str, downloader: Downloader) -> WaveSpeedProvider:
    settings = ProviderSettings("wavespeed", origin + "/api/v3", Secret("ws-key"), 2)
    return WaveSpeedProvider(settings, downloader, retry=FAST, timeout=httpx.Timeout(2.0))


async def test_thirty_outputs_are_cut_to_the_models_most() -> None:
    server = ScriptServer()
    await server.start()
    downloader = Downloader(max_bytes=MiB, allow_private=True, retry=FAST)
    provider = _wavespeed(server.origin, downloader)
    try:
        urls = [f"{server.origin}/files/{i}.png" for i in range(30)]
        server.will(Step(body={"code": 200, "data": {"id": "t1", "status": "completed", "outputs": urls}}))
        status = await provider.poll(Handle("wavespeed", "t1"))
        assert status.state is State.SUCCEEDED and 1 <= len(status.outputs) <= 4
        assert [o.ref for o in status.outputs] == urls[: len(status.outputs)]
    finally:
        await provider.aclose()
        await downloader.aclose()
        await server.stop()


async def test_one_jobs_outputs_share_a_byte_budget() -> None:
    server = ScriptServer()
    await server.start()
    downloader = Downloader(max_bytes=1000, max_job_bytes=1500, allow_private=True, retry=FAST)
    provider = _wavespeed(server.origin, downloader)
    try:
        urls = [f"{server.origin}/files/{i}.png" for i in range(2)]
        server.will(
            Step(body={"code": 200, "data": {"id": "t1", "status": "completed", "outputs": urls}}),
            Step(text="a" * 800, content_type="image/png"),
            Step(text="a" * 800, content_type="image/png"),
            Step(body={"code": 200, "data": {"id": "t1", "status": "completed", "outputs": urls}}),
            Step(text="a" * 800, content_type="image/png"),
        )
        status = await provider.poll(Handle("wavespeed", "t1"))
        first, second = status.outputs
        assert await provider.download(first) == b"a" * 800
        error = await _raises(provider.download(second))
        assert "limit per job" in error.message
        _truthful_download_failure(error)
        again = await provider.poll(Handle("wavespeed", "t1"))  # a new answer starts a new budget
        assert await provider.download(again.outputs[1]) == b"a" * 800
    finally:
        await provider.aclose()
        await downloader.aclose()
        await server.stop()


# ---- 11: shapes that break parsers -------------------------------------------------------------------------


def test_as_int_refuses_digits_int_cannot_read() -> None:
    assert as_int("²") is None and as_int("٣") == 3 and as_int("9" * 5000) is None and as_int("-12") == -12


def _replicate(origin: str, downloader: Downloader) -> ReplicateProvider:
    settings = ProviderSettings("replicate", origin + "/v1", Secret("r8_testtoken123"), 2)
    return ReplicateProvider(settings, downloader, retry=FAST, timeout=httpx.Timeout(2.0))


BIG = "1" + "0" * 400  # an integer too large for a float: formatting it raises OverflowError


@pytest.mark.parametrize(
    ("text", "status", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, 200, "bad_response"),  # deeper than the JSON parser's recursion guard
        ("", 302, "failed"),
        ('{"id": "p1", "status": "succeeded", "input": {"num_outputs": "\u00b2"}, "output": ["data:,x"]}', 200, "ok"),
        ('{"id": "p1", "status": "processing", "metrics": {"predict_time": ' + BIG + "}}", 200, "bad_response"),
    ],
    ids=["deep-json", "redirect", "superscript-count", "huge-number"],
)
async def test_hostile_poll_answers_are_typed(text: str, status: int, expected: str) -> None:
    server = ScriptServer()
    await server.start()
    downloader = Downloader(max_bytes=MiB, allow_private=True, retry=FAST)
    provider = _replicate(server.origin, downloader)
    try:
        server.will(Step(status=status, text=text, headers={"Location": "/elsewhere"} if status == 302 else {}))
        if expected == "ok":
            assert (await provider.poll(Handle("replicate", "p1"))).state is State.SUCCEEDED
        else:
            error = await _raises(provider.poll(Handle("replicate", "p1")))
            assert error.kind == expected
    finally:
        await provider.aclose()
        await downloader.aclose()
        await server.stop()


async def test_unreadable_create_reply_says_the_job_may_exist() -> None:
    """The create left, then its reply broke the reader: the job may exist and bill, so say so."""
    server = ScriptServer()
    await server.start()
    downloader = Downloader(max_bytes=MiB, allow_private=True, retry=FAST)
    provider = _replicate(server.origin, downloader)
    try:
        server.will(Step(status=201, text='{"id": "p1", "status": "starting", "metrics": {"total_time": ' + BIG + "}}"))
        error = await _raises(provider.submit(fill_job()))
        assert error.kind == "maybe_submitted" and "may have been submitted" in error.message
        assert len(server.seen) == 1  # never resent
    finally:
        await provider.aclose()
        await downloader.aclose()
        await server.stop()
