"""The corruption generator: shapes, dtypes, ranges, determinism, severity monotonicity, parameters."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness.corruptions import (
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    CORRUPTION_NOTES,
    CORRUPTIONS,
    SEVERITIES,
    TABLES,
    canny,
    chamfer_distance,
    corrupt,
    corruption_generator,
    equalize_hist,
    frost_texture,
    glass_blur_offsets,
    glass_shuffle,
    plasma_fractal,
)


def digits(n: int = 16) -> torch.Tensor:
    """Digit-like grey images: a bright stroke on black, uint8 [n, 1, 28, 28]."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        r = int(torch.randint(6, 10, (1,), generator=g))
        x[i, 0, r : 28 - r, 12:16] = 1.0
        x[i, 0, 8:12, r : 28 - r] = 0.8
    return (x * 255).to(torch.uint8)


def colour(n: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    base = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(base, size=(32, 32), mode="bilinear", align_corners=False) * 255).to(torch.uint8)


@pytest.mark.parametrize("name", ALL_CORRUPTIONS)
def test_shapes_dtypes_range_and_determinism(name):
    for x in (digits(), colour()):
        a = corrupt(x, name, 3, corruption_generator(0, name, 3))
        b = corrupt(x, name, 3, corruption_generator(0, name, 3))
        assert a.shape == x.shape and a.dtype == torch.uint8
        assert torch.equal(a, b)  # same seed, same images
        xf = x.float() / 255
        f = corrupt(xf, name, 3, corruption_generator(0, name, 3))
        assert f.dtype == torch.float32 and f.shape == x.shape
        assert float(f.min()) >= 0.0 and float(f.max()) <= 1.0
        assert (f * 255 - a.float()).abs().max() <= 1.0  # uint8 and float paths agree


def test_different_seeds_give_different_noise_and_bad_arguments_fail():
    x = digits()
    a = corrupt(x, "gaussian_noise", 5, corruption_generator(0, "gaussian_noise", 5))
    b = corrupt(x, "gaussian_noise", 5, corruption_generator(1, "gaussian_noise", 5))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "snowfall", 1, torch.Generator())
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "fog", 6, torch.Generator())
    with pytest.raises(ValueError, match="B, C, H, W"):
        corrupt(x[0], "fog", 1, torch.Generator())


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "contrast", "brightness", "jpeg_compression", "fog"])
def test_severity_increases_the_distortion(name):
    x = colour(16) if name == "jpeg_compression" else digits(32)  # JPEG: natural-ish images, not block-aligned strokes
    dist = [float((corrupt(x, name, s, corruption_generator(0, name, s)).float() - x.float()).abs().mean()) for s in SEVERITIES]
    assert all(a < b for a, b in itertools.pairwise(dist)), dist
    assert dist[0] > 0


def test_brightness_and_contrast_follow_their_parameters():
    x = torch.full((2, 1, 8, 8), 0.3)
    x[:, :, :4] = 0.5
    for s in SEVERITIES:
        c = TABLES["mnistc"]["brightness"][s - 1]
        out = corrupt(x, "brightness", s, torch.Generator())
        assert torch.allclose(out, (x + c).clamp(0, 1), atol=1e-5)  # grey: V + c, nothing else
        k = TABLES["mnistc"]["contrast"][s - 1]
        out = corrupt(x, "contrast", s, torch.Generator())
        assert torch.allclose(out.mean(), x.mean(), atol=1e-6)  # mean preserved
        assert torch.allclose(out.std(), x.std() * k, atol=1e-5)  # spread scaled by c
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    out = corrupt(rgb, "brightness", 1, torch.Generator(), table="cifar10c")
    assert torch.allclose(out.amax(1), (rgb.amax(1) + 0.05).clamp(max=1), atol=1e-5)  # HSV value + 0.05


def test_tables_have_five_levels_and_the_published_values():
    for table in TABLES.values():
        assert set(table) == set(ALL_CORRUPTIONS) == set(CORRUPTION_NOTES)
        assert all(len(v) == 5 for v in table.values())
    assert set(BENCHMARK_CORRUPTIONS) - set(ALL_CORRUPTIONS) == set() and len(BENCHMARK_CORRUPTIONS) == 15
    assert set(CORRUPTIONS) & {"glass_blur", "snow", "frost", "spatter"} == set()  # the OOD suite's stream is unchanged
    # make_cifar_c.py (not the Tiny ImageNet-C values (10, 1) ... (12, 3))
    assert TABLES["cifar10c"]["motion_blur"] == ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
    assert TABLES["cifar10c"]["glass_blur"][4] == (0.4, 1, 2) and TABLES["mnistc"]["glass_blur"][4] == (1.5, 4, 2)
    assert TABLES["cifar10c"]["snow"][4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)
    assert TABLES["cifar10c"]["frost"] == ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
    assert TABLES["cifar10c"]["spatter"][0] == (0.62, 0.1, 0.7, 0.7, 0.5, 0) and TABLES["cifar10c"]["spatter"][4][-1] == 1
    assert TABLES["cifar10c"]["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)  # Hendrycks & Dietterich
    assert TABLES["cifar10c"]["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert TABLES["mnistc"]["shot_noise"] == (60, 25, 12, 5, 3)  # MNIST-C
    assert len(TABLES["cifar10c"]["zoom_blur"][4]) == 26 and TABLES["cifar10c"]["zoom_blur"][0][-1] == 1.05


def test_jpeg_at_high_quality_is_close_and_plasma_fractal_is_normalised():
    x = colour()
    q = corrupt(x, "jpeg_compression", 1, torch.Generator(), table="cifar10c")  # quality 80 on smooth images
    assert (q.float() - x.float()).abs().mean() < 4
    m = plasma_fractal(3, 32, 2.0, torch.Generator().manual_seed(0))
    assert m.shape == (3, 32, 32)
    assert torch.allclose(m.amin((1, 2)), torch.zeros(3)) and torch.allclose(m.amax((1, 2)), torch.ones(3))


# ---------------------------------------------------------------------------------------------
# glass blur, snow, frost, spatter
# ---------------------------------------------------------------------------------------------


def _swap_loop(x: torch.Tensor, offsets: torch.Tensor, delta: int) -> torch.Tensor:
    """The reference's loop, pixel by pixel and image by image (make_cifar_c.py, glass_blur)."""
    x = x.clone()
    _, _, h, w = x.shape
    for it in range(offsets.shape[0]):
        for i in range(x.shape[0]):
            j = 0
            for hh in range(h - delta, delta, -1):
                for ww in range(w - delta, delta, -1):
                    dx, dy = offsets[it, i, j].tolist()
                    j += 1
                    here = x[i, :, hh, ww].clone()
                    x[i, :, hh, ww] = x[i, :, hh + dy, ww + dx]
                    x[i, :, hh + dy, ww + dx] = here
    return x


@pytest.mark.parametrize(("delta", "iterations", "size", "p"), [(1, 1, (9, 7), 1.0), (1, 2, (12, 12), 1.0), (2, 2, (11, 13), 0.5), (3, 3, (14, 10), 1.0), (4, 2, (15, 16), 0.5)])
def test_glass_shuffle_equals_the_reference_loop(delta, iterations, size, p):
    g = torch.Generator().manual_seed(delta * 10 + iterations)
    x = torch.rand(3, 2, *size, generator=g)
    offsets = glass_blur_offsets(3, *size, delta, iterations, g, swap_probability=p)
    assert offsets.shape == (iterations, 3, (size[0] - 2 * delta) * (size[1] - 2 * delta), 2)
    assert int(offsets.min()) >= -delta and int(offsets.max()) < delta  # np.random.randint(-d, d)
    if p < 1:
        assert bool((offsets == 0).all(-1).float().mean() > 0.4)  # about half the swaps do not happen
    shuffled = glass_shuffle(x, offsets, delta)
    assert torch.equal(shuffled, _swap_loop(x, offsets, delta))
    assert torch.equal(shuffled.flatten(2).sort(2).values, x.flatten(2).sort(2).values)  # a permutation of each image


def test_glass_blur_is_blur_cast_shuffle_blur_as_in_the_reference():
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    x = colour(3)
    sigma, delta, iterations = TABLES["cifar10c"]["glass_blur"][4]
    out = corrupt(x.float() / 255, "glass_blur", 5, torch.Generator().manual_seed(7))
    offsets = glass_blur_offsets(3, 32, 32, delta, iterations, torch.Generator().manual_seed(7))

    def gaussian(a):  # skimage.filters.gaussian(..., multichannel=True): per channel, mode 'nearest', truncate 4
        return np.stack([ndimage.gaussian_filter(c, sigma, mode="nearest", truncate=4.0) for c in a])

    blurred = torch.from_numpy(np.stack([np.uint8(gaussian(img.numpy().astype(np.float64) / 255) * 255) for img in x]))
    shuffled = _swap_loop(blurred, offsets, delta).numpy()
    expected = np.stack([np.clip(gaussian(img / 255.0), 0, 1) for img in shuffled])
    assert np.abs(out.numpy() - expected).max() < 1e-5


def test_frost_blends_image_and_texture_with_the_published_weights():
    x = colour(4).float() / 255
    for s in SEVERITIES:
        c0, c1 = TABLES["cifar10c"]["frost"][s - 1]
        texture = frost_texture(4, 32, 32, 3, torch.Generator().manual_seed(s), table="cifar10c")
        out = corrupt(x, "frost", s, torch.Generator().manual_seed(s))
        assert torch.allclose(out, (c0 * x + c1 * texture).clamp(0, 1), atol=1e-6)
    t = frost_texture(6, 28, 28, 1, torch.Generator().manual_seed(0), table="mnistc")
    assert t.shape == (6, 1, 28, 28) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float(t.std()) > 0.05  # a texture, not a constant
    rgb = frost_texture(2, 32, 32, 3, torch.Generator().manual_seed(0))
    assert bool((rgb[:, 2] >= rgb[:, 0]).all())  # blue-white tint
    assert not torch.equal(rgb[0], rgb[1])  # every image gets its own crop of frost


def test_clipped_zoom_matches_scipy_zoom():
    ndimage = pytest.importorskip("scipy.ndimage")
    import math

    import numpy as np

    from harness.corruptions import _clipped_zoom

    layer = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for zoom in (1.25, 1.75, 2.25, 3, 4.5):
        a = layer[0, 0].numpy()
        ch = math.ceil(32 / zoom)
        top = (32 - ch) // 2
        z = ndimage.zoom(a[top:top + ch, top:top + ch], zoom, order=1)
        trim = (z.shape[0] - 32) // 2
        expected = z[trim:trim + 32, trim:trim + 32]
        assert np.abs(_clipped_zoom(layer, zoom)[0, 0].numpy() - expected).max() < 1e-9, zoom


def test_snow_adds_a_layer_and_its_180_degree_rotation():
    x = torch.zeros(2, 1, 28, 28)  # black images: every bright pixel is snow
    out = corrupt(x, "snow", 5, torch.Generator().manual_seed(0), table="mnistc")
    keep = TABLES["mnistc"]["snow"][4][6]
    snow = out - (1 - keep) * 0.5  # the blend lifts black to (1 - c6) * max(0, 0 * 1.5 + 0.5)
    assert torch.allclose(snow, torch.flip(snow, dims=(-2, -1)), atol=1e-6)  # layer + rot180(layer) is symmetric
    assert float(snow.max()) > 0.1


def test_canny_chamfer_and_equalisation_on_hand_computed_cases():
    step = torch.zeros(1, 8, 8)
    step[:, :, 4:] = 200.0  # a vertical step: Sobel |dx| = 800 on columns 3 and 4
    edges = canny(step, 50, 150)
    assert edges[0].any(0).nonzero().flatten().tolist() == [3]  # suppression keeps the first maximum (m > left, m >= right)
    assert bool(edges[0, :, 3].all())
    assert not canny(torch.full((1, 8, 8), 100.0), 50, 150).any()  # flat image: no edges

    point = torch.zeros(1, 7, 7, dtype=torch.bool)
    point[0, 3, 3] = True
    d = chamfer_distance(point, cap=20)[0]
    assert d[3, 3] == 0 and d[3, 4] == 1 and d[4, 4] == pytest.approx(1.4) and d[4, 5] == pytest.approx(2.1969)
    assert d[3, 5] == 2 and d[5, 5] == pytest.approx(2.8) and d[0, 0] == pytest.approx(4.2)
    assert torch.equal(chamfer_distance(point, cap=2)[0].amax(), torch.tensor(2.0))  # truncated
    assert torch.equal(chamfer_distance(torch.zeros(1, 4, 4, dtype=torch.bool), cap=20), torch.full((1, 4, 4), 20.0))  # no edges

    # four pixels 0, 0, 1, 3: OpenCV maps the first level to 0, then round(cumulative count * 255 / (4 - 2))
    eq = equalize_hist(torch.tensor([[[0.0, 0.0], [1.0, 3.0]]]))
    assert eq.flatten().tolist() == [0.0, 0.0, 128.0, 255.0]
    assert equalize_hist(torch.full((1, 2, 2), 7.0)).flatten().tolist() == [7.0] * 4  # one level: unchanged


def test_spatter_water_and_mud():
    x = colour(8).float() / 255
    water = corrupt(x, "spatter", 2, torch.Generator().manual_seed(0), table="cifar10c")
    assert bool((water >= x - 1e-6).all())  # water only adds light (pale turquoise)
    mud = corrupt(x, "spatter", 5, torch.Generator().manual_seed(0), table="cifar10c")
    changed = (mud - x).abs().sum(1) > 1e-6
    assert bool(changed.any())
    mud_colour = torch.tensor([63, 42, 20]) / 255
    inside = mud.permute(0, 2, 3, 1)[changed]  # mud pixels lie between the image and the mud colour
    assert bool(((inside - mud_colour).abs() <= (x.permute(0, 2, 3, 1)[changed] - mud_colour).abs() + 1e-6).all())
    grey = corrupt(digits(4), "spatter", 1, torch.Generator().manual_seed(0))  # MNIST-C: always grey mud (63)
    assert grey.dtype == torch.uint8 and grey.shape == (4, 1, 28, 28)


def test_spatter_equals_the_opencv_reference_for_the_same_noise():
    cv2 = pytest.importorskip("cv2")  # not a dependency; present on machines that have OpenCV
    import numpy as np
    from scipy import ndimage

    def gaussian(a, sigma):
        return ndimage.gaussian_filter(a, sigma, mode="nearest", truncate=4.0)

    def reference(img, noise, c):  # make_cifar_c.py's spatter, water and mud branches
        x = img.astype(np.float32) / 255
        liquid = gaussian(c[0] + c[1] * noise, c[2])
        liquid[liquid < c[3]] = 0
        if c[5] == 0:
            liquid = (liquid * 255).astype(np.int64).astype(np.uint8)  # wraps above 255 as the x86 cast does
            dist = cv2.distanceTransform(255 - cv2.Canny(liquid, 50, 150), cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
            dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
            m = liquid * cv2.blur(dist, (3, 3)).astype(np.float32)
            m = m / m.max() * c[4]
            return np.clip(x + m[..., None] * (np.array([175, 238, 238]) / 255), 0, 1)
        m = gaussian(np.where(liquid > c[3], 1, 0).astype(np.float32), c[4])
        m[m < 0.8] = 0
        return np.clip(x * (1 - m[..., None]) + m[..., None] * (np.array([63, 42, 20]) / 255), 0, 1)

    x = colour(16)
    for s in SEVERITIES:
        noise = torch.randn((16, 1, 32, 32), generator=torch.Generator().manual_seed(s)).double().numpy()[:, 0]
        ours = corrupt(x.float() / 255, "spatter", s, torch.Generator().manual_seed(s), table="cifar10c").numpy()
        ref = np.stack([reference(x[i].permute(1, 2, 0).numpy(), noise[i], TABLES["cifar10c"]["spatter"][s - 1]) for i in range(16)])
        assert np.abs(ours - ref.transpose(0, 3, 1, 2)).max() < 1e-4, s


@pytest.mark.parametrize(("name", "images"), [("glass_blur", "digits"), ("snow", "colour"), ("snow", "digits"), ("frost", "digits")])
def test_severity_increases_the_distortion_of_the_new_corruptions(name, images):
    x = colour(32) if images == "colour" else digits(32)
    dist = [float((corrupt(x, name, s, corruption_generator(0, name, s)).float() - x.float()).abs().mean()) for s in SEVERITIES]
    assert all(a < b for a, b in itertools.pairwise(dist)), dist


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 3, 5, 7), (2, 3, 48, 64)])
def test_new_corruptions_handle_small_and_non_square_images(shape):
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    for name in ("glass_blur", "snow", "frost", "spatter"):
        for s in SEVERITIES:  # 8 x 8 digits (shrink=true) are smaller than glass blur's swap window at MNIST-C severity 5
            out = corrupt(x, name, s, corruption_generator(1, name, s))
            assert out.shape == x.shape and out.dtype == torch.uint8
