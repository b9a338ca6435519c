"""/fill and /edit advertise exactly what the providers' specs accept, computed here from the spec tables alone."""

from __future__ import annotations

import pytest
from discord import AppCommandOptionType, app_commands

from bot.params import MAX_PROMPT_CHARS, OUTPUT_FORMATS, SPECS, Field
from bot.providers.registry import PROVIDERS
from cogs.fill import FillCog

COMMANDS: dict[str, app_commands.Command[FillCog, ..., None]] = {"fill": FillCog.fill, "edit": FillCog.edit}
# Spec options a command does not offer; a new spec option fails the test below until it is offered or listed here.
NOT_OFFERED = {"fill": {"method", "radius"}, "edit": {"prompt_upsampling"}}
OPTION_TYPES = {
    int: AppCommandOptionType.integer,
    float: AppCommandOptionType.number,
    str: AppCommandOptionType.string,
    bool: AppCommandOptionType.boolean,
}


def spec_options(operation: str) -> dict[str, list[tuple[str, Field]]]:
    """Each user option of the command's models, with the provider of every model that has it."""
    options: dict[str, list[tuple[str, Field]]] = {}
    for spec in SPECS:
        if spec.operation == operation:
            for f in spec.user_fields:
                options.setdefault(f.name, []).append((spec.provider, f))
    return options


def parameter(operation: str, name: str) -> app_commands.Parameter:
    return next(p for p in COMMANDS[operation].parameters if p.name == name)


@pytest.mark.parametrize("operation", list(COMMANDS))
def test_every_spec_option_is_offered_or_knowingly_left_out(operation: str) -> None:
    offered = {p.name for p in COMMANDS[operation].parameters}
    assert set(spec_options(operation)) - offered == NOT_OFFERED[operation]


@pytest.mark.parametrize("operation", list(COMMANDS))
def test_offered_options_span_the_union_of_the_specs(operation: str) -> None:
    for name, owners in spec_options(operation).items():
        if name in NOT_OFFERED[operation]:
            continue
        option = parameter(operation, name)
        fields = [f for _, f in owners]
        assert option.type is OPTION_TYPES[fields[0].kind], name
        ranged = [f for f in fields if f.minimum is not None and f.maximum is not None]
        if ranged:
            assert option.min_value == min(f.minimum for f in ranged if f.minimum is not None), name
            assert option.max_value == max(f.maximum for f in ranged if f.maximum is not None), name
        assert {c.value for c in option.choices} == {c for f in fields for c in f.choices}, name


def test_edit_advertises_kontext_ranges_not_fill_ranges() -> None:
    steps, guidance = parameter("edit", "steps"), parameter("edit", "guidance")
    assert (steps.min_value, steps.max_value) == (4, 50)
    assert (guidance.min_value, guidance.max_value) == (0, 10)


@pytest.mark.parametrize("operation", list(COMMANDS))
def test_help_text_names_each_providers_own_range(operation: str) -> None:
    for name, owners in spec_options(operation).items():
        if name in NOT_OFFERED[operation]:
            continue
        description = parameter(operation, name).description
        for provider, f in owners:
            if f.range_text() and name != "seed":  # one seed range for all; its help says what a seed does
                assert f"{PROVIDERS[provider].label} {f.range_text()}" in description, (name, provider)


@pytest.mark.parametrize("operation", list(COMMANDS))
def test_options_outside_the_specs_match_their_own_limits(operation: str) -> None:
    options = {p.name: p for p in COMMANDS[operation].parameters}
    assert options["prompt"].max_value == MAX_PROMPT_CHARS
    assert [c.value for c in options["output_format"].choices] == list(OUTPUT_FORMATS)
    assert all(len(p.description) <= 100 for p in options.values())  # Discord's limit for option help
