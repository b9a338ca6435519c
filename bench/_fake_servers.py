"""The test fakes (FakeDiscord, FakeReplicate) served from child processes, for benchmarks.

In-process fakes would charge their own work to the process under test: the event-loop lag ticker would see
the fakes' JSON parsing and PNG handling, and VmHWM would count every upload they store. Here each fake runs
in its own process with its own event loop, and the bench process talks to it over a pipe, only outside the
measured paths (hosting attachments and registering interactions before a wave, reading the logs after it).

Times crossing the process boundary are wall-clock (`time.time()`): FakeDiscord stamps requests with it, and
prediction completion (creation + duration, on the fake's monotonic clock) is converted to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.discord_api import FakeChannel, FakeDiscord, RecordedRequest  # noqa: E402
from tests.fakes.discord_harness import GENERAL_CHANNEL_ID, GUILD_ID, NSFW_CHANNEL_ID, OWNER  # noqa: E402
from tests.fakes.replicate_server import OUTPUT_FORMATS, FakeReplicate, Prediction, _now_iso, output_format  # noqa: E402

FINAL_MARKS = ("✅", "❌", "🛡", "⏹", "⌛")


def default_channels() -> list[FakeChannel]:
    """The harness's default channels; the child and the proxy must agree on them."""
    return [
        FakeChannel(GENERAL_CHANNEL_ID, "general", guild_id=GUILD_ID, position=0),
        FakeChannel(NSFW_CHANNEL_ID, "nsfw-art", guild_id=GUILD_ID, nsfw=True, position=1),
    ]


class BenchReplicate(FakeReplicate):
    """FakeReplicate whose "generated" picture is computed once per distinct input.

    The stock fake decodes, inverts, resizes and PNG-encodes the input for every prediction (~0.2 s of CPU at
    1440x1440); under a 200-job load that alone would keep the fake's loop busy for tens of seconds and show
    up as provider latency. It also accepts bodies up to 64 MiB (aiohttp's default is 1 MiB). Protocol,
    timing, validation and the request log are unchanged.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._made: dict[tuple[str, ...], list[bytes]] = {}

    async def start(self) -> None:
        await super().start()
        # aiohttp refuses bodies over 1 MiB by default; a 1440x1440 fill body is just above that.
        for runner in self._runners:
            runner.app._client_max_size = 64 * 1024 * 1024

    def _make_prediction(self, model: str, inputs: dict[str, Any]) -> Prediction:
        image = str(inputs.get("input_image", inputs.get("image", "")))
        key = (
            model,
            hashlib.blake2b(image.encode(), digest_size=16).hexdigest(),
            str(inputs.get("megapixels", "1")),
            str(inputs.get("num_outputs", 1)),
            *map(str, output_format(model, inputs)),
        )
        pictures = self._made.get(key)
        if pictures is None:
            made = super()._make_prediction(model, inputs)
            self._made[key] = [self.files[name] for name in made.files]
            return made
        pid = "b" + hashlib.blake2b(f"{time.time_ns()}-{len(self.predictions)}".encode(), digest_size=13).hexdigest()
        names = []
        for i, data in enumerate(pictures):
            names.append(f"{pid}-{i}.{OUTPUT_FORMATS[key[-2]][1]}")
            self.files[names[-1]] = data
        steps = int(inputs.get("num_inference_steps", inputs.get("steps", 28)))
        return Prediction(
            pid, model, dict(inputs), time.monotonic(), _now_iso(), self.outcome, self.duration, self.start_delay,
            names, steps,
        )


def _title(request: RecordedRequest) -> str:
    """The first embed's title of a logged request ("" if none)."""
    data = request.data if isinstance(request.json, dict) else {}
    embeds = data.get("embeds") or []
    return str(embeds[0].get("title", "")) if embeds and isinstance(embeds[0], dict) else ""


def _is_final(request: RecordedRequest) -> bool:
    return _title(request).startswith(FINAL_MARKS)


class _Controller:
    """Runs in the child: answers control messages with plain data (no fakes cross the pipe)."""

    def __init__(self, kind: str, fake: Any) -> None:
        self.kind = kind
        self.fake = fake

    def info(self) -> dict[str, Any]:
        if self.kind == "discord":
            return {"url": self.fake.url}
        return {
            "origin": self.fake.origin,
            "base_url": self.fake.base_url,
            "cdn_url": self.fake.cdn_url,
            "token": self.fake.token,
        }

    # ---- discord
    def host(self, filename: str, data: bytes, content_type: str) -> dict[str, Any]:
        return dict(self.fake.attachment_payload(filename, data, content_type))

    def register(self, payloads: list[dict[str, Any]], created_at: list[float]) -> int:
        for payload, when in zip(payloads, created_at, strict=True):
            self.fake.register_interaction(payload, created_at=when)
        return len(payloads)

    def discord_log(self) -> list[dict[str, Any]]:
        """Per request: token, route, method, status, arrival (wall), callback type, files, embed title."""
        out = []
        for r in self.fake.requests:
            title = _title(r)
            out.append(
                {
                    "token": r.token,
                    "route": r.route,
                    "method": r.method,
                    "status": r.status,
                    "at": r.at,
                    "callback_type": r.callback_type,
                    "files": len(r.files),
                    "bytes": sum(f.size for f in r.files),
                    "title": title,
                    "final": title.startswith(FINAL_MARKS),
                }
            )
        return out

    def final_tokens(self) -> list[str]:
        """Interactions whose reply got a final edit (accepted): cheaper to poll than the whole log."""
        return sorted({r.token for r in self.fake.requests if r.token and r.ok and _is_final(r)})

    # ---- replicate
    def configure(self, **knobs: Any) -> None:
        for name, value in knobs.items():
            if not hasattr(self.fake, name):
                raise AttributeError(name)
            setattr(self.fake, name, value)

    def replicate_log(self) -> dict[str, Any]:
        """Requests (server, kind, method, arrival on the monotonic clock) and predictions (prompt, completion)."""
        to_wall = time.time() - time.monotonic()
        predictions = []
        for p in self.fake.predictions.values():
            done = p.created + p.duration
            predictions.append(
                {
                    "id": p.id,
                    "prompt": p.input.get("prompt"),
                    "created": p.created,
                    "completed": done,
                    "completed_wall": done + to_wall,
                    "canceled": p.canceled_at is not None,
                }
            )
        requests = [
            {"server": r.server, "kind": r.kind, "method": r.method, "at_wall": r.at + to_wall}
            for r in self.fake.requests
        ]
        return {"requests": requests, "predictions": predictions}

    def reset(self) -> None:
        """Forget logged requests and finished state between runs (keeps the child's memory flat)."""
        self.fake.requests.clear()
        if self.kind == "replicate":
            self.fake.predictions.clear()
            self.fake.files.clear()


def _child(kind: str, options: dict[str, Any], conn: Connection) -> None:
    asyncio.run(_serve(kind, options, conn))


async def _serve(kind: str, options: dict[str, Any], conn: Connection) -> None:
    fake: Any
    if kind == "discord":
        fake = FakeDiscord(owner=OWNER.user_payload(), **options)
        for channel in default_channels():
            fake.add_channel(channel)
    else:
        fake = BenchReplicate(**options)
    await fake.start()
    controller = _Controller(kind, fake)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def on_message() -> None:
        while conn.poll():
            try:
                name, args, kwargs = conn.recv()
            except EOFError:
                stopped.set()
                return
            if name == "stop":
                stopped.set()
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", getattr(controller, name)(*args, **kwargs)))
            except Exception as exc:  # reported to the parent, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))

    loop.add_reader(conn.fileno(), on_message)
    conn.send(("ok", controller.info()))
    await stopped.wait()
    loop.remove_reader(conn.fileno())
    await fake.close()


class FakeProcess:
    """One fake in a child process: `with FakeProcess("replicate", duration=2) as fake: fake.call("reset")`."""

    def __init__(self, kind: str, **options: Any) -> None:
        if kind not in ("discord", "replicate"):
            raise ValueError(kind)
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child, args=(kind, options, child_conn), daemon=True)
        self._process.start()
        child_conn.close()
        self.info: dict[str, Any] = self._reply(timeout=60)

    def _reply(self, timeout: float | None = None) -> Any:
        if timeout is not None and not self._conn.poll(timeout):
            raise TimeoutError("fake server process did not answer")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"fake server: {value}")
        return value

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Synchronous round trip; never call it inside a measured section."""
        self._conn.send((name, args, kwargs))
        return self._reply(timeout=120)

    @property
    def pid(self) -> int:
        return int(self._process.pid or 0)

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("stop", (), {}))
                self._reply(timeout=10)
            except (OSError, EOFError, TimeoutError, RuntimeError):
                pass
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
        self._conn.close()

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteDiscord(FakeDiscord):
    """What `DiscordHarness` needs from a FakeDiscord, backed by a FakeDiscord in a child process.

    Only payload building runs here (snowflakes, channels, the bot user); attachments are hosted and
    interactions registered in the child. Call `preregister` for a wave before dispatching it, so that
    `DiscordHarness.dispatch` makes no round trip while the bot is being measured.
    """

    def __init__(self, remote: FakeProcess) -> None:
        super().__init__(owner=OWNER.user_payload())
        self.remote = remote
        self._remote_url = str(remote.info["url"])
        self._hosted: dict[tuple[str, str], dict[str, Any]] = {}
        self._registered: set[int] = set()
        for channel in default_channels():
            self.add_channel(channel)

    @property
    def url(self) -> str:
        return self._remote_url

    def attachment_payload(
        self, filename: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Host each distinct blob once; every interaction then points at the same CDN file."""
        key = (filename, hashlib.blake2b(data, digest_size=16).hexdigest())
        if key not in self._hosted:
            self._hosted[key] = self.remote.call("host", filename, data, content_type)
        return dict(self._hosted[key])

    def preregister(self, payloads: list[dict[str, Any]], created_at: list[float]) -> None:
        """Tell the child about a wave of interactions before dispatching it. `created_at` is each one's planned
        dispatch time (wall clock): Discord's 3-second acknowledgement window starts there."""
        self.remote.call("register", payloads, created_at)
        self._registered.update(int(p["id"]) for p in payloads)

    def register_interaction(self, payload: dict[str, Any], *, created_at: float | None = None) -> Any:
        if int(payload["id"]) not in self._registered:
            self.remote.call("register", [payload], [self.now() if created_at is None else created_at])
            self._registered.add(int(payload["id"]))
        return None

    def log(self) -> list[dict[str, Any]]:
        return list(self.remote.call("discord_log"))

    def final_tokens(self) -> set[str]:
        """Tokens of the interactions whose reply got an accepted final edit so far."""
        return set(self.remote.call("final_tokens"))
