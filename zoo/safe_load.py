"""Reading files from other people without running their code.

A ``torch.save`` file (checkpoint, feature tensor) is a pickle, and unpickling can call any
Python function the file names.  Every reader in the zoo therefore loads with
``torch.load(weights_only=True)`` (tensors, containers, numbers, strings only); a file that
needs more than that gets one :class:`UnsafePickleError` naming the blocked object and the way
out: ``zoo ckpt convert --trust-pickle IN OUT`` writes a weights-only copy once, for a user who
trusts the file's origin (:func:`convert_trusted`).  There is never a silent fallback.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any


class UnsafePickleError(ValueError):
    """The file can only be read by full unpickling (which may run code); it was not read."""


def convert_hint(path: str | Path) -> str:
    out = Path(path).with_name(Path(path).stem + ".safe" + (Path(path).suffix or ".pt"))
    return f"zoo ckpt convert --trust-pickle {path} {out}"


def unsafe_message(what: str, path: str | Path, detail: str = "") -> str:
    blocked = re.search(r"GLOBAL ([\w.]+)", detail)
    named = f" (it asks for {blocked.group(1)})" if blocked else ""
    return (f"{what} '{path}' can only be read by full unpickling, which can run arbitrary code, so the zoo "
            f"did not read it{named}; if you trust where it came from, write a weights-only copy once with "
            f"`{convert_hint(path)}` and use that")


def torch_load_weights(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Raises:
        UnsafePickleError: the file needs objects beyond tensors/containers/numbers/strings.
        ValueError: truncated, empty or not a ``torch.save`` file (``what`` and path named).
    """
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise UnsafePickleError(unsafe_message(what, path, str(e))) from e
        raise ValueError(f"{what} '{path}' is not a readable torch.save file ({first_line(e)})") from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, IndexError) as e:
        raise ValueError(f"{what} '{path}' is not a readable torch.save file ({first_line(e)})") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------------------- explicit trust
def to_weights_only(obj: Any, where: str = "", dropped: list[str] | None = None) -> Any:
    """A copy of ``obj`` that ``torch.load(weights_only=True)`` accepts: tensors, numbers,
    strings, bytes, None and (nested) dicts/lists/tuples; numpy arrays/scalars become tensors /
    Python numbers, mappings (``Namespace``, ``AttributeDict``) plain dicts, anything else its
    ``repr`` string (listed in ``dropped``)."""
    import numpy as np
    import torch

    dropped = dropped if dropped is not None else []
    if isinstance(obj, np.generic):  # before the builtins: np.float64 is a float subclass
        return to_weights_only(obj.item(), where, dropped)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biufc":
            return torch.from_numpy(np.ascontiguousarray(obj))
        return [to_weights_only(x, f"{where}[{i}]", dropped) for i, x in enumerate(obj.tolist())]
    if obj is None or type(obj) in (bool, int, float, complex, str, bytes) or isinstance(
            obj, (torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return obj
    for base in (bool, int, float, str, bytes):  # subclasses (IntEnum, str enums...) -> the plain value
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int, float, bool)) or k is None else repr(k)):
                to_weights_only(v, f"{where}.{k}" if where else str(k), dropped) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [to_weights_only(v, f"{where}[{i}]", dropped) for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    if hasattr(obj, "__dict__") and type(obj).__name__ in ("Namespace", "AttributeDict", "SimpleNamespace"):
        return to_weights_only(vars(obj), where, dropped)
    dropped.append(f"{where or '<root>'}: {type(obj).__module__}.{type(obj).__qualname__}")
    return repr(obj)


def convert_trusted(src: str | Path, dst: str | Path) -> list[str]:
    """Unpickle ``src`` IN FULL (runs whatever code it holds: only for a trusted file) and write a
    weights-only copy to ``dst`` atomically; returns the objects that were replaced by their repr.
    A ``.npy`` source/destination is read/written with numpy (object arrays allowed on read)."""
    import numpy as np
    import torch

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"zoo ckpt convert: no file at '{src}'")
    if dst.exists():
        raise FileExistsError(f"zoo ckpt convert: '{dst}' already exists; the zoo never overwrites a file "
                              "it did not make, choose another OUT or remove it")
    with open(src, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    obj = np.load(src, allow_pickle=True) if is_npy else torch.load(str(src), map_location="cpu", weights_only=False)
    dropped: list[str] = []
    if dst.suffix == ".npy":
        arr = np.asarray(obj.numpy() if isinstance(obj, torch.Tensor) else obj, dtype=np.float32)
        write = lambda tmp: np.save(tmp, arr, allow_pickle=False)  # noqa: E731
    else:
        plain = to_weights_only(obj, "", dropped)
        write = lambda tmp: torch.save(plain, tmp)  # noqa: E731
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        if dst.suffix == ".npy":
            np.load(tmp, allow_pickle=False)
        else:
            torch.load(str(tmp), map_location="cpu", weights_only=True)  # the copy must read safely
        os.replace(tmp, dst)
    except pickle.UnpicklingError as e:
        raise ValueError(f"zoo ckpt convert: the copy of '{src}' still needs unpickling ({first_line(e)}); "
                         "please report the object type") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return dropped
