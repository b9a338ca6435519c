"""Which attachments the "Fill with…" menu takes as the picture and as the mask."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from cogs.fill import message_images


class _Attachment:
    def __init__(self, filename: str, content_type: str = "image/png") -> None:
        self.filename = filename
        self.content_type = content_type


class _Message:
    def __init__(self, *names: str) -> None:
        self.attachments: list[Any] = [_Attachment(n) for n in names]


@pytest.mark.parametrize(
    ("names", "picture", "mask"),
    [
        (("photo.png", "mask.png"), "photo.png", "mask.png"),
        (("coffee_mask.png", "coffee.jpg"), "coffee.jpg", "coffee_mask.png"),
        (("Mask-2.PNG", "cat.webp"), "cat.webp", "Mask-2.PNG"),
        (("unmasked.png",), "unmasked.png", None),  # a word containing "mask" is not a mask
        (("masking-tape.jpg", "photo.png"), "masking-tape.jpg", None),
        (("photo.png",), "photo.png", None),
    ],
)
def test_the_mask_is_the_attachment_named_mask(names: tuple[str, ...], picture: str, mask: str | None) -> None:
    message: discord.Message = _Message(*names)  # type: ignore[assignment]
    found_picture, found_mask = message_images(message)
    assert found_picture is not None and found_picture.filename == picture
    assert (found_mask.filename if found_mask else None) == mask
