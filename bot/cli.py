"""`fillbot` command line: run the bot, sync its commands, or run /fill and /edit jobs from a terminal.

`fill` and `edit` use exactly the pipeline the bot uses, so they double as a key check and a benchmark tool.
Options for the provider models are generated from the parameter specs, so help text and ranges never drift.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bot import __version__
from bot.config import Settings, load_settings
from bot.errors import ConfigError, UserError
from bot.jobs import JobUpdate
from bot.lifecycle.states import State
from bot.params import SPECS, Delivery, EditRequest, Field, FillRequest, MaskOptions, Value
from bot.providers.registry import PROVIDER_NAMES

log = logging.getLogger(__name__)


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _spec_fields(operation: str) -> list[Field]:
    seen: dict[str, Field] = {}
    for spec in SPECS:
        if spec.operation == operation:
            for f in spec.user_fields:
                seen.setdefault(f.name, f)
    return list(seen.values())


def _add_model_options(parser: argparse.ArgumentParser, operation: str) -> None:
    group = parser.add_argument_group("model options (ranges depend on the provider)")
    for f in _spec_fields(operation):
        kind = _bool if f.kind is bool else f.kind
        choices = f.choices or None
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"opt_{f.name}", type=kind, choices=choices,
                           metavar=None if choices else f.name.upper(), help=f.description)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fillbot", description="Discord bot for FLUX inpainting and editing.")
    parser.add_argument("--version", action="version", version=f"fillbot {__version__}")
    parser.add_argument("--env-file", default=".env", help="settings file to read (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="start the bot (reads DISCORD_TOKEN and the rest from .env)")
    sync = sub.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, help="sync to one server only (instant; global sync can take an hour)")

    fill = sub.add_parser("fill", help="inpaint IMAGE where the mask says, as /fill does")
    fill.add_argument("image", type=Path)
    where = fill.add_mutually_exclusive_group()
    where.add_argument("--mask", type=Path, help="black-and-white mask, white = repaint")
    where.add_argument("--region", help="x,y,w,h in pixels or percent, e.g. 10%%,20%%,30%%,30%%")
    fill.add_argument("--invert-mask", action="store_true", help="repaint the black part instead")
    fill.add_argument("--grow", type=int, default=0, help="grow (or shrink, if negative) the mask by N pixels")
    fill.add_argument("--feather", type=int, default=8, help="soften the blend edge by N pixels")
    fill.add_argument("--no-composite", action="store_true",
                      help="keep the provider's pixels outside the mask too")
    _add_common(fill)
    _add_model_options(fill, "fill")

    edit = sub.add_parser("edit", help="edit IMAGE by instruction with FLUX Kontext, as /edit does")
    edit.add_argument("image", type=Path)
    _add_common(edit)
    _add_model_options(edit, "edit")
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", "-p", default="", help="what should appear / what to change")
    parser.add_argument("--provider", choices=PROVIDER_NAMES, help="default: DEFAULT_PROVIDER")
    parser.add_argument("--format", dest="output_format", default="png", choices=("png", "jpeg", "webp"))
    parser.add_argument("--quality", type=int, default=90, help="1-100, for jpeg and webp")
    parser.add_argument("-o", "--out", type=Path, default=Path("out"), help="directory for the results")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(env_file=args.env_file)
    except ConfigError as exc:
        print(f"fillbot: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            from bot.app import run_bot

            return run_bot(settings)
        if args.command == "sync":
            from bot.app import sync_commands

            return asyncio.run(sync_commands(settings, guild_id=args.guild))
        return asyncio.run(_run_job(settings, args))
    except ConfigError as exc:
        print(f"fillbot: configuration error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"fillbot: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _options(args: argparse.Namespace) -> dict[str, Value | None]:
    return {k.removeprefix("opt_"): v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read the {what} {str(path)!r}: {exc.strerror}.") from None


async def _run_job(settings: Settings, args: argparse.Namespace) -> int:
    from bot.service import FillService

    provider = args.provider or settings.default_provider
    delivery = Delivery(args.output_format, args.quality, composite=not getattr(args, "no_composite", True))
    image = _read(args.image, "image")
    request: FillRequest | EditRequest
    async with FillService(settings) as service:
        if args.command == "fill":
            mask_options = MaskOptions(args.region, args.invert_mask, args.grow, args.feather)
            request = FillRequest.build(provider, args.prompt, _options(args), mask=mask_options, delivery=delivery)
            mask = _read(args.mask, "mask") if args.mask else None
            prepared = await service.prepare_fill(image, mask, request)
        else:
            request = EditRequest.build(provider, args.prompt, _options(args), delivery=delivery)
            prepared = await service.prepare_edit(image, request)
        for notice in prepared.notices:
            print(f"note: {notice}", file=sys.stderr)
        job_id = service.new_job_id()
        print(f"job {job_id}: {request.spec.label}, seed {request.params.get('seed', '-')}", file=sys.stderr)
        result = await service.run(job_id, request, prepared.inputs, _print_update, job=prepared.job)
        if result.finished is None:
            print(f"fillbot: {result.outcome.state}: {result.outcome.message}", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for notice in result.finished.notices:
            print(f"note: {notice}", file=sys.stderr)
        if result.outcome.message:
            print(f"note: {result.outcome.message}", file=sys.stderr)
        for picture in result.finished.images:
            target = args.out / picture.filename
            target.write_bytes(picture.data)
            flag = " (flagged by the provider)" if picture.flagged else ""
            print(f"{target} {picture.size[0]}x{picture.size[1]}{flag}")
        print(f"done in {result.outcome.elapsed:.1f}s", file=sys.stderr)
        return 0


async def _print_update(update: JobUpdate) -> None:
    detail = ""
    if update.state is State.QUEUED and update.position is not None:
        detail = f" (position {update.position})"
    elif update.progress is not None:
        detail = f" {update.progress:.0%}"
    if update.message:
        detail += f": {update.message}"
    print(f"[{update.elapsed:6.1f}s] {update.state}{detail}", file=sys.stderr)
