"""DEBUG logging through real requests writes no tokens, keys or picture bytes, and stays small."""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Iterator

import httpx
import pytest

from bot import logsafety
from bot.errors import ProviderError
from bot.providers.http import ProviderHTTP, RetryPolicy, clean_text
from tests.providers.test_http import ScriptServer, Step

KEY = "sk-live-0123456789abcdef"
BFL_KEY = "bfl-key-abcdef0123456789"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQ"
BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GhIjKl.abcdefghijklmnopqrstuvwxyz0123456789AB"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A root handler at DEBUG with the bot's log safety installed, as `fillbot run` sets it up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    old_level = root.level
    old_levels = {name: logging.getLogger(name).level for name in (*logsafety.WIRE_LOGGERS, "httpx", "bot")}
    logging.getLogger("bot").setLevel(logging.NOTSET)  # an in-process CLI test may have quietened it
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logsafety.install("DEBUG")
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name, level in old_levels.items():
            logging.getLogger(name).setLevel(level)


async def test_debug_log_of_a_real_request_has_no_credentials(captured: io.StringIO) -> None:
    server = ScriptServer()
    await server.start()
    webhook = f"https://discord.com/api/v10/webhooks/1234567890/{INTERACTION_TOKEN}/messages/@original"
    echo = {"detail": f"Authorization: Bearer {KEY}; x-key: {BFL_KEY}; see {webhook}?token={KEY}"}
    http = ProviderHTTP(
        label="Acme",
        base_url=server.origin,
        auth_headers={"Authorization": f"Bearer {KEY}", "x-key": BFL_KEY},
        retry=RetryPolicy(attempts=1),
        timeout=httpx.Timeout(2.0),
    )
    try:
        server.will(Step(status=422, body=echo))
        with pytest.raises(ProviderError):
            await http.get_json(f"predictions/x?key={KEY}")
    finally:
        await http.aclose()
        await server.stop()
    logging.getLogger("discord.http").warning("We are being rate limited. PATCH %s responded with 429", webhook)
    logging.getLogger("discord.http").debug("headers %r", {"Authorization": f"Bot {BOT_TOKEN}"})
    logging.getLogger("discord.client").info("logging in using static token %s", BOT_TOKEN)
    text = captured.getvalue()
    assert "Acme answered HTTP 422" in text and "rate limited" in text  # the lines are there ...
    for secret in (KEY, BFL_KEY, INTERACTION_TOKEN, BOT_TOKEN):  # ... without what they carried
        assert secret not in text
    assert "send_request_headers" not in text  # httpcore's wire log is held at INFO


async def test_a_5_mb_upload_at_debug_writes_little(captured: io.StringIO) -> None:
    picture = os.urandom(5 * 1024 * 1024)
    encoded = base64.b64encode(picture).decode()
    server = ScriptServer()
    await server.start()
    http = ProviderHTTP(label="Acme", base_url=server.origin, auth_headers={}, retry=RetryPolicy(attempts=1))
    try:
        uri = f"data:image/png;base64,{encoded}"
        server.will(Step(status=500, body={"detail": "bad input", "input": {"image": uri}}))
        with pytest.raises(ProviderError):
            await http.post_json("predictions", {"input": {"image": uri}})
    finally:
        await http.aclose()
        await server.stop()
    wire = logging.getLogger("discord.http")
    wire.warning("POST https://discord.com/api/v10/channels/1/messages with %r", {"files": [picture]})
    wire.warning("payload %s", encoded)
    logging.getLogger("bot.test").debug("upload %r", picture)
    text = captured.getvalue()
    assert len(text.encode()) < 100 * 1024
    assert encoded[1000:1100] not in text


def test_redaction_covers_every_header_and_query_form() -> None:
    samples = {
        f"x-key: {BFL_KEY}": BFL_KEY,
        f"'X-Key': '{BFL_KEY}'": BFL_KEY,
        f"(b'authorization', b'Bearer {KEY}')": KEY,
        f"Authorization: Token {KEY}": KEY,
        f"https://hf.co/a.safetensors?download=1&token={KEY}": KEY,
        f"https://cdn.example/o.png?X-Amz-Signature={KEY}": KEY,
        "r8_ABCDEFGHIJKLMNOPQRSTUVWX": "ABCDEFGHIJKLMNOPQRSTUVWX",
        "whsec_c2VjcmV0c2VjcmV0": "c2VjcmV0c2VjcmV0",
        f"/interactions/123/{INTERACTION_TOKEN}/callback": INTERACTION_TOKEN,
    }
    for text, secret in samples.items():
        assert secret not in logsafety.redact(text), text
    for text in (f"x-key: {BFL_KEY}", f"token={KEY}", f"Token {KEY}"):  # provider text shown to users, too
        assert BFL_KEY not in clean_text(text) and KEY not in clean_text(text)


def test_info_text_shows_no_url_credentials() -> None:
    from bot.params import FillRequest, MaskOptions
    from cogs.rendering import parameters_text

    lora = f"https://owner:pw@huggingface.co/a/b/resolve/main/style.safetensors?download=true&token={KEY}"
    request = FillRequest.build("wavespeed", "a cat", {"lora": lora}, mask=MaskOptions())
    text = parameters_text(request)
    assert "huggingface.co/a/b/resolve/main/style.safetensors?download=true" in text
    assert KEY not in text and "owner" not in text and "pw@" not in text
