"""Reading user images: normalised to 8-bit RGB the right way up, or refused with the file named."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from PIL import Image

from latentgen.errors import UsageError
from latentgen.images import EXIF_ORIENTATION, load_image, load_mask


def pattern(width: int, height: int) -> np.ndarray:
    """An RGB image in which every pixel differs from its neighbours."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 5 % 256, y * 7 % 256, (x * 3 + y * 11) % 256], axis=-1).astype(np.uint8)


def test_plain_rgb_is_read_as_is_and_hashed(tmp_path):
    arr = pattern(20, 12)
    path = tmp_path / "plain.png"
    Image.fromarray(arr).save(path)
    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB" and loaded.alpha is None and loaded.notes == ()
    assert np.array_equal(np.asarray(loaded.rgb), arr)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.path == path.absolute()


def test_exif_rotation_is_applied(tmp_path):
    arr = pattern(40, 24)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.png"
    Image.fromarray(arr).save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.size == (24, 40)
    assert np.array_equal(np.asarray(loaded.rgb), np.rot90(arr, k=-1))
    assert any("EXIF orientation" in n for n in loaded.notes)


def test_palette_images_become_rgb_and_keep_transparency(tmp_path):
    arr = pattern(16, 16)
    paletted = Image.fromarray(arr).quantize(colors=16)
    path = tmp_path / "palette.png"
    paletted.save(path)
    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB" and loaded.alpha is None
    assert np.array_equal(np.asarray(loaded.rgb), np.asarray(paletted.convert("RGB")))

    paletted.info["transparency"] = 0  # palette entry 0 is transparent
    path = tmp_path / "palette-alpha.png"
    paletted.save(path, transparency=0)
    loaded = load_image(path)
    see_through = np.asarray(paletted) == 0
    assert loaded.alpha is not None
    assert np.array_equal(np.asarray(loaded.alpha) == 0, see_through)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 128, 65535, 257 * 10]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB"
    assert np.asarray(loaded.rgb)[0, :, 0].tolist() == [0, 128, 255, 10]
    assert any("8 bits" in n for n in loaded.notes)


def test_cmyk_is_converted(tmp_path):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red ink mix
    path = tmp_path / "print.tif"
    cmyk.save(path)
    loaded = load_image(path)
    assert loaded.rgb.mode == "RGB"
    assert loaded.rgb.getpixel((0, 0)) == cmyk.convert("RGB").getpixel((0, 0))
    assert any("CMYK" in n for n in loaded.notes)


def test_rgba_is_flattened_onto_white_with_alpha_kept(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 0  # top half transparent
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba).save(path)
    loaded = load_image(path)
    rgb = np.asarray(loaded.rgb)
    assert (rgb[:5] == 255).all() and (rgb[5:] == (10, 20, 30)).all()
    assert np.array_equal(np.asarray(loaded.alpha), rgba[..., 3])

    opaque = tmp_path / "opaque.png"
    Image.fromarray(np.dstack([rgba[..., :3], np.full((10, 10), 255, np.uint8)])).save(opaque)
    assert load_image(opaque).alpha is None  # an alpha channel that hides nothing is dropped


def test_mask_transparency_counts_as_keep(tmp_path):
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[..., :3] = 255  # white everywhere ...
    mask[:, 4:, 3] = 255  # ... but only the right half is opaque
    path = tmp_path / "mask.png"
    Image.fromarray(mask).save(path)
    gray = np.asarray(load_mask(path).rgb)
    assert (gray[:, :4] == 0).all() and (gray[:, 4:] == 255).all()


def test_non_images_are_refused_naming_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UsageError, match=f"image {text} is not an image file"):
        load_image(text)
    with pytest.raises(UsageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(UsageError, match="is a folder"):
        load_image(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(pattern(64, 64)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UsageError, match=f"mask {cut} could not be decoded"):
        load_mask(cut)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 M pixels in a few kB
    assert bomb.stat().st_size < 100_000
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match=f"image {bomb} is refused as a decompression bomb: 9000x9000"):
        load_image(bomb)
    assert time.perf_counter() - t0 < 1.0
