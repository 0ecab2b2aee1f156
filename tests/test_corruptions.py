"""The CIFAR-C / Tiny-ImageNet-C corruptions, their building blocks, and corrupted sets on disk."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from catchup_mix import corruptions, data, image_ops
from catchup_mix.__main__ import main as cli
from catchup_mix.corruptions import (
    ALL_CORRUPTIONS,
    FROST_PHOTOGRAPH_STATISTICS,
    PARAMETERS,
    CorruptionSetError,
    corrupt,
    generator_fingerprint,
    load_set,
    write_set,
)

# The original frost photographs, from the imagecorruptions package (the `frost` and `dev` extras)
PHOTOGRAPHS = corruptions.frost_folder()
needs_photographs = pytest.mark.skipif(PHOTOGRAPHS is None, reason="the frost photographs (pip install "
                                                                   "'catchup-mix[frost]') are not installed")

# corruptions without any random draw: the seed cannot change them
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}


@pytest.fixture(scope="module")
def images():
    """24 synthetic test images, uint8 (N, 32, 32, 3): objects on textured backgrounds, like small photos."""
    split = data.load("synthetic", num_classes=8, train_per_class=1, test_per_class=3).test
    return split.images.permute(0, 2, 3, 1).numpy().copy()


def grey(value, n=64, size=32):
    return np.full((n, size, size, 3), value, dtype=np.uint8)


def test_every_corruption_keeps_shape_and_dtype_and_repeats_per_seed(images):
    large = images[:4].repeat(2, axis=1).repeat(2, axis=2)  # 64 x 64: the Tiny-ImageNet-C constants
    for name in ALL_CORRUPTIONS:
        for batch, severity in ((images[:6], 5), (large, 3)):
            out = corrupt(batch, name, severity, seed=7)
            assert out.shape == batch.shape and out.dtype == np.uint8, name
            assert np.array_equal(out, corrupt(batch, name, severity, seed=7)), name
            other_seed = corrupt(batch, name, severity, seed=8)
            assert np.array_equal(out, other_seed) == (name in DETERMINISTIC), name
        assert not np.array_equal(corrupt(images[:6], name, 1), images[:6]), name


def test_severity_5_is_further_from_the_clean_images_than_severity_1(images):
    def distance(severity, name):
        return np.abs(corrupt(images, name, severity, seed=0).astype(float) - images).mean()

    for name in ALL_CORRUPTIONS:
        if name != "elastic_transform":
            assert distance(5, name) > distance(1, name), name


def test_elastic_transform_bends_more_at_higher_severity():
    # The original's constants trade a strong random affine map at severity 1 (corners moved by up to 8% of
    # the size) for a growing elastic field at 5, so plain pixel distance does not grow with severity; what
    # grows is the non-affine part of the displacement. Measured on an image that encodes its coordinates:
    # red = 8 x column, green = 8 x row, exact under bilinear resampling.
    ys, xs = np.mgrid[0:32, 0:32]
    ramp = np.stack([8 * xs, 8 * ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
    batch = np.repeat(ramp[None], 32, axis=0)
    inner = (slice(None), slice(9, 23), slice(9, 23))

    def non_affine(severity):
        out = corrupt(batch, "elastic_transform", severity, seed=0).astype(float)
        source = np.stack([out[..., 0] / 8, out[..., 1] / 8], axis=-1)[inner].reshape(32, -1, 2)
        target = np.stack([xs, ys, np.ones_like(xs)], axis=-1)[inner[1:]].reshape(-1, 3).astype(float)
        residuals = [np.linalg.lstsq(target, s, rcond=None)[1].sum() / len(target) for s in source]
        return np.sqrt(np.mean(residuals))  # rms distance (pixels) from the best affine map

    assert non_affine(1) < 0.1  # severity 1 is a pure affine map (up to the 1/8 px quantisation)
    assert non_affine(5) > 3 * non_affine(1) and non_affine(5) > non_affine(2)


@pytest.mark.parametrize("size", [32, 64])
def test_noise_corruptions_have_the_documented_spread(size):
    x = grey(128, size=size)
    value = 128 / 255
    raw = {"jpeg_step": False}  # the noise itself, before Tiny-ImageNet-C's JPEG step
    for severity in corruptions.SEVERITIES:
        sigma = PARAMETERS[size]["gaussian_noise"][severity - 1]
        noise = corrupt(x, "gaussian_noise", severity, **raw).astype(float) / 255 - value
        assert noise.std() == pytest.approx(sigma, rel=0.03)
        assert noise.mean() == pytest.approx(-0.5 / 255, abs=0.002)  # the original truncates to uint8
        photons = PARAMETERS[size]["shot_noise"][severity - 1]
        shot = corrupt(x, "shot_noise", severity, **raw).astype(float) / 255 - value
        assert shot.std() == pytest.approx(np.sqrt(value / photons), rel=0.03)  # Poisson: variance = mean
        speckle = PARAMETERS[size]["speckle_noise"][severity - 1]
        multiplied = corrupt(x, "speckle_noise", severity, **raw).astype(float) / 255 - value
        assert multiplied.std() == pytest.approx(value * speckle, rel=0.03)
        amount = PARAMETERS[size]["impulse_noise"][severity - 1]
        impulses = corrupt(x, "impulse_noise", severity, **raw)
        assert set(np.unique(impulses)) == {0, 128, 255}
        assert (impulses != 128).mean() == pytest.approx(amount, rel=0.1)
        assert (impulses == 255).mean() == pytest.approx(amount / 2, rel=0.15)  # salt and pepper half each


def test_contrast_scales_the_spread_by_its_factor(images):
    for severity in corruptions.SEVERITIES:
        factor = PARAMETERS[32]["contrast"][severity - 1]
        out = corrupt(images, "contrast", severity).astype(float)
        ratio = out.std(axis=(1, 2)) / images.astype(float).std(axis=(1, 2))
        assert ratio == pytest.approx(np.full_like(ratio, factor), abs=0.02)
        # the mean stays (up to the truncation to uint8)
        assert out.mean(axis=(1, 2)) == pytest.approx(images.mean(axis=(1, 2)) - 0.5, abs=0.6)


def test_brightness_adds_to_the_hsv_value(images):
    value = images.max(axis=-1).astype(float)
    for severity in corruptions.SEVERITIES:
        shift = 255 * PARAMETERS[32]["brightness"][severity - 1]
        out = corrupt(images, "brightness", severity).max(axis=-1).astype(float)
        room = value + shift <= 254
        assert np.abs(out[room] - (value[room] + shift)).max() <= 1.0


def test_jpeg_and_pixelate_equal_pillow_at_the_documented_settings(images):
    for severity in corruptions.SEVERITIES:
        quality = PARAMETERS[32]["jpeg_compression"][severity - 1]
        expected = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "JPEG", quality=quality)
            expected.append(np.asarray(Image.open(buffer)))
        assert np.array_equal(corrupt(images, "jpeg_compression", severity), np.stack(expected))
        small = int(32 * PARAMETERS[32]["pixelate"][severity - 1])
        expected = [np.asarray(Image.fromarray(image).resize((small, small), Image.BOX).resize((32, 32), Image.BOX))
                    for image in images]
        assert np.array_equal(corrupt(images, "pixelate", severity), np.stack(expected))


def test_gaussian_blur_is_scikit_image_gaussian_per_image(images):
    # scikit-image's gaussian(multichannel=True) is scipy's filter with sigma 0 on the channels, mode nearest
    sigma = PARAMETERS[32]["gaussian_blur"][4]
    expected = [np.uint8(np.clip(ndimage.gaussian_filter(image / 255, (sigma, sigma, 0), mode="nearest"), 0, 1) * 255)
                for image in images]
    assert np.array_equal(corrupt(images, "gaussian_blur", 5), np.stack(expected))


def test_clipped_zoom_equals_scipy_zoom_per_image():
    rng = np.random.default_rng(0)
    for size in (32, 64):
        batch = rng.random((2, size, size, 3)).astype(np.float32)
        for factor in [*np.arange(1, 1.26, 0.01), 1.75, 2.25]:
            crop = int(np.ceil(size / factor))
            top = (size - crop) // 2
            expected = []
            for image in batch:
                zoomed = ndimage.zoom(image[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
                trim = (zoomed.shape[0] - size) // 2
                expected.append(zoomed[trim:trim + size, trim:trim + size])
            np.testing.assert_allclose(image_ops.clipped_zoom(batch, factor), np.stack(expected), atol=1e-5)


@pytest.mark.parametrize("border", ["mirror", "reflect"])
def test_bilinear_sampling_equals_scipy_map_coordinates(border):
    rng = np.random.default_rng(1)
    batch = rng.random((3, 8, 9, 2))
    rows, cols = rng.uniform(-6, 14, (2, 3, 5, 7))
    expected = [np.stack([ndimage.map_coordinates(image[..., c], [r, q], order=1, mode=border)
                          for c in range(2)], axis=-1) for image, r, q in zip(batch, rows, cols, strict=True)]
    np.testing.assert_allclose(image_ops.sample_bilinear(batch, rows, cols, border), np.stack(expected), atol=1e-12)


def test_motion_blur_is_imagemagicks_one_sided_kernel():
    # ImageMagick's definition, pixel by pixel: width 2 ceil(radius) + 1, weights exp(-i^2 / 2 sigma^2),
    # tap i at (ceil(i cos a - 0.5), ceil(i sin a - 0.5)), edge pixels repeated
    rng = np.random.default_rng(2)
    image = rng.random((1, 9, 11))
    radius, sigma, angle = 3, 1.5, 33.0
    width = 7
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma**2))
    weights /= weights.sum()
    expected = np.zeros((9, 11))
    for y in range(9):
        for x in range(11):
            for i in range(width):
                dx = int(np.ceil(i * np.cos(np.deg2rad(angle)) - 0.5))
                dy = int(np.ceil(i * np.sin(np.deg2rad(angle)) - 0.5))
                expected[y, x] += weights[i] * image[0, min(max(y + dy, 0), 8), min(max(x + dx, 0), 10)]
    np.testing.assert_allclose(image_ops.motion_blur(image, radius, sigma, np.array([angle]))[0], expected)


def test_hsv_round_trip_and_plasma_range():
    rgb = np.random.default_rng(3).random((50, 3))
    rgb[:5] = rgb[:5, :1]  # greys: hue 0, saturation 0
    np.testing.assert_allclose(image_ops.hsv_to_rgb(image_ops.rgb_to_hsv(rgb)), rgb, atol=1e-12)
    heights = image_ops.plasma_fractal(3, 32, 2.0, np.random.default_rng(0))
    assert heights.shape == (3, 32, 32)
    assert np.allclose(heights.min(axis=(1, 2)), 0) and np.allclose(heights.max(axis=(1, 2)), 1)


def pillow_jpeg(batch, quality, **options):
    out = []
    for image in batch:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality, **options)
        out.append(np.asarray(Image.open(buffer)))
    return np.stack(out)


def test_jpeg_step_is_the_original_tiny_imagenet_save_and_on_for_64_pixels_only(images):
    large = images[:6].repeat(2, axis=1).repeat(2, axis=2)
    for name, severity in (("gaussian_noise", 3), ("fog", 2), ("jpeg_compression", 5)):
        without = corrupt(large, name, severity, seed=1, jpeg_step=False)
        # the original saved with optimize=True: a shorter Huffman code, the same decoded pixels
        expected = pillow_jpeg(without, 85, optimize=True)
        assert np.array_equal(expected, pillow_jpeg(without, 85))
        assert np.array_equal(corrupt(large, name, severity, seed=1), expected), name  # 64 px: on by default
        assert not np.array_equal(expected, without), name
        small = images[:6]
        assert np.array_equal(corrupt(small, name, severity, seed=1),  # 32 px: off by default, as CIFAR-C
                              corrupt(small, name, severity, seed=1, jpeg_step=False))
        assert np.array_equal(corrupt(small, name, severity, seed=1, jpeg_step=True),
                              pillow_jpeg(corrupt(small, name, severity, seed=1), 85))


def crop_position(picture: np.ndarray, crop: np.ndarray):
    """(row, column) of a place where `crop` lies in `picture` as the original's randint can place it (the
    last row and column of start positions excluded), or None."""
    size = crop.shape[0]
    rows, columns = picture.shape[0] - size, picture.shape[1] - size
    for row, column in np.argwhere((picture[:rows, :columns] == crop[0, 0]).all(axis=-1)):
        if np.array_equal(picture[row:row + size, column:column + size], crop):
            return row, column
    return None


@needs_photographs
def test_frost_blends_crops_of_the_original_photographs_resized_as_the_original():
    black = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    weight = PARAMETERS[32]["frost"][0][1]  # severity 1: 1 x image + 0.2 x frost, truncated to uint8
    out = corrupt(black, "frost", 1, seed=3, frost_dir=PHOTOGRAPHS)
    photographs = [corruptions.frost_photograph(PHOTOGRAPHS / name, 32) for name in corruptions.FROST_PHOTOGRAPHS]
    assert [p.shape for p in photographs] == [(120, 180, 3), (63, 112, 3), (63, 112, 3), (70, 105, 3), (99, 132, 3)]
    blended = [(weight * p.astype(np.float64)).astype(np.uint8) for p in photographs]
    found = [next((k for k, picture in enumerate(blended) if crop_position(picture, image) is not None), None)
             for image in out]
    assert None not in found and len(set(found)) > 1  # each image: a crop of one of the five photographs


def test_generated_frost_textures_have_the_photographs_statistics():
    for size in (32, 64):
        means, stds = FROST_PHOTOGRAPH_STATISTICS[size]
        textures = image_ops.frost_textures(size, means, stds).reshape(len(means), -1, 3).astype(np.float64)
        np.testing.assert_allclose(textures.mean(axis=1), means, atol=0.5)
        np.testing.assert_allclose(textures.std(axis=1), stds, atol=0.5)


@needs_photographs
def test_frost_statistics_are_the_photographs_and_generated_frost_is_as_strong(images):
    for size in (32, 64):
        assert corruptions.frost_photograph_statistics(PHOTOGRAPHS, size) == FROST_PHOTOGRAPH_STATISTICS[size]
    batch = np.repeat(images, 25, axis=0)  # 600 images: the crops' draws average out to about 2%
    for severity in (1, 3, 5):
        change = {source: np.abs(corrupt(batch, "frost", severity, seed=0, frost_dir=source).astype(float)
                                 - batch).mean() for source in (PHOTOGRAPHS, "generated")}
        assert change["generated"] / change[PHOTOGRAPHS] == pytest.approx(1, abs=0.06), severity


def test_frost_source_options_and_their_errors(tmp_path, images):
    with pytest.raises(ValueError, match="lacks the frost photographs frost1.png.*catchup-mix\\[frost\\]"):
        corrupt(images, "frost", 1, frost_dir=tmp_path)
    with pytest.raises(ValueError, match="lacks the frost photographs"):
        generator_fingerprint(32, frost_dir=tmp_path)
    generated = generator_fingerprint(32, frost_dir="generated")
    assert generated["frost"] == "generated" and generated["frost_files"] is None
    assert not generated["jpeg_step"] and generator_fingerprint(64, frost_dir="generated")["jpeg_step"]
    assert generator_fingerprint(64, jpeg_step=False, frost_dir="generated")["jpeg_step"] is False
    with pytest.raises(ValueError, match="not 48"):
        generator_fingerprint(48)
    assert generator_fingerprint(32)["frost"] == ("generated" if PHOTOGRAPHS is None else "photographs")
    if PHOTOGRAPHS is not None:  # a copy of the photographs is recognised; another photograph changes the hash
        for name in corruptions.FROST_PHOTOGRAPHS:
            (tmp_path / name).write_bytes((PHOTOGRAPHS / name).read_bytes())
        copy = generator_fingerprint(32, frost_dir=tmp_path)
        assert copy == generator_fingerprint(32, frost_dir=PHOTOGRAPHS) and copy["frost"] == "photographs"
        (tmp_path / "frost4.jpg").write_bytes((PHOTOGRAPHS / "frost5.jpg").read_bytes())
        assert generator_fingerprint(32, frost_dir=tmp_path)["frost_files"] != copy["frost_files"]


def test_code_fingerprint_changes_with_the_code_not_with_line_ends(tmp_path):
    source = [(image_ops.__file__, "image_ops.py"), (corruptions.__file__, "corruptions.py")]
    for path, name in source:
        (tmp_path / name).write_bytes(open(path, "rb").read().replace(b"\n", b"\r\n"))
    names = ("corruptions.py", "image_ops.py")
    here = corruptions.Path(corruptions.__file__).parent
    assert corruptions._files_fingerprint(tmp_path, names, text=True) == generator_fingerprint(32)["code"]
    assert corruptions._files_fingerprint(here, names, text=True) == generator_fingerprint(32)["code"]
    (tmp_path / "image_ops.py").write_bytes((tmp_path / "image_ops.py").read_bytes() + b"# changed\r\n")
    assert corruptions._files_fingerprint(tmp_path, names, text=True) != generator_fingerprint(32)["code"]


# ---------------------------------------------------------------------------------------------------
# The OpenCV operations the original calls, against OpenCV itself (installed with the dev extra)


def test_resize_linear_equals_opencv_at_the_frost_factors():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((37, 53, 3), (120, 90, 3), (64, 64, 3))]
    if PHOTOGRAPHS is not None:
        pictures += [cv2.imread(str(PHOTOGRAPHS / name))[..., ::-1] for name in corruptions.FROST_PHOTOGRAPHS]
    for picture in pictures:
        for factor in (0.2, 0.3):
            assert np.array_equal(image_ops.resize_linear(picture, factor),
                                  cv2.resize(np.ascontiguousarray(picture), (0, 0), fx=factor, fy=factor))


def test_chamfer_distance_blur_and_equalisation_equal_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    edges = rng.random((40, 32, 32)) > rng.uniform(0.9, 0.999, (40, 1, 1))
    edges[0] = False  # no edge at all: both truncate to 20
    edges[1] = True
    ours = image_ops.chamfer_distance(edges)
    theirs = np.stack([cv2.distanceTransform(255 * (~e).astype(np.uint8), cv2.DIST_L2, 5) for e in edges])
    assert ours.dtype == np.float32
    assert np.array_equal(np.minimum(ours, 20), np.minimum(theirs, 20))
    truncated = np.minimum(theirs, np.float32(20))
    blurred = image_ops.box_blur3(truncated)
    assert blurred.dtype == np.float32
    assert np.array_equal(blurred, np.stack([cv2.blur(d, (3, 3)) for d in truncated]))
    levels = rng.integers(0, 256, (20, 32, 32), dtype=np.uint8)
    assert np.array_equal(image_ops.box_blur3(levels), np.stack([cv2.blur(v, (3, 3)) for v in levels]))
    # equalisation, with a value whose real quotient is exactly k + 0.5 (255 x 286 / 748 = 97.5): rounded as
    # OpenCV's float32 product is
    tie = np.repeat(np.arange(8, dtype=np.uint8), [276, 286, 205, 121, 64, 39, 30, 3])[None].reshape(1, 32, 32)
    small = blurred.astype(np.uint8)
    for batch in (small, tie, levels):
        assert np.array_equal(image_ops.equalize_histogram(batch), np.stack([cv2.equalizeHist(v) for v in batch]))


def test_canny_equals_opencv():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(6)
    smooth = ndimage.gaussian_filter(rng.normal(0.65, 0.2, (30, 32, 32)), (0, 1, 1), mode="nearest")
    levels = (np.clip(smooth, 0, 1) * 255).astype(np.uint8)
    noisy = rng.integers(0, 256, (10, 32, 32), dtype=np.uint8)
    for batch in (levels, noisy):
        expected = np.stack([cv2.Canny(v, 50, 150) > 0 for v in batch])
        assert np.array_equal(image_ops.canny(batch, 50, 150), expected)


class FixedNormal:
    """A Generator stand-in whose normal() returns given values: the original's np.random.normal draws."""

    def __init__(self, values):
        self.values = values

    def normal(self, size, loc, scale):
        assert size == self.values.shape
        return self.values.copy()


def test_spatter_equals_the_original_opencv_chain_on_the_same_liquid_layer(images):
    cv2 = pytest.importorskip("cv2")

    def original_water(image, parameter, noise):  # make_cifar_c.py's spatter, water branch, written out
        _, _, sigma, threshold, intensity, _ = parameter
        x = image.astype(np.float32) / 255.0
        liquid = ndimage.gaussian_filter(noise, sigma, mode="nearest")  # scikit-image's gaussian
        liquid[liquid < threshold] = 0
        liquid = (liquid * 255).astype(np.int64).astype(np.uint8)  # the original's wrap-around on x86
        distance = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
        _, distance = cv2.threshold(distance, 20, 20, cv2.THRESH_TRUNC)
        distance = cv2.equalizeHist(cv2.blur(distance, (3, 3)).astype(np.uint8))
        distance = cv2.filter2D(distance, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        distance = cv2.blur(distance, (3, 3)).astype(np.float32)
        shade = liquid * distance
        shade = shade / shade.max() * intensity
        colour = np.array([175 / 255.0, 238 / 255.0, 238 / 255.0]).astype(np.float32)
        return np.uint8(np.clip(x + shade[..., None] * colour, 0, 1) * 255)

    batch = np.repeat(images, 4, axis=0)
    for severity in (1, 2, 3):
        parameter = PARAMETERS[32]["spatter"][severity - 1]
        noise = np.random.default_rng(severity).normal(parameter[0], parameter[1], (len(batch), 32, 32))
        ours = corruptions._spatter(batch, parameter, FixedNormal(noise))
        expected = np.stack([original_water(image, parameter, z) for image, z in zip(batch, noise, strict=True)])
        assert np.array_equal(ours, expected), severity


def test_bad_arguments_are_refused_with_what_is_allowed(images):
    with pytest.raises(ValueError, match="available: gaussian_noise"):
        corrupt(images, "rain", 1)
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt(images, "fog", 6)
    with pytest.raises(ValueError, match="permute"):
        corrupt(images.astype(np.float32), "fog", 1)
    with pytest.raises(ValueError, match="32x32 .* 64x64"):
        corrupt(np.zeros((2, 48, 48, 3), np.uint8), "fog", 1)


# ---------------------------------------------------------------------------------------------------
# Sets on disk


def test_written_set_has_the_official_layout_and_loads_back(tmp_path, images):
    labels = np.arange(len(images)) % 8
    write_set(images, labels, tmp_path / "set", ["contrast", "gaussian_noise"], seed=3, progress=False)
    stored = np.load(tmp_path / "set" / "gaussian_noise.npy")
    assert stored.shape == (5 * len(images), 32, 32, 3) and stored.dtype == np.uint8
    assert np.array_equal(np.load(tmp_path / "set" / "labels.npy"), np.tile(labels, 5))
    loaded, loaded_labels = load_set(tmp_path / "set", "gaussian_noise", expected_labels=labels, image_size=32)
    assert loaded.shape == (5, len(images), 32, 32, 3) and np.array_equal(loaded_labels, labels)
    for severity in corruptions.SEVERITIES:  # one chunk: seeded with [seed, 0]
        assert np.array_equal(loaded[severity - 1], corrupt(images, "gaussian_noise", severity, [3, 0]))
    info = json.loads((tmp_path / "set" / corruptions.SET_INFO).read_text())
    assert info["seed"] == 3 and info["images"] == len(images) and info["commit"]
    assert info["generator"] == generator_fingerprint(32) and set(info["libraries"]) == {"numpy", "scipy", "pillow"}
    with pytest.raises(CorruptionSetError, match="other images or another seed"):
        write_set(images, labels, tmp_path / "set", ["fog"], seed=4, progress=False)
    # made with other settings (or by other code): refused, not mixed
    with pytest.raises(CorruptionSetError, match="other corruption code or settings.*delete it"):
        write_set(images, labels, tmp_path / "set", ["fog"], seed=3, progress=False, jpeg_step=True)
    stale = {**info, "generator": {**info["generator"], "code": "0123456789ab"}}
    (tmp_path / "set" / corruptions.SET_INFO).write_text(json.dumps(stale))
    with pytest.raises(CorruptionSetError, match="other corruption code"):
        write_set(images, labels, tmp_path / "set", ["fog"], seed=3, progress=False)


def test_an_interrupted_set_resumes_and_keeps_finished_files(tmp_path, images, monkeypatch):
    labels = np.zeros(len(images), dtype=np.int64)
    calls = []
    original = corruptions.corrupt

    def failing(batch, name, severity, seed=0, **options):
        calls.append(name)
        if name == "fog":
            raise KeyboardInterrupt
        return original(batch, name, severity, seed, **options)

    monkeypatch.setattr(corruptions, "corrupt", failing)
    with pytest.raises(KeyboardInterrupt):
        write_set(images, labels, tmp_path, ["contrast", "fog"], progress=False)
    assert (tmp_path / "contrast.npy").is_file() and not (tmp_path / "fog.npy").exists()
    assert not list(tmp_path.glob(".*partial"))  # the unfinished file is removed
    monkeypatch.setattr(corruptions, "corrupt", original)
    before = (tmp_path / "contrast.npy").stat().st_mtime_ns
    write_set(images, labels, tmp_path, ["contrast", "fog"], progress=False)
    assert (tmp_path / "contrast.npy").stat().st_mtime_ns == before  # not written again
    assert load_set(tmp_path, "fog")[0].shape == (5, len(images), 32, 32, 3)


def test_loader_reads_official_files_and_refuses_wrong_ones(tmp_path):
    n = 4
    labels = np.array([3, 1, 4, 1], dtype=np.uint8)
    np.save(tmp_path / "fog.npy", np.zeros((5 * n, 32, 32, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.tile(labels, 5))  # as CIFAR-10-C ships: no corruption_set.json
    images, loaded = load_set(tmp_path, "fog", expected_labels=labels)
    assert images.shape == (5, n, 32, 32, 3) and loaded.tolist() == [3, 1, 4, 1]

    with pytest.raises(CorruptionSetError, match="has no snow.npy.*python -m catchup_mix corrupt"):
        load_set(tmp_path, "snow")
    with pytest.raises(CorruptionSetError, match="no such folder"):
        load_set(tmp_path / "missing", "fog")
    with pytest.raises(CorruptionSetError, match="not the 5 test labels"):
        load_set(tmp_path, "fog", expected_labels=[3, 1, 4, 1, 5])
    with pytest.raises(CorruptionSetError, match="model takes 64x64"):
        load_set(tmp_path, "fog", image_size=64)
    np.save(tmp_path / "snow.npy", np.zeros((5 * n + 1, 32, 32, 3), np.uint8))
    with pytest.raises(CorruptionSetError, match="not 5 severities"):
        load_set(tmp_path, "snow")
    np.save(tmp_path / "snow.npy", np.zeros((5 * n, 32, 32), np.uint8))
    with pytest.raises(CorruptionSetError, match=r"\(5 x N, H, W, 3\)"):
        load_set(tmp_path, "snow")
    np.save(tmp_path / "labels.npy", np.arange(7))
    with pytest.raises(CorruptionSetError, match="labels for 20 images"):
        load_set(tmp_path, "fog")
    np.save(tmp_path / "labels.npy", np.arange(5 * n))
    with pytest.raises(CorruptionSetError, match="same 4 labels for each severity"):
        load_set(tmp_path, "fog")


def test_corrupt_command_writes_a_set_and_reports_bad_input(tmp_path, capsys):
    out = tmp_path / "synthetic-c"
    assert cli(["corrupt", "--dataset", "synthetic", "--num-classes", "2", "--test-per-class", "3", "--out", str(out),
                "--corruptions", "contrast", "fog"]) == 0
    images, labels = load_set(out, "fog")
    assert images.shape == (5, 6, 32, 32, 3) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert cli(["corrupt", "--dataset", "synthetic", "--out", str(out), "--corruptions", "rain"]) == 2
    assert "unknown corruptions rain" in capsys.readouterr().err
    assert cli(["corrupt", "--dataset", "cifar100", "--out", str(out)]) == 2
    assert "pass root" in capsys.readouterr().err
    # the generator's switches: the set records them
    switched = tmp_path / "switched"
    assert cli(["corrupt", "--dataset", "synthetic", "--num-classes", "2", "--test-per-class", "1", "--out",
                str(switched), "--corruptions", "frost", "--jpeg-step", "--frost-dir", "generated"]) == 0
    assert "frost generated, JPEG step on" in capsys.readouterr().out
    info = json.loads((switched / corruptions.SET_INFO).read_text())
    assert info["generator"] == generator_fingerprint(32, jpeg_step=True, frost_dir="generated")
    assert cli(["corrupt", "--dataset", "synthetic", "--out", str(tmp_path / "x"), "--frost-dir",
                str(tmp_path / "nowhere")]) == 2
    assert "lacks the frost photographs" in capsys.readouterr().err


def test_benchmark_prints_a_time_per_corruption_and_the_total(capsys):
    assert corruptions.main(["--benchmark", "--images", "10", "--corruptions", "contrast", "fog"]) == 0
    out = capsys.readouterr().out
    assert "contrast" in out and "fog" in out and "total" in out
