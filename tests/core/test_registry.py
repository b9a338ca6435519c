"""Provider registry: each entry is complete for what its specs claim, so adding a provider touches one place."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from bot.config import ProviderSettings, Secret, load_settings
from bot.imaging.sizing import SizingRule
from bot.params import SPECS, ModelSpec
from bot.pipeline import sizing_rule
from bot.providers.base import Provider
from bot.providers.http import Downloader
from bot.providers.registry import (
    PROVIDER_NAMES,
    PROVIDERS,
    SAFETY_MAX,
    SAFETY_MIN,
    ProviderEntry,
    Span,
    option_note,
    option_span,
)
from bot.service import build_providers

ENTRIES = list(PROVIDERS.values())
MODELS = [(entry, spec) for entry in ENTRIES for spec in entry.specs]


def _ids(entry: ProviderEntry) -> str:
    return entry.name


def test_every_spec_belongs_to_one_entry_and_every_entry_has_a_model() -> None:
    assert PROVIDER_NAMES == ("replicate", "bfl", "wavespeed", "local")  # the first one with a key is the default
    assert sorted((s.provider, s.operation) for s in SPECS) == sorted((e.name, s.operation) for e, s in MODELS)
    assert all(entry.specs for entry in ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
def test_sizing_rules_cover_exactly_the_operations_the_specs_claim(entry: ProviderEntry) -> None:
    assert set(entry.sizing) == {spec.operation for spec in entry.specs}
    for spec in entry.specs:
        assert isinstance(entry.sizing_rule(spec.operation), SizingRule)
        assert sizing_rule(spec) is entry.sizing_rule(spec.operation)


def test_sizing_names_reach_the_rules_in_bot_imaging() -> None:
    assert PROVIDERS["bfl"].sizing_rule("fill").name == "bfl-fill"
    assert PROVIDERS["replicate"].sizing_rule("edit") is PROVIDERS["bfl"].sizing_rule("edit")  # both Kontext


def _internal_fields(spec: ModelSpec) -> set[str]:
    return {f.name for f in spec.fields if f.internal}


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
def test_safety_mapping_sets_every_internal_control_with_a_value_the_models_accept(entry: ProviderEntry) -> None:
    controls = set().union(*(_internal_fields(spec) for spec in entry.specs))
    for level in range(SAFETY_MIN, SAFETY_MAX + 1):
        internal = entry.safety(level)
        assert set(internal) == controls
        for spec in entry.specs:
            resolved = spec.resolve({}, internal)  # raises ParameterError for a value outside the spec
            assert {name: resolved[name] for name in _internal_fields(spec)} == {
                name: internal[name] for name in _internal_fields(spec)
            }


def test_environment_names_carry_the_provider_name_and_never_collide() -> None:
    names: list[str] = []
    for entry in ENTRIES:
        env = entry.env
        own = [n for n in (env.key, env.base_url, env.concurrency) if n is not None]
        assert all(n.startswith(entry.name.upper() + "_") for n in own), own
        names += own
    assert len(names) == len(set(names))


@pytest.mark.parametrize("entry", ENTRIES, ids=_ids)
async def test_each_entry_builds_its_own_client(entry: ProviderEntry) -> None:
    key = Secret("test-key") if entry.env.key else None
    settings = ProviderSettings(entry.name, entry.env.default_base_url, key, 1)
    downloader = Downloader(max_bytes=1024)
    client = entry.client(settings, downloader, httpx.MockTransport(lambda request: httpx.Response(500)))
    try:
        assert isinstance(client, Provider) and client.name == entry.name
    finally:
        await client.aclose()
        await downloader.aclose()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("local",)),
        ({"BFL_API_KEY": "b", "WAVESPEED_API_KEY": "w"}, ("bfl", "wavespeed", "local")),
        ({"REPLICATE_API_TOKEN": "r", "BFL_API_KEY": "b", "WAVESPEED_API_KEY": "w"}, PROVIDER_NAMES),
    ],
)
async def test_build_providers_makes_one_client_per_available_provider(
    env: dict[str, str], expected: tuple[str, ...]
) -> None:
    downloader = Downloader(max_bytes=1024)
    providers = build_providers(load_settings(env), downloader)
    try:
        assert tuple(providers) == expected
        assert all(client.name == name for name, client in providers.items())
    finally:
        for client in providers.values():
            await client.aclose()
        await downloader.aclose()


def test_config_and_registry_import_without_pictures_http_or_discord() -> None:
    heavy = ("numpy", "PIL", "cv2", "httpx", "discord", "bot.imaging", "bot.providers.replicate")
    code = f"import sys, bot.config; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- what the slash options may advertise -------------------------------------------------------------------


def test_option_span_covers_every_provider_that_runs_the_operation() -> None:
    assert option_span("fill", "steps") == Span(1, 50)  # Replicate 1–50, BFL 15–50, WaveSpeed 1–50
    assert option_span("fill", "guidance") == Span(0.0, 100.0)
    assert option_span("fill", "lora_scale") == Span(-1.0, 4.0)  # Replicate -1–3, WaveSpeed 0–4
    assert option_span("edit", "steps") == Span(4, 50)  # only Replicate's Kontext has steps
    assert option_span("edit", "guidance") == Span(0.0, 10.0)


def test_option_span_ends_have_the_options_type() -> None:
    steps, guidance = option_span("fill", "steps"), option_span("fill", "guidance")
    assert type(steps.minimum) is type(steps.maximum) is int
    assert type(guidance.minimum) is type(guidance.maximum) is float


def test_option_span_of_an_option_no_model_ranges_is_an_error() -> None:
    with pytest.raises(ValueError, match="megapixels"):
        option_span("fill", "megapixels")
    with pytest.raises(ValueError, match="outputs"):
        option_span("edit", "outputs")


def test_option_note_names_each_provider_with_its_own_range() -> None:
    assert option_note("edit", "steps") == "Replicate 4 to 50"
    assert option_note("fill", "outputs") == "Replicate 1 to 4, BFL 1, WaveSpeed 1 to 4"
    assert option_note("fill", "prompt_upsampling") == "BFL"
    assert option_note("edit", "prompt_upsampling") == "BFL"
    assert option_note("fill", "nonexistent") == ""

