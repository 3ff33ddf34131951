"""TiMiRec / TiMiRec+: two stages, target-interest predictor and distillation (tiny configs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch
from model_checks import (
    assert_checkpoint_round_trip,
    assert_one_step_lowers_loss,
    assert_scores_shape,
    assert_switch_changes,
    total_loss,
)

from zoo.models.timirec import TiMiRec

N, D, K, L = 50, 16, 2, 10


def build(**over) -> TiMiRec:
    return TiMiRec(**{"num_items": N, "d": D, "K": K, "max_len": L, "T": 0.5, **over})


def spread(model: TiMiRec, std: float = 0.3) -> TiMiRec:
    """Larger random weights so that interests differ (the N(0, 0.01) init makes them equal)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


@pytest.mark.parametrize(
    "kw",
    [dict(stage="pretrain"), dict(stage="finetune"), dict(stage="pretrain", transformer=True), dict(stage="finetune", transformer=True)],
    ids=["pretrain", "finetune", "plus_pretrain", "plus_finetune"],
)
def test_shapes_loss_step_roundtrip(kw: dict, tmp_path) -> None:
    torch.manual_seed(0)
    model = build(**kw)
    batch = make_batch(B=6, L=L, num_items=N)
    V, _ = model.interests(batch)
    assert V.shape == (6, K, D)
    scores = assert_scores_shape(model, batch, N)
    cands = torch.cat([batch["target"][:, None], torch.randint(1, N + 1, (6, 9))], 1)
    torch.testing.assert_close(model.score_candidates(model.user_representation(batch), cands), scores.gather(1, cands))
    terms = model.training_loss(batch)
    assert set(terms) == ({"rec"} if kw["stage"] == "pretrain" else {"rec", "distill"})
    total_loss(model, make_batch(B=6, L=L, num_items=N, min_len=1, seed=5))  # heavy padding
    assert_one_step_lowers_loss(model, batch)
    assert_checkpoint_round_trip(model, batch, tmp_path)


def test_predictor_distribution_sums_to_one() -> None:
    model = spread(build()).eval()
    batch = make_batch(B=7, L=L, num_items=N, min_len=1)
    z_q = model.interest_logits(batch["item_seq"])
    assert z_q.shape == (7, K)
    w = model.interest_distribution(batch["item_seq"])
    torch.testing.assert_close(w.sum(-1), torch.ones(7))
    assert (w > 0).all()
    # inference aggregates the interests with it (Eq. 4)
    V, _ = model.interests(batch)
    v = (w[..., None] * V).sum(1)
    torch.testing.assert_close(model.score_all(model.user_representation(batch)), v @ model.item_emb.weight.T)


def test_predictor_uses_last_valid_gru_state() -> None:
    """Extra left pads do not change s (packed GRU over the real items only)."""
    model = spread(build()).eval()
    batch = make_batch(B=5, L=L, num_items=N)
    padded = F.pad(batch["item_seq"], (3, 0))
    torch.testing.assert_close(model.predictor.summary(batch["item_seq"]), model.predictor.summary(padded))
    seq = batch["item_seq"][:1]
    items = seq[seq > 0][None]  # [1, n] without pads
    emb = model.predictor.item_emb(items)
    _, h = model.predictor.gru(emb)
    torch.testing.assert_close(model.predictor.summary(seq)[0], h[-1, 0])


def _distill_grads(stop_grad: bool) -> tuple[float, float]:
    model = spread(build(stop_grad=stop_grad))
    batch = make_batch(B=8, L=L, num_items=N, min_len=3)
    model.zero_grad()
    model.training_loss(batch)["distill"].backward()
    ext = sum(p.grad.abs().sum().item() for n, p in model.named_parameters()
              if n.startswith(("extractor.", "item_emb.")) and p.grad is not None)
    pred = sum(p.grad.abs().sum().item() for p in model.predictor.parameters() if p.grad is not None)
    return ext, pred


def test_distillation_target_carries_no_gradient() -> None:
    ext, pred = _distill_grads(stop_grad=True)
    assert ext == 0.0 and pred > 0.0
    ext, pred = _distill_grads(stop_grad=False)  # the "w/o stopgrad" ablation (Eq. 8)
    assert ext > 0.0 and pred > 0.0


def test_distillation_value_is_t2_kl() -> None:
    model = spread(build(T=0.5))
    batch = make_batch(B=8, L=L, num_items=N, min_len=3)
    V, _ = model.interests(batch)
    e = model.item_emb(batch["target"])
    z_q = model.interest_logits(batch["item_seq"])
    z_p = torch.stack([F.cosine_similarity(V[:, k], e, dim=-1) for k in range(K)], 1)  # Eq. 5
    p, q = F.softmax(z_p / 0.5, -1), F.softmax(z_q / 0.5, -1)
    want = 0.25 * (p * (p.log() - q.log())).sum(-1).mean()  # T^2 KL(p || q)
    torch.testing.assert_close(model.distillation_loss(z_q, V, e), want)
    # w/o stopgrad, the code's form (default): the same KL value, now with a gradient into p
    model.stop_grad = False
    torch.testing.assert_close(model.distillation_loss(z_q, V, e), want)
    # Eq. 8 as printed (nostop_form="ce") is the cross-entropy, larger by the entropy T^2 H(p)
    model.nostop_form = "ce"
    torch.testing.assert_close(model.distillation_loss(z_q, V, e), want - 0.25 * (p * p.log()).sum(-1).mean())


def test_without_stopgrad_the_two_forms_train_the_extractor_differently() -> None:
    """KL(p||q) and -p log q differ by H(p): once p is trained (w/o stopgrad) their gradients into
    the extractor differ; with the stop-gradient both give none."""
    grads = {}
    for form in ("kl", "ce"):
        torch.manual_seed(0)
        model = spread(build(stop_grad=False, nostop_form=form))
        batch = make_batch(B=8, L=L, num_items=N, min_len=3)
        model.zero_grad()
        model.training_loss(batch)["distill"].backward()
        grads[form] = torch.cat([p.grad.flatten() for n, p in model.named_parameters()
                                 if n.startswith("extractor.") and p.grad is not None])
    assert grads["kl"].abs().sum() > 0 and not torch.allclose(grads["kl"], grads["ce"])
    with pytest.raises(ValueError, match="nostop_form"):
        build(nostop_form="js")


def test_single_interest_equals_greedy() -> None:
    """K = 1: the predicted aggregation is the single interest, i.e. ComiRec's max (footnote 5)."""
    torch.manual_seed(0)
    fine = spread(build(K=1)).eval()
    pre = build(K=1, stage="pretrain").eval()
    pre.load_state_dict(fine.state_dict(), strict=False)
    batch = make_batch(B=5, L=L, num_items=N)
    torch.testing.assert_close(
        fine.score_all(fine.user_representation(batch)), pre.score_all(pre.user_representation(batch))
    )


def test_finetune_loads_pretrained_extractor(tmp_path) -> None:
    torch.manual_seed(0)
    pre = spread(build(stage="pretrain"))
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": pre.state_dict()}, path)
    torch.manual_seed(1)
    fine = build(stage="finetune", pretrained_ckpt=str(path))
    pred_before = {k: v.clone() for k, v in fine.predictor.state_dict().items()}
    report = fine.load_pretrained(path)
    for k, v in pre.state_dict().items():
        torch.testing.assert_close(fine.state_dict()[k], v)
    assert all(k.startswith(("item_emb.", "extractor.")) for k in report["matched"])
    assert any(k.startswith("predictor.") for k in report["missing"])
    for k, v in fine.predictor.state_dict().items():
        torch.testing.assert_close(v, pred_before[k])  # the predictor starts fresh
    opt = fine.configure_optimizers()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in fine.extractor.parameters())  # not frozen


@pytest.mark.parametrize(
    "switch,what",
    [
        (dict(aggregation="mean"), "scores"),
        (dict(aggregation="max"), "scores"),
        (dict(distill=False), "loss"),
        (dict(stop_grad=False, nostop_form="ce"), "loss"),  # the "kl" form changes gradients only (tested above)
        (dict(T=2.0), "loss"),
        (dict(transformer=True), "scores"),
        (dict(loss="sampled_softmax", n_neg=20), "loss"),
        (dict(stage="pretrain"), "scores"),
    ],
)
def test_switches_change_computation(switch: dict, what: str) -> None:
    batch = make_batch(B=6, L=L, num_items=N, min_len=3)
    assert_switch_changes(lambda **kw: spread(build(**kw)), batch, switch, what)


def test_head_layers_switch() -> None:
    """Eq. 15's two-layer head vs ReChorus' single Linear (Beauty run): other logits, same rest."""
    two, one = spread(build()).eval(), spread(build(head_layers=1)).eval()
    assert [type(m).__name__ for m in two.predictor.head] == ["Linear", "Dropout", "ReLU", "Linear"]
    assert [type(m).__name__ for m in one.predictor.head] == ["Linear"]
    one.load_state_dict({k: v for k, v in two.state_dict().items() if not k.startswith("predictor.head.")}, strict=False)
    batch = make_batch(B=6, L=L, num_items=N)
    assert not torch.allclose(two.interest_logits(batch["item_seq"]), one.interest_logits(batch["item_seq"]))
    torch.testing.assert_close(two.interests(batch)[0], one.interests(batch)[0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stage"):
        build(stage="joint")
    with pytest.raises(ValueError, match="aggregation"):
        build(aggregation="sum")
    with pytest.raises(RuntimeError, match="predictor"):
        build(stage="pretrain").interest_logits(torch.ones(2, 3, dtype=torch.long))


def test_stage1_does_not_depend_on_stage2_arguments() -> None:
    """``TiMiRec.FINETUNE_ONLY``: a stage-1 model built with other stage-2 values has the same weights,
    scores and training step, so `zoo reproduce` may share one pre-training between such rows."""
    other = {"aggregation": "mean", "distill": False, "stop_grad": False, "nostop_form": "ce", "T": 3.0,
             "head_layers": 1, "head_dropout": 0.1}
    assert set(other) == TiMiRec.FINETUNE_ONLY
    batch = make_batch(B=6, L=L, num_items=N, min_len=3)
    models = []
    for kw in ({}, other):
        torch.manual_seed(0)
        models.append(build(stage="pretrain", **kw))
    a, b = models
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    torch.manual_seed(1)
    la = total_loss(a, batch)
    torch.manual_seed(1)
    lb = total_loss(b, batch)
    assert torch.equal(la, lb)
    torch.testing.assert_close(a.eval().score_all(a.user_representation(batch)),
                               b.eval().score_all(b.user_representation(batch)), rtol=0, atol=0)
    torch.manual_seed(0)  # ... while the fine-tuning stage does depend on them
    c = build(**other)
    assert c.state_dict().keys() != build().state_dict().keys()
