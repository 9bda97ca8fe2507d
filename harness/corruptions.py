"""Common image corruptions as batched tensor ops, at five severities (covariate shift).

`corrupt(x, name, severity, generator)` corrupts a whole batch at once: `x` is uint8 [B, C, H, W]
(0..255) or float [B, C, H, W] in [0, 1]; the result has the same shape, dtype and range. All
randomness is drawn from `generator`, so a seeded generator gives the same corrupted images to
every method that asks (`corruption_generator(seed, name, severity)` makes one per domain).

Severity parameters come from two published tables, chosen by `table` (default: by channels):

- ``"cifar10c"`` -- Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
  Corruptions and Perturbations", ICLR 2019; the parameters of their `make_cifar_c.py`
  (github.com/hendrycks/robustness, ImageNet-C/create_c). Used for colour images.
- ``"mnistc"`` -- Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML 2019
  workshop; their `corruptions.py` (github.com/google-research/mnist-c) carries five-level
  tables (the ImageNet-C magnitudes) and picks one fixed level per corruption for the released
  data set. We keep all five levels. Used for grey-scale images, where the CIFAR magnitudes
  (designed for natural colour images) barely touch a digit.

What is approximated, and how (the reference code uses PIL, OpenCV, ImageMagick and scipy):

- `jpeg_compression`: no codec. Each 8x8 block of the (YCbCr) image is DCT-transformed,
  quantised with the IJG standard tables scaled to the quality factor (libjpeg's formula),
  de-quantised and inverted. No chroma subsampling (libjpeg's default 4:2:0 would blur colour
  further) and no entropy coding (which is lossless anyway).
- `motion_blur`: ImageMagick's MotionBlurImage is a one-sided line kernel with Gaussian weights
  exp(-i^2 / 2 sigma^2), i = 0..2*radius, at a random angle in [-45, 45] degrees; we sample it
  bilinearly along the line (one `grid_sample` per tap) instead of ImageMagick's integer taps.
- `zoom_blur`: scipy's crop-and-zoom is one bilinear resampling per zoom factor about the centre.
- `fog`: the diamond-square plasma fractal is computed for the whole batch at once on a map of
  the smallest power of two >= the image side (the reference uses a 256 map cropped to the
  image for MNIST-C and a 32 map for CIFAR).
- `defocus_blur`: the anti-aliased disk kernel of the reference (disk, then a 3x3 or 5x5
  Gaussian), applied with reflect padding as OpenCV's filter2D does.
- `pixelate`: PIL's BOX down- and up-sampling is area interpolation.
- `elastic_transform`: the reference's random affine (three points moved by +-c[2]) then a
  Gaussian-smoothed displacement field (sigma c[1], truncate 3, scaled by c[0]); both bilinear
  with reflection. Where the smoothing kernel would be wider than the image it is truncated to it.
- `brightness` / `saturate` go through HSV like the reference; a grey image is treated as RGB
  with equal channels and converted back with the ITU-R 601 luma weights (as skimage's
  rgb2gray in MNIST-C does). MNIST-C's `saturate` scales all three HSV channels (not only S);
  we keep that for the mnistc table.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch.nn import functional as F

SEVERITIES = (1, 2, 3, 4, 5)

# the corruptions of the benchmark, in the order of a continual stream (CIFAR-10-C order; snow,
# frost, glass blur and spatter need image files or per-pixel loops and are left out)
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
    "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate",
)


def _zoom_steps(stop: float, step: float) -> tuple[float, ...]:
    """np.arange(1, stop, step) as a tuple (the reference's zoom factors)."""
    n = math.ceil(round((stop - 1) / step, 9))
    return tuple(round(1 + i * step, 6) for i in range(n))


# severity tables, one tuple of five per corruption (index severity - 1)
TABLES: dict[str, dict[str, tuple]] = {
    "cifar10c": {  # Hendrycks & Dietterich 2019, make_cifar_c.py
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
        "zoom_blur": tuple(_zoom_steps(s, 0.01) for s in (1.06, 1.11, 1.16, 1.21, 1.26)),
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        # (alpha, sigma, affine alpha) as fractions of the image side
        "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
        "jpeg_compression": (80, 65, 58, 50, 40),
        "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    },
    "mnistc": {  # Mu & Gilmer 2019, mnist-c corruptions.py (five-level tables)
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": (_zoom_steps(1.11, 0.01), _zoom_steps(1.16, 0.01), _zoom_steps(1.21, 0.02), _zoom_steps(1.26, 0.02), _zoom_steps(1.31, 0.03)),
        "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
        "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),
    },
}


def default_table(channels: int) -> str:
    return "mnistc" if channels == 1 else "cifar10c"


def corruption_generator(seed: int, name: str, severity: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded by (seed, corruption, severity): the same images for every method."""
    digest = hashlib.sha256(f"{seed}/{name}/{severity}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def corrupt(x: torch.Tensor, name: str, severity: int, generator: torch.Generator, table: str | None = None) -> torch.Tensor:
    """Corrupt a batch `x` ([B, C, H, W], uint8 0..255 or float 0..1) with `name` at `severity` 1..5."""
    if x.ndim != 4:
        raise ValueError(f"corrupt expects [B, C, H, W], got shape {tuple(x.shape)}")
    table = table or default_table(int(x.shape[1]))
    if table not in TABLES:
        raise ValueError(f"unknown severity table {table!r}; valid: {', '.join(TABLES)}")
    if name not in TABLES[table]:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    is_uint8 = x.dtype == torch.uint8
    xf = x.float().div(255) if is_uint8 else x.float()
    c = TABLES[table][name][severity - 1]
    out = _FUNCS[name](xf, c, generator, table).clamp(0, 1)
    if is_uint8:
        return out.mul(255).round().to(torch.uint8)
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Reflect padding (OpenCV's BORDER_REFLECT_101) where it fits, else replicate."""
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (pw, pw, ph, ph), mode=mode)


def _filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of `x` with one 2-D kernel (same size output)."""
    b, ch, h, w = x.shape
    kh, kw = kernel.shape
    xp = _pad(x.reshape(b * ch, 1, h, w), kh // 2, kw // 2)
    return F.conv2d(xp, kernel.view(1, 1, kh, kw).to(x)).reshape(b, ch, h, w)


def _gauss1d(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def _gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur per channel (scipy/skimage `gaussian`, reflect boundary)."""
    if sigma <= 0:
        return x
    radius = min(int(truncate * sigma + 0.5), max(1, min(x.shape[-2:]) - 1))
    k = _gauss1d(sigma, radius, x.device)
    return _filter2d(_filter2d(x, k.view(1, -1)), k.view(-1, 1))


def _grid(b: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32), torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return ys.expand(b, h, w), xs.expand(b, h, w)


def _sample(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, padding: str = "reflection") -> torch.Tensor:
    """Bilinear sample `x` at pixel coordinates (ys, xs) [B, H, W]."""
    h, w = x.shape[-2:]
    gx = (xs + 0.5) / w * 2 - 1
    gy = (ys + 0.5) / h * 2 - 1
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode=padding, align_corners=False)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(1)
    maxc, _ = rgb.max(1)
    minc, _ = rgb.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(hsv)
    for k, (r, g, b) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack([r, g, b], 1), out)
    return out


def _to_gray(rgb: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.2125, 0.7154, 0.0721], device=rgb.device).view(1, 3, 1, 1)  # skimage rgb2gray
    return (rgb * w).sum(1, keepdim=True)


def _through_hsv(x: torch.Tensor, fn) -> torch.Tensor:
    if x.shape[1] == 1:
        return _to_gray(_hsv_to_rgb(fn(_rgb_to_hsv(x.expand(-1, 3, -1, -1)))))
    if x.shape[1] == 3:
        return _hsv_to_rgb(fn(_rgb_to_hsv(x)))
    raise ValueError("brightness/saturate need 1 or 3 channels")


# ---------------------------------------------------------------------------------------------
# the corruptions: fn(x float [0,1], c (the severity's parameters), generator, table) -> x
# ---------------------------------------------------------------------------------------------


def _gaussian_noise(x, c, g, table):
    return x + c * torch.randn(x.shape, generator=g, device=x.device)


def _shot_noise(x, c, g, table):
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x, c, g, table):
    """skimage random_noise(mode='s&p', amount=c): a fraction c of values set to 0 or 1, half each."""
    hit = torch.rand(x.shape, generator=g, device=x.device) < c
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _disk(radius: float, alias_blur: float, device: torch.device) -> torch.Tensor:
    if radius <= 8:
        ls, ksize = torch.arange(-8, 9, device=device, dtype=torch.float32), 3
    else:
        r = int(radius)
        ls, ksize = torch.arange(-r, r + 1, device=device, dtype=torch.float32), 5
    yy, xx = torch.meshgrid(ls, ls, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).float()
    disk = disk / disk.sum()
    k = _gauss1d(alias_blur, ksize // 2, device)  # OpenCV GaussianBlur(ksize, sigmaX=alias_blur)
    d = F.conv2d(F.pad(disk.view(1, 1, *disk.shape), (ksize // 2,) * 4, mode="reflect"), (k.view(-1, 1) * k.view(1, -1)).view(1, 1, ksize, ksize))
    return d[0, 0]


def _defocus_blur(x, c, g, table):
    return _filter2d(x, _disk(c[0], c[1], x.device))


def _motion_blur(x, c, g, table):
    radius, sigma = c
    b, _, h, w = x.shape
    angle = _uniform((b, 1, 1), g, x.device, -45.0, 45.0) * math.pi / 180
    ys, xs = _grid(b, h, w, x.device)
    taps = torch.arange(2 * int(radius) + 1, device=x.device, dtype=torch.float32)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    out = torch.zeros_like(x)
    for i, wt in zip(taps.tolist(), weights.tolist()):
        out += wt * _sample(x, ys - i * torch.sin(angle), xs - i * torch.cos(angle), padding="border")
    return out


def _zoom_blur(x, c, g, table):
    b, _, h, w = x.shape
    ys, xs = _grid(b, h, w, x.device)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    out = x.clone()
    for z in c:
        out += _sample(x, cy + (ys - cy) / z, cx + (xs - cx) / z)
    return out / (len(c) + 1)


def plasma_fractal(batch: int, mapsize: int, wibbledecay: float, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Batched diamond-square height maps in [0, 1], [batch, mapsize, mapsize] (mapsize a power of 2)."""
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    m = torch.zeros(batch, mapsize, mapsize, device=device)
    step, wibble = mapsize, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * _uniform(tuple(a.shape), generator, a.device, -wibble, wibble)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        square = corner + torch.roll(corner, -1, 1)
        square = square + torch.roll(square, -1, 2)
        m[:, half::step, half::step] = wibbled(square)
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 2))
        m[:, half::step, 0::step] = wibbled(dr + torch.roll(dr, 1, 2) + ul + torch.roll(ul, -1, 1))
        step //= 2
        wibble /= wibbledecay
    flat = m.view(batch, -1)
    flat = flat - flat.min(1, keepdim=True).values
    return (flat / flat.max(1, keepdim=True).values.clamp_min(1e-12)).view(batch, mapsize, mapsize)


def _fog(x, c, g, table):
    b, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    fractal = plasma_fractal(b, size, c[1], g, x.device)[:, :h, :w].unsqueeze(1)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + c[0] * fractal) * max_val / (max_val + c[0])


def _brightness(x, c, g, table):
    def fn(hsv):
        return torch.stack([hsv[:, 0], hsv[:, 1], (hsv[:, 2] + c).clamp(0, 1)], 1)

    return _through_hsv(x, fn)


def _saturate(x, c, g, table):
    if table == "mnistc":  # MNIST-C applies the affine map to all of H, S and V

        def fn(hsv):
            return (hsv * c[0] + c[1]).clamp(0, 1)

    else:

        def fn(hsv):
            return torch.stack([hsv[:, 0], (hsv[:, 1] * c[0] + c[1]).clamp(0, 1), hsv[:, 2]], 1)

    return _through_hsv(x, fn)


def _contrast(x, c, g, table):
    means = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as np.mean(x, axis=(0, 1))
    return (x - means) * c + means


def _elastic_transform(x, c, g, table):
    b, _, h, w = x.shape
    side = min(h, w)
    alpha, sigma, affine = c[0] * side, c[1] * side, c[2] * side
    # random affine: three points around the centre, each moved by U(-affine, affine)
    center, sq = torch.tensor([h // 2, w // 2], dtype=torch.float32, device=x.device), side // 3
    pts1 = torch.stack([center + sq, torch.stack([center[0] + sq, center[1] - sq]), center - sq])  # [3, 2] as (row, col)
    pts2 = pts1 + _uniform((b, 3, 2), g, x.device, -affine, affine)
    # inverse map: for every output pixel, where it comes from (pts2 -> pts1)
    ones = torch.ones(b, 3, 1, device=x.device)
    inv = torch.linalg.solve(torch.cat([pts2, ones], 2), pts1.expand(b, 3, 2))  # [B, 3, 2]
    ys, xs = _grid(b, h, w, x.device)
    coords = torch.stack([ys, xs, torch.ones_like(ys)], -1) @ inv.unsqueeze(1)  # [B, H, W, 2]
    warped = _sample(x, coords[..., 0], coords[..., 1])
    if alpha == 0:
        return warped
    noise = _uniform((b, 2, h, w), g, x.device, -1.0, 1.0)
    disp = _gaussian_blur(noise, sigma, truncate=3.0) * alpha
    return _sample(warped, ys + disp[:, 1], xs + disp[:, 0])


def _pixelate(x, c, g, table):
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * c)), max(1, int(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="area")


# IJG (libjpeg) standard quantisation tables, JPEG spec Annex K
_LUMA = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    *([99] * 32),
)


def _quant_table(base: tuple[int, ...], quality: int, device: torch.device) -> torch.Tensor:
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality  # libjpeg jpeg_quality_scaling
    t = torch.floor((torch.tensor(base, dtype=torch.float32, device=device) * scale + 50) / 100).clamp(1, 255)
    return t.view(8, 8)


def _dct_matrix(device: torch.device) -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float32, device=device)
    m = torch.cos((2 * n.view(1, 8) + 1) * n.view(8, 1) * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m  # orthonormal DCT-II: X = M x M^T


def _jpeg_compression(x, c, g, table):
    b, ch, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    img = F.pad(x * 255, (0, pw, 0, ph), mode="replicate")
    if ch == 3:
        r, gr, bl = img.unbind(1)
        ycc = torch.stack([0.299 * r + 0.587 * gr + 0.114 * bl, -0.168736 * r - 0.331264 * gr + 0.5 * bl + 128, 0.5 * r - 0.418688 * gr - 0.081312 * bl + 128], 1)
        tables = torch.stack([_quant_table(_LUMA, c, x.device)] + [_quant_table(_CHROMA, c, x.device)] * 2)
    else:
        ycc, tables = img, _quant_table(_LUMA, c, x.device).expand(ch, 8, 8)
    hh, ww = ycc.shape[-2:]
    blocks = (ycc - 128).reshape(b, ch, hh // 8, 8, ww // 8, 8).permute(0, 1, 2, 4, 3, 5)  # [B, C, by, bx, 8, 8]
    m = _dct_matrix(x.device)
    q = tables.view(1, ch, 1, 1, 8, 8)
    coeff = torch.round((m @ blocks @ m.T) / q) * q
    rec = (m.T @ coeff @ m).permute(0, 1, 2, 4, 3, 5).reshape(b, ch, hh, ww) + 128
    if ch == 3:
        yy, cb, cr = rec.unbind(1)
        rec = torch.stack([yy + 1.402 * (cr - 128), yy - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), yy + 1.772 * (cb - 128)], 1)
    return rec[..., :h, :w].round().clamp(0, 255) / 255


_FUNCS = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
    "saturate": _saturate,
}
assert set(_FUNCS) == set(CORRUPTIONS) == set(TABLES["cifar10c"]) == set(TABLES["mnistc"])
