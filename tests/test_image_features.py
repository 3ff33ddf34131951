"""Item image features for HM4SR (``datamodules/features.py``): both backends.

No pretrained image weights can be installed offline, so the encoders are tiny randomly
initialised towers saved to ``tmp_path`` (a transformers ViT / CLIP vision model, and a timm
ViT whose weights go through a local checkpoint file as the HM4SR authors loaded theirs).
The images are small PNG/JPEG files the tests write with PIL.

The timm tests need timm, which needs torchvision, which on these machines needs torch 2.14:
they run in the separate environment that ``scripts/ci_images.sh`` builds (CI calls it), and
are skipped, with that reason, where timm is not importable (the main environment) — unless
ZOO_REQUIRE_TIMM=1 (set by the CI script), which makes a missing timm a failure.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import features as F
from datamodules.features import (
    FeatureFileError,
    encode_images,
    ensure_image_features,
    load_feature_file,
    resolve_item_images,
)

TIMM_SKIP = (
    "timm is not importable here (it needs torchvision, i.e. torch>=2.14 on these machines); "
    "the timm path runs in CI through scripts/ci_images.sh"
)


def require_timm():
    """timm, or a skip where it is not installed — a failure under ZOO_REQUIRE_TIMM=1 (CI)."""
    if os.environ.get("ZOO_REQUIRE_TIMM") == "1":
        return importlib.import_module("timm")
    return pytest.importorskip("timm", reason=TIMM_SKIP)


RED, BLUE, GREEN = (220, 30, 30), (20, 40, 200), (30, 180, 60)


@pytest.fixture
def images(tmp_path) -> list[Path | None]:
    """7 items: 4 readable images (RGB jpg, wide png, grey png, RGBA png), a corrupt file,
    a path that does not exist, and an item with no image at all."""
    d = tmp_path / "img"
    d.mkdir()
    Image.new("RGB", (48, 40), RED).save(d / "1.jpg", quality=95)
    wide = Image.new("RGB", (96, 40), GREEN)
    wide.paste(Image.new("RGB", (20, 40), BLUE), (0, 0))
    wide.save(d / "2.png")
    Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1)), mode="L").save(d / "3.png")
    Image.new("RGBA", (40, 60), (*BLUE, 128)).save(d / "4.png")
    (d / "5.jpg").write_bytes(b"this is not a jpeg")
    return [d / "1.jpg", d / "2.png", d / "3.png", d / "4.png", d / "5.jpg", d / "missing.jpg", None]


MISSING = [4, 5, 6]  # rows of `images` without a readable image


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32)
    ViTModel(cfg).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(1)
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, projection_dim=8)
    CLIPVisionModel(cfg).eval().save_pretrained(folder)
    return folder


def assert_missing_rows(feats: np.ndarray, n_missing: int) -> None:
    assert n_missing == len(MISSING)
    assert not feats[MISSING].any()  # zero rows for items without a readable image
    present = [i for i in range(len(feats)) if i not in MISSING]
    assert (np.abs(feats[present]).sum(1) > 0).all()


# ---------------------------------------------------------------- preprocessing (PIL + numpy)


def test_preprocess_resizes_short_side_and_centre_crops(tmp_path):
    path = tmp_path / "wide.png"
    im = Image.new("RGB", (64, 32), RED)  # red left and right quarters, blue centre half
    im.paste(Image.new("RGB", (32, 32), BLUE), (16, 0))
    im.save(path)
    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    x = F._preprocess(path, image_size=32, resize_size=32, mean=mean, std=std)  # [3, 32, 32]
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    expected = (np.array(BLUE, np.float32) / 255 - mean) / std
    np.testing.assert_allclose(x, np.broadcast_to(expected[:, None, None], x.shape), atol=1e-6)
    # Upscaling: a 16x8 image becomes 32 on its short side, then the centre 32x32 is cut.
    Image.new("RGB", (16, 8), GREEN).save(path)
    assert F._preprocess(path, image_size=32, resize_size=40, mean=mean, std=std).shape == (3, 32, 32)


# ---------------------------------------------------------------- transformers backend


def test_transformers_vit_shapes_missing_and_determinism(images, tiny_vit, caplog):
    with caplog.at_level(logging.WARNING, logger="datamodules.features"):
        feats, n_missing = encode_images(images, str(tiny_vit), "transformers", batch_size=3, progress=False)
    assert feats.shape == (7, 16) and feats.dtype == np.float32
    assert_missing_rows(feats, n_missing)
    assert "3 of 7 items have no readable image" in caplog.text
    again, _ = encode_images(images, str(tiny_vit), "transformers", batch_size=2, progress=False)
    np.testing.assert_allclose(again, feats, atol=1e-6)  # batching does not matter
    assert not np.allclose(feats[0], feats[1])  # different images, different features


def test_transformers_feature_equals_model_on_known_pixels(images, tiny_clip):
    """A uniformly red image gives uniform pixels: check normalisation and pooling exactly."""
    from transformers import CLIPVisionModel

    feats, _ = encode_images(images[:1], str(tiny_clip), "transformers", progress=False)  # pooled
    cls, _ = encode_images(images[:1], str(tiny_clip), "transformers", pooling="cls", progress=False)
    model = CLIPVisionModel.from_pretrained(str(tiny_clip)).eval()
    mean, std = np.array(F._OPENAI_CLIP_MEAN), np.array(F._OPENAI_CLIP_STD)  # CLIP's own statistics
    with Image.open(images[0]) as im:
        rgb = np.asarray(im.convert("RGB"), np.float32)[20, 24] / 255  # JPEG: read back the colour
    pixel = torch.tensor((rgb - mean) / std, dtype=torch.float32)
    x = pixel[None, :, None, None].expand(1, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
    np.testing.assert_allclose(feats[0], out.pooler_output[0].numpy(), atol=1e-4)  # post-LN CLS
    np.testing.assert_allclose(cls[0], out.last_hidden_state[0, 0].numpy(), atol=1e-4)
    assert np.abs(feats - cls).max() > 1e-3


def test_transformers_mean_std_override_changes_features(images, tiny_vit):
    a, _ = encode_images(images[:2], str(tiny_vit), progress=False)  # ViT default: 0.5 / 0.5
    b, _ = encode_images(images[:2], str(tiny_vit), mean=(0.5,) * 3, std=(0.5,) * 3, progress=False)
    c, _ = encode_images(images[:2], str(tiny_vit), mean=F._IMAGENET_MEAN, std=F._IMAGENET_STD, progress=False)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_transformers_config_object_random_tower(images):
    from transformers import CLIPVisionConfig

    cfg = CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=8, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=16)
    feats, n_missing = encode_images(images, cfg, "transformers", progress=False)
    assert feats.shape == (7, 8)
    assert_missing_rows(feats, n_missing)


def test_no_readable_image_at_all_still_gives_dim(tmp_path, tiny_vit):
    feats, n_missing = encode_images([None, tmp_path / "nope.png"], str(tiny_vit), progress=False)
    assert feats.shape == (2, 16) and n_missing == 2 and not feats.any()


def test_ensure_image_features_caches_with_pad_row(images, tiny_vit, tmp_path, monkeypatch, caplog):
    path = ensure_image_features(tmp_path / "cache", images, str(tiny_vit), "transformers", progress=False)
    table = np.load(path)
    assert path.parent == tmp_path / "cache" / "features"
    assert table.shape == (8, 16) and not table[0].any()
    direct, _ = encode_images(images, str(tiny_vit), progress=False)
    np.testing.assert_allclose(table[1:], direct, atol=1e-6)
    assert load_feature_file(path, expected_rows=8, expected_dim=16).shape == (8, 16)

    def boom(*a, **k):
        raise AssertionError("encode_images must not run on a cache hit")

    monkeypatch.setattr(F, "encode_images", boom)
    with caplog.at_level(logging.INFO, logger="datamodules.features"):
        again = ensure_image_features(tmp_path / "cache", images, str(tiny_vit), "transformers", progress=False)
    assert again == path and "loaded cached image features from" in caplog.text
    # Changed preprocessing or a changed image file means a new table.
    with pytest.raises(AssertionError, match="cache hit"):
        ensure_image_features(tmp_path / "cache", images, str(tiny_vit), mean=(0.4,) * 3)
    Image.new("RGB", (40, 40), GREEN).save(images[0])
    with pytest.raises(AssertionError, match="cache hit"):
        ensure_image_features(tmp_path / "cache", images, str(tiny_vit))


def test_bad_backend_and_arguments(images, tiny_vit):
    with pytest.raises(ValueError, match="backend"):
        encode_images(images, str(tiny_vit), backend="keras")
    with pytest.raises(ValueError, match="checkpoint"):
        encode_images(images, str(tiny_vit), checkpoint="x.pth")
    with pytest.raises(ValueError, match="pooling"):
        encode_images(images, str(tiny_vit), pooling="max")


def test_timm_backend_without_timm_names_the_extra(images, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ImportError, match=r"zoo\[images\]"):
        encode_images(images, "vit_base_patch16_clip_224", backend="timm")


# ---------------------------------------------------------------- locating item images


def test_resolve_item_images_folder_and_imurl_mapping(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ["A1.jpg", "A1.png", "B2.PNG", "51fAmVkTbyL._SY300_.jpg", "c3.webp", "notes.txt"]:
        (d / name).write_bytes(b"x")
    elsewhere = tmp_path / "other.jpg"
    elsewhere.write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "e5.jpg").write_bytes(b"x")
    mapping = {
        "D4": "http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg",
        "E5": "sub/e5.jpg",  # relative to the folder
        "F6": str(elsewhere),  # absolute
        "G7": "http://ecx.images-amazon.com/images/I/never-downloaded.jpg",
        "A1": "http://example.com/gone.jpg",  # not downloaded: falls back to <id>.<ext>
    }
    ids = ["A1", "B2", "c3", "D4", "E5", "F6", "G7", "notes", "Z9"]
    got = resolve_item_images(ids, folder=d, mapping=mapping)
    assert got == [d / "A1.jpg", d / "B2.PNG", d / "c3.webp", d / "51fAmVkTbyL._SY300_.jpg",
                   d / "sub" / "e5.jpg", elsewhere, None, None, None]
    assert resolve_item_images(["F6", "E5"], mapping=mapping) == [elsewhere, None]
    with pytest.raises(FileNotFoundError, match="image folder"):
        resolve_item_images(["A1"], folder=tmp_path / "absent")


# ---------------------------------------------------------------- timm backend (HM4SR's encoder)


TINY_TIMM = dict(img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=2)


@pytest.fixture
def timm_checkpoint(tmp_path) -> tuple[Path, torch.nn.Module]:
    """A tiny timm ViT with a classifier head, saved as a local .pth state dict."""
    timm = require_timm()
    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **TINY_TIMM).eval()
    path = tmp_path / "tiny_vit.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model


def test_timm_checkpoint_features_match_model(images, timm_checkpoint, caplog):
    path, model = timm_checkpoint
    kw = dict(backend="timm", checkpoint=path, model_kwargs=TINY_TIMM, mean=(0.5,) * 3, std=(0.5,) * 3)
    with caplog.at_level(logging.INFO, logger="datamodules.features"):
        feats, n_missing = encode_images(images, "vit_tiny_patch16_224", batch_size=3, progress=False, **kw)
    assert "unused" in caplog.text and "matched" in caplog.text  # head dropped, body loaded
    assert feats.shape == (7, 16)
    assert_missing_rows(feats, n_missing)
    again, _ = encode_images(images, "vit_tiny_patch16_224", batch_size=7, progress=False, **kw)
    np.testing.assert_allclose(again, feats, atol=1e-6)  # deterministic: weights come from the file
    # HM4SR's feature: forward_features(img)[:, 0], the CLS after the final norm, on the
    # code's Resize(256)→CenterCrop(224)-style transform with mean = std = 0.5.
    mean = std = np.full(3, 0.5, np.float32)
    x = torch.from_numpy(np.stack([F._preprocess(p, 32, round(32 / 0.875), mean, std) for p in images[:4]]))
    with torch.no_grad():
        ref = model.forward_features(x)[:, 0]
    np.testing.assert_allclose(feats[:4], ref.numpy(), atol=1e-5)
    cls, _ = encode_images(images, "vit_tiny_patch16_224", pooling="cls", progress=False, **kw)
    np.testing.assert_allclose(cls, feats, atol=1e-6)  # token pooling == CLS for a ViT


def test_timm_ensure_image_features(images, timm_checkpoint, tmp_path):
    path, _ = timm_checkpoint
    out = ensure_image_features(tmp_path / "cache", images, "vit_tiny_patch16_224", "timm", path,
                                model_kwargs=TINY_TIMM, progress=False)
    table = load_feature_file(out, expected_rows=8, expected_dim=16)
    assert not table[0].any() and not table[1:][MISSING].any()


def test_timm_wrong_checkpoint_is_a_clear_error(images, tmp_path):
    timm = require_timm()
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict(), other)
    with pytest.raises(FeatureFileError, match=r"resnet\.pth.*none of the checkpoint"):
        encode_images(images, "vit_tiny_patch16_224", "timm", other, model_kwargs=TINY_TIMM, progress=False)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        encode_images(images, "vit_tiny_patch16_224", "timm", tmp_path / "nope.pth", model_kwargs=TINY_TIMM)


def test_timm_hm4sr_architecture_is_768d(images):
    """The authors' encoder, timm ``vit_base_patch16_clip_224`` (random init: no weights offline)."""
    require_timm()
    feats, n_missing = encode_images(images[:2], "vit_base_patch16_clip_224.openai", "timm", progress=False)
    assert feats.shape == (2, 768) and n_missing == 0 and np.isfinite(feats).all()
