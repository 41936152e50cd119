"""Benchmark: draw a deterministic image in memory, then resize, thumbnail and filter it.

Event: {"width": 1024, "height": 768, "scale": 0.5, "thumbnail": 128, "blur": 2}.
No files are read or written. Returns the output sizes and SHA-256 checksums of the pixels
(the same for the same Pillow version).
"""
import hashlib

from PIL import Image, ImageDraw, ImageFilter, ImageOps


def _draw(width, height):
    r = Image.linear_gradient("L").resize((width, height))
    g = Image.radial_gradient("L").resize((width, height))
    b = ImageOps.mirror(r).rotate(90, expand=False)
    img = Image.merge("RGB", (r, g, b))
    draw = ImageDraw.Draw(img)
    step = max(8, min(width, height) // 16)
    for i, y in enumerate(range(0, height, step)):
        for j, x in enumerate(range(0, width, step)):
            if (i + j) % 3 == 0:
                draw.ellipse([x, y, x + step - 2, y + step - 2], fill=((i * 37) % 256, (j * 53) % 256, 128))
            elif (i * j) % 5 == 1:
                draw.rectangle([x + 2, y + 2, x + step - 4, y + step - 4], outline=(255, 255, 255), width=2)
    draw.line([0, 0, width - 1, height - 1], fill=(0, 0, 0), width=3)
    return img


def _digest(img):
    return hashlib.sha256(img.tobytes()).hexdigest()


def handler(event, context):
    width, height = int(event.get("width", 1024)), int(event.get("height", 768))
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise ValueError("width and height must be 16..4096")
    scale = float(event.get("scale", 0.5))
    thumb = int(event.get("thumbnail", 128))
    blur = float(event.get("blur", 2))

    img = _draw(width, height)
    resized = img.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)
    blurred = resized.filter(ImageFilter.GaussianBlur(blur))
    edges = ImageOps.grayscale(resized).filter(ImageFilter.FIND_EDGES)
    small = img.copy()
    small.thumbnail((thumb, thumb), Image.BICUBIC)
    return {
        "source": [width, height],
        "resized": list(resized.size),
        "thumbnail": list(small.size),
        "sha256": {
            "source": _digest(img),
            "resized": _digest(resized),
            "blurred": _digest(blurred),
            "edges": _digest(edges),
            "thumbnail": _digest(small),
        },
    }
