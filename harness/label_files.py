"""Label files saved with `torch.save`, read without unpickling arbitrary objects.

CIFAR-10N / CIFAR-100N (Wei et al., "Learning with Noisy Labels Revisited: A Study Using
Real-World Human Annotations", ICLR 2022) publish their human labels as `CIFAR-10_human.pt` and
`CIFAR-100_human.pt`: a `torch.save`d dict of numpy arrays (`clean_label`, `worse_label`,
`aggre_label`, `random_label1..3`; `noisy_label` for CIFAR-100N). `torch.load(weights_only=True)`
refuses numpy arrays, and a plain `torch.load` would run whatever the file's pickle asks for.

`read_torch_label_file` unpickles the file's `data.pkl` (the zip format of torch >= 1.6) or its
pickle stream (the legacy format) with an unpickler that resolves only the globals a dict of
numpy arrays needs (`ALLOWED_GLOBALS`) and refuses everything else with a message, before
anything is called. It returns the arrays as a plain dict of int64 numpy arrays.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

# Exactly what a pickled dict (or OrderedDict) of numpy arrays refers to, under numpy 1 and 2
# names; `_codecs.encode` is how pickle protocol 2 (torch.save's) writes a bytes object, and
# only turns a str into bytes.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
})
# numpy 2 pickles dtypes as numpy.dtypes.<Kind>DType classes in some cases; those are dtype
# classes, and only integer ones can hold labels
_DTYPE_CLASSES = {f"{k}DType" for k in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Bool")}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


class _LabelUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS or (module == "numpy.dtypes" and name in _DTYPE_CLASSES):
            return super().find_class(module, name)
        if module.split(".")[0] == "torch":
            self.persistent_load(None)  # tensors: say how to convert them
        raise HarnessError(
            f"refused to read {self.path}: its pickle asks for {module}.{name}, and a label file may only hold numpy arrays "
            "(nothing in it was run); save the labels as a dict of numpy arrays, or as .npz/.json"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise HarnessError(
            f"refused to read {self.path}: it holds torch tensors, not numpy arrays; convert it once with your own torch "
            "(e.g. numpy.savez('labels.npz', **{k: v.numpy() for k, v in torch.load(PATH).items()})) and give the .npz"
        )


def _unpickle(data: bytes, path: Path) -> Any:
    try:
        return _LabelUnpickler(io.BytesIO(data), path).load()
    except HarnessError:
        raise
    except Exception as exc:  # a truncated or foreign stream
        raise HarnessError(f"{path} is not a readable torch label file ({type(exc).__name__}: {exc})") from None


def _legacy_object(raw: bytes, path: Path) -> Any:
    """The object of a legacy (pre-zip) torch.save stream: magic, protocol, sys info, then the object."""
    stream = io.BytesIO(raw)
    try:
        header = [_LabelUnpickler(stream, path).load() for _ in range(3)]
        if header[0] != LEGACY_MAGIC:
            raise HarnessError(f"{path} is neither a torch zip archive nor a legacy torch.save file (no magic number)")
        return _LabelUnpickler(stream, path).load()
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(f"{path} is not a readable torch label file ({type(exc).__name__}: {exc})") from None


def read_torch_label_file(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a `torch.save`d dict of numpy arrays (e.g. CIFAR-10_human.pt) as int64 arrays.

    Raises `HarnessError` (one line) for a missing file, a pickle that asks for anything but numpy
    arrays (never executed), torch tensors instead of arrays, or content that is not a dict of
    one-dimensional integer arrays.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise HarnessError(f"label file {path} does not exist; the CIFAR-N labels are CIFAR-10_human.pt / CIFAR-100_human.pt from http://www.noisylabels.com")
    raw = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(raw)):
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise HarnessError(f"{path} is a zip archive but not a torch.save file (it has {len(pickles)} data.pkl entries)")
            obj = _unpickle(archive.read(pickles[0]), path)
    else:
        obj = _legacy_object(raw, path)
    if not isinstance(obj, dict):
        raise HarnessError(f"{path} holds a {type(obj).__name__}; expected a dict of label arrays such as {{'worse_label': ..., 'clean_label': ...}}")
    table: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise HarnessError(f"{path}: entry {key!r} is a {type(value).__name__}; expected a numpy array of labels")
        if value.ndim != 1 or not (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
            raise HarnessError(f"{path}: {key!r} is {value.dtype} {value.shape}; expected a flat array of integer labels")
        table[key] = value.astype(np.int64)
    return table
