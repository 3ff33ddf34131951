"""Checks every model test runs (HF tiny-config style), shared so no test file repeats them."""

from __future__ import annotations

from pathlib import Path

import torch


def total_loss(model, batch) -> torch.Tensor:
    terms = model.training_loss(batch)
    for name, value in terms.items():
        assert value.dim() == 0, f"loss term {name} is not a scalar"
        assert torch.isfinite(value), f"loss term {name} is not finite: {value}"
    return torch.stack(list(terms.values())).sum()


def assert_one_step_lowers_loss(model, batch, lr: float = 1e-2, steps: int = 1) -> None:
    """A few Adam steps on one batch lower the training loss (eval-mode dropout for a fair check)."""
    torch.manual_seed(0)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(1)
    before = total_loss(model, batch)
    for _ in range(steps):
        opt.zero_grad()
        torch.manual_seed(1)
        loss = total_loss(model, batch)
        loss.backward()
        opt.step()
    torch.manual_seed(1)
    after = total_loss(model, batch)
    assert after.item() < before.item(), f"loss did not decrease: {before.item()} -> {after.item()}"


def assert_scores_shape(model, batch, num_items: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        scores = model.score_all(model.user_representation(batch))
    assert scores.shape == (batch["item_seq"].shape[0], num_items + 1)
    assert torch.isfinite(scores[:, 1:]).all()
    return scores


def assert_checkpoint_round_trip(model, batch, tmp_path: Path) -> None:
    """Saving and rebuilding from hyper-parameters + state dict gives identical scores."""
    model.eval()
    path = tmp_path / "model.pt"
    torch.save({"hparams": dict(model.hparams), "state_dict": model.state_dict()}, path)
    ckpt = torch.load(path, weights_only=False)
    clone = type(model)(**ckpt["hparams"])
    if hasattr(model, "_side_info"):
        clone.attach_side_info(model._side_info)
    clone.load_state_dict(ckpt["state_dict"])
    clone.eval()
    with torch.no_grad():
        a = model.score_all(model.user_representation(batch))
        b = clone.score_all(clone.user_representation(batch))
    torch.testing.assert_close(a, b)


def assert_switch_changes(make_model, batch, switch: dict, what: str = "loss") -> None:
    """An ablation switch changes the forward pass (scores) or the loss on the same weights."""
    torch.manual_seed(0)
    base = make_model()
    torch.manual_seed(0)
    ablated = make_model(**switch)
    ablated.load_state_dict(base.state_dict(), strict=False)
    base.eval(); ablated.eval()
    with torch.no_grad():
        if what == "loss":
            torch.manual_seed(3); a = total_loss(base, batch)
            torch.manual_seed(3); b = total_loss(ablated, batch)
        else:
            a = base.score_all(base.user_representation(batch))
            b = ablated.score_all(ablated.user_representation(batch))
    assert not torch.allclose(a, b), f"switch {switch} did not change the {what}"


def assert_finite_with_heavy_padding_and_equal_times(model, L: int, num_items: int) -> None:
    """12 of 16 users have a single item (heavy left padding) and every timestamp is equal:
    the loss, every gradient and the scores stay finite (no NaN from pads or zero gaps)."""
    from conftest import make_batch

    model.train()
    batch = make_batch(B=16, L=L, num_items=num_items, min_len=1)
    batch["item_seq"][:12, :-1] = 0
    batch["seq_len"][:12] = 1
    batch["time_seq"] = torch.where(batch["item_seq"] > 0, 1_600_000_000, 0)  # all equal
    batch["target_time"] = torch.full_like(batch["target"], 1_600_000_000)
    total_loss(model, batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.score_all(model.user_representation(batch))[:, 1:]).all()
