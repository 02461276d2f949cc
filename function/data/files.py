"""Reading one image or one mask file, the one place that decides what a file means (torch-free).

* :func:`read_image` — an RGB PIL image; 16-bit greys are scaled to 8 bits (``convert("RGB")`` would clip them to
  white); a damaged file (empty, not an image, truncated, a decompression bomb, a symlink loop) is an
  :class:`UnreadableFile` naming it.
* :func:`read_mask` — a mask as grey values by *value*: the palette index of a mode-P mask (not its colour, which may
  be black for index 1), the grey channel of L/LA, 16-bit values scaled to 8 bits, the channel of a grey RGB(A) mask
  (a coloured one: its largest channel); a transparent mask is refused. A value > 0 is foreground.
* :func:`read_indices` — a label map (mode P or L) as its raw values (VOC's instance and class PNGs).
* :func:`mask_fits` — a mask must have its image's size or be an exact rescale of it (the same aspect ratio).
* :func:`bad_name` — names that do not survive a one-name-per-line list (newlines, surrounding spaces, bytes that are
  not UTF-8) are refused up front.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from kdq.function.cli import UserError

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MASK_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", *SIXTEEN_BIT)


class UnreadableFile(UserError):
    """An image or mask a stage cannot use, named with the reason."""


def _open(path: Path, what: str, decode: bool) -> Image.Image:
    """``Image.open`` with every way a file can be damaged turned into one :class:`UnreadableFile`."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableFile(f"{what} {path} is empty (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            if decode:
                img.load()
        return img
    except UnreadableFile:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableFile(f"{what} {path} is too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:  # PIL raises all of these
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise UnreadableFile(f"{what} {path} cannot be read ({reason})") from None


def image_header(path: Path, what: str = "image") -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) from the file's header (the pixels are not decoded)."""
    with _open(path, what, decode=False) as img:
        return img.mode, img.size


def _sixteen_bit_values(img: Image.Image, what: str) -> np.ndarray:
    """The pixels of a 16-bit grey image as int64, refused (naming ``what``) when outside 0..65535."""
    values = np.asarray(img).astype(np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise UnreadableFile(f"{what} has {img.mode} values outside 0..65535")
    return values


def read_image(path: Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (16-bit greys scaled, not clipped)."""
    with _open(path, "image", decode=True) as img:
        if img.mode in SIXTEEN_BIT:
            values = _sixteen_bit_values(img, f"image {path}")
            return Image.fromarray((values // 257).astype(np.uint8), "L").convert("RGB")
        if img.mode == "F":
            raise UnreadableFile(f"image {path} holds floating-point pixels (mode F); save it as 8-bit RGB")
        return img.convert("RGB")


def read_mask(path: Path, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """The mask at ``path`` as uint8 grey values (H, W), > 0 foreground; ``image_size`` (w, h) is checked with
    :func:`mask_fits`."""
    with _open(path, "mask", decode=True) as img:
        if image_size is not None and not mask_fits(img.size, image_size):
            raise UnreadableFile(f"mask {path} is {img.size[0]}x{img.size[1]} but its image is "
                                 f"{image_size[0]}x{image_size[1]} (a mask must have its image's size or the same "
                                 "aspect ratio)")
        return mask_values(img, path)


def read_indices(path: Path, what: str = "mask") -> np.ndarray:
    """The raw pixel values of an indexed (palette, mode P) or grey (L) PNG — a label map such as VOC's
    ``SegmentationObject`` — as uint8 (H, W): the palette *index*, not its colour; another mode is refused."""
    with _open(path, what, decode=True) as img:
        if img.mode not in ("P", "L"):
            raise UnreadableFile(f"{what} {path} is a {img.mode} image, not an indexed (palette) PNG")
        return np.asarray(img)


def mask_values(img: Image.Image, path: Path | str = "mask") -> np.ndarray:
    """The grey values of an opened mask image, by value (see the module's docstring)."""
    mode = img.mode
    if mode not in MASK_MODES:
        raise UnreadableFile(f"mask {path} has mode {mode}; save it as a grey (L) or palette (P) PNG")
    if mode in ("LA", "PA", "RGBA"):
        alpha = np.asarray(img.getchannel("A"))
        if (alpha != 255).any():
            raise UnreadableFile(f"mask {path} is transparent in places ({mode}); a mask is read by its value, "
                                 "not its alpha: save it as a grey (L) PNG")
        img = img.convert({"LA": "L", "RGBA": "RGB"}[mode]) if mode != "PA" else \
            Image.fromarray(np.asarray(img)[..., 0], "P")
        mode = img.mode
    values = np.asarray(img)
    if mode == "1":
        return values.astype(np.uint8) * 255
    if mode == "P":
        return (values > 0).astype(np.uint8) * 255  # a palette index is a label, not an intensity
    if mode in SIXTEEN_BIT:
        v = _sixteen_bit_values(img, f"mask {path}")
        return np.where(v > 0, np.maximum(v // 257, 1), 0).astype(np.uint8)  # keep every value > 0 above 0
    if mode == "RGB":
        if (values[..., 0] == values[..., 1]).all() and (values[..., 1] == values[..., 2]).all():
            return np.ascontiguousarray(values[..., 0])
        return values.max(axis=-1)
    return np.ascontiguousarray(values, dtype=np.uint8)


def mask_fits(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """A mask of ``mask_size`` (w, h) belongs to an image of ``image_size``: the same size, or an exact rescale of
    it (the same aspect ratio, to within one pixel of rounding)."""
    (mw, mh), (iw, ih) = mask_size, image_size
    if (mw, mh) == (iw, ih):
        return True
    if min(mw, mh, iw, ih) <= 0:
        return False
    return abs(mw * ih - mh * iw) < max(mh, ih)  # the rescaled side differs by less than one pixel


def bad_name(name: str) -> str | None:
    """Why ``name`` (a path relative to a split root) cannot go into a one-name-per-line list; None if it can."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its bytes are not UTF-8"
    if any(c in name for c in "\n\r\x00"):
        return "it holds a line break"
    if any(part != part.strip() for part in name.split("/")):
        return "it begins or ends with a space"
    return None


def check_names(names: list[str], where: str, flag: str = "--data") -> None:
    """Refuse, with the list of offenders, names that do not survive the name lists."""
    bad = [(n, why) for n in names if (why := bad_name(n)) is not None]
    if bad:
        shown = "; ".join(f"{n!r}: {why}" for n, why in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UserError(f"{flag}: {len(bad)} file name(s) in {where} cannot be listed one per line: {shown}{more}; "
                        "rename them")
