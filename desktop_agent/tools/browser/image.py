"""Screenshot post-processing (downscale, encode); runs in a worker thread, never on the event loop."""

from __future__ import annotations

import base64
import io
from typing import Literal

from PIL import Image

__all__ = ["prepare_image"]


def prepare_image(
    data: bytes, image_type: Literal["png", "jpeg"], quality: int | None, max_width: int | None
) -> tuple[str, int, int, int]:
    """Downscale to max_width when wider, then base64: (data, width, height, bytes). Runs in a thread."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if max_width is not None and width > max_width:
            new_size = (max_width, max(1, round(height * max_width / width)))
            resized = image.convert("RGB" if image_type == "jpeg" else "RGBA").resize(
                new_size, Image.Resampling.LANCZOS
            )
            out = io.BytesIO()
            if image_type == "jpeg":
                resized.save(out, format="JPEG", quality=quality or 80)
            else:
                resized.save(out, format="PNG", optimize=False)
            data = out.getvalue()
            width, height = new_size
    return base64.b64encode(data).decode("ascii"), width, height, len(data)
