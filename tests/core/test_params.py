"""Parameter specs: ranges per provider, defaults, field mapping, no silent clamping, JSON round trip."""

from __future__ import annotations

import math

import pytest

from bot.errors import ParameterError
from bot.params import (
    BFL_FILL,
    REPLICATE_FILL,
    REPLICATE_KONTEXT,
    SPECS,
    WAVESPEED_FILL,
    Delivery,
    EditRequest,
    Field,
    FillRequest,
    MaskOptions,
    request_from_json,
    request_to_json,
    spec_for,
)


@pytest.mark.parametrize(
    ("provider", "value", "allowed"),
    [("replicate", 101, "0 to 100"), ("bfl", 1.0, "1.5 to 100"), ("wavespeed", 27, "28 to 35")],
)
def test_guidance_out_of_provider_range_names_value_field_and_range(provider: str, value: float, allowed: str) -> None:
    with pytest.raises(ParameterError) as info:
        FillRequest.build(provider, "a cat", {"guidance": value})
    message = info.value.message
    assert "`guidance`" in message and str(value) in message and allowed in message


def test_values_are_never_clamped() -> None:
    with pytest.raises(ParameterError, match="15 to 50"):
        FillRequest.build("bfl", "x", {"steps": 10})
    request = FillRequest.build("bfl", "x", {"steps": 15})
    assert request.params["steps"] == 15


def test_defaults_come_from_the_spec_and_seed_is_chosen() -> None:
    request = FillRequest.build("replicate", "a cat", {})
    assert request.params["steps"] == 28 and request.params["guidance"] == 30 and request.params["outputs"] == 1
    assert isinstance(request.params["seed"], int)
    assert FillRequest.build("bfl", "", {}).params["guidance"] == 60


def test_wire_names_differ_per_provider() -> None:
    params = {"steps": 30, "guidance": 30.0, "outputs": 2, "seed": 5}
    assert REPLICATE_FILL.wire_input(params) == {
        "output_format": "png", "num_inference_steps": 30, "guidance": 30.0, "num_outputs": 2, "seed": 5,
    }
    wave = WAVESPEED_FILL.wire_input(params)
    assert wave["guidance_scale"] == 30.0 and wave["num_images"] == 2 and "guidance" not in wave
    assert "outputs" not in BFL_FILL.wire_input({"outputs": 1, "steps": 20})


def test_unsupported_option_is_an_error_listing_what_is_accepted() -> None:
    with pytest.raises(ParameterError) as info:
        FillRequest.build("bfl", "x", {"lora": "some/lora"})
    assert "`lora`" in info.value.message and "prompt_upsampling" in info.value.message


def test_internal_safety_controls_are_refused_from_users_but_accepted_from_the_bot() -> None:
    with pytest.raises(ParameterError):
        FillRequest.build("bfl", "x", {"safety_tolerance": 6})
    request = FillRequest.build("bfl", "x", {}, internal={"safety_tolerance": 0, "disable_safety_checker": True})
    assert request.params["safety_tolerance"] == 0
    assert "disable_safety_checker" not in request.params  # BFL has no such control: ignored


def test_type_errors_are_clear() -> None:
    with pytest.raises(ParameterError, match="whole number"):
        FillRequest.build("replicate", "x", {"steps": 2.5})
    with pytest.raises(ParameterError, match=r"one of 1, 0\.25, match_input"):
        FillRequest.build("replicate", "x", {"megapixels": "2"})


def test_prompt_rules() -> None:
    with pytest.raises(ParameterError, match="prompt is required"):
        FillRequest.build("replicate", "   ", {})
    with pytest.raises(ParameterError, match="2000"):
        FillRequest.build("replicate", "x" * 2001, {})
    assert FillRequest.build("local", "", {}).prompt == ""


def test_edit_needs_a_kontext_capable_provider() -> None:
    assert spec_for("replicate", "edit") is REPLICATE_KONTEXT
    with pytest.raises(ParameterError, match="cannot do /edit"):
        EditRequest.build("local", "make it red", {})
    with pytest.raises(ParameterError, match="0 to 10"):
        EditRequest.build("replicate", "make it red", {"guidance": 11})


def test_delivery_and_mask_options_validate() -> None:
    with pytest.raises(ParameterError, match="output_format"):
        Delivery("gif")
    with pytest.raises(ParameterError, match="feather"):
        MaskOptions(feather=100)


def test_request_json_round_trip() -> None:
    request = FillRequest.build(
        "replicate", "a red vase", {"steps": 30, "outputs": 2}, mask=MaskOptions(region="1,2,3,4", grow=3),
        delivery=Delivery("webp", 80, composite=False), internal={"disable_safety_checker": False},
    )
    again = request_from_json(request_to_json(request))
    assert again == request
    edit = EditRequest.build("bfl", "make it red", {"aspect_ratio": "16:9"})
    assert request_from_json(request_to_json(edit)) == edit


def test_range_text_is_shared_by_errors_and_option_help() -> None:
    assert Field("n", int, "", minimum=4, maximum=50).range_text() == "4 to 50"
    assert Field("n", int, "", minimum=1, maximum=1).range_text() == "1"
    assert Field("x", float, "", minimum=1.5, maximum=100).range_text() == "1.5 to 100"
    assert Field("b", bool, "").range_text() == ""
    assert Field("n", int, "", minimum=1, maximum=1).allowed() == "only 1"
    assert Field("x", float, "", minimum=0, maximum=10).allowed() == "a number from 0 to 10"


def test_options_sharing_a_name_share_a_type_across_models() -> None:
    """The slash commands offer one option per name for every provider, so its type must agree."""
    kinds: dict[tuple[str, str], set[type]] = {}
    for spec in SPECS:
        for f in spec.user_fields:
            kinds.setdefault((spec.operation, f.name), set()).add(f.kind)
    assert {key: k for key, k in kinds.items() if len(k) > 1} == {}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(("provider", "name"), [("replicate", "guidance"), ("replicate", "lora_scale"),
                                                ("wavespeed", "guidance"), ("bfl", "guidance")])
def test_non_finite_numbers_are_refused_naming_the_option_and_range(provider: str, name: str, value: float) -> None:
    """NaN compares false with both ends of a range, so it used to pass the check and crash later."""
    with pytest.raises(ParameterError) as info:
        FillRequest.build(provider, "x", {name: value})
    assert f"`{name}` = {value!r}" in info.value.message and " to " in info.value.message


def test_every_float_option_refuses_nan() -> None:
    floats = [(spec, f) for spec in SPECS for f in spec.user_fields if f.kind is float]
    assert floats
    for spec, f in floats:
        with pytest.raises(ParameterError):
            spec.resolve({f.name: math.nan})
