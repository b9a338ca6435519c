"""`fillbot` command line: run the bot, sync its commands, or run /fill and /edit jobs from a terminal.

`fill` and `edit` use exactly the pipeline the bot uses, so they double as a key check and a benchmark tool.
Options for the provider models are generated from the parameter specs, so help text and ranges never drift.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bot import __version__, logsafety
from bot.config import Settings, load_settings
from bot.errors import ConfigError, UserError
from bot.lifecycle.sink import Ending, Progress, Receipt
from bot.lifecycle.states import State
from bot.params import (
    OUTPUT_FORMATS,
    SPECS,
    Delivery,
    EditRequest,
    Field,
    FillRequest,
    MaskOptions,
    Value,
    request_to_json,
)
from bot.providers.registry import PROVIDER_NAMES
from bot.storage import JobRecord, OutputMeta

if TYPE_CHECKING:
    from bot.lifecycle.jobs import Lifecycle
    from bot.storage import Storage

log = logging.getLogger(__name__)

DEFAULT_ENV_FILE = ".env"


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
    parser.add_argument("--env-file", default=DEFAULT_ENV_FILE, help="settings file to read (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the bot (reads DISCORD_TOKEN and the rest from .env)")
    run.add_argument("--shards", metavar="IDS", help="run only these shards, e.g. 0-3 (with --shard-count)")
    run.add_argument("--shard-count", type=int, metavar="N", help="how many shards the bot has in all")
    sub.add_parser("worker", help="run queued jobs for the bot processes (EXTERNAL_WORKERS; see Scaling out)")
    sync = sub.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, help="sync to one server only (instant; global sync can take an hour)")

    fill = sub.add_parser("fill", help="inpaint IMAGE where the mask says, as /fill does")
    fill.add_argument("image", type=Path)
    where = fill.add_mutually_exclusive_group()
    where.add_argument("--mask", type=Path, help="black-and-white mask, white = repaint")
    where.add_argument("--region", help="x,y,w,h in pixels or percent, e.g. 10%%,20%%,30%%,30%% (a bare 0 goes "
                       "with either)")
    fill.add_argument("--invert-mask", action="store_true", help="repaint the black part instead")
    fill.add_argument("--grow", type=int, default=0, help="grow (or shrink, if negative) the mask by N pixels")
    fill.add_argument("--feather", type=int, default=8, help="soften the blend edge by N pixels")
    fill.add_argument("--no-composite", action="store_true",
                      help="keep the provider's pixels outside the mask too")
    fill.add_argument("--preview", type=Path, metavar="FILE",
                      help="also write the mask preview the bot shows (a JPEG with the fill area tinted) to FILE, "
                      "before the job is sent")
    _add_common(fill, "fill")
    _add_model_options(fill, "fill")

    edit = sub.add_parser("edit", help="edit IMAGE by instruction with FLUX Kontext, as /edit does")
    edit.add_argument("image", type=Path)
    _add_common(edit, "edit")
    _add_model_options(edit, "edit")

    resume = sub.add_parser("resume", help="finish an interrupted fill/edit job without sending it again")
    resume.add_argument("job", help="the job id printed when it started")
    resume.add_argument("-o", "--out", type=Path, default=Path("out"), help="directory for the results")
    return parser


def _add_common(parser: argparse.ArgumentParser, operation: str) -> None:
    able = [name for name in PROVIDER_NAMES if any(s.provider == name and s.operation == operation for s in SPECS)]
    parser.add_argument("--prompt", "-p", default="", help="what should appear / what to change")
    parser.add_argument("--provider", choices=able, help="default: DEFAULT_PROVIDER")
    parser.add_argument("--format", dest="output_format", default="auto", choices=OUTPUT_FORMATS,
                        help="auto (default): the kind of the input picture, at full resolution")
    parser.add_argument("--quality", dest="output_quality", type=int, default=90, help="1-100, for jpeg and webp")
    parser.add_argument("-o", "--out", type=Path, default=Path("out"), help="directory for the results")


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option of the parser and its subcommands."""
    found: list[argparse.Action] = []
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif action.option_strings:
                found.append(action)
    return found


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each shared option name (as Discord and the core's messages call it) -> this CLI's flag, read from the
    argparse definitions so the two cannot drift: `output_quality` -> `--quality`, `invert_mask` -> `--invert-mask`."""
    flags: dict[str, str] = {}
    for action in _actions(parser):
        long = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        flags.setdefault(action.dest.removeprefix("opt_"), long)
    return flags


_OPTION_NAME = re.compile(r"`([a-z_]+)`")


def cli_wording(text: str, flags: dict[str, str]) -> str:
    """Shared messages name options in backticks as Discord shows them; on the command line, name the flag."""
    return _OPTION_NAME.sub(lambda m: f"`{flags[m[1]]}`" if m[1] in flags else m[0], text)


def _with_attached_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """argparse takes `--region -5,0,10,10` or `--guidance -inf` for an unknown flag after a flag with no value;
    attach such a value (`--region=-5,0,10,10`) so the option's own check answers it, in its own words."""
    actions = _actions(parser)
    known = {o for a in actions for o in a.option_strings}
    takes_value = {o for a in actions if isinstance(a, argparse._StoreAction) for o in a.option_strings}
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            out += [arg, *args]
            break
        if arg in takes_value:
            value = next(args, None)
            if value is not None and value.startswith("-") and value.split("=")[0] not in known:
                out.append(f"{arg}={value}" if arg.startswith("--") else arg + value)
                continue
            out += [arg] if value is None else [arg, value]
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_attached_values(sys.argv[1:] if argv is None else argv, parser))
    flags = option_flags(parser)
    try:
        if args.env_file != DEFAULT_ENV_FILE and not Path(args.env_file).is_file():
            raise ConfigError(f"--env-file {args.env_file!r} does not exist (or is not a file).")
        settings = load_settings(env_file=args.env_file)
    except ConfigError as exc:
        print(f"fillbot: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logsafety.install(settings.log_level)
    if args.command in ("fill", "edit", "resume") and settings.log_level != "DEBUG":
        # A terminal job prints its own progress; per-request lines from the HTTP clients would drown it.
        for name in ("httpx", "httpcore", "bot"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if args.command in ("run", "sync", "worker"):
            return _discord_command(settings, args)
        if args.command == "resume":
            return asyncio.run(_resume_job(settings, args, flags))
        return asyncio.run(_run_job(settings, args, flags))
    except ConfigError as exc:
        print(f"fillbot: configuration error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"fillbot: {cli_wording(exc.message, flags)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _discord_command(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import ShardPlan, explain_startup_failure, run_bot, run_worker, sync_commands

    try:
        if args.command == "run":
            if (args.shards is None) != (args.shard_count is None):
                raise ConfigError("--shards and --shard-count go together, e.g. --shards 0-3 --shard-count 8.")
            shards = None if args.shards is None else ShardPlan.parse(args.shards, args.shard_count)
            if shards is not None and shards.partial and settings.database_url is None:
                raise ConfigError("--shards for part of the bot means several bot processes, which need PostgreSQL: "
                                  "set DATABASE_URL (SQLite's locks hold within one process).")
            return run_bot(settings, shards)
        if args.command == "worker":
            return asyncio.run(run_worker(settings))
        return asyncio.run(sync_commands(settings, guild_id=args.guild))
    except Exception as exc:
        explained = explain_startup_failure(exc)
        if explained is None:
            raise
        print(f"fillbot: {explained}", file=sys.stderr)
        return 2 if "DISCORD_TOKEN" in explained else 1


def _options(args: argparse.Namespace) -> dict[str, Value | None]:
    return {k.removeprefix("opt_"): v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read the {what} {str(path)!r}: {exc.strerror}.") from None


def _write(path: Path, data: bytes, what: str) -> None:
    """Write a side file before the job is sent, so a bad path costs nothing."""
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UserError(f"Cannot write the {what} to {str(path)!r}: {exc.strerror}. Nothing was sent.") from None
    print(f"{what}: {path}", file=sys.stderr)


async def _run_job(settings: Settings, args: argparse.Namespace, flags: dict[str, str]) -> int:
    from bot.lifecycle.jobs import Lifecycle
    from bot.service import FillService
    from bot.storage import Storage

    provider = args.provider or settings.default_provider
    delivery = Delivery(args.output_format, args.output_quality, composite=not getattr(args, "no_composite", True))
    image = _read(args.image, "image")
    request: FillRequest | EditRequest
    async with FillService(settings) as service, await Storage.open(settings.database_target) as storage:
        if args.command == "fill":
            mask_options = MaskOptions(args.region, args.invert_mask, args.grow, args.feather)
            request = FillRequest.build(provider, args.prompt, _options(args), mask=mask_options, delivery=delivery)
            mask = _read(args.mask, "mask") if args.mask else None
            prepared = await service.prepare_fill(image, mask, request)
        else:
            request = EditRequest.build(provider, args.prompt, _options(args), delivery=delivery)
            prepared = await service.prepare_edit(image, request)
        for notice in prepared.notices:
            print(f"note: {cli_wording(notice, flags)}", file=sys.stderr)
        preview = await service.afterwards(prepared)  # before the job is sent: a bad path costs nothing
        if getattr(args, "preview", None) is not None:
            if preview is None:
                raise UserError("The mask preview could not be drawn (the error was logged). Nothing was sent.")
            _write(args.preview, preview, "mask preview")
        await _mention_interrupted(storage)
        lifecycle = Lifecycle(settings, storage, service)
        lifecycle.serve("cli", None)  # keep the leases of the jobs this command runs
        record = await lifecycle.record(_record(service.new_job_id(), request))
        print(f"job {record.id}: {request.spec.label}, seed {request.params.get('seed', '-')} (a new job)",
              file=sys.stderr)
        sink = FileSink(args.out, flags)
        await lifecycle.queue(record, prepared, sink)
        return await _follow(lifecycle, record.id, sink)


async def _resume_job(settings: Settings, args: argparse.Namespace, flags: dict[str, str]) -> int:
    """Carry on with an interrupted `fill`/`edit` from where it stopped: never sent twice."""
    from bot.lifecycle.jobs import Lifecycle
    from bot.service import FillService
    from bot.storage import Storage

    async with FillService(settings) as service, await Storage.open(settings.database_target) as storage:
        record = await storage.get_job(args.job)
        if record is None or record.front != "cli":
            where = "the PostgreSQL database (DATABASE_URL)" if settings.database_url else settings.database_path
            raise UserError(f"There is no command-line job `{args.job}` in {where}.")
        if record.delivered_at is not None:
            raise UserError(f"Job `{record.id}` is already finished ({record.status}).")
        lifecycle = Lifecycle(settings, storage, service)
        lifecycle.serve("cli", None)  # keep the leases of the jobs this command runs
        sink = FileSink(args.out, flags)
        if not await lifecycle.resume(record.id, sink):
            raise UserError(f"Job `{record.id}` is being run by another process right now.")
        print(f"job {record.id}: resuming ({record.status})", file=sys.stderr)
        return await _follow(lifecycle, record.id, sink)


async def _follow(lifecycle: Lifecycle, job_id: str, sink: FileSink) -> int:
    """Wait for the job; on Ctrl-C, hand it back and say how to pick it up again."""
    try:
        await lifecycle.wait(job_id)
    except asyncio.CancelledError:
        live = lifecycle.runner.live.get(job_id)
        state = live.state if live is not None else None
        await lifecycle.aclose()
        if state is not None and state.may_be_at_provider:
            print(f"\ninterrupted: job {job_id} may still be running at the provider. "
                  f"`fillbot resume {job_id}` picks it up without sending it again.", file=sys.stderr)
        else:
            print(f"\ninterrupted: job {job_id} was not sent to the provider; nothing was charged. "
                  f"`fillbot resume {job_id}` sends it.", file=sys.stderr)
        raise
    await lifecycle.aclose()
    return sink.exit_code


async def _mention_interrupted(storage: Storage) -> None:
    for record in await storage.claimable_jobs("cli", limit=5):
        print(f"note: job {record.id} ({record.status}) was interrupted earlier; `fillbot resume {record.id}` "
              "finishes it without paying again.", file=sys.stderr)


def _record(job_id: str, request: FillRequest | EditRequest) -> JobRecord:
    seed = request.params.get("seed")
    return JobRecord(
        id=job_id, kind=request.spec.operation, front="cli", user_id=0, guild_id=None, channel_id=0,
        provider=request.spec.provider, model=request.spec.model, request=request_to_json(request),
        prompt=request.prompt, application_id=0, seed=int(seed) if isinstance(seed, int) else None,
    )


class FileSink:
    """The command line's front end: progress on stderr, results written to a directory."""

    max_total_bytes = None

    def __init__(self, out: Path, flags: dict[str, str]) -> None:
        self.out = out
        self.flags = flags
        self.exit_code = 1

    def show(self, progress: Progress) -> None:
        detail = ""
        if progress.state is State.QUEUED and progress.position is not None:
            detail = f" (position {progress.position})"
        elif progress.progress is not None:
            detail = f" {progress.progress:.0%}"
        print(f"[{progress.elapsed:6.1f}s] {progress.state}{detail}", file=sys.stderr)

    async def deliver(self, ending: Ending) -> Receipt:
        if ending.finished is None:
            print(f"fillbot: {ending.state}: {cli_wording(ending.message or '', self.flags)}", file=sys.stderr)
            return Receipt(True)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            written = []
            for picture in ending.finished.images:
                target = self.out / picture.filename
                target.write_bytes(picture.data)
                written.append((target, picture))
        except OSError as exc:
            print(f"fillbot: cannot write the results to {str(self.out)!r}: {exc.strerror}. They are kept: "
                  f"`fillbot resume {ending.job_id} -o OTHER_DIR` writes them elsewhere.", file=sys.stderr)
            return Receipt(False)
        for notice in ending.notices + ending.finished.notices:
            print(f"note: {cli_wording(notice, self.flags)}", file=sys.stderr)
        for target, picture in written:
            flag = " (flagged by the provider)" if picture.flagged else ""
            print(f"{target} {picture.size[0]}x{picture.size[1]}{flag}")
        print(f"done in {ending.elapsed:.1f}s", file=sys.stderr)
        self.exit_code = 0
        outputs = tuple(OutputMeta(t.name, p.size[0], p.size[1], p.flagged, len(p.data)) for t, p in written)
        return Receipt(True, outputs=outputs)
