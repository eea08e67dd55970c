"""Write the bundled samples (`make run` analyses them): real photos, a text image, a short video.

Everything comes from packages the project installs (scikit-image photos,
Debian's Noto CJK fonts, PyAV); files are rewritten only when missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFont

NOTO_CJK = [
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in NOTO_CJK:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def text_sign() -> np.ndarray:
    """A shop-sign style image with Chinese and English lines over a real photo."""
    photo = Image.fromarray(skimage.data.coffee()).convert("RGB")
    draw = ImageDraw.Draw(photo)
    draw.rectangle((20, 20, 580, 170), fill=(255, 255, 255))
    draw.text((40, 30), "欢迎光临 咖啡店", font=_font(48), fill=(20, 20, 20))
    draw.text((40, 100), "Coffee Shop 8:00-22:00", font=_font(40), fill=(180, 30, 30))
    return np.asarray(photo)


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    photos = {
        "chelsea.jpg": skimage.data.chelsea,
        "coffee.jpg": skimage.data.coffee,
        "astronaut.jpg": skimage.data.astronaut,
        "sign.jpg": text_sign,
    }
    for name, make in photos.items():
        path = out / name
        if not path.exists():
            Image.fromarray(make()).save(path, quality=92)
            print(f"sample {path}")
    clip = out / "clip.mp4"
    if not clip.exists():
        try:
            from tools.make_sample_video import make_video
        except ImportError:
            return
        make_video(clip, seconds=4, size=(640, 360))
        print(f"sample {clip}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "samples")
