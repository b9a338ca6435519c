"""How jobs look on Discord: status, result and failure embeds, within Discord's size limits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import discord

from bot.lifecycle.sink import Progress
from bot.lifecycle.states import State
from bot.params import EditRequest, FillRequest, Value

# Discord's embed limits (https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
TITLE_MAX = 256
DESCRIPTION_MAX = 4096
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
CONTENT_MAX = 2000

COLOUR_WORKING = discord.Colour.blurple()
COLOUR_DONE = discord.Colour.green()
COLOUR_FAILED = discord.Colour.red()
COLOUR_STOPPED = discord.Colour.light_grey()

_STATE_TEXT = {
    State.PREPARING: "⏳ Preparing",
    State.QUEUED: "⏳ Queued",
    State.SUBMITTING: "📨 Sending",
    State.STARTING: "📨 Submitted",
    State.RUNNING: "🎨 Running",
    State.SUCCEEDED: "✅ Done",
    State.FAILED: "❌ Failed",
    State.MODERATED: "🛡️ Blocked by the provider's safety checks",
    State.CANCELED: "⏹️ Canceled",
    State.EXPIRED: "⌛ Result expired",
    State.TIMED_OUT: "⌛ Timed out",
}


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote_prompt(prompt: str, limit: int = FIELD_VALUE_MAX) -> str:
    return truncate(prompt, limit) if prompt else "*(no prompt)*"


def state_title(state: State) -> str:
    return _STATE_TEXT.get(state, str(state))


def status_embed(
    request: FillRequest | EditRequest, update: Progress, *, started_at: float, notices: tuple[str, ...] = ()
) -> discord.Embed:
    """The live status: state, queue position or percentage (only when reported), elapsed time."""
    title = state_title(update.state)
    if update.state is State.QUEUED and update.position is not None:
        title += f" — position {update.position}"
    elif update.progress is not None and update.state is State.RUNNING:
        title += f" — {update.progress:.0%}"
    embed = discord.Embed(title=title, colour=COLOUR_WORKING)
    embed.description = quote_prompt(request.prompt, DESCRIPTION_MAX)
    embed.add_field(name="Model", value=request.spec.label, inline=False)
    embed.add_field(name="Started", value=f"<t:{int(started_at)}:R> ({update.elapsed:.0f} s)")
    if notices:
        embed.add_field(name="Notes", value=truncate("\n".join(f"• {n}" for n in notices), FIELD_VALUE_MAX),
                        inline=False)
    return embed


def result_embed(
    request: FillRequest | EditRequest,
    *,
    job_id: str,
    user_id: int,
    elapsed: float,
    notices: tuple[str, ...] = (),
) -> discord.Embed:
    """The finished job: prompt, model, the parameters that reproduce it, and time."""
    embed = discord.Embed(title=state_title(State.SUCCEEDED), colour=COLOUR_DONE)
    embed.description = quote_prompt(request.prompt, DESCRIPTION_MAX)
    embed.add_field(name="Model", value=request.spec.label, inline=False)
    for name in ("seed", "steps", "guidance"):
        if name in request.params:
            embed.add_field(name=name.capitalize(), value=str(request.params[name]))
    embed.add_field(name="Time", value=f"{elapsed:.1f} s")
    embed.add_field(name="By", value=f"<@{user_id}>")
    if notices:
        embed.add_field(name="Notes", value=truncate("\n".join(f"• {n}" for n in notices), FIELD_VALUE_MAX),
                        inline=False)
    embed.set_footer(text=f"job {job_id}")
    return embed


def failure_embed(
    request: FillRequest | EditRequest, state: State, message: str | None, *, job_id: str
) -> discord.Embed:
    """A finished-but-unsuccessful job, with what happened and what the user can do."""
    colour = COLOUR_STOPPED if state is State.CANCELED else COLOUR_FAILED
    embed = discord.Embed(title=state_title(state), colour=colour)
    embed.description = truncate(message or "The job did not produce an image.", DESCRIPTION_MAX)
    embed.add_field(name="Prompt", value=quote_prompt(request.prompt), inline=False)
    embed.add_field(name="Model", value=request.spec.label, inline=False)
    embed.set_footer(text=f"job {job_id}")
    return embed


# Query parameter names that carry credentials (Hugging Face and Civitai tokens, signed-URL signatures).
_CREDENTIAL_QUERY = re.compile(
    r"token|key|auth|sig|signature|secret|password|credential|session|x-amz-.*|x-goog-.*", re.IGNORECASE
)


def without_credentials(value: Value) -> Value:
    """A URL-valued parameter with its userinfo and credential-like query values removed; anything else as is.
    The Info button shows parameters to anyone in the channel, and a LoRA URL may carry its owner's token."""
    if not isinstance(value, str) or "://" not in value:
        return value
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a link)"
    if ":" in host:
        host = f"[{host}]"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if not _CREDENTIAL_QUERY.fullmatch(k)])
    return urlunsplit((parts.scheme, host + port, parts.path, query, ""))


def parameters_text(request: FillRequest | EditRequest, extra: Mapping[str, Value] | None = None) -> str:
    """Every parameter of a job, for the Info button (fits one ephemeral message); URLs without credentials."""
    lines = [f"**Model:** {request.spec.label} (`{request.spec.model}`)"]
    lines.extend(f"**{name}:** `{without_credentials(value)}`" for name, value in sorted(request.params.items()))
    if isinstance(request, FillRequest):
        mask = request.mask
        lines.append(f"**mask:** region=`{mask.region}` invert=`{mask.invert}` grow=`{mask.grow}` "
                     f"feather=`{mask.feather}`")
    d = request.delivery
    lines.append(f"**output:** `{d.output_format}` quality `{d.output_quality}` composite `{d.composite}`")
    for name, value in (extra or {}).items():
        lines.append(f"**{name}:** `{value}`")
    prompt = truncate(request.prompt, CONTENT_MAX - sum(len(line) + 1 for line in lines) - 20)
    return truncate("\n".join([f"**Prompt:** {prompt}", *lines]), CONTENT_MAX)
