"""Photos and image transforms for training the projection and evaluating copy detection.

Only what scikit-image ships: ``EVALUATION_PHOTOS`` (natural photos) and
``OTHER_PHOTOS`` (textures, microscopy, astronomy, documents). The served
projection is learned from images made out of all of them (``ALL_PHOTOS``):
random augmentations, H.264 video frames and edited views of one photo at a
time (``photo_corpus``, which also returns each image's photo), plus collages
of crops of several photos (``collages``). The copy-detection benchmark never
scores a photo with a projection that saw it: per fold it masks the per-photo
images by source and makes the collages from the training photos only.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

OTHER_PHOTOS = (
    "brick",
    "grass",
    "gravel",
    "moon",
    "coins",
    "page",
    "text",
    "cell",
    "clock",
    "colorwheel",
    "logo",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
    "checkerboard",
)
EVALUATION_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "stereo_motorcycle")
ALL_PHOTOS = EVALUATION_PHOTOS + OTHER_PHOTOS


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample as ``H x W x 3`` uint8 RGB (grey and RGBA converted)."""
    import skimage.data

    data = getattr(skimage.data, name)()
    if isinstance(data, tuple):  # stereo_motorcycle: (left, right, disparity) -- the left view
        data = data[0]
    img = Image.fromarray(np.asarray(data, dtype=np.uint8))
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        img = background
    return np.asarray(img.convert("RGB"))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(
        Image.fromarray(rgb).resize(
            (max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR
        )
    )


def center_fraction(rgb: np.ndarray, fraction: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    ch, cw = round(h * fraction), round(w * fraction)
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(rgb[top : top + ch, left : left + cw])


def brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(rgb)).enhance(factor))


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(ImageOps.grayscale(Image.fromarray(rgb)).convert("RGB"))


def text_overlay(rgb: np.ndarray, text: str = "VisionMesh @user 2026") -> np.ndarray:
    """A watermark-like caption across the lower part of the image."""
    img = Image.fromarray(rgb).copy()
    h, w = rgb.shape[:2]
    font = ImageFont.load_default(size=max(10, h // 12))
    draw = ImageDraw.Draw(img)
    draw.text(
        (w // 20, h * 3 // 4),
        text,
        fill=(255, 255, 255),
        font=font,
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )
    return np.asarray(img)


# The copies a platform sees re-uploaded: name -> transform.
COPY_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_q30": lambda x: jpeg(x, 30),
    "resize_x0.5": lambda x: resize(x, 0.5),
    "crop_90": lambda x: center_fraction(x, 0.9),
    "hflip": lambda x: np.ascontiguousarray(x[:, ::-1]),
    "brightness_x1.3": lambda x: brightness(x, 1.3),
    "grey": grey,
    "text_overlay": text_overlay,
}


def random_augmentation(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (8-100 % of the area), maybe flipped, colour-jittered, grey,
    JPEG-compressed."""
    h, w = rgb.shape[:2]
    area = rng.uniform(0.08, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, max(16, round(np.sqrt(area * h * w / aspect)))))
    cw = int(min(w, max(16, round(np.sqrt(area * h * w * aspect)))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(rgb[top : top + ch, left : left + cw])
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.5, 1.5))
    if rng.random() < 0.1:
        img = ImageOps.grayscale(img).convert("RGB")
    out = np.asarray(img.convert("RGB"))
    return jpeg(out, int(rng.integers(30, 96))) if rng.random() < 0.7 else out


def augmented_corpus(photos: tuple[str, ...], per_photo: int, seed: int) -> list[np.ndarray]:
    """``per_photo`` random augmentations of each photo (the photo itself first), reproducible."""
    rng = np.random.default_rng(seed)
    images = []
    for name in photos:
        rgb = load_photo(name)
        images.append(rgb)
        images.extend(random_augmentation(rgb, rng) for _ in range(per_photo - 1))
    return images


def video_frames(
    photos: tuple[str, ...], frames_per_photo: int, seed: int, size: int = 256
) -> list[np.ndarray]:
    """Frames of an H.264 clip made with PyAV: a slow random pan-and-zoom over each photo, encoded
    and decoded back.

    Adds what uploaded videos look like (codec artefacts, motion between frames) to the training
    corpus.
    """
    import av

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "30", "preset": "veryfast"}
        for name in photos:
            rgb = load_photo(name)
            h, w = rgb.shape[:2]
            side0, side1 = (min(h, w) * rng.uniform(0.5, 1.0) for _ in range(2))
            (y0, x0), (y1, x1) = (
                (rng.uniform(0, h - s), rng.uniform(0, w - s)) for s in (side0, side1)
            )
            for t in np.linspace(0.0, 1.0, frames_per_photo):
                side = side0 + t * (side1 - side0)
                top, left = y0 + t * (y1 - y0), x0 + t * (x1 - x0)
                crop = (
                    Image.fromarray(rgb)
                    .crop((round(left), round(top), round(left + side), round(top + side)))
                    .resize((size, size))
                )
                for packet in stream.encode(
                    av.VideoFrame.from_ndarray(np.asarray(crop), format="rgb24")
                ):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buf.seek(0)
    with av.open(buf, "r") as reader:
        return [frame.to_ndarray(format="rgb24") for frame in reader.decode(video=0)]


def _random_view(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (10-100 % of the area, aspect 1:2-2:1), sometimes rotated up to 20 degrees."""
    h, w = rgb.shape[:2]
    area, aspect = rng.uniform(0.1, 1.0), np.exp(rng.uniform(np.log(1 / 2), np.log(2)))
    ch = int(min(h, max(32, round(np.sqrt(area * h * w / aspect)))))
    cw = int(min(w, max(32, round(np.sqrt(area * h * w * aspect)))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = Image.fromarray(rgb[top : top + ch, left : left + cw])
    if rng.random() < 0.3:
        img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
    return np.asarray(img.convert("RGB"))


def _random_edit(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One or two re-upload edits: JPEG, grey, caption, downscale, flip, crop + brightness."""
    for op in rng.permutation(6)[: rng.integers(1, 3)]:
        if op == 0:
            rgb = jpeg(rgb, int(rng.integers(20, 80)))
        elif op == 1:
            rgb = grey(rgb)
        elif op == 2:
            rgb = text_overlay(rgb)
        elif op == 3:
            rgb = resize(rgb, float(rng.uniform(0.25, 0.7)))
        elif op == 4:
            rgb = np.ascontiguousarray(rgb[:, ::-1])
        else:
            rgb = brightness(
                center_fraction(rgb, float(rng.uniform(0.7, 0.95))), float(rng.uniform(0.6, 1.4))
            )
    return rgb


def edited_views(photos: tuple[str, ...], views_per_photo: int, seed: int) -> list[np.ndarray]:
    """Random views of each photo, each followed by two random edits of it (3 images per view)."""
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    for name in photos:
        rgb = load_photo(name)
        for _ in range(views_per_photo):
            view = _random_view(rgb, rng)
            images.extend((view, _random_edit(view, rng), _random_edit(view, rng)))
    return images


def collages(photos: tuple[str, ...], count: int, seed: int) -> list[np.ndarray]:
    """``count`` new 256x256 images: 2 or 4 random crops of different photos side by side or in a
    grid.

    Many distinct images out of few photos, so PCA sees more than the photos' own directions.
    """
    rng = np.random.default_rng(seed)
    loaded = [load_photo(name) for name in photos]

    def crop(rgb: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale = rng.uniform(0.3, 1.0)
        ch, cw = max(16, int(h * scale)), max(16, int(w * scale))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return np.asarray(
            Image.fromarray(rgb[top : top + ch, left : left + cw]).resize((out_w, out_h))
        )

    out = []
    for _ in range(count):
        layout = int(rng.integers(0, 3))
        picks = [loaded[i] for i in rng.choice(len(loaded), 4 if layout == 2 else 2, replace=False)]
        if layout == 0:
            out.append(np.concatenate([crop(picks[0], 256, 128), crop(picks[1], 256, 128)], axis=1))
        elif layout == 1:
            out.append(np.concatenate([crop(picks[0], 128, 256), crop(picks[1], 128, 256)], axis=0))
        else:
            rows = [
                np.concatenate(
                    [crop(picks[r * 2], 128, 128), crop(picks[r * 2 + 1], 128, 128)], axis=1
                )
                for r in range(2)
            ]
            out.append(np.concatenate(rows, axis=0))
    return out


def photo_corpus(
    photos: tuple[str, ...], per_photo: int, frames_per_photo: int, views_per_photo: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Everything made from one photo at a time (augmentations, video frames, edited views) and
    each image's photo index."""
    stills = augmented_corpus(photos, per_photo, seed)
    frames = video_frames(photos, frames_per_photo, seed)
    views = edited_views(photos, views_per_photo, seed + 1)
    index = np.arange(len(photos))
    source = np.r_[
        np.repeat(index, per_photo),
        np.repeat(index, frames_per_photo)[: len(frames)],
        np.repeat(index, 3 * views_per_photo),
    ]
    return stills + frames + views, source


def training_corpus(
    photos: tuple[str, ...],
    per_photo: int,
    frames_per_photo: int,
    views_per_photo: int,
    collage_count: int,
    seed: int,
) -> list[np.ndarray]:
    """The whole training corpus of ``photos``: the per-photo images plus collages of them."""
    images, _ = photo_corpus(photos, per_photo, frames_per_photo, views_per_photo, seed)
    return images + collages(photos, collage_count, seed + 2)
