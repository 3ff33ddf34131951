"""MIRACLE (zoo/models/miracle.py) on a tiny config, plus its MoE adaptor and text item embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_batch
from model_checks import (
    assert_finite_with_heavy_padding_and_equal_times,
    assert_checkpoint_round_trip,
    assert_one_step_lowers_loss,
    assert_scores_shape,
    assert_switch_changes,
    total_loss,
)

from zoo.models.miracle import MIRACLE
from zoo.modules.moe import MoEAdaptor
from zoo.modules.text_items import TextItemEmbedding

N_ITEMS, TEXT_DIM, D, L = 50, 24, 16, 10
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def text_table(n_items: int = N_ITEMS, seed: int = 0) -> torch.Tensor:
    t = torch.randn(n_items + 1, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    t[0] = 0
    return t


def make_model(cls=MIRACLE, num_items: int = N_ITEMS, **kw):
    args = dict(
        d=D, n_layers=1, n_heads=2, d_ff=32, max_len=L, n_experts=2, num_capsules=2,
        num_items=num_items, data_info={"text_dim": TEXT_DIM},
    )
    args.update(kw)
    model = cls(**args)
    model.attach_side_info({"text": text_table(num_items)})
    return model


def long_batch(**kw):
    return make_batch(L=L, num_items=N_ITEMS, min_len=6, **kw)  # every sequence maskable (len >= 5)


def recipe_freeze(name: str) -> list[str]:
    cfg = yaml.safe_load((RECIPES / name).read_text())
    return cfg["model"]["init_args"]["freeze"]


# ---------------------------------------------------------------------- blocks
def test_moe_adaptor_starts_uniform_and_is_noisy_only_in_training():
    torch.manual_seed(0)
    moe = MoEAdaptor(TEXT_DIM, D, n_experts=3, dropout=0.0).eval()
    t = torch.randn(5, TEXT_DIM)
    torch.testing.assert_close(moe.gate(t), torch.full((5, 3), 1 / 3))  # zero-initialised gate
    expected = sum(e(t) for e in moe.experts) / 3
    torch.testing.assert_close(moe(t), expected)
    torch.testing.assert_close(moe(t), moe(t))
    moe.train()
    with torch.no_grad():
        moe.gate.w_noise.normal_()
    assert not torch.allclose(moe.gate(t), moe.gate(t))


def test_text_item_embedding_errors_and_cache():
    emb = TextItemEmbedding(N_ITEMS, TEXT_DIM, D, n_experts=2, use_id=True)
    with pytest.raises(RuntimeError, match="text_encoder"):
        emb(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"\[51, 24\]"):
        emb.set_text(torch.randn(40, TEXT_DIM))
    emb.set_text(text_table())
    emb.eval()
    with torch.no_grad():
        a = emb.all_items()
        assert emb.all_items() is a  # cached in evaluation
        emb.id_embedding.weight.add_(1.0)  # an in-place update (optimizer step, load_state_dict) invalidates it
        b = emb.all_items()
    assert b is not a and not torch.allclose(a, b)
    torch.testing.assert_close(b, emb(torch.arange(N_ITEMS + 1)))


def test_adaptor_masks_item_shares_one_pass_per_step():
    emb = TextItemEmbedding(N_ITEMS, TEXT_DIM, D, n_experts=2, adaptor_dropout=0.5, adaptor_masks="item")
    emb.set_text(text_table())
    seq = torch.tensor([[3, 7, 3], [7, 3, 9]])  # item 3 three times, 7 twice
    emb.train()
    with emb.shared_pass(torch.cat([seq.flatten(), torch.tensor([11])])):
        x = emb(seq)  # [2, 3, D]
        y = emb(torch.tensor([11, 3]))  # a second lookup in the same step: same table
        with pytest.raises(RuntimeError, match="outside the step"):
            emb(torch.tensor([12]))
    torch.testing.assert_close(x[0, 0], x[0, 2])
    torch.testing.assert_close(x[0, 0], x[1, 1])
    torch.testing.assert_close(y[1], x[0, 0])
    assert not torch.allclose(x[0, 0], x[0, 1])
    x.sum().backward()
    assert all(p.grad is not None for p in emb.adaptor.experts.parameters())
    position = TextItemEmbedding(N_ITEMS, TEXT_DIM, D, n_experts=2, adaptor_dropout=0.5)
    position.set_text(text_table())
    position.train()
    with position.shared_pass(seq.flatten()):  # a no-op: every position draws its own masks
        z = position(seq)
    assert not torch.allclose(z[0, 0], z[0, 2])
    emb.eval()
    position.load_state_dict(emb.state_dict())
    position.eval()
    with emb.shared_pass(seq.flatten()), torch.no_grad():  # no-op in evaluation: exact, no dropout
        torch.testing.assert_close(emb(seq), position(seq))
    with pytest.raises(ValueError, match="adaptor_masks"):
        TextItemEmbedding(N_ITEMS, TEXT_DIM, D, adaptor_masks="user")


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_adaptor_masks_item_trains_both_stages(stage):
    from zoo.models.horae import HORAE

    torch.manual_seed(0)
    model = make_model(HORAE, stage=stage, adaptor_masks="item").train()
    total_loss(model, long_batch()).backward()
    assert model.item_encoder._shared is None  # the step's table is dropped when the step ends
    assert model.item_encoder.adaptor.experts[0].lin.weight.grad is not None


def test_model_without_text_raises_clear_errors():
    model = MIRACLE(d=D, n_heads=2, d_ff=32, max_len=L, num_items=N_ITEMS, data_info={"text_dim": TEXT_DIM})
    with pytest.raises(KeyError, match="text_encoder"):
        model.attach_side_info({"category": torch.zeros(N_ITEMS + 1, dtype=torch.long)})
    with pytest.raises(RuntimeError, match="text"):
        model.user_representation(make_batch())
    with pytest.raises(ValueError, match="text_dim"):
        MIRACLE(d=D, num_items=N_ITEMS)
    with pytest.raises(ValueError, match="stage"):
        make_model(stage="zero-shot")


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_shapes_of_every_intermediate(stage):
    model = make_model(stage=stage, num_capsules=4).eval()
    batch = make_batch(L=L, num_items=N_ITEMS)
    B = batch["item_seq"].shape[0]
    assert model.item_encoder.text[batch["item_seq"]].shape == (B, L, TEXT_DIM)  # T
    state = model.forward_interests(batch)
    assert state.x.shape == (B, L, D) and state.h.shape == (B, L, D)  # X, H
    caps = state.caps
    assert caps.s.shape == (B, L, 4) and caps.assign.shape == (B, L) and caps.active.shape == (B, 4)
    assert caps.o.shape == (B, L) and caps.q.shape == (B, L, D) and caps.interests.shape == (B, 4, D)
    assert state.interests is caps.interests and caps.active.dtype == torch.bool
    assert caps.active.any(1).all()
    scores = assert_scores_shape(model, batch, N_ITEMS)
    cands = torch.randint(1, N_ITEMS + 1, (B, 7))
    with torch.no_grad():
        sampled = model.score_candidates(model.user_representation(batch), cands)
    torch.testing.assert_close(sampled, scores.gather(1, cands))
    with torch.no_grad():
        interests = model.interests_for_predict(model.user_representation(batch))
    assert interests.shape == (B, 4, D) and (interests.norm(dim=-1)[~caps.active] == 0).all()


def test_chunked_scoring_equals_unchunked():
    model = make_model(num_capsules=4).eval()
    batch = make_batch(L=L, num_items=N_ITEMS)
    with torch.no_grad():
        user = model.user_representation(batch)
        full = model.score_all(user)
        model.eval_chunk_size = 7
        chunked = model.score_all(user)
    torch.testing.assert_close(full, chunked)


# ---------------------------------------------------------------------- losses
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_loss_terms(stage):
    model = make_model(stage=stage).train()
    terms = model.training_loss(long_batch())
    expected = {"rec", "balance", "orthogonality"} | ({"interest_cl"} if stage == "pretrain" else set())
    assert set(terms) == expected
    total_loss(model, long_batch())


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_finite_with_heavy_left_padding_and_equal_timestamps(stage):
    assert_finite_with_heavy_padding_and_equal_times(make_model(stage=stage), L, N_ITEMS)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_one_step_lowers_loss(stage):
    assert_one_step_lowers_loss(make_model(stage=stage), long_batch(), steps=3)


def test_checkpoint_round_trip(tmp_path):
    model = make_model(stage="finetune", setting="transductive")
    assert_checkpoint_round_trip(model, make_batch(L=L, num_items=N_ITEMS), tmp_path)


def test_interest_contrastive_is_zero_without_maskable_items():
    model = make_model(mask_min_len=100).train()
    terms = model.training_loss(long_batch())
    assert terms["interest_cl"].item() == 0.0


# ---------------------------------------------------------------------- switches
@pytest.mark.parametrize(
    "switch, what, base",
    [
        ({"position_attention": False}, "scores", {}),  # w/o PW
        ({"interest_contrastive": False}, "loss", {}),  # w/o IC
        ({"sparse_activation": False}, "scores", {"num_capsules": 4}),  # w/o SS
        ({"attention_activation": "tanh"}, "scores", {}),  # paper Eq. 9 vs code (default)
        ({"routing_agreement": "h"}, "scores", {}),  # paper Eq. 14 vs code (default)
        ({"score_with_id": False}, "scores", {"stage": "finetune"}),  # paper Eq. 17 vs code (default)
        ({"setting": "inductive"}, "scores", {"stage": "finetune"}),  # text only vs text + ID
        ({"mask_pad_logit": True}, "loss", {"stage": "finetune"}),  # paper Eq. 23 vs code (default)
        ({"stage": "finetune"}, "loss", {}),  # full CE vs in-batch CE
        ({"balance_weight": 0.0}, "loss", {}),
        ({"orthogonality_weight": 0.0}, "loss", {"orthogonality_weight": 10.0}),
    ],
)
def test_switch_changes_forward_or_loss(switch, what, base):
    def make(**kw):
        m = make_model(**{**base, **kw})
        with torch.no_grad():  # spread the items over capsules so sparsity matters
            m.capsules.base_vectors.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        return m

    assert_switch_changes(make, long_batch(), switch, what)


def check_candidates_follow_score_with_id(cls=MIRACLE) -> None:
    """Transductive fine-tuning: the ranking (score_all, score_candidates), the training CE and the
    catalogue balance term all use the same candidate table, text + ID with ``score_with_id=True``
    (the default, the official code) and text only with ``False`` (Eq. 17)."""
    batch = long_batch()
    tables = {}
    for flag in (True, False):
        torch.manual_seed(0)
        model = make_model(cls, stage="finetune", setting="transductive", score_with_id=flag).eval()
        with torch.no_grad():
            model.item_encoder.id_embedding.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
        y = model.item_encoder.all_items(with_id=flag)  # [N+1, d] expected candidate vectors
        text_only = model.item_encoder.all_items(with_id=False)
        assert flag == (not torch.allclose(y, text_only))
        tables[flag] = y
        with torch.no_grad():
            interests, active = model.user_representation(batch)
            s = torch.einsum("bkd,nd->bkn", interests, y).masked_fill(~active[..., None], float("-inf"))
            expected = s.max(1).values  # [B, N+1]
            torch.testing.assert_close(model.score_all((interests, active))[:, 1:], expected[:, 1:])
            cands = torch.randint(1, N_ITEMS + 1, (len(interests), 6), generator=torch.Generator().manual_seed(2))
            torch.testing.assert_close(model.score_candidates((interests, active), cands), expected.gather(1, cands))
            seen = []
            similarity = model.capsules.similarity
            model.capsules.similarity = lambda h: seen.append(h) or similarity(h)
            torch.manual_seed(3)
            terms = model.training_loss(batch)
            torch.testing.assert_close(seen[-1], y)  # the catalogue balance term's candidates (pad row in: code)
            torch.testing.assert_close(terms["rec"], torch.nn.functional.cross_entropy(expected, batch["target"]))
            model.mask_pad_logit = True  # Eq. 23 over the items only: the pad row leaves both
            torch.manual_seed(3)
            terms = model.training_loss(batch)
            torch.testing.assert_close(seen[-1], y[1:])
            logits = expected[:, 1:]
            torch.testing.assert_close(terms["rec"], torch.nn.functional.cross_entropy(logits, batch["target"] - 1))
    assert not torch.allclose(tables[True], tables[False])


def test_candidates_follow_score_with_id():
    check_candidates_follow_score_with_id()


def test_id_table_only_when_fine_tuning_transductive():
    assert make_model(stage="pretrain").item_encoder.id_embedding is None
    assert make_model(stage="finetune", setting="inductive").item_encoder.id_embedding is None
    assert make_model(stage="finetune", setting="transductive").item_encoder.id_embedding is not None


# ---------------------------------------------------------------------- pre-training -> fine-tuning
def _pretrained_checkpoint(tmp_path: Path, cls=MIRACLE, **kw) -> tuple[Path, dict]:
    torch.manual_seed(0)
    pre = make_model(cls, num_items=80, stage="pretrain", **kw)  # another catalogue (another domain)
    path = tmp_path / "pretrain.ckpt"
    state = pre.state_dict()
    torch.save({"state_dict": state, "hyper_parameters": dict(pre.hparams)}, path)
    return path, state


def check_load_pretrained(tmp_path: Path, cls=MIRACLE, **kw) -> None:
    path, state = _pretrained_checkpoint(tmp_path, cls, **kw)
    fine = make_model(cls, stage="finetune", setting="transductive", pretrained_ckpt=str(path), **kw)
    report = fine.load_pretrained(path)
    assert report["matched"] == sorted(state)  # every pre-trained tensor lands
    assert report["missing"] == ["item_encoder.id_embedding.weight"]  # only the new ID table is fresh
    assert report["unexpected"] == [] and report["shape_mismatch"] == []
    own = fine.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(own[k], v)


def check_freeze_keeps_frozen_fixed(tmp_path: Path, recipe: str, cls=MIRACLE, **kw) -> None:
    freeze = recipe_freeze(recipe)
    assert tuple(freeze) == cls.PAPER_FREEZE
    path, _ = _pretrained_checkpoint(tmp_path, cls, **kw)
    model = make_model(cls, stage="finetune", pretrained_ckpt=str(path), freeze=freeze, **kw)
    model.setup("fit")  # loads the checkpoint and applies the freeze list, as the trainer does
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for name in freeze:
        assert all(n in frozen for n, _ in model.get_submodule(name).named_parameters(prefix=name))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = model.configure_optimizers()
    model.train()
    for step in range(2):
        opt.zero_grad()
        total_loss(model, long_batch(seed=step)).backward()
        opt.step()
    after = dict(model.named_parameters())
    for n in frozen:
        assert torch.equal(before[n], after[n]), f"frozen parameter {n} changed"
    trainable = [n for n, p in after.items() if p.requires_grad]
    changed = [n for n in trainable if not torch.equal(before[n], after[n])]
    unchanged = sorted(set(trainable) - set(changed))
    # every trainable parameter moves, except the detached [MASK] vectors (unused when fine-tuning)
    assert all("mask_token" in n for n in unchanged), unchanged
    assert "item_encoder.id_embedding.weight" in changed and "capsules.base_vectors" in changed


def test_load_pretrained_matches_shared_keys(tmp_path):
    check_load_pretrained(tmp_path)


def test_fine_tuning_with_recipe_freeze_list(tmp_path):
    check_freeze_keeps_frozen_fixed(tmp_path, "miracle.yaml")


def test_paper_freeze_is_the_default_with_a_checkpoint(tmp_path):
    path, _ = _pretrained_checkpoint(tmp_path)
    assert make_model(stage="finetune", pretrained_ckpt=str(path)).freeze == list(MIRACLE.PAPER_FREEZE)
    assert make_model(stage="finetune").freeze == []  # from scratch: nothing frozen


def test_full_ranking_over_30k_items_never_builds_interests_x_batch_x_items(monkeypatch):
    n_items, B, C, chunk = 30_000, 8, 4, 4096
    model = make_model(num_items=n_items, num_capsules=C, eval_chunk_size=chunk).eval()
    batch = make_batch(B=B, L=L, num_items=n_items)
    largest = []
    einsum = torch.einsum

    def recording_einsum(eq, *ops):
        out = einsum(eq, *ops)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(torch, "einsum", recording_einsum)
    with torch.no_grad():
        scores = model.score_all(model.user_representation(batch))
    assert scores.shape == (B, n_items + 1)
    assert max(largest) <= B * C * chunk < B * C * (n_items + 1)  # chunked over items


def test_paper_form_switches_build_what_the_equations_print():
    """Eq. 9's tanh attention; Eq. 3's gate has a bias; Eq. 14's agreement uses h: with one routing
    iteration (no agreement update) "h" and "q" are the same."""
    from torch import nn

    paper = make_model(attention_activation="tanh", gate_bias=True)
    assert any(isinstance(m, nn.Tanh) for m in paper.capsules.attention)
    assert paper.item_encoder.adaptor.gate.b_gate is not None and make_model().item_encoder.adaptor.gate.b_gate is None
    total_loss(paper, long_batch()).backward()  # b_1 starts at 0 (scores unchanged at init) and is trained
    assert paper.item_encoder.adaptor.gate.b_gate.grad.abs().sum() > 0
    torch.manual_seed(0)
    one_q = make_model(routing_iters=1).eval()
    one_h = make_model(routing_iters=1, routing_agreement="h").eval()
    one_h.load_state_dict(one_q.state_dict())
    batch = long_batch()
    with torch.no_grad():
        torch.testing.assert_close(one_q.score_all(one_q.user_representation(batch)),
                                   one_h.score_all(one_h.user_representation(batch)))
