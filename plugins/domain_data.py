"""Data with domain labels: how a dataset carries them, DomainBed's datasets, and the domain-balanced sampler.

**The convention.** A dataset with domains is a `DomainSplits`, a `harness.DataSplits` with three
more fields: `domains` (the domain names, in DomainBed's `ENVIRONMENTS` order), `train_domain`
and `test_domain` (int64 domain ids of the train and test rows). Its train split holds each
domain's "in" split (80%) and its test split each domain's "out" split (20%), as DomainBed's
`train.py` splits every environment (`holdout_fraction = 0.2`, `misc.split_dataset` with
`misc.seed_hash(trial_seed, env_i)`, here always trial seed 0: the split is part of the dataset,
identical for every run, like every harness dataset's). A suite that does not know domains sees
an ordinary dataset (train on every domain's in split, test on every out split); the
`domain_generalisation` suite reads the domain ids. Nothing in `harness.data` changes.

**The datasets.** `rmnist` and `cmnist` follow DomainBed's `datasets.py` (RotatedMNIST,
ColoredMNIST) exactly, built from the embedded MNIST 5k instead of MNIST's 70,000 images;
`pacs`, `vlcs`, `office_home`, `terra_incognita` and `domainnet` read DomainBed's folders
(`DOMAIN/CLASS/IMAGE`, as its `scripts/download.py` leaves them) under `$HARNESS_DOMAINBED_DATA`
(DomainBed's `--data_dir`), else `$HARNESS_CACHE/datasets/domainbed`.

**The sampler.** DomainBed draws one minibatch of `batch_size` images from every training domain
per step (`zip(*train_loaders)`). `DomainBalancedSampler` makes each batch of the engine's epoch
plan exactly that: `per_domain` rows of every domain, in increasing domain id, so
`Batch.by_domain()` gives DomainBed's `minibatches`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.data import DatasetSource, DataSplits, LoadOptions, load_mnist5k
from harness.errors import HarnessError
from harness.seams import EpochPlan, Sampler

HOLDOUT_FRACTION = 0.2  # DomainBed train.py --holdout_fraction: each domain's "out" split
TRIAL_SEED = 0  # DomainBed's --trial_seed of the in/out split; fixed, so the split is the dataset's
CONSTRUCTION_SEED = 0  # DomainBed's --seed when it builds RMNIST/CMNIST (shuffle, label and colour flips)
IMAGE_SIZE = 224  # DomainBed's MultipleEnvironmentImageFolder: transforms.Resize((224, 224))


# ---------------------------------------------------------------------------------------------
# the convention
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSplits(DataSplits):
    """`DataSplits` whose rows carry domain ids: `train_domain` [N_train], `test_domain` [N_test]
    (int64 in [0, len(domains))); train = every domain's in split, test = every domain's out split."""

    domains: tuple[str, ...] = ()
    train_domain: torch.Tensor | None = None
    test_domain: torch.Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.domains) < 2:
            raise ValueError(f"{self.name}: a dataset with domains needs at least two, got {list(self.domains)}")
        for split, d, y in (("train", self.train_domain, self.train_y), ("test", self.test_domain, self.test_y)):
            if d is None or d.dtype != torch.int64 or d.shape != y.shape:
                raise ValueError(f"{self.name}: {split} domain ids must be int64 [{len(y)}], got {None if d is None else (d.dtype, tuple(d.shape))}")
            if len(d) and (int(d.min()) < 0 or int(d.max()) >= len(self.domains)):
                raise ValueError(f"{self.name}: {split} domain ids must lie in [0, {len(self.domains)})")


def seed_hash(*args: object) -> int:
    """DomainBed's `misc.seed_hash`: an integer seed from the printed arguments."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


def in_out_split(n: int, domain_index: int, holdout_fraction: float = HOLDOUT_FRACTION, trial_seed: int = TRIAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(in, out) row indices of a domain of n rows: DomainBed's `misc.split_dataset(env,
    int(len(env) * holdout_fraction), misc.seed_hash(trial_seed, env_i))`, whose first part is `out`."""
    keys = list(range(n))
    np.random.RandomState(seed_hash(trial_seed, domain_index)).shuffle(keys)
    cut = int(n * holdout_fraction)
    return np.asarray(keys[cut:], dtype=np.int64), np.asarray(keys[:cut], dtype=np.int64)


def domain_splits(name: str, per_domain: list[tuple[torch.Tensor, torch.Tensor]], domains: tuple[str, ...], classes: tuple[str, ...]) -> DomainSplits:
    """Split every domain's (uint8 images, labels) into in/out as DomainBed does and assemble them."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("train_x", "train_y", "train_domain", "test_x", "test_y", "test_domain")}
    for i, (x, y) in enumerate(per_domain):
        keep_in, keep_out = in_out_split(len(y), i)
        for split, rows in (("train", keep_in), ("test", keep_out)):
            rows_t = torch.from_numpy(rows)
            parts[f"{split}_x"].append(x[rows_t])
            parts[f"{split}_y"].append(y[rows_t])
            parts[f"{split}_domain"].append(torch.full((len(rows),), i, dtype=torch.int64))
    return DomainSplits(name=name, classes=classes, domains=domains, **{k: torch.cat(v) for k, v in parts.items()})


# ---------------------------------------------------------------------------------------------
# Rotated and Colored MNIST (DomainBed datasets.py: MultipleEnvironmentMNIST and subclasses)
# ---------------------------------------------------------------------------------------------

RMNIST_ANGLES = (0, 15, 30, 45, 60, 75)
RMNIST_DOMAINS = tuple(str(a) for a in RMNIST_ANGLES)
CMNIST_COLOUR_FLIPS = (0.1, 0.2, 0.9)  # probability that the colour disagrees with the (noisy) label
CMNIST_DOMAINS = ("+90%", "+80%", "-90%")
CMNIST_LABEL_NOISE = 0.25


def _mnist_environments(options: LoadOptions, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """MultipleEnvironmentMNIST: every image (train then test, as DomainBed concatenates MNIST's
    two splits), shuffled once, then environment i takes rows i::count."""
    mnist = load_mnist5k(options)
    images = torch.cat([mnist.train_x, mnist.test_x])[:, 0]  # [N, 28, 28] uint8
    labels = torch.cat([mnist.train_y, mnist.test_y])
    shuffle = torch.randperm(len(labels), generator=torch.Generator().manual_seed(CONSTRUCTION_SEED))
    images, labels = images[shuffle], labels[shuffle]
    return [images[i::count] for i in range(count)], [labels[i::count] for i in range(count)]


def rotate_images(images: torch.Tensor, angle: float) -> torch.Tensor:
    """RotatedMNIST.rotate_dataset: each image as a PIL image, rotated counter-clockwise by `angle`
    degrees about its centre (bilinear, fill 0), as uint8 [N, 1, 28, 28]."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import rotate, to_pil_image

    out = np.empty((len(images), 1, *images.shape[-2:]), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i, 0] = np.asarray(rotate(to_pil_image(image), angle, fill=(0,), interpolation=InterpolationMode.BILINEAR))
    return torch.from_numpy(out)


def load_rmnist(options: LoadOptions) -> DomainSplits:
    """Rotated MNIST: 6 domains of MNIST 5k rotated by 0, 15, ..., 75 degrees; 10 classes."""
    envs, labels = _mnist_environments(options, len(RMNIST_ANGLES))
    per_domain = [(rotate_images(x, angle), y) for x, y, angle in zip(envs, labels, RMNIST_ANGLES)]
    return domain_splits("rmnist", per_domain, RMNIST_DOMAINS, tuple(str(c) for c in range(10)))


def color_images(images: torch.Tensor, digits: torch.Tensor, colour_flip: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ColoredMNIST.color_dataset: label = digit < 5, flipped with probability 0.25; colour = label,
    flipped with probability `colour_flip`; the image goes to two channels, the channel 1 - colour
    zeroed. Draws (uniforms compared with p, DomainBed's `torch_bernoulli_`) in DomainBed's order:
    the label flips, then the colour flips."""
    labels = (digits < 5).long()
    labels = labels ^ (torch.rand(len(labels), generator=generator) < CMNIST_LABEL_NOISE).long()
    colours = labels ^ (torch.rand(len(labels), generator=generator) < colour_flip).long()
    x = torch.stack([images, images], dim=1).clone()  # [N, 2, 28, 28]
    x[torch.arange(len(x)), 1 - colours] = 0
    return x, labels


def load_cmnist(options: LoadOptions) -> DomainSplits:
    """Colored MNIST (Arjovsky et al.'s environments +90%, +80%, -90%): binary labels with 25%
    noise, colour agreeing with the label in 90%, 80% and 10% of each domain; 2 x 28 x 28."""
    envs, digits = _mnist_environments(options, len(CMNIST_COLOUR_FLIPS))
    generator = torch.Generator().manual_seed(CONSTRUCTION_SEED)
    per_domain = [color_images(x, d, p, generator) for x, d, p in zip(envs, digits, CMNIST_COLOUR_FLIPS)]
    return domain_splits("cmnist", per_domain, CMNIST_DOMAINS, ("digit >= 5", "digit < 5"))


# ---------------------------------------------------------------------------------------------
# DomainBed's image-folder datasets (MultipleEnvironmentImageFolder): DOMAIN/CLASS/IMAGE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderDataset:
    """A DomainBed image-folder dataset: its folder under the data directory and its domain names
    (DomainBed's `ENVIRONMENTS`, which name the domain folders in sorted order)."""

    folder: str
    domains: tuple[str, ...]
    summary: str
    citation: str


FOLDER_DATASETS: dict[str, FolderDataset] = {
    "pacs": FolderDataset("PACS", ("A", "C", "P", "S"), "PACS (DomainBed): art painting, cartoon, photo, sketch; 7 classes, 9,991 images",
                          "Li, Yang, Song & Hospedales, Deeper, Broader and Artier Domain Generalization, ICCV 2017"),
    "vlcs": FolderDataset("VLCS", ("C", "L", "S", "V"), "VLCS (DomainBed): Caltech101, LabelMe, SUN09, VOC2007; 5 classes, 10,729 images",
                          "Fang, Xu & Rockmore, Unbiased Metric Learning, ICCV 2013"),
    "office_home": FolderDataset("office_home", ("A", "C", "P", "R"), "OfficeHome (DomainBed): art, clipart, product, real; 65 classes, 15,588 images",
                                 "Venkateswara et al., Deep Hashing Network for Unsupervised Domain Adaptation, CVPR 2017"),
    "terra_incognita": FolderDataset("terra_incognita", ("L100", "L38", "L43", "L46"),
                                     "TerraIncognita (DomainBed): camera-trap locations 100, 38, 43, 46; 10 classes, 24,788 images",
                                     "Beery, Van Horn & Perona, Recognition in Terra Incognita, ECCV 2018"),
    "domainnet": FolderDataset("domain_net", ("clip", "info", "paint", "quick", "real", "sketch"),
                               "DomainNet (DomainBed): clipart, infograph, painting, quickdraw, real, sketch; 345 classes, 586,575 images",
                               "Peng et al., Moment Matching for Multi-Source Domain Adaptation, ICCV 2019"),
}
DOWNLOAD_HINT = "python -m domainbed.scripts.download --data_dir=DIR (DomainBed), then HARNESS_DOMAINBED_DATA=DIR"


def domainbed_data_dir(options: LoadOptions) -> Path:
    """DomainBed's --data_dir: $HARNESS_DOMAINBED_DATA, else <dataset cache>/domainbed."""
    root = os.environ.get("HARNESS_DOMAINBED_DATA", "").strip()
    return Path(root).expanduser() if root else Path(options.cache_dir) / "domainbed"


def _read_rgb(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:  # transforms.Resize((224, 224)): both sides, bilinear
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def image_files(class_folder: Path) -> list[Path]:
    """A class's images as torchvision's ImageFolder (DomainBed's reader) finds them: every file
    below the folder, subfolders included, with an image extension, in sorted walk order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return [Path(root) / name for root, _, names in sorted(os.walk(class_folder, followlinks=True)) for name in sorted(names)
            if name.lower().endswith(IMG_EXTENSIONS)]


def load_domain_folder(name: str, root: Path, expected: tuple[str, ...], *, size: int = IMAGE_SIZE) -> DomainSplits:
    """Read `root/DOMAIN/CLASS/IMAGE` (DomainBed's layout): the domains are the sorted domain
    folders (named `expected`, in that order), the classes the sorted class folders, which every
    domain must have; images become uint8 RGB `size` x `size`."""
    if not root.is_dir():
        raise HarnessError(f"dataset {name} not found: {root} is not a directory; get it with {DOWNLOAD_HINT} (laid out as {root.name}/<domain>/<class>/<image>)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if len(folders) != len(expected):
        raise HarnessError(f"dataset {name}: {root} has {len(folders)} domain folders ({', '.join(p.name for p in folders) or 'none'}); "
                           f"expected {len(expected)} ({', '.join(expected)} in sorted folder order) from {DOWNLOAD_HINT}")
    classes = tuple(sorted(p.name for p in folders[0].iterdir() if p.is_dir()))
    if not classes:
        raise HarnessError(f"dataset {name}: {folders[0]} has no class folders; expected <domain>/<class>/<image>")
    from concurrent.futures import ThreadPoolExecutor

    per_domain = []
    for folder in folders:
        found = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        if found != classes:
            raise HarnessError(f"dataset {name}: domain {folder.name} has classes {', '.join(sorted(set(found) ^ set(classes)))} that {folders[0].name} "
                               f"{'lacks' if set(found) - set(classes) else 'has and it lacks'}; every domain needs the same class folders")
        paths, labels = [], []
        for c, cls in enumerate(classes):
            files = image_files(folder / cls)
            paths += files
            labels += [c] * len(files)
        if not paths:
            raise HarnessError(f"dataset {name}: no images under {folder}; expected <class>/<image>.jpg files")
        try:
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                arrays = list(pool.map(lambda p: _read_rgb(p, size), paths))
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            raise HarnessError(f"dataset {name}: an image under {folder} could not be read ({exc})") from None
        x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))
        per_domain.append((x, torch.tensor(labels, dtype=torch.int64)))
    return domain_splits(name, per_domain, expected, classes)


def folder_loader(name: str) -> Callable[[LoadOptions], DomainSplits]:
    spec = FOLDER_DATASETS[name]
    return lambda options: load_domain_folder(name, domainbed_data_dir(options) / spec.folder, spec.domains)


MNIST_CITATION = "LeCun et al. 1998; DomainBed: Gulrajani & Lopez-Paz, In Search of Lost Domain Generalization, ICLR 2021"
DOMAIN_DATASETS: tuple[DatasetSource, ...] = (
    DatasetSource("rmnist", "Rotated MNIST (DomainBed) from MNIST 5k: 6 domains rotated 0-75 degrees, 10 classes, 28x28, no download",
                  load_rmnist, citation=f"Ghifary et al., ICCV 2015; {MNIST_CITATION}", offline=True),
    DatasetSource("cmnist", "Colored MNIST (DomainBed) from MNIST 5k: domains +90%/+80%/-90%, binary labels with 25% noise, 2x28x28, no download",
                  load_cmnist, citation=f"Arjovsky et al., Invariant Risk Minimization, 2019; {MNIST_CITATION}", offline=True),
    *(DatasetSource(name, f"{spec.summary}; local DomainBed folder, {IMAGE_SIZE}x{IMAGE_SIZE}", folder_loader(name), citation=spec.citation, offline=True)
      for name, spec in FOLDER_DATASETS.items()),
)


# ---------------------------------------------------------------------------------------------
# the domain-balanced sampler
# ---------------------------------------------------------------------------------------------


class DomainBalancedSampler(Sampler):
    """Every batch holds `per_domain` rows of every domain, grouped by increasing domain id: the
    order of an epoch is `steps` such batches back to back, so the engine's batches of
    `per_domain * D` rows are DomainBed's `minibatches` (one of `batch_size` per training domain).
    `steps` is the engine's steps per epoch, ceil(N / (per_domain * D)). Within an epoch each
    domain is drawn without replacement (a fresh permutation when it runs out; DomainBed's
    infinite loaders draw with replacement)."""

    def __init__(self, domains: torch.Tensor, per_domain: int):
        if domains.dtype != torch.int64 or domains.dim() != 1 or not len(domains):
            raise ValueError("domains must be a non-empty int64 vector of domain ids")
        self.members = [torch.nonzero(domains == d).flatten() for d in torch.unique(domains).tolist()]
        self.per_domain = int(per_domain)
        self.steps = max(1, -(-len(domains) // (self.per_domain * len(self.members))))

    @property
    def batch_size(self) -> int:
        return self.per_domain * len(self.members)

    def epoch_plan(self, epoch: int, generator: torch.Generator) -> EpochPlan:
        need = self.steps * self.per_domain
        blocks = []
        for rows in self.members:
            draws = [rows[torch.randperm(len(rows), generator=generator, device=generator.device).cpu()] for _ in range(-(-need // len(rows)))]
            blocks.append(torch.cat(draws)[:need].view(self.steps, self.per_domain))
        return EpochPlan(torch.stack(blocks, dim=1).reshape(-1))  # [steps, D, per_domain] -> step-major
