"""Per-provider parameter specs and the request models they validate.

Each model's spec is data: option names, provider field names, types, ranges, defaults and enums. The same
table drives validation (errors name the value, the option and the allowed range; nothing is clamped),
help text, defaults and the provider field mapping. Ranges come from docs/providers.md (research notes on
each provider's API).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bot.errors import ParameterError

Value = int | float | bool | str
Operation = Literal["fill", "edit"]

MAX_PROMPT_CHARS = 2000
SEED_MAX = 2_147_483_647
OUTPUT_FORMATS = ("auto", "png", "jpeg", "webp")
KONTEXT_ASPECT_RATIOS = (
    "match_input_image", "1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21",
)


@dataclass(frozen=True)
class Field:
    """One option: `name` is what users type, `wire` what the provider calls it (None: handled by the
    provider module itself)."""

    name: str
    kind: type
    description: str
    default: Value | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    wire: str | None = ""
    internal: bool = False  # set by the bot (moderation), never by users

    @property
    def wire_name(self) -> str | None:
        return self.name if self.wire == "" else self.wire

    def allowed(self) -> str:
        """Human description of what the option accepts, for errors and help."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.minimum is not None and self.maximum is not None:
            if self.minimum == self.maximum:
                return f"only {self.range_text()}"
            kind = "a whole number" if self.kind is int else "a number"
            return f"{kind} from {self.range_text()}"
        return "text" if self.kind is str else "a number"

    def range_text(self) -> str:
        """`4 to 50` (`1` when both ends are equal) for errors and help; empty for options without a range."""
        if self.minimum is None or self.maximum is None:
            return ""
        lo, hi = _fmt(self.minimum), _fmt(self.maximum)
        return lo if lo == hi else f"{lo} to {hi}"

    def check(self, value: Value, where: str) -> Value:
        """Return `value` coerced to this field's type, or raise naming what is allowed."""
        bad = ParameterError(f"`{self.name}` = {value!r} is not allowed for {where}: use {self.allowed()}.")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise bad
            if self.choices and value not in self.choices:
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            value = int(value)
        else:
            value = float(value)
        if not math.isfinite(value):
            raise bad  # NaN passes every comparison below; infinity is never a meaningful setting
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise bad
        return value


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


@dataclass(frozen=True)
class ModelSpec:
    """What one provider model accepts. `fixed` wire fields are always sent (e.g. a lossless format)."""

    provider: str
    model: str
    operation: Operation
    label: str
    fields: tuple[Field, ...]
    fixed: Mapping[str, Value] = field(default_factory=dict)
    prompt_required: bool = True
    uses_prompt: bool = True

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def user_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if not f.internal)

    def resolve(
        self, options: Mapping[str, Value | None], internal: Mapping[str, Value] | None = None
    ) -> dict[str, Value]:
        """Validate user `options` (None = not given) and bot-set `internal` ones, and fill in defaults.

        Unknown or unsupported options are errors, so a user never believes a setting took effect when it did
        not; internal fields (safety controls) are refused from users and accepted only through `internal`.
        """
        resolved: dict[str, Value] = {}
        given = [(n, v, False) for n, v in options.items()] + [(n, v, True) for n, v in (internal or {}).items()]
        for name, value, is_internal in given:
            if value is None:
                continue
            spec = self.field(name)
            if spec is None and is_internal:
                continue  # a safety control this model does not have
            if spec is None or (spec.internal and not is_internal):
                supported = ", ".join(f.name for f in self.user_fields) or "no options"
                raise ParameterError(
                    f"`{name}` is not supported by {self.label}; it accepts {supported}."
                )
            resolved[name] = spec.check(value, self.label)
        for spec in self.fields:
            if spec.name not in resolved and spec.default is not None:
                resolved[spec.name] = spec.default
        if self.field("seed") is not None and "seed" not in resolved:
            # Pick the seed ourselves so results can show it and Rerun can vary it.
            resolved["seed"] = random.randint(0, SEED_MAX)
        return resolved

    def wire_input(self, params: Mapping[str, Value]) -> dict[str, Value]:
        """Map resolved options to the provider's field names (fields with wire=None are left out)."""
        body: dict[str, Value] = dict(self.fixed)
        for name, value in params.items():
            spec = self.field(name)
            if spec is not None and spec.wire_name is not None:
                body[spec.wire_name] = value
        return body


def _seed(maximum: int = SEED_MAX) -> Field:
    return Field("seed", int, "Random seed; the same seed and options repeat a result.", minimum=0, maximum=maximum)


def _steps(minimum: int, maximum: int, default: int, wire: str) -> Field:
    return Field(
        "steps", int, "Denoising steps: more is slower and usually cleaner.",
        default=default, minimum=minimum, maximum=maximum, wire=wire,
    )


def _guidance(minimum: float, maximum: float, default: float, wire: str = "") -> Field:
    return Field(
        "guidance", float, "How strictly to follow the prompt.",
        default=default, minimum=minimum, maximum=maximum, wire=wire,
    )


def _outputs(maximum: int, wire: str | None) -> Field:
    return Field("outputs", int, "How many images to make.", default=1, minimum=1, maximum=maximum, wire=wire)


_SAFETY_OFF = Field(
    "disable_safety_checker", bool, "Turn off the provider's NSFW checker (age-restricted channels only).",
    default=False, internal=True,
)
_PROMPT_UPSAMPLING = Field(
    "prompt_upsampling", bool, "Let the provider rewrite the prompt for more creative results.", default=False
)
_BFL_SAFETY = Field(
    "safety_tolerance", int, "Moderation strictness: 0 strictest, 6 most permissive.",
    default=2, minimum=0, maximum=6, internal=True,
)
_ASPECT_RATIO = Field(
    "aspect_ratio", str, "Shape of the result; match_input_image keeps the input's.",
    default="match_input_image", choices=KONTEXT_ASPECT_RATIOS,
)
_LORA_DESC = "LoRA weights: a Replicate model, Hugging Face, CivitAI or .safetensors URL."
_LORA_SCALE_DESC = "LoRA strength."

REPLICATE_FILL = ModelSpec(
    provider="replicate",
    model="black-forest-labs/flux-fill-dev",
    operation="fill",
    label="FLUX.1 Fill [dev] on Replicate",
    fields=(
        _seed(),
        _steps(1, 50, 28, "num_inference_steps"),
        _guidance(0, 100, 30),
        _outputs(4, "num_outputs"),
        Field("megapixels", str, "Size of the generated image before it is fitted back.",
              default="1", choices=("1", "0.25", "match_input")),
        Field("lora", str, _LORA_DESC, wire="lora_weights"),
        Field("lora_scale", float, _LORA_SCALE_DESC, default=1.0, minimum=-1, maximum=3),
        _SAFETY_OFF,
    ),
    fixed={"output_format": "png"},
)

REPLICATE_KONTEXT = ModelSpec(
    provider="replicate",
    model="black-forest-labs/flux-kontext-dev",
    operation="edit",
    label="FLUX.1 Kontext [dev] on Replicate",
    fields=(
        _seed(),
        _steps(4, 50, 28, "num_inference_steps"),
        _guidance(0, 10, 2.5),
        _ASPECT_RATIO,
        Field("go_fast", bool, "Faster, slightly lower quality on hard prompts.", default=True),
        _SAFETY_OFF,
    ),
    fixed={"output_format": "png"},
)

BFL_FILL = ModelSpec(
    provider="bfl",
    model="flux-pro-1.0-fill",
    operation="fill",
    label="FLUX.1 Fill [pro] (Black Forest Labs)",
    fields=(
        _seed(),
        _steps(15, 50, 50, "steps"),
        _guidance(1.5, 100, 60),
        _outputs(1, None),
        _PROMPT_UPSAMPLING,
        _BFL_SAFETY,
    ),
    fixed={"output_format": "png"},
    prompt_required=False,
)

BFL_KONTEXT = ModelSpec(
    provider="bfl",
    model="flux-kontext-pro",
    operation="edit",
    label="FLUX.1 Kontext [pro] (Black Forest Labs)",
    fields=(
        _seed(),
        dataclasses.replace(_ASPECT_RATIO, wire=None),  # BFL omits it for match_input_image
        _PROMPT_UPSAMPLING,
        _BFL_SAFETY,
    ),
    fixed={"output_format": "png"},
)

WAVESPEED_FILL = ModelSpec(
    provider="wavespeed",
    model="wavespeed-ai/flux-fill-dev",
    operation="fill",
    label="FLUX.1 Fill [dev] on WaveSpeedAI",
    fields=(
        _seed(),
        _steps(1, 50, 28, "num_inference_steps"),
        _guidance(28, 35, 30, "guidance_scale"),
        _outputs(4, "num_images"),
        Field("lora", str, _LORA_DESC, wire=None),
        Field("lora_scale", float, _LORA_SCALE_DESC, default=1.0, minimum=0, maximum=4, wire=None),
    ),
)

LOCAL_FILL = ModelSpec(
    provider="local",
    model="opencv-telea",
    operation="fill",
    label="local OpenCV inpainting (no AI; the prompt is not used)",
    fields=(
        Field("method", str, "telea (fast marching) or ns (Navier-Stokes).", default="telea",
              choices=("telea", "ns")),
        Field("radius", int, "Neighbourhood radius in pixels.", default=5, minimum=1, maximum=50),
    ),
    prompt_required=False,
    uses_prompt=False,
)

SPECS: tuple[ModelSpec, ...] = (
    REPLICATE_FILL, REPLICATE_KONTEXT, BFL_FILL, BFL_KONTEXT, WAVESPEED_FILL, LOCAL_FILL,
)


def spec_for(provider: str, operation: Operation) -> ModelSpec:
    """The model a provider uses for an operation, or a ParameterError listing who can do it."""
    for spec in SPECS:
        if spec.provider == provider and spec.operation == operation:
            return spec
    able = ", ".join(s.provider for s in SPECS if s.operation == operation)
    raise ParameterError(f"The {provider} provider cannot do /{operation}; use one of: {able}.")


def check_prompt(prompt: str, spec: ModelSpec) -> str:
    """Strip and check a prompt against the model's needs and Discord-friendly length."""
    prompt = prompt.strip()
    if spec.prompt_required and not prompt:
        raise ParameterError(f"A prompt is required for {spec.label}: describe what should appear.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ParameterError(
            f"The prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are allowed."
        )
    return prompt


@dataclass(frozen=True)
class Delivery:
    """How finished images are handed back: our own encoding, whatever the provider returned. "auto" answers
    in the upload's kind (a JPEG photo as JPEG, a PNG as PNG) so full resolution fits Discord's limit."""

    output_format: str = "auto"
    output_quality: int = 90
    composite: bool = True

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ParameterError(
                f"`output_format` = {self.output_format!r} is not allowed: use one of {', '.join(OUTPUT_FORMATS)}."
            )
        if not 1 <= self.output_quality <= 100:
            raise ParameterError(
                f"`output_quality` = {self.output_quality} is not allowed: use a whole number from 1 to 100."
            )


@dataclass(frozen=True)
class MaskOptions:
    """How the fill area is given and shaped."""

    region: str | None = None
    invert: bool = False
    grow: int = 0
    feather: int = 8

    def __post_init__(self) -> None:
        if not -64 <= self.grow <= 64:
            raise ParameterError(f"`grow` = {self.grow} is not allowed: use a whole number from -64 to 64.")
        if not 0 <= self.feather <= 64:
            raise ParameterError(f"`feather` = {self.feather} is not allowed: use a whole number from 0 to 64.")


@dataclass(frozen=True)
class FillRequest:
    """A validated /fill: prompt, model, resolved options, mask shaping and delivery."""

    spec: ModelSpec
    prompt: str
    params: Mapping[str, Value]
    mask: MaskOptions = MaskOptions()
    delivery: Delivery = Delivery()

    @classmethod
    def build(
        cls,
        provider: str,
        prompt: str,
        options: Mapping[str, Value | None],
        *,
        mask: MaskOptions = MaskOptions(),
        delivery: Delivery = Delivery(),
        internal: Mapping[str, Value] | None = None,
    ) -> FillRequest:
        spec = spec_for(provider, "fill")
        return cls(spec, check_prompt(prompt, spec), spec.resolve(options, internal), mask, delivery)


@dataclass(frozen=True)
class EditRequest:
    """A validated /edit (Kontext): prompt, model, resolved options, delivery."""

    spec: ModelSpec
    prompt: str
    params: Mapping[str, Value]
    delivery: Delivery = Delivery(composite=False)

    @classmethod
    def build(
        cls,
        provider: str,
        prompt: str,
        options: Mapping[str, Value | None],
        *,
        delivery: Delivery = Delivery(composite=False),
        internal: Mapping[str, Value] | None = None,
    ) -> EditRequest:
        spec = spec_for(provider, "edit")
        return cls(spec, check_prompt(prompt, spec), spec.resolve(options, internal), delivery)


def request_to_json(request: FillRequest | EditRequest) -> str:
    """Serialise a validated request for storage (Rerun and restart recovery rebuild it from this)."""
    data: dict[str, object] = {
        "operation": request.spec.operation,
        "provider": request.spec.provider,
        "prompt": request.prompt,
        "params": dict(request.params),
        "delivery": vars(request.delivery),
    }
    if isinstance(request, FillRequest):
        data["mask"] = vars(request.mask)
    return json.dumps(data)


def request_from_json(text: str) -> FillRequest | EditRequest:
    """Rebuild a request stored by `request_to_json` (already validated when it was made)."""
    data = json.loads(text)
    spec = spec_for(data["provider"], data["operation"])
    delivery = Delivery(**data["delivery"])
    if spec.operation == "fill":
        return FillRequest(spec, data["prompt"], data["params"], MaskOptions(**data["mask"]), delivery)
    return EditRequest(spec, data["prompt"], data["params"], delivery)
