"""The files of the literature in their released layouts, written small by each test: CIFAR-10-C /
CIFAR-100-C (.npy), Tiny ImageNet-C / ImageNet-C (image folders), the CIFAR-N label file
(`torch.save`d numpy arrays, never unpickled) and the far-OOD sets (local folders, the hub)."""

from __future__ import annotations

import os
import pickle
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data import (
    FAR_OOD_SETS,
    LoadOptions,
    cifar_c_corruptions,
    far_ood_dir,
    load_cifar_c,
    load_corruption_folder,
    load_far_ood,
)
from harness.errors import HarnessError, HubUnreachable
from harness.label_files import read_torch_label_file


@pytest.fixture
def options(tmp_path) -> LoadOptions:
    return LoadOptions(cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# CIFAR-10-C / CIFAR-100-C
# ---------------------------------------------------------------------------------------------


def _write_cifar_c(root: Path, n: int = 4, corruptions: tuple[str, ...] = ("fog", "snow")) -> dict[str, np.ndarray]:
    """The released layout at n images per severity: <corruption>.npy uint8 [5n, 32, 32, 3] + labels.npy."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for c in corruptions:
        out[c] = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
        np.save(root / f"{c}.npy", out[c])
    out["labels"] = np.tile(np.arange(n) % 10, 5).astype(np.uint8)  # the release repeats the test labels per severity
    np.save(root / "labels.npy", out["labels"])
    return out


def test_cifar_c_returns_each_severity_as_nchw_uint8(tmp_path):
    files = _write_cifar_c(tmp_path / "CIFAR-10-C", n=4)
    assert cifar_c_corruptions(tmp_path / "CIFAR-10-C") == ["fog", "snow"]
    for severity in (1, 3, 5):
        x, y = load_cifar_c(tmp_path / "CIFAR-10-C", "snow", severity)
        assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
        block = files["snow"][(severity - 1) * 4 : severity * 4]
        assert torch.equal(x, torch.from_numpy(block).permute(0, 3, 1, 2))  # HWC -> CHW, severity s = block s
        assert y.tolist() == [0, 1, 2, 3]
    first, _ = load_cifar_c(tmp_path / "CIFAR-10-C", "snow", 1)
    last, _ = load_cifar_c(tmp_path / "CIFAR-10-C", "snow", 5)
    assert not torch.equal(first, last)


def test_cifar_c_reads_memory_mapped_and_never_unpickles(tmp_path, monkeypatch):
    _write_cifar_c(tmp_path / "c", n=2)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    load_cifar_c(tmp_path / "c", "fog", 2)
    assert calls and all(k.get("mmap_mode") == "r" and k.get("allow_pickle") is False for k in calls)


def test_cifar_c_missing_folder_file_and_labels_say_where_to_put_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(HarnessError, match=r"put CIFAR-10-C from https://zenodo.org/record/2535967 in .*nowhere") as info:
        load_cifar_c(missing, "fog", 1)
    assert "\n" not in str(info.value)
    _write_cifar_c(tmp_path / "c", corruptions=("fog",))
    with pytest.raises(HarnessError, match=r"no frost.npy in .* \(found: fog\); put CIFAR-10-C from https://zenodo.org/record/2535967"):
        load_cifar_c(tmp_path / "c", "frost", 1)
    with pytest.raises(HarnessError, match=r"put CIFAR-100-C from https://zenodo.org/record/3555552"):
        load_cifar_c(tmp_path / "c", "frost", 1, benchmark="CIFAR-100-C")
    (tmp_path / "c" / "labels.npy").unlink()
    with pytest.raises(HarnessError, match=r"no labels.npy"):
        load_cifar_c(tmp_path / "c", "fog", 1)
    with pytest.raises(HarnessError, match=r"severity must be one of 1..5"):
        load_cifar_c(tmp_path / "c", "fog", 6)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 32, 32, 3), dtype=np.float32), r"holds float32 \(10, 32, 32, 3\); expected uint8 \[5 x N, H, W, C\]"),
        (np.zeros((12, 32, 32, 3), dtype=np.uint8), r"holds uint8 \(12, 32, 32, 3\)"),  # not 5 severities
        (np.zeros((10, 3, 32, 32), dtype=np.uint8), r"holds uint8 \(10, 3, 32, 32\)"),  # channels first is not the layout
    ],
)
def test_cifar_c_shape_mismatches_are_one_line_errors(tmp_path, array, message):
    root = tmp_path / "c"
    root.mkdir()
    np.save(root / "fog.npy", array)
    np.save(root / "labels.npy", np.zeros(len(array), dtype=np.uint8))
    with pytest.raises(HarnessError, match=message) as info:
        load_cifar_c(root, "fog", 1)
    assert "\n" not in str(info.value)


def test_cifar_c_label_count_mismatch_and_pickled_npy(tmp_path):
    root = tmp_path / "c"
    _write_cifar_c(root, n=2, corruptions=("fog",))
    np.save(root / "labels.npy", np.zeros(7, dtype=np.uint8))
    with pytest.raises(HarnessError, match=r"expected 10 integer labels, one per image of fog.npy"):
        load_cifar_c(root, "fog", 1)
    np.save(root / "labels.npy", np.array([{"evil": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(HarnessError, match=r"not a plain numeric .npy file"):
        load_cifar_c(root, "fog", 1)


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet-C / ImageNet-C folder trees
# ---------------------------------------------------------------------------------------------


def _write_tree(root: Path, corruption: str, severity: int, wnids: tuple[str, ...], size: int = 16, per_class: int = 2) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(severity)
    out: dict[str, list[np.ndarray]] = {}
    for wnid in wnids:
        folder = root / corruption / str(severity) / wnid
        folder.mkdir(parents=True)
        out[wnid] = []
        for i in range(per_class):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(a).save(folder / f"ILSVRC2012_val_{i:08d}.JPEG", format="PNG")  # lossless bytes, the released suffix
            out[wnid].append(a)
    return out


def test_imagenet_c_tree_classes_are_sorted_wnids(tmp_path):
    wnids = ("n02085620", "n01440764", "n01443537")
    images = _write_tree(tmp_path / "ImageNet-C", "snow", 3, wnids)
    x, y, classes = load_corruption_folder(tmp_path / "ImageNet-C", "snow", 3)
    assert classes == tuple(sorted(wnids))
    assert x.dtype == torch.uint8 and x.shape == (6, 3, 16, 16)
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    expected = torch.from_numpy(np.stack([a for w in sorted(wnids) for a in images[w]])).permute(0, 3, 1, 2)
    assert torch.equal(x, expected)

    # the training set's class order (a superset) decides the labels
    order = ("n09999999", *sorted(wnids))
    _, y2, classes2 = load_corruption_folder(tmp_path / "ImageNet-C", "snow", 3, classes=order)
    assert classes2 == order and y2.tolist() == [1, 1, 2, 2, 3, 3]

    small, _, _ = load_corruption_folder(tmp_path / "ImageNet-C", "snow", 3, size=8, benchmark="TinyImageNet-C")
    assert small.shape == (6, 3, 8, 8)


def test_imagenet_c_tree_errors(tmp_path):
    with pytest.raises(HarnessError, match=r"put TinyImageNet-C from https://zenodo.org/record/2536630 in"):
        load_corruption_folder(tmp_path / "missing", "fog", 1, benchmark="TinyImageNet-C")
    _write_tree(tmp_path / "inc", "fog", 1, ("n01440764",))
    with pytest.raises(HarnessError, match=r"no folder frost/1 .*corruptions found: fog"):
        load_corruption_folder(tmp_path / "inc", "frost", 1)
    with pytest.raises(HarnessError, match="not among the 1 given classes"):
        load_corruption_folder(tmp_path / "inc", "fog", 1, classes=("n00000000",))
    from PIL import Image

    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "inc" / "fog" / "1" / "n01440764" / "odd.png")
    with pytest.raises(HarnessError, match=r"different sizes.*give size=N"):
        load_corruption_folder(tmp_path / "inc", "fog", 1)


# ---------------------------------------------------------------------------------------------
# CIFAR-N label files (torch.save of numpy arrays)
# ---------------------------------------------------------------------------------------------


def test_cifar_n_label_file_is_read_without_torch_load(tmp_path, monkeypatch):
    labels = {
        "clean_label": np.array([6, 9, 9, 4, 1]),
        "worse_label": np.array([6, 1, 9, 3, 1]),
        "aggre_label": np.array([6, 9, 9, 4, 1], dtype=np.int32),
        "random_label1": np.array([6, 9, 1, 4, 1], dtype=np.uint8),
    }
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(labels, path)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must not be used on label files")

    monkeypatch.setattr(torch, "load", forbidden)
    table = read_torch_label_file(path)
    assert set(table) == set(labels)
    for key, value in labels.items():
        assert table[key].dtype == np.int64 and table[key].tolist() == value.tolist()

    legacy = tmp_path / "legacy.pt"  # the pre-zip torch.save format
    torch.save({"noisy_label": np.array([3, 2, 1])}, legacy, _use_new_zipfile_serialization=False)
    assert read_torch_label_file(legacy)["noisy_label"].tolist() == [3, 2, 1]


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_pickle(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("form", ["raw pickle", "torch zip archive", "torch.save"])
def test_hostile_label_file_is_refused_and_never_run(tmp_path, form):
    marker = tmp_path / "was-run"
    path = tmp_path / "CIFAR-10_human.pt"
    payload = pickle.dumps({"worse_label": _Hostile(marker)}, protocol=2)
    if form == "raw pickle":
        path.write_bytes(payload)
    elif form == "torch zip archive":
        _zip_pickle(path, payload)
    else:
        torch.save({"worse_label": _Hostile(marker)}, path)
    with pytest.raises(HarnessError, match=r"refused to read .*asks for (posix|os|nt)\.system.*nothing in it was run") as info:
        read_torch_label_file(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_label_file_with_tensors_or_wrong_content(tmp_path):
    path = tmp_path / "tensors.pt"
    torch.save({"worse_label": torch.tensor([1, 2])}, path)
    with pytest.raises(HarnessError, match="holds torch tensors, not numpy arrays"):
        read_torch_label_file(path)
    torch.save({"worse_label": np.array([0.5, 1.5])}, path)
    with pytest.raises(HarnessError, match="expected a flat array of integer labels"):
        read_torch_label_file(path)
    torch.save([np.array([1])], path)
    with pytest.raises(HarnessError, match="holds a list; expected a dict"):
        read_torch_label_file(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(HarnessError, match=r"not a readable torch label file|neither a torch zip archive"):
        read_torch_label_file(path)
    with pytest.raises(HarnessError, match="does not exist"):
        read_torch_label_file(tmp_path / "absent.pt")


# ---------------------------------------------------------------------------------------------
# far-OOD sets
# ---------------------------------------------------------------------------------------------


def _write_images(folder: Path, shapes: list[tuple[int, ...]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for i, shape in enumerate(shapes):
        sub = folder / ("a" if i % 2 else "b")  # any layout: nested folders too
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(sub / f"{i}.png")


def test_far_ood_from_a_local_folder_resizes_crops_and_converts(tmp_path, options):
    _write_images(tmp_path / "places", [(40, 60, 3), (32, 32, 3), (64, 48), (20, 20, 3)])
    x = load_far_ood(f"folder:{tmp_path / 'places'}", options, size=32, channels=3)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    grey = load_far_ood(f"folder:{tmp_path / 'places'}", options, size=28, channels=1)
    assert grey.shape == (4, 1, 28, 28)
    from PIL import Image

    exact = np.array(Image.open(tmp_path / "places" / "a" / "1.png"))  # already 32 x 32: unchanged
    files = sorted(p for p in (tmp_path / "places").rglob("*.png"))
    assert torch.equal(x[files.index(tmp_path / "places" / "a" / "1.png")], torch.from_numpy(exact).permute(2, 0, 1))


def test_named_far_ood_set_prefers_its_local_folder(tmp_path, options, monkeypatch):
    monkeypatch.setenv("HARNESS_FAR_OOD", str(tmp_path / "far"))
    assert far_ood_dir(options, "places365") == tmp_path / "far" / "places365"
    with pytest.raises(HarnessError, match=r"far-OOD set places365 is not on this machine: put its images .* in .*far/places365") as info:
        load_far_ood("places365", options, 32, 3)
    assert "\n" not in str(info.value)
    _write_images(tmp_path / "far" / "places365", [(36, 36, 3)] * 3)
    assert load_far_ood("places365", options, 32, 3).shape == (3, 3, 32, 32)
    _write_images(tmp_path / "far" / "textures", [(50, 40, 3)] * 2)  # a hub set with a local copy: no hub needed
    assert load_far_ood("textures", options, 32, 3).shape == (2, 3, 32, 32)


def test_far_ood_hub_sets_offline_fail_in_one_line(options):
    assert {"svhn", "textures", "places365", "lsun", "isun"} <= set(FAR_OOD_SETS)
    for name in ("svhn", "textures", "lsun", "isun"):
        with pytest.raises(HubUnreachable, match=rf"far-OOD set {name} is not cached and the Hugging Face hub cannot be reached \(HF_HUB_OFFLINE is set\); put its images") as info:
            load_far_ood(name, options, 32, 3)
        assert "\n" not in str(info.value)
    with pytest.raises(HarnessError, match="unknown far-OOD set 'mnist'"):
        load_far_ood("mnist", options, 32, 3)
    with pytest.raises(HarnessError, match="is not a directory"):
        load_far_ood("folder:/no/such/dir", options, 32, 3)


def test_far_ood_from_the_hub_is_converted_once_and_cached(monkeypatch, options):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2]},
                                                                  features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))})
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or dd)
    with socket.socket() as server:  # a reachable "hub"
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.delenv("HF_DATASETS_OFFLINE")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        x = load_far_ood("textures", options, 32, 3)
    assert calls == [("tanganke/dtd",)]
    assert x.shape == (3, 3, 32, 32)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert torch.equal(load_far_ood("textures", options, 32, 3), x)  # from the cache, offline
    assert len(calls) == 1


def test_far_ood_reuses_imagefolder_test_split(tmp_path, options):
    from PIL import Image

    for split, n in (("train", 2), ("test", 3)):
        for i in range(n):
            folder = tmp_path / "imgs" / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    x = load_far_ood(f"imagefolder:{tmp_path / 'imgs'}", options, size=16, channels=3)
    assert x.shape == (3, 3, 16, 16)
    assert sorted(int(v) for v in x[:, 0, 8, 8]) == [0, 40, 80]  # grey became RGB, values kept (resize of a flat image)


def test_zip_without_data_pkl_is_not_a_torch_file(tmp_path):
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(HarnessError, match=r"not a torch.save file"):
        read_torch_label_file(path)
