"""The corruption generator: shapes, dtypes, ranges, determinism, severity monotonicity, parameters."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness.corruptions import CORRUPTIONS, SEVERITIES, TABLES, corrupt, corruption_generator, plasma_fractal


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


@pytest.mark.parametrize("name", CORRUPTIONS)
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
        assert set(table) == set(CORRUPTIONS)
        assert all(len(v) == 5 for v in table.values())
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
