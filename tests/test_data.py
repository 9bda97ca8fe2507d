"""Tests of harness.data: embedded datasets, local parquet/imagefolder copies, the tensor cache and
the hub's fail-fast path. Nothing here touches the network: an autouse fixture sets the Hugging
Face offline variables, and the tests that need them unset point HF_ENDPOINT at localhost.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import data as hdata
from harness.data import LoadOptions, dynamic_dataset_source, load_digits, load_mnist5k, stratified_split
from harness.errors import HarnessError, HubUnreachable


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def options(tmp_path) -> LoadOptions:
    return LoadOptions(cache_dir=tmp_path / "cache")


def _closed_port() -> int:
    """A localhost port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forbid_load_dataset(monkeypatch) -> None:
    import datasets

    def fail(*args, **kwargs):
        raise AssertionError(f"datasets.load_dataset must not be called here (args={args})")

    monkeypatch.setattr(datasets, "load_dataset", fail)


# ---------------------------------------------------------------------------------------------
# embedded datasets
# ---------------------------------------------------------------------------------------------


def test_stratified_split_is_stratified_disjoint_and_complete():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    train, test = stratified_split(labels, test_fraction=0.2, seed=3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))  # disjoint and complete
    assert np.bincount(labels[test]).tolist() == [10, 6, 4]
    assert np.bincount(labels[train]).tolist() == [40, 24, 16]
    again = stratified_split(labels, test_fraction=0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    other = stratified_split(labels, test_fraction=0.2, seed=4)
    assert not np.array_equal(test, other[1])
    # the input is sorted by class; the output must not be
    assert not np.all(np.diff(labels[train]) >= 0)


def test_mnist5k_shapes_counts_and_pixels(options):
    s = load_mnist5k(options)
    assert s.name == "mnist5k"
    assert s.train_x.shape == (4000, 1, 28, 28) and s.test_x.shape == (1000, 1, 28, 28)
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert s.classes == tuple(str(c) for c in range(10))
    assert torch.bincount(s.train_y, minlength=10).tolist() == [400] * 10
    assert torch.bincount(s.test_y, minlength=10).tolist() == [100] * 10
    # real digits: dark background, bright strokes, every image has ink
    assert int(s.train_x.max()) == 255 and int(s.train_x.min()) == 0
    assert 15 < float(s.train_x.float().mean()) < 60
    assert bool((s.train_x.flatten(1).amax(1) > 100).all()) and bool((s.test_x.flatten(1).amax(1) > 100).all())
    # class means differ (labels match images): mean "1" has much less ink than mean "0"
    ink = [float(s.train_x[s.train_y == c].float().mean()) for c in (0, 1)]
    assert ink[0] > 1.3 * ink[1]


def test_mnist5k_split_is_fixed_and_disjoint(tmp_path):
    a = load_mnist5k(LoadOptions(tmp_path / "a", seed=0))
    b = load_mnist5k(LoadOptions(tmp_path / "b", seed=123))  # the run seed must not move the split
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.test_y, b.test_y)
    train_rows = {bytes(r.numpy()) for r in a.train_x}
    test_rows = {bytes(r.numpy()) for r in a.test_x}
    assert len(train_rows) == 4000 and len(test_rows) == 1000
    assert not train_rows & test_rows
    # shuffled: the file is sorted by class, the splits must interleave classes
    assert len(set(a.train_y[:50].tolist())) > 5


def test_digits_shapes_and_range(options):
    from sklearn.datasets import load_digits as sk_load_digits

    s = load_digits(options)
    assert s.name == "digits"
    assert s.train_x.shape[1:] == (1, 8, 8) and s.test_x.shape[1:] == (1, 8, 8)
    assert len(s.train_x) + len(s.test_x) == 1797
    assert 355 <= len(s.test_x) <= 364  # ~20 %
    assert int(s.train_x.min()) == 0 and int(s.train_x.max()) == 255
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(s.train_x).tolist()) <= allowed
    # stratified: every class keeps ~20 % of its images in test
    raw = sk_load_digits()
    per_class = np.bincount(raw.target)
    assert all(abs(int((s.test_y == c).sum()) - 0.2 * per_class[c]) <= 1 for c in range(10))
    # pixel values survive: the multiset of images equals sklearn's rescaled images
    expected = sorted(bytes(np.round(img * 255 / 16).astype(np.uint8)) for img in raw.images)
    got = sorted(bytes(x.numpy()) for x in torch.cat([s.train_x, s.test_x]))
    assert got == expected
    assert torch.equal(load_digits(options).test_x, s.test_x)


# ---------------------------------------------------------------------------------------------
# local copies: parquet and imagefolder
# ---------------------------------------------------------------------------------------------

CLASSES = ["cat", "dog", "frog"]


def _random_images(n: int, mode: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _to_nchw(arrays: list[np.ndarray]) -> torch.Tensor:
    x = np.stack(arrays)
    x = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x[:, None]
    return torch.from_numpy(np.ascontiguousarray(x))


def _hf_dataset(arrays: list[np.ndarray], labels: list[int], *, class_label: bool = True):
    import datasets
    from PIL import Image

    label_feature = datasets.ClassLabel(names=CLASSES) if class_label else datasets.Value("int64")
    features = datasets.Features({"id": datasets.Value("string"), "picture": datasets.Image(), "target": label_feature})
    return datasets.Dataset.from_dict(
        {"id": [str(i) for i in range(len(arrays))], "picture": [Image.fromarray(a) for a in arrays], "target": labels},
        features=features,
    )


def _write_parquet(root: Path, layout: str, mode: str, *, class_label: bool = True):
    """20 train and 10 test images written with `Dataset.to_parquet`; returns the expected tensors."""
    out = {}
    for split, n, seed in (("train", 20, 1), ("test", 10, 2)):
        arrays = _random_images(n, mode, seed)
        labels = [i % 3 for i in range(n)]
        target = root / layout.format(split=split)
        target.parent.mkdir(parents=True, exist_ok=True)
        _hf_dataset(arrays, labels, class_label=class_label).to_parquet(str(target))
        out[split] = (_to_nchw(arrays), torch.tensor(labels, dtype=torch.int64))
    return out


@pytest.mark.parametrize(
    ("layout", "mode"),
    [
        ("{split}.parquet", "RGB"),
        ("{split}-00000-of-00001.parquet", "L"),
        ("data/{split}-00000-of-00001.parquet", "RGB"),
    ],
)
def test_parquet_round_trip_is_pixel_exact(tmp_path, options, layout, mode):
    expected = _write_parquet(tmp_path / "pq", layout, mode)
    source = dynamic_dataset_source(f"parquet:{tmp_path / 'pq'}")
    assert source.offline
    s = source.load(options)
    assert s.classes == tuple(CLASSES)
    assert s.in_chans == (3 if mode == "RGB" else 1)
    assert torch.equal(s.train_x, expected["train"][0]) and torch.equal(s.train_y, expected["train"][1])
    assert torch.equal(s.test_x, expected["test"][0]) and torch.equal(s.test_y, expected["test"][1])


def test_parquet_plain_int_labels_give_numbered_classes(tmp_path, options):
    _write_parquet(tmp_path / "pq", "{split}.parquet", "L", class_label=False)
    s = dynamic_dataset_source(f"parquet:{tmp_path / 'pq'}").load(options)
    assert s.classes == ("0", "1", "2")
    assert s.train_y.tolist() == [i % 3 for i in range(20)]


def test_parquet_cache_is_used_and_invalidated_by_mtime(tmp_path, options, monkeypatch):
    root = tmp_path / "pq"
    _write_parquet(root, "{split}.parquet", "RGB")
    first = dynamic_dataset_source(f"parquet:{root}").load(options)
    cached = sorted(p.suffix for p in Path(options.cache_dir).iterdir() if p.is_file())
    assert cached == [".json", ".safetensors"]  # tensors + sidecar, no pickle

    _forbid_load_dataset(monkeypatch)
    second = dynamic_dataset_source(f"parquet:{root}").load(options)
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert second.classes == first.classes

    # a changed file must not be served from the stale cache
    st = (root / "test.parquet").stat()
    os.utime(root / "test.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(HarnessError, match="must not be called"):  # it went back to `datasets`
        dynamic_dataset_source(f"parquet:{root}").load(options)


def test_parquet_missing_path_and_split(tmp_path, options):
    with pytest.raises(HarnessError, match=r"not a directory.*train\.parquet"):
        dynamic_dataset_source(f"parquet:{tmp_path / 'nope'}").load(options)
    _write_parquet(tmp_path / "pq", "{split}.parquet", "RGB")
    (tmp_path / "pq" / "test.parquet").unlink()
    with pytest.raises(HarnessError, match=r"no test parquet files.*expected"):
        dynamic_dataset_source(f"parquet:{tmp_path / 'pq'}").load(options)


def _write_imagefolder(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    """PNG files in root/<split>/<class>/; returns the sorted (class, pixels) pairs per split."""
    from PIL import Image

    expected: dict[str, list[tuple[str, bytes]]] = {}
    for split, n, seed in (("train", 12, 5), ("test", 6, 6)):
        pairs = []
        for i, arr in enumerate(_random_images(n, "RGB", seed)):
            cls = CLASSES[i % 3]
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / split / cls / f"{i:03d}.png")
            pairs.append((cls, arr.transpose(2, 0, 1).tobytes()))
        expected[split] = sorted(pairs)
    return expected


def test_imagefolder_round_trip_and_cache(tmp_path, options, monkeypatch):
    root = tmp_path / "folder"
    expected = _write_imagefolder(root)
    source = dynamic_dataset_source(f"imagefolder:{root}")
    assert source.offline
    s = source.load(options)
    assert s.classes == tuple(CLASSES)  # folder names, sorted
    assert s.train_x.shape == (12, 3, 8, 8) and s.test_x.shape == (6, 3, 8, 8)
    for split, x, y in (("train", s.train_x, s.train_y), ("test", s.test_x, s.test_y)):
        got = sorted((s.classes[int(label)], img.numpy().tobytes()) for img, label in zip(x, y, strict=True))
        assert got == expected[split]

    _forbid_load_dataset(monkeypatch)
    again = dynamic_dataset_source(f"imagefolder:{root}").load(options)
    assert torch.equal(again.train_x, s.train_x) and torch.equal(again.test_y, s.test_y)


def test_imagefolder_missing_split(tmp_path, options):
    root = tmp_path / "folder"
    (root / "train" / "cat").mkdir(parents=True)
    with pytest.raises(HarnessError, match=r"no test/ folder.*train/<class>"):
        dynamic_dataset_source(f"imagefolder:{root}").load(options)
    with pytest.raises(HarnessError, match="not a directory"):
        dynamic_dataset_source(f"imagefolder:{tmp_path / 'missing'}").load(options)


def test_mixed_gray_and_rgb_split_becomes_rgb():
    gray = _random_images(2, "L", 7)
    rgb = _random_images(2, "RGB", 8)
    ds = _hf_dataset([gray[0], rgb[0], gray[1], rgb[1]], [0, 1, 2, 0])
    x, y = hdata.dataset_to_tensors(ds, "picture", "target")
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 1, 2, 0]
    assert torch.equal(x[0], torch.from_numpy(gray[0]).expand(3, 8, 8))
    assert torch.equal(x[1], torch.from_numpy(rgb[0]).permute(2, 0, 1))


def test_detect_columns_finds_image_and_classlabel():
    ds = _hf_dataset(_random_images(3, "L", 9), [0, 1, 2])
    assert hdata.detect_columns(ds.features) == ("picture", "target")
    with pytest.raises(HarnessError, match="no image column"):
        hdata.detect_columns(ds.remove_columns("picture").features)


# ---------------------------------------------------------------------------------------------
# the hub: fail fast when offline, cache after the first download
# ---------------------------------------------------------------------------------------------


def _plugin_sources() -> dict:
    from harness.catalog import load_catalog
    from harness_plugins import datasets as plugin

    catalog = load_catalog(autoload=False, plugins=((plugin, "datasets"),))
    assert catalog.plugins["datasets"].ok, catalog.plugins["datasets"].error
    return {name: catalog.datasets.get(name) for name in catalog.plugins["datasets"].registered["dataset"]}


def test_plugin_registers_the_image_and_domain_sources():
    sources = _plugin_sources()
    hub = {"cifar10", "cifar100", "mnist", "fashion_mnist", "svhn"}
    built_in_or_local = {"mnist5k", "digits", "rmnist", "cmnist", "pacs", "vlcs", "office_home", "terra_incognita", "domainnet"}
    assert set(sources) == hub | built_in_or_local
    # offline: made from embedded data, or read from a local folder; the others come from the hub
    assert {n for n, s in sources.items() if s.offline} == built_in_or_local
    assert all(s.summary and s.citation for s in sources.values())
    assert "LeCun" in sources["mnist"].citation and "Krizhevsky" in sources["cifar100"].citation
    assert "Netzer" in sources["svhn"].citation and "Xiao" in sources["fashion_mnist"].citation


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_source_offline_raises_hub_unreachable(monkeypatch, options, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv(variable, "true")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    _forbid_load_dataset(monkeypatch)
    with pytest.raises(HubUnreachable) as info:
        _plugin_sources()["cifar10"].load(options)
    message = str(info.value)
    assert "\n" not in message
    assert "cifar10" in message and variable in message
    assert "dataset=mnist5k" in message and "dataset=parquet:DIR" in message and "dataset=imagefolder:DIR" in message


def test_hub_source_closed_endpoint_raises_hub_unreachable(monkeypatch, options):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # falsy values do not count as offline
    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    _forbid_load_dataset(monkeypatch)
    assert hdata.hub_address() == ("127.0.0.1", port)
    with pytest.raises(HubUnreachable, match=rf"svhn.*127\.0\.0\.1:{port}"):
        _plugin_sources()["svhn"].load(options)
    with pytest.raises(HubUnreachable, match="hf:someone/something"):
        dynamic_dataset_source("hf:someone/something").load(options)


def test_probe_succeeds_against_a_listening_port(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hdata.probe_hub() is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hdata.probe_hub() == "HF_HUB_OFFLINE is set"


def _fake_hub(monkeypatch, result_or_error):
    """Make the hub look reachable (a local listener) and `load_dataset` return/raise the given value."""
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append(args)
        if isinstance(result_or_error, Exception):
            raise result_or_error
        return result_or_error

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls, server


def test_hub_source_converts_and_caches(monkeypatch, options):
    import datasets

    train, test = _random_images(9, "RGB", 10), _random_images(3, "RGB", 11)

    def split(arrays, labels):  # the cifar10 repo's column names: img, label
        return _hf_dataset(arrays, labels).rename_columns({"picture": "img", "target": "label"})

    dd = datasets.DatasetDict({"train": split(train, [i % 3 for i in range(9)]), "test": split(test, [2, 1, 0])})
    calls, server = _fake_hub(monkeypatch, dd)
    with server:
        s = _plugin_sources()["cifar10"].load(options)
    assert calls == [("uoft-cs/cifar10",)]
    assert s.name == "cifar10" and s.classes == tuple(CLASSES)
    assert torch.equal(s.train_x, _to_nchw(train)) and s.test_y.tolist() == [2, 1, 0]
    assert (Path(options.cache_dir) / "cifar10.safetensors").is_file()
    assert json.loads((Path(options.cache_dir) / "cifar10.json").read_text())["classes"] == CLASSES

    # second load: offline again, yet served from the cache without touching the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = _plugin_sources()["cifar10"].load(options)
    assert len(calls) == 1
    assert torch.equal(again.train_x, s.train_x) and torch.equal(again.test_y, s.test_y) and again.classes == s.classes


def test_hub_load_errors_become_harness_errors(monkeypatch, options):
    calls, server = _fake_hub(monkeypatch, ConnectionError("502 Bad Gateway"))
    with server, pytest.raises(HarnessError, match=r"dataset svhn.*ConnectionError: 502 Bad Gateway") as info:
        _plugin_sources()["svhn"].load(options)
    assert not isinstance(info.value, HubUnreachable)
    assert calls == [("ufldl-stanford/svhn", "cropped_digits")]


def test_hf_prefix_detects_columns_and_config(monkeypatch, options):
    import datasets

    dd = datasets.DatasetDict({s: _hf_dataset(_random_images(3, "L", 12), [0, 1, 2]) for s in ("train", "test")})
    calls, server = _fake_hub(monkeypatch, dd)
    with server:
        s = dynamic_dataset_source("hf:someone/digits:small").load(options)
    assert calls == [("someone/digits", "small")]
    assert s.classes == tuple(CLASSES) and s.train_x.shape == (3, 1, 8, 8)


def test_hub_dataset_without_test_split(monkeypatch, options):
    import datasets

    dd = datasets.DatasetDict({"train": _hf_dataset(_random_images(3, "L", 13), [0, 1, 2])})
    _, server = _fake_hub(monkeypatch, dd)
    with server, pytest.raises(HarnessError, match=r"no test split \(found train\)"):
        dynamic_dataset_source("hf:someone/only-train").load(options)


def test_unknown_prefix_and_empty_names():
    with pytest.raises(HarnessError, match="unknown prefix"):
        dynamic_dataset_source("zip:/tmp/x")
    with pytest.raises(HarnessError, match="hub repository"):
        dynamic_dataset_source("hf:")
    with pytest.raises(HarnessError, match="give a directory"):
        dynamic_dataset_source("parquet:").load(LoadOptions(Path("unused")))
