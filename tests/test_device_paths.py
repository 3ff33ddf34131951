"""The GPU path without a GPU: device placement, bf16 autocast and torch.compile of every model.

Placement: the model and the batch stay on CPU and the step runs under
``with torch.device("meta"):``.  Every tensor a model creates without ``device=`` (an
``arange``, a mask, a bin table, a sampled negative) then lands on ``meta`` and the first op
that mixes it with a CPU tensor raises, exactly as a CPU-created tensor would on CUDA
(``ENVIRONMENT.md``).  Each case runs one training step (loss + backward) and one evaluation
batch of each protocol (full ranking with history masking, sampled negatives, several
targets) through the base class's ``_eval_step`` and the metrics, then ``predict_step``.

Side info: every tensor a model receives through ``attach_side_info`` must be a registered
buffer (so ``model.to("cuda")`` moves it); a plain tensor attribute would stay behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_batch
from torchmetrics import Metric

from zoo.metrics import MultiTargetMetrics, RankingMetrics
from zoo.models.base import SequentialRecommender, missing_compiler
from zoo.models.comirec import ComiRec
from zoo.models.gru4rec import GRU4Rec
from zoo.models.hm4sr import HM4SR
from zoo.models.horae import HORAE
from zoo.models.hpcl4sr import HPCL4SR
from zoo.models.mind import MIND
from zoo.models.miracle import MIRACLE
from zoo.models.pop import Pop
from zoo.models.sasrec import SASRec
from zoo.models.timirec import TiMiRec
from zoo.models.tisasrec import TiSASRec

N, D, K, L, C, TEXT_DIM, IMAGE_DIM = 50, 16, 2, 10, 5, 12, 8
ROOT = Path(__file__).resolve().parents[1]


def side_info() -> dict[str, torch.Tensor]:
    """Every item-side tensor a datamodule can hand over (text, image, categories, popularity)."""
    g = torch.Generator().manual_seed(0)
    category = torch.randint(1, C + 1, (N + 1,), generator=g)
    category[0] = 0
    multi_hot = torch.zeros(N + 1, C + 1)
    multi_hot[torch.arange(1, N + 1), category[1:]] = 1.0
    text, image = torch.randn(N + 1, TEXT_DIM, generator=g), torch.randn(N + 1, IMAGE_DIM, generator=g)
    text[0], image[0] = 0, 0
    return {
        "category": category,
        "category_multi_hot": multi_hot,
        "category_transitions": torch.randint(0, 5, (C + 1, C + 1), generator=g).float(),
        "popularity": torch.randint(0, 9, (N + 1,), generator=g).float(),
        "text": text,
        "image": image,
        # 8 users' distinct training items (CSR, ascending): the ReChorus cases' BPR negatives avoid them
        "train_history_ptr": torch.arange(0, 81, 10),
        "train_history_items": torch.cat([torch.randperm(N, generator=g)[:10].sort().values + 1 for _ in range(8)]),
        # the same 8 users' first timestamps and smallest gaps (TiSASRec's per-user interval scale)
        "user_time_origin": torch.full((8,), 1_400_000_000) + torch.randint(0, 86400, (8,), generator=g),
        "user_time_unit": torch.randint(60, 86400, (8,), generator=g),
    }


COMMON = dict(num_items=N, mask_history=True, topk=(5, 10))
RECHORUS = dict(loss="bpr", train_negatives_exclude="history", init_std=0.01, init_bias_std=0.01, decay_biases=False)
RECHORUS_SASREC = dict(RECHORUS, input_layernorm=False, d_ff=D, activation="relu", attn_projection=False, ln_eps=1e-5,
                       position_index="recent")
TEXT = dict(d=D, n_layers=1, n_heads=2, d_ff=2 * D, max_len=L, n_experts=2, num_capsules=4,
            data_info={"text_dim": TEXT_DIM})
MI = dict(d=D, K=K, max_len=L, n_neg=20)
CASES: dict[str, Callable[[], SequentialRecommender]] = {
    "Pop": lambda: Pop(**COMMON),
    "SASRec-CE": lambda: SASRec(d=D, n_layers=1, n_heads=2, max_len=L, loss="ce", **COMMON),
    "SASRec-BCE": lambda: SASRec(d=D, n_layers=1, n_heads=2, max_len=L, loss="bce", **COMMON),
    "GRU4Rec": lambda: GRU4Rec(d=D, **COMMON),
    # pairwise interval and position K/V terms in every layer, scaled per user (side info) or per window
    "TiSASRec": lambda: TiSASRec(d=D, n_layers=1, n_heads=2, max_len=L, **COMMON),
    "TiSASRec-BCE-window": lambda: TiSASRec(d=D, n_layers=1, n_heads=2, max_len=L, loss="bce",
                                            train_negatives_exclude="history", interval_scale="window", **COMMON),
    "ComiRec-SA": lambda: ComiRec(extractor="sa", **MI, **COMMON),
    "ComiRec-SA-popneg": lambda: ComiRec(extractor="sa", neg_sampler="popularity", **MI, **COMMON),
    "ComiRec-DR": lambda: ComiRec(extractor="dr", **MI, **COMMON),
    "ComiRec+": lambda: ComiRec(extractor="sa", transformer=True, pool="input", **MI, **COMMON),
    "MIND": lambda: MIND(**MI, **COMMON),
    "MIRACLE-pretrain": lambda: MIRACLE(stage="pretrain", **TEXT, **COMMON),
    "MIRACLE-inductive": lambda: MIRACLE(stage="finetune", setting="inductive", **TEXT, **COMMON),
    "MIRACLE-transductive": lambda: MIRACLE(stage="finetune", setting="transductive", **TEXT, **COMMON),
    "HORAE-pretrain": lambda: HORAE(stage="pretrain", **TEXT, **COMMON),
    "HORAE-inductive": lambda: HORAE(stage="finetune", setting="inductive", **TEXT, **COMMON),
    "HORAE-transductive": lambda: HORAE(stage="finetune", setting="transductive", **TEXT, **COMMON),
    "HORAE-transductive-noGate": lambda: HORAE(stage="finetune", setting="transductive", fusion_gate=False, **TEXT,
                                               **COMMON),
    # Fig. 7's temporal encodings: pairwise intervals and a sinusoidal encoding built from the timestamps;
    # the noGate cases are padding-invariant, so the trimmed-batch checks run on them too
    "HORAE-pretrain-relation-matrix": lambda: HORAE(stage="pretrain", temporal_encoding="relation_matrix", **TEXT,
                                                    **COMMON),
    "HORAE-transductive-relation-matrix-noGate": lambda: HORAE(stage="finetune", temporal_encoding="relation_matrix",
                                                               fusion_gate=False, **TEXT, **COMMON),
    "HORAE-pretrain-hawkes": lambda: HORAE(stage="pretrain", temporal_encoding="hawkes", **TEXT, **COMMON),
    "HORAE-transductive-hawkes-noGate": lambda: HORAE(stage="finetune", temporal_encoding="hawkes", fusion_gate=False,
                                                      **TEXT, **COMMON),
    "TiMiRec-stage1": lambda: TiMiRec(stage="pretrain", d=D, K=K, max_len=L, **COMMON),
    "TiMiRec-stage2": lambda: TiMiRec(stage="finetune", d=D, K=K, max_len=L, **COMMON),
    "TiMiRec+-stage2": lambda: TiMiRec(stage="finetune", transformer=True, d=D, K=K, max_len=L, **COMMON),
    # every peer switch at ReChorus's value (docs/compare.md "Peer differences")
    "GRU4Rec-BPR-ReChorus": lambda: GRU4Rec(d=D, loss="bpr", train_negatives_exclude="history", **COMMON),
    "SASRec-ReChorus": lambda: SASRec(d=D, n_layers=1, n_heads=2, max_len=L, **RECHORUS_SASREC, **COMMON),
    "ComiRec-SA-ReChorus": lambda: ComiRec(extractor="sa", **MI, **RECHORUS, position_index="recent", **COMMON),
    "TiMiRec+-stage2-ReChorus": lambda: TiMiRec(stage="finetune", transformer=True, d=D, K=K, max_len=L, **RECHORUS,
                                                position_index="recent", activation="relu", attn_projection=False,
                                                **COMMON),
    "HPCL4SR": lambda: HPCL4SR(num_categories=C, **{**MI, "max_len": L + 4}, **COMMON),
    "HM4SR": lambda: HM4SR(d=D, d_ff=2 * D, max_len=L, text_dim=TEXT_DIM, image_dim=IMAGE_DIM, num_categories=C,
                           n_interactive_experts=2, n_temporal_experts=2, num_interval_buckets=3000, **COMMON),
    # Fig. 5's time embeddings (a calendar computed from the timestamps, a learned frequency)
    "HM4SR-day-of-year": lambda: HM4SR(d=D, d_ff=2 * D, max_len=L, text_dim=TEXT_DIM, image_dim=IMAGE_DIM,
                                       num_categories=C, n_interactive_experts=2, n_temporal_experts=2,
                                       time_embeddings="day_of_year", **COMMON),
    "HM4SR-cos-cpsum": lambda: HM4SR(d=D, d_ff=2 * D, max_len=L, text_dim=TEXT_DIM, image_dim=IMAGE_DIM,
                                   num_categories=C, n_interactive_experts=2, n_temporal_experts=2,
                                   time_embeddings="cos", cp_reduction="sum", **COMMON),
    "HM4SR-day": lambda: HM4SR(d=D, d_ff=2 * D, max_len=L, text_dim=TEXT_DIM, image_dim=IMAGE_DIM, num_categories=C,
                               n_interactive_experts=2, n_temporal_experts=2, time_embeddings="day",
                               time_span=(1_500_000_000, 1_500_000_000 + 400 * 86400), **COMMON),
    "MIRACLE-paper-forms": lambda: MIRACLE(stage="pretrain", routing_agreement="h", gate_bias=True,
                                           attention_activation="tanh", **TEXT, **COMMON),
}
TRAINABLE = [name for name in CASES if name != "Pop"]


def build(name: str) -> SequentialRecommender:
    torch.manual_seed(0)
    model = CASES[name]()
    model.attach_side_info(side_info())
    return model


def train_step(model: SequentialRecommender, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.train()
    terms = model.training_loss(batch)
    loss = torch.stack(list(terms.values())).sum()
    loss.backward()
    return loss


def eval_batches() -> list[dict[str, torch.Tensor]]:
    """Full ranking (with history masking), sampled negatives, several targets."""
    full = make_batch(B=6, L=L, num_items=N, seed=1)
    sampled = make_batch(B=6, L=L, num_items=N, seed=2, n_neg=7)
    multi = make_batch(B=6, L=L, num_items=N, seed=3, n_targets=3)
    multi["targets"][0, 1:] = 0  # padded targets
    return [full, sampled, multi]


@pytest.mark.parametrize("name", list(CASES))
def test_every_tensor_is_created_on_the_device_of_the_inputs(name: str) -> None:
    model = build(name)
    train_batch = make_batch(B=6, L=L, num_items=N, seed=0, min_len=1)
    batches = eval_batches()  # on CPU, like the model
    with torch.device("meta"):
        if name != "Pop":
            loss = train_step(model, train_batch)
            assert torch.isfinite(loss)
        model.eval()
        with torch.no_grad():
            for batch in batches:
                model._eval_step(batch, "test")
            out = model.predict_step(batches[0], 0)
        results = {key: model.metrics[key].compute() for key in ("test_full", "test_sampled", "test_multi")}
    assert out["items"].device.type == "cpu" and out["items"].shape == (6, 10)
    for key, values in results.items():
        assert all(v.device.type == "cpu" and torch.isfinite(v) for v in values.values()), key
        assert model.metrics[key].count.item() == 6, key


@pytest.mark.parametrize("name", list(CASES))
def test_side_info_moves_with_the_module(name: str) -> None:
    """No tensor that forward reads sits in a plain attribute: ``.to(device)`` moves them all."""
    model = build(name)
    stray = [
        f"{mod_name or type(model).__name__}.{attr}"
        for mod_name, module in model.named_modules()
        if not isinstance(module, Metric)  # torchmetrics moves its states in Metric._apply
        for attr, value in vars(module).items()
        if isinstance(value, torch.Tensor)
    ]
    assert not stray, f"tensors outside parameters/buffers (not moved by .to()): {stray}"
    model.to(torch.float64)  # a dtype move reaches exactly what a device move reaches
    floats = [n for n, b in model.named_buffers() if b.is_floating_point() and not n.startswith("metrics.")]
    assert all(model.get_buffer(n).dtype == torch.float64 for n in floats), floats
    if name in ("MIRACLE-pretrain", "HORAE-transductive"):
        assert model.item_encoder.text.dtype == torch.float64 and model.item_encoder.text.shape[0] == N + 1
    if name == "HM4SR":
        assert {"text_features", "image_features", "category_multi_hot"} <= {n for n, _ in model.named_buffers()}
    if name == "HPCL4SR":
        assert {"item_category", "graph.propagation"} <= {n for n, _ in model.named_buffers()}
    if name == "TiSASRec":
        assert {"user_time_origin", "user_time_unit"} <= {n for n, _ in model.named_buffers()}
    if name == "SASRec-ReChorus":
        assert {"train_negatives.history.keys", "train_negatives.history.ptr"} <= {n for n, _ in model.named_buffers()}
    if name == "ComiRec-SA-popneg":
        assert model.rec_loss.probs is not None and "rec_loss.probs" in dict(model.named_buffers())


@pytest.mark.parametrize("name", TRAINABLE)
def test_bf16_autocast_training_step_is_finite(name: str) -> None:
    """What ``trainer.precision: bf16-mixed`` runs on CPU: the loss and every gradient stay finite."""
    model = build(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = train_step(model, make_batch(B=6, L=L, num_items=N, seed=0, min_len=1))
    assert torch.isfinite(loss), name
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), name
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in eval_batches():
            model._eval_step(batch, "test")
    for key in ("test_full", "test_sampled", "test_multi"):
        assert all(torch.isfinite(v) for v in model.metrics[key].compute().values()), (name, key)


def test_metrics_accumulate_in_float64_from_bf16_scores() -> None:
    """bf16 scores are ranked exactly as their float32 copy and sums stay float64."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, N + 1, generator=g).to(torch.bfloat16)  # many ties in bf16
    target = torch.randint(1, N + 1, (64,), generator=g)
    a, b = RankingMetrics(ks=(5, 10)), RankingMetrics(ks=(5, 10))
    a.update(scores, target)
    b.update(scores.float(), target)
    for state in (a.hits, a.dcg, a.rr, a.count):
        assert state.dtype == torch.float64
    for k, v in a.compute().items():
        assert v.dtype == torch.float32 and v == b.compute()[k], k
    targets = torch.randint(1, N + 1, (64, 3), generator=g)
    m, m32 = MultiTargetMetrics(ks=(5, 10)), MultiTargetMetrics(ks=(5, 10))
    m.update(scores, targets)
    m32.update(scores.float(), targets)
    assert m.recall.dtype == m.dcg_ratio.dtype == torch.float64
    assert all(v == m32.compute()[k] for k, v in m.compute().items())


def test_missing_compiler_names_why_inductor_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a C++ compiler on PATH, ``zoo fit --compile`` trains eager and says why (zoo/cli.py)."""
    import zoo.models.base as base

    monkeypatch.setattr(base.shutil, "which", lambda name: None)
    assert "no C++ compiler" in base.missing_compiler("inductor")
    assert base.missing_compiler("eager") is None  # TorchDynamo's eager backend generates no code


@pytest.mark.slow  # cold inductor compile: ~30 s (SASRec) + ~60 s (HORAE) + ~20 s (HPCL4SR) of CPU
@pytest.mark.parametrize("name, scope", [("SASRec-CE", "modules"), ("HORAE-transductive", "modules"),
                                         ("HPCL4SR", "loss")])
def test_compile_inductor_trains_a_few_steps(name: str, scope: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``compile_modules`` (the CLI's ``compile``/``compile_scope``) with inductor: three training steps
    equal the eager model's losses within float tolerance."""
    reason = missing_compiler("inductor")
    if reason:
        pytest.skip(reason)
    # compile_modules sets SETUPTOOLS_USE_DISTUTILS=stdlib for inductor's C++ builder (zoo/models/base.py);
    # set here first so that the test session gets its environment back afterwards
    monkeypatch.setenv("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    torch._dynamo.reset()
    eager, compiled = build(name), build(name)
    compiled.load_state_dict(eager.state_dict())
    assert compiled.compile_modules(backend="inductor", scope=scope)
    batch = make_batch(B=6, L=L, num_items=N, seed=0, min_len=1)
    losses = {}
    t0 = time.perf_counter()
    # fallback_random: inductor draws dropout/noise with eager's RNG, so both runs see the same draws
    with torch._inductor.config.patch(fallback_random=True):
        for tag, m in (("eager", eager), ("compiled", compiled)):
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            losses[tag] = []
            for _ in range(3):
                opt.zero_grad()
                torch.manual_seed(1)
                loss = train_step(m, batch)
                opt.step()
                losses[tag].append(loss.item())
    print(f"{name}: eager {losses['eager']} compiled {losses['compiled']} in {time.perf_counter() - t0:.1f}s")
    assert losses["compiled"][-1] < losses["compiled"][0]
    torch.testing.assert_close(torch.tensor(losses["compiled"]), torch.tensor(losses["eager"]), rtol=1e-3, atol=1e-4)


def test_cli_fit_with_bf16_mixed(ml_folder, tmp_path) -> None:
    """``zoo fit --trainer.precision bf16-mixed`` trains, validates and tests on CPU."""
    from test_cli import tiny_sasrec_fit

    r = tiny_sasrec_fit(ml_folder, tmp_path, "bf16", "--trainer.precision", "bf16-mixed")
    assert "bf16" in r.stdout + r.stderr  # Lightning names the precision it uses
    test = json.loads((tmp_path / "bf16" / "test_metrics.json").read_text())["test"]
    assert test and all(0.0 <= v <= 1.0 for v in test.values()), test


def test_gpu_check_cpu_smoke_writes_its_table(ml_folder, tmp_path) -> None:
    """benchmarks/gpu_check.sh's code path (cell runner, Probe callback, fail-soft table) on CPU."""
    from test_cli import tiny_data_args

    out = tmp_path / "gpu_check.md"
    data = tiny_data_args(ml_folder, tmp_path / "cache") + ["--data.init_args.max_len", "10", "--model.init_args.d", "16",
                                                             "--model.init_args.max_len", "10"]
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--models", "sasrec", "gru4rec",
           "--precisions", "bf16-mixed", "--jobs", "2", "--steps", "3", "--warmup", "1", "--out", str(out), "--work",
           str(tmp_path / "work"), "--", *data]
    earlier = tmp_path / "work" / "sasrec-1-bf16-mixed-e"  # a previous check's run folder: rerunning must not fail on it
    earlier.mkdir(parents=True)
    (earlier / "test_metrics.json").write_text("{}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PY": sys.executable})
    table = out.read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| sasrec") or ln.startswith("| gru4rec")]
    assert len(rows) == 2 and "2 cells ran at a time" in table, table
    sasrec, gru4rec = rows
    assert sasrec.endswith("| OK |") and "ndcg@10" in sasrec, table + r.stdout[-2000:] + r.stderr[-2000:]
    cells = [c.strip() for c in sasrec.split("|")]
    assert float(cells[3]) > 0 and float(cells[4]) > 0 and float(cells[5]) > 0  # steps/s, eval s, final loss
    # GRU4Rec has no max_len argument: its cell fails, the table records why and goes on
    assert "error" in gru4rec and "max_len" in gru4rec and r.returncode == 1, table


@pytest.mark.parametrize("name", list(CASES))
def test_fused_full_ranking_equals_the_materialised_one(name: str) -> None:
    """Every model's evaluation ranks (chunked product for single-vector models, fused mask and
    count otherwise) equal the ranks of its materialised ``score_all`` matrix, with and without
    history masking, over several item chunks."""
    from test_metrics import _reference_rank

    model = build(name).eval()
    model.eval_chunk_size = 16  # 51 items -> 4 chunks
    batch = make_batch(B=6, L=L, num_items=N, seed=4)
    batch["history_items"][1, -1] = batch["target"][1]  # a repeated target
    with torch.no_grad():
        user = model.user_representation(batch)
        scores = model.score_all(user)
        for mask in (False, True):
            model.mask_history = mask
            expected = _reference_rank(scores, batch["target"], batch["history_items"] if mask else None)
            assert torch.equal(model.full_ranks(user, batch), expected), (name, mask)


def _floats(x: Any) -> torch.Tensor:
    """Every floating tensor of a user representation (a tensor, tuple or state), flattened."""
    if torch.is_tensor(x):
        return x.float().flatten() if x.is_floating_point() else torch.zeros(0)
    parts = x.values() if isinstance(x, dict) else (vars(x).values() if hasattr(x, "__dict__") else x)
    return torch.cat([_floats(v) for v in parts if torch.is_tensor(v) or isinstance(v, (tuple, list, dict))] or [torch.zeros(0)])


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_pad_invariant_model_is_unchanged_by_trimmed_batches(name: str) -> None:
    """``pad_invariant`` is a claim evaluation relies on (SequentialRecommender.trim_padding): for
    every model that makes it, dropping the all-pad leading columns leaves the representation equal."""
    model = build(name)
    model.eval()
    if not model.pad_invariant:
        pytest.skip(f"{name} is not declared padding-invariant")
    for seed, longest in ((1, 1), (2, 3), (3, L - 2)):
        batch = make_batch(B=6, L=L, num_items=N, seed=seed)
        batch["item_seq"][:, : L - longest] = 0
        batch["time_seq"][:, : L - longest] = 0
        batch["seq_len"] = (batch["item_seq"] > 0).sum(1)
        trimmed = model.trim_padding(batch)
        assert trimmed["item_seq"].shape[1] == int(batch["seq_len"].max()) < L
        with torch.no_grad():
            got, want = _floats(model.user_representation(trimmed)), _floats(model.user_representation(batch))
        assert want.numel() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_pad_invariant_model_trains_the_same_on_trimmed_batches(name: str) -> None:
    """``data.group_by_length`` trims TRAINING batches of pad-invariant models
    (SequentialRecommender.training_step): every loss term must be unchanged by dropping the
    all-pad leading columns, for prefix batches and for windows (``target_seq``).  Dropout is off
    (eval mode): its masks are the one thing drawn per position."""
    model = build(name)
    model.eval()
    if not model.pad_invariant:
        pytest.skip(f"{name} is not declared padding-invariant")
    batch = make_batch(B=6, L=L, num_items=N, seed=5)
    longest = 3
    batch["item_seq"][:, : L - longest] = 0
    batch["time_seq"][:, : L - longest] = 0
    batch["seq_len"] = (batch["item_seq"] > 0).sum(1)
    windows = dict(batch)
    nxt = torch.cat([batch["item_seq"][:, 1:], batch["target"][:, None]], 1)  # [B, L] the next item
    windows["target_seq"] = nxt.masked_fill(batch["item_seq"] == 0, 0)
    model.data_info["group_by_length"] = True
    for b in (batch, windows):
        trimmed = model.trim_padding(b)
        assert trimmed["item_seq"].shape[1] == longest and all(
            trimmed[k].shape[1] == longest for k in model.SEQUENCE_KEYS if k in b
        )
        with torch.no_grad():
            torch.manual_seed(0)
            want = model.training_loss(b)
            torch.manual_seed(0)
            got = model.training_loss(trimmed)
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")


def test_gpu_check_settings_filter() -> None:
    """--precisions/--modes/--devices pick the GPU cells (a short lease times eager cells only)."""
    from benchmarks.gpu_check import Setting, gpu_settings

    assert gpu_settings(["bf16-mixed"], ["eager"], [1]) == [Setting(1, "bf16-mixed", False)]
    assert len(gpu_settings(["32-true", "bf16-mixed"], ["eager", "compile"], [1, 2])) == 8
    assert [s.compile for s in gpu_settings(["32-true"], ["eager", "compile"], [2])] == [False, True]
