"""The switches that make a run like-for-like with ReChorus (docs/compare.md "Peer differences"):
each changes what it should, and the defaults stay the zoo's (the loss-curve goldens of
tests/test_training_speed.py pin them too)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from datamodules import SequentialDataModule
from conftest import make_batch
from zoo.models.comirec import ComiRec
from zoo.models.gru4rec import GRU4Rec
from zoo.models.sasrec import SASRec
from zoo.models.timirec import TiMiRec
from zoo.modules.embeddings import LearnedPositions
from zoo.modules.negatives import HistoryNegatives
from zoo.modules.sampled_softmax import NextItemLoss
from zoo.modules.transformer import NEG_INF

ROOT = Path(__file__).resolve().parents[1]
N, L = 30, 8
RECHORUS = dict(loss="bpr", train_negatives_exclude="history", input_layernorm=False, d_ff=16, activation="relu",
                attn_projection=False, ln_eps=1e-5, init_std=0.01, init_bias_std=0.01, position_index="recent",
                decay_biases=False)


def csr(histories: list[list[int]]) -> dict[str, torch.Tensor]:
    """Side info ``train_history_ptr / train_history_items`` of the given per-user item lists."""
    items = [sorted(set(h)) for h in histories]
    ptr = np.cumsum([0] + [len(h) for h in items])
    return {"train_history_ptr": torch.tensor(ptr, dtype=torch.long),
            "train_history_items": torch.tensor([i for h in items for i in h], dtype=torch.long)}


# ------------------------------------------------------------------ 1. BPR negatives
def test_history_negatives_are_uniform_over_exactly_the_unseen_items():
    g = torch.Generator().manual_seed(0)
    hist = [torch.randperm(N, generator=g)[:k].add(1).tolist() for k in (0, 5, 29, 17)]  # user 2: one item unseen
    sampler = HistoryNegatives(N)
    sampler.set_history(**{k.removeprefix("train_history_"): v for k, v in csr(hist).items()})
    torch.manual_seed(0)
    draws = 4000
    user = torch.arange(4).repeat_interleave(draws)
    neg = sampler(user).view(4, draws)
    assert neg.dtype == torch.long and neg.device == user.device
    for u, h in enumerate(hist):
        unseen = sorted(set(range(1, N + 1)) - set(h))
        counts = torch.bincount(neg[u], minlength=N + 1)
        assert set(neg[u].tolist()) == set(unseen)  # never a seen item, every unseen item reachable
        expect = draws / len(unseen)
        sd = math.sqrt(expect * (1 - 1 / len(unseen)))
        assert (counts[unseen].float() - expect).abs().max() < 5 * sd + 1e-9  # uniform


def test_history_negatives_refuse_bad_input():
    s = HistoryNegatives(5)
    with pytest.raises(RuntimeError, match="train_history_ptr"):
        s(torch.tensor([0]))
    with pytest.raises(ValueError, match="ascending"):
        s.set_history(torch.tensor([0, 2]), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="1..5"):
        s.set_history(torch.tensor([0, 1]), torch.tensor([6]))
    s.set_history(torch.tensor([0, 5]), torch.tensor([1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="every item"):
        s(torch.tensor([0]))
    with pytest.raises(ValueError, match="applies to loss='bpr'"):
        NextItemLoss(5, "sampled_softmax", exclude="history")
    with pytest.raises(ValueError, match="loss='ce' samples no negatives"):
        SASRec(num_items=5, train_negatives_exclude="history")


def _histories(B: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randperm(N, generator=g)[: 10 + 2 * u].add(1).tolist() for u in range(B)]


def _history_batch(B: int = 6, windows: bool = False) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    batch = make_batch(B=B, L=L, num_items=N, min_len=3)
    hist = _histories(B)
    for u, h in enumerate(hist):  # the window and the target are part of the training history, as in the data
        h += [i for i in batch["item_seq"][u].tolist() if i] + [int(batch["target"][u])]
    if windows:
        batch["target_seq"] = torch.cat([batch["item_seq"][:, 1:], batch["target"][:, None]], 1)
    return batch, hist


@pytest.mark.parametrize("make", [
    lambda: ComiRec(num_items=N, d=8, K=2, max_len=L, loss="bpr", train_negatives_exclude="history"),
    lambda: TiMiRec(num_items=N, d=8, K=2, max_len=L, train_negatives_exclude="history"),
    lambda: SASRec(num_items=N, d=8, n_heads=1, max_len=L, loss="bpr", train_negatives_exclude="history"),
    lambda: GRU4Rec(num_items=N, d=8, loss="bpr", train_negatives_exclude="history"),
], ids=["comirec", "timirec", "sasrec", "gru4rec"])
def test_history_negatives_never_hit_the_users_training_history(make, monkeypatch):
    batch, hist = _history_batch()
    model = make()
    model.attach_side_info(csr(hist))
    seen: list[torch.Tensor] = []
    sampler = (model.rec_loss if hasattr(model, "rec_loss") else model).train_negatives.history
    real = sampler.forward
    monkeypatch.setattr(sampler, "forward", lambda user: seen.append(out := real(user)) or out)
    for _ in range(50):
        loss = sum(model.training_loss(batch).values())
        assert torch.isfinite(loss)
    neg = torch.stack(seen)  # [50, B]
    assert neg.shape == (50, len(hist))
    for u, h in enumerate(hist):
        assert not set(neg[:, u].tolist()) & set(h)
    # the default ("window") draws items of the user's history outside the window
    model_default = type(model)(**{**dict(model.hparams), "train_negatives_exclude": "window"})
    draw = (model_default.rec_loss if hasattr(model_default, "rec_loss") else model_default).train_negatives
    drawn = torch.stack([draw(batch["target"], batch["item_seq"], batch["user"]) for _ in range(200)])
    assert any(set(drawn[:, u].tolist()) & set(h) for u, h in enumerate(hist))


@pytest.mark.parametrize("make", [
    lambda: SASRec(num_items=N, d=8, n_heads=1, max_len=L, loss="bce", train_negatives_exclude="history"),
    lambda: GRU4Rec(num_items=N, d=8, loss="bpr", train_negatives_exclude="history"),
], ids=["sasrec", "gru4rec"])
def test_window_targets_draw_their_users_negatives(make, monkeypatch):
    """With the datamodule's windows every real position is a target; each draws for its own user."""
    batch, hist = _history_batch(windows=True)
    model = make()
    model.attach_side_info(csr(hist))
    real = batch["target_seq"] > 0
    rows = real.nonzero()[:, 0]
    torch.manual_seed(0)
    for _ in range(30):
        neg = model.train_negatives(batch["target_seq"][real], batch["item_seq"][rows], batch["user"][rows])
        assert all(int(n) not in hist[int(r)] for n, r in zip(neg, rows))
    seen: list[torch.Tensor] = []  # the loss itself asks for one negative per target, for that target's user
    sampler = model.train_negatives.history
    draw = sampler.forward
    monkeypatch.setattr(sampler, "forward", lambda user: seen.append(user.clone()) or draw(user))
    assert torch.isfinite(model.training_loss(batch)["rec"])
    assert len(seen) == 1 and seen[0].tolist() == batch["user"][rows].tolist()


@pytest.mark.parametrize("make", [
    lambda: SASRec(num_items=N, d=8, n_heads=1, max_len=L, loss="bpr", dropout=0.0),
    lambda: GRU4Rec(num_items=N, d=8, loss="bpr", dropout=0.0),
], ids=["sasrec", "gru4rec"])
def test_bpr_loss_is_rechorus_form(make):
    """loss="bpr": -log sigmoid(s+ - s-) (ReChorus GeneralModel.loss with one negative)."""
    batch = make_batch(B=5, L=L, num_items=N)
    model = make()
    model.eval()
    torch.manual_seed(4)
    loss = model.training_loss(batch)["rec"]
    torch.manual_seed(4)
    u = model.user_representation(batch)
    neg = torch.randint(1, N + 1, batch["target"].shape)
    pos_s, neg_s = (u * model.item_emb(batch["target"])).sum(-1), (u * model.item_emb(neg)).sum(-1)
    torch.testing.assert_close(loss, -torch.sigmoid(pos_s - neg_s).log().mean())


def test_gru4rec_loss_switch_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="loss must be 'ce' or 'bpr'"):
        GRU4Rec(num_items=N, loss="bce")
    with pytest.raises(ValueError, match="train_negatives_exclude applies to loss='bpr'"):
        GRU4Rec(num_items=N, train_negatives_exclude="history")
    with pytest.raises(ValueError, match="loss must be 'ce', 'bce' or 'bpr', got 'sampled'"):
        SASRec(num_items=N, loss="sampled")
    with pytest.raises(ValueError, match="applies to loss='bce' or 'bpr'; loss='ce'"):
        SASRec(num_items=N, train_negatives_exclude="window")


def test_datamodule_hands_over_each_users_training_items(ml_folder, tmp_path):
    dm = SequentialDataModule(format="movielens", paths={"path": str(ml_folder)}, cache_dir=str(tmp_path), k_core=1)
    info, d = dm.side_info(), dm.data
    ptr, items = info["train_history_ptr"].numpy(), info["train_history_items"].numpy()
    assert ptr.shape == (d.num_users + 1,) and ptr[0] == 0 and ptr[-1] == len(items)
    for u in range(d.num_users):  # leave-one-out: every item but the last two
        s, e = d.user_ptr[u], d.user_ptr[u + 1]
        assert items[ptr[u]:ptr[u + 1]].tolist() == sorted(set(d.items[s:max(e - 2, s)].tolist()))
    assert info["popularity"].sum() == sum(max(int(e - s) - 2, 0) for s, e in zip(d.user_ptr[:-1], d.user_ptr[1:]))


# ------------------------------------------------------------------ 2. weight decay on biases
def test_decay_biases_false_puts_every_bias_in_a_zero_decay_group():
    model = TiMiRec(num_items=N, d=8, K=2, max_len=L, transformer=True, weight_decay=0.1, decay_biases=False,
                    param_group_lr={"predictor": 0.5})
    opt = model.configure_optimizers()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {(g["lr"], g["weight_decay"]): {names[id(p)] for p in g["params"]} for g in opt.param_groups}
    no_decay = set().union(*(ns for (lr, wd), ns in groups.items() if wd == 0.0))
    decayed = set().union(*(ns for (lr, wd), ns in groups.items() if wd == 0.1))
    assert no_decay == {n for n in names.values() if "bias" in n.rsplit(".", 1)[-1]}
    assert {"predictor.gru.bias_ih_l0", "extractor.pooling.W1.bias",
            "extractor.transformer.layers.0.attention.layer_norm.bias"} <= no_decay
    assert {"item_emb.weight", "extractor.transformer.layers.0.attention.layer_norm.weight"} <= decayed  # as ReChorus
    assert groups[(0.5, 0.0)] == {n for n in no_decay if n.startswith("predictor")}  # lr groups kept apart
    default = ComiRec(num_items=N, d=8, K=2, max_len=L, weight_decay=0.1).configure_optimizers()
    assert [g["weight_decay"] for g in default.param_groups] == [0.1]  # decay_biases defaults to True
    timirec = TiMiRec(num_items=N, d=8, K=2, max_len=L, weight_decay=0.1).configure_optimizers()
    assert sorted(g["weight_decay"] for g in timirec.param_groups) == [0.0, 0.1]  # TiMiRec: the code's False


# ------------------------------------------------------------------ 3. initialisation
@pytest.mark.parametrize("cls,kw,default_std", [
    (SASRec, dict(d=64), 0.02), (ComiRec, dict(d=64, K=2), 0.02), (TiMiRec, dict(d=64, K=2, init_bias_std=0.0), 0.01),
], ids=["sasrec", "comirec", "timirec"])  # TiMiRec's default init_bias_std is already the code's 0.01
def test_init_std_is_measured(cls, kw, default_std):
    torch.manual_seed(0)
    default = cls(num_items=2000, **kw)
    kw = {k: v for k, v in kw.items() if k != "init_bias_std"}
    rechorus = cls(num_items=2000, init_std=0.01, init_bias_std=0.01, **kw)
    assert default.item_emb.weight.std().item() == pytest.approx(default_std, rel=0.03)
    assert rechorus.item_emb.weight.std().item() == pytest.approx(0.01, rel=0.03)
    linears = [m for m in rechorus.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    biases = torch.cat([m.bias.flatten() for m in linears])
    assert biases.std().item() == pytest.approx(0.01, rel=0.3) and (biases != 0).all()
    assert all((m.bias == 0).all() for m in default.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)
    assert all((m.weight == 1).all() for m in rechorus.modules() if isinstance(m, torch.nn.LayerNorm))


# ------------------------------------------------------------------ 4. position index
def test_recent_position_index_counts_from_the_newest_item():
    seq = torch.tensor([[0, 0, 7, 8, 9], [1, 2, 3, 4, 5]])
    pos = LearnedPositions(5, 4, index="recent").positions(seq)
    assert pos[0, 2:].tolist() == [2, 1, 0] and pos[1].tolist() == [4, 3, 2, 1, 0]
    lengths = (seq > 0).sum(1, keepdim=True)  # ReChorus: lengths - idx on right-padded rows, newest = 1
    rechorus = lengths - torch.arange(5)
    assert pos[0, 2:].tolist() == (rechorus[0, :3] - 1).tolist()
    assert LearnedPositions(5, 4, index="slot").positions(seq)[0].tolist() == [0, 1, 2, 3, 4]


def test_slot_and_recent_are_the_same_model_on_max_len_batches():
    """On batches padded to max_len (the datamodule's), slot p is recency L-1-p: flipping the table's rows
    turns one model into the other (the docstring's claim that "slot" equals ReChorus's index)."""
    batch = make_batch(B=6, L=L, num_items=N)
    torch.manual_seed(0)
    slot = SASRec(num_items=N, d=8, n_heads=1, max_len=L, dropout=0.0)
    recent = SASRec(num_items=N, d=8, n_heads=1, max_len=L, dropout=0.0, position_index="recent")
    state = slot.state_dict()
    state["pos_emb.embedding.weight"] = state["pos_emb.embedding.weight"].flip(0)
    recent.load_state_dict(state)
    slot.eval(), recent.eval()
    with torch.no_grad():
        a = slot.score_all(slot.user_representation(batch))
        b = recent.score_all(recent.user_representation(batch))
        torch.testing.assert_close(a, b)
        c = SASRec(**{**dict(slot.hparams), "position_index": "oldest"})
        c.load_state_dict(slot.state_dict())
        c.eval()
        assert not torch.allclose(a, c.score_all(c.user_representation(batch)))


@pytest.mark.parametrize("cls", [ComiRec, TiMiRec])
def test_multi_interest_position_index_switch_changes_the_interests(cls):
    batch = make_batch(B=6, L=L, num_items=N)
    torch.manual_seed(0)
    a = cls(num_items=N, d=8, K=2, max_len=L)
    other = "recent" if cls is ComiRec else "oldest"
    b = cls(num_items=N, d=8, K=2, max_len=L, position_index=other)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert a.extractor.pos_emb.index != b.extractor.pos_emb.index
    with torch.no_grad():
        assert not torch.allclose(a.interests(batch)[0], b.interests(batch)[0])


# ------------------------------------------------------------------ 5. SASRec layer structure
def rechorus_sasrec_user(model: SASRec, item_seq: torch.Tensor) -> torch.Tensor:
    """ReChorus's SASRec forward (SASRec.py + utils/layers.py TransformerLayer), written from its
    description and applied to the zoo model's weights: no input LayerNorm, recency positions,
    heads without output projection, post-LN, ReLU FFN, the newest item's state."""
    B, Lq = item_seq.shape
    real = item_seq > 0
    h = model.item_emb(item_seq) + model.pos_emb.embedding(Lq - 1 - torch.arange(Lq))  # [B, L, d]
    allowed = real[:, None, None, :] & torch.ones(Lq, Lq, dtype=torch.bool).tril()  # [B, 1, L, L]
    for layer in model.encoder.layers:
        att, ff = layer.attention, layer.feed_forward
        nh = att.n_heads

        def heads(x):
            return x.view(B, Lq, nh, -1).transpose(1, 2)  # [B, h, L, d_k]

        q, k, v = heads(att.query(h)), heads(att.key(h)), heads(att.value(h))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, -math.inf)
        ctx = torch.nan_to_num(scores.softmax(-1)) @ v
        ctx = ctx.transpose(1, 2).reshape(B, Lq, -1)  # no output projection
        h1 = F.layer_norm(ctx + h, h.shape[-1:], att.layer_norm.weight, att.layer_norm.bias, 1e-5)
        out = ff.dense_2(ff.dense_1(h1).relu())
        h = F.layer_norm(out + h1, h.shape[-1:], ff.layer_norm.weight, ff.layer_norm.bias, 1e-5)
    return h[:, -1]


def test_sasrec_rechorus_switches_give_rechorus_layers():
    d = 16
    kw = {k: v for k, v in RECHORUS.items()}
    model = SASRec(num_items=N, d=d, n_layers=2, n_heads=2, max_len=L, dropout=0.0, **kw)
    model.eval()
    layer = model.encoder.layers[0]
    assert isinstance(model.emb_norm, torch.nn.Identity) and isinstance(layer.attention.dense, torch.nn.Identity)
    assert layer.feed_forward.dense_1.out_features == d and layer.attention.layer_norm.eps == 1e-5
    # parameter count = ReChorus's SASRec (item table N+1, positions max_len+1: one more row, for pads)
    per_layer = 3 * (d * d + d) + 2 * d + (d * d + d) * 2 + 2 * d
    rechorus = (N + 1) * d + (L + 1) * d + 2 * per_layer
    assert sum(p.numel() for p in model.parameters()) == rechorus - d
    batch = make_batch(B=7, L=L, num_items=N, min_len=1)
    with torch.no_grad():
        torch.testing.assert_close(model.user_representation(batch), rechorus_sasrec_user(model, batch["item_seq"]))
        default = SASRec(num_items=N, d=d, n_layers=2, n_heads=2, max_len=L, dropout=0.0)
        default.eval()
        assert isinstance(default.emb_norm, torch.nn.LayerNorm)
        assert default.encoder.layers[0].feed_forward.dense_1.out_features == 4 * d
        assert not torch.allclose(default.user_representation(batch), rechorus_sasrec_user(default, batch["item_seq"]))


@pytest.mark.parametrize("switch", [dict(activation="gelu"), dict(attn_projection=True)])  # the defaults are the code's
def test_plus_layer_switches_change_timirec(switch):
    batch = make_batch(B=6, L=L, num_items=N)
    torch.manual_seed(0)
    a = TiMiRec(num_items=N, d=8, K=2, max_len=L, transformer=True, stage="pretrain")
    b = TiMiRec(num_items=N, d=8, K=2, max_len=L, transformer=True, stage="pretrain", **switch)
    b.load_state_dict(a.state_dict(), strict=False)
    a.eval(), b.eval()
    with torch.no_grad():
        assert not torch.allclose(a.interests(batch)[0], b.interests(batch)[0])


def test_padded_query_rows_stay_finite_without_projection():
    model = SASRec(num_items=N, d=8, n_heads=1, max_len=L, **{k: v for k, v in RECHORUS.items() if k != "d_ff"})
    batch = make_batch(B=4, L=L, num_items=N, min_len=1)
    assert torch.isfinite(model.encode(batch["item_seq"])).all() and NEG_INF > -math.inf


# ------------------------------------------------------------------ recipes
@pytest.mark.parametrize("name,keys", [
    ("sasrec_rechorus", ["loss", "train_negatives_exclude", "input_layernorm", "d_ff", "activation", "attn_projection",
                         "ln_eps", "init_std", "init_bias_std", "position_index", "decay_biases"]),
    ("comirec_rechorus", ["loss", "train_negatives_exclude", "init_std", "init_bias_std", "position_index", "decay_biases"]),
    ("timirec_rechorus_pretrain", ["loss", "train_negatives_exclude", "init_std", "init_bias_std", "position_index",
                                   "decay_biases", "activation", "attn_projection"]),
    ("timirec_rechorus", ["loss", "train_negatives_exclude", "init_std", "init_bias_std", "position_index",
                          "decay_biases", "activation", "attn_projection"]),
])
def test_rechorus_recipes_set_every_switch_to_rechorus(name, keys):
    text = (ROOT / "recipes" / f"{name}.yaml").read_text()
    args = yaml.safe_load(text)["model"]["init_args"]
    want = {**RECHORUS, "d_ff": args.get("d")}
    for key in keys:
        assert args[key] == want[key], f"{name}.yaml: {key}"
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:"))
        assert "ReChorus" in line, f"{name}.yaml: the comment of {key} names no ReChorus file"


def test_train_negatives_dispatch_and_errors():
    """The one sampler of every BPR/BCE objective: 'none' draws any real item, 'window' avoids
    the target and the window, 'history' refuses a batch without user ids and an unattached history."""
    from zoo.modules.negatives import TrainNegatives

    target = torch.randint(1, N + 1, (64,))
    window = torch.randint(1, N + 1, (64, L))
    none = TrainNegatives(N, "none")(target, window)
    assert none.min() >= 1 and none.max() <= N and none.shape == target.shape
    win = TrainNegatives(N, "window")(target, window)
    assert (win != target).all() and not (window == win[:, None]).any()
    hist = TrainNegatives(N, "history")
    with pytest.raises(ValueError, match="needs the batch's 'user' ids"):
        hist(target, window)
    with pytest.raises(RuntimeError, match="side info"):
        hist(target, window, torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="train_history_ptr"):
        hist.attach({})
    with pytest.raises(ValueError, match="must be one of"):
        TrainNegatives(N, "all")
