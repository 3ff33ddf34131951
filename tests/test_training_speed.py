"""The training-speed optimisations of issue 13 are exact: each faster form against the form it
replaced (kept here as the reference), and short training runs against loss curves recorded
at commit b5b8ccd (before any of them), same seeds, dropout and noise on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch
from test_miracle import make_model
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from zoo.models.gru4rec import GRU4Rec
from zoo.models.horae import HORAE
from zoo.models.miracle import MIRACLE
from zoo.models.timirec import TiMiRec
from zoo.modules.moe import DenseMoE, MoEAdaptor
from zoo.modules.rnn import GRUEncoder
from zoo.modules.scoring import interest_max, max_interest_scores


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def test_moe_adaptor_equals_per_expert_form_and_draws_the_same_randoms():
    torch.manual_seed(0)
    moe = MoEAdaptor(24, 8, n_experts=3, dropout=0.3)
    for p in moe.parameters():  # non-zero biases and gates, so every term matters
        torch.nn.init.normal_(p, 0.0, 0.3)
    t = torch.randn(4, 5, 24)
    outs = []
    for forward in (lambda x: DenseMoE.forward(moe, x), moe):  # reference: b5b8ccd's per-expert form
        moe.zero_grad()
        torch.manual_seed(1)
        y = forward(t)
        y.pow(2).sum().backward()
        outs.append((y.detach(), _grads(moe), torch.rand(3)))  # the next draw: same random stream
    (y0, g0, r0), (y1, g1, r1) = outs
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.equal(r0, r1)
    moe.eval()
    torch.testing.assert_close(moe(t), DenseMoE.forward(moe, t), rtol=1e-5, atol=1e-6)


def test_max_interest_scores_training_path_equals_masked_max_with_autograd():
    torch.manual_seed(0)
    u = torch.randn(6, 4, 8, requires_grad=True)
    e = torch.randn(11, 8, requires_grad=True)
    active = torch.rand(6, 4) < 0.5
    active[0] = False  # a user with no active interest: -inf scores, no gradient
    active[1] = True
    target = torch.randint(0, 11, (6,))
    results = []
    for scores in (lambda: interest_max(torch.einsum("bkd,nd->bkn", u, e), active),  # reference
                   lambda: max_interest_scores(u, e, active, chunk_size=4)):  # chunked, custom backward
        u.grad = e.grad = None
        s = scores()
        F.cross_entropy(s[1:], target[1:]).backward()
        results.append((s.detach(), u.grad.clone(), e.grad.clone()))
    (s0, gu0, ge0), (s1, gu1, ge1) = results
    assert torch.equal(s0, s1) and torch.isinf(s1[0]).all()
    torch.testing.assert_close(gu1, gu0)
    torch.testing.assert_close(ge1, ge0)


def _packed_gru(enc: GRUEncoder, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """b5b8ccd's GRUEncoder.forward: pack by length."""
    B, L, _ = x.shape
    lengths = pad.sum(1).clamp(min=1)
    shift = (torch.arange(L)[None, :] + (L - lengths)[:, None]) % L
    x_right = x.gather(1, shift[:, :, None].expand_as(x))
    out, h = enc.gru(pack_padded_sequence(x_right, lengths.cpu(), batch_first=True, enforce_sorted=False))
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)
    back = (torch.arange(L)[None, :] - (L - lengths)[:, None]) % L
    return out.gather(1, back[:, :, None].expand(B, L, out.shape[-1])) * pad[:, :, None], h[-1]


def test_gru_encoder_equals_the_packed_gru():
    torch.manual_seed(0)
    enc = GRUEncoder(6, 5)
    x = torch.randn(7, 9, 6)
    x[6] = 0.0  # 0: a row of pads only, zero as GRU4Rec's pad embedding (read as one pad input, as before)
    x.requires_grad_(True)
    lengths = torch.tensor([9, 1, 4, 9, 2, 7, 0])
    pad = torch.arange(9)[None] >= (9 - lengths)[:, None]
    results = []
    for forward in (lambda: _packed_gru(enc, x, pad), lambda: enc(x, pad)):
        x.grad = None
        enc.zero_grad()
        out, h = forward()
        (out.sin().sum() + h.cos().sum()).backward()
        # the gradient at real items; the pads-only row reads its first pad now, its last before
        results.append((out.detach(), h.detach(), x.grad * pad[:, :, None], _grads(enc)))
    for a, b in zip(results[0][:3], results[1][:3]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][3], results[1][3]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


#: Adam(lr 1e-2) losses of three training steps on one tiny batch, dropout and noise on, recorded
#: at b5b8ccd (before the optimisations) by the loop of ``_losses`` below.  The switches whose
#: defaults have since moved to the authors' code are pinned to b5b8ccd's defaults, so the curves
#: compare the same computation.
MIRACLE_B5B8 = dict(score_with_id=False, attention_activation="tanh", mask_pad_logit=True)
HORAE_B5B8 = dict(MIRACLE_B5B8, intra_mode="paper", anchor_capsule="maxpool", anchor_mask_items=False,
                  contrastive_weight=0.05, orthogonality_weight=10.0, gru_zero_pads=True)
TIMIREC_B5B8 = dict(init_bias_std=0.0, activation="gelu", attn_projection=True, decay_biases=True)
GOLDEN = {
    "miracle_pretrain": (MIRACLE, dict(stage="pretrain", **MIRACLE_B5B8), [7.090655, 7.1364, 7.077707]),
    "miracle_finetune": (MIRACLE, dict(stage="finetune", **MIRACLE_B5B8), [8.912057, 8.940111, 8.913677]),
    "horae_pretrain": (HORAE, dict(stage="pretrain", **HORAE_B5B8), [7.51778, 7.411774, 7.315747]),
    "horae_finetune": (HORAE, dict(stage="finetune", **HORAE_B5B8), [8.89656, 8.899576, 8.590393]),
    "timirec_finetune": (TiMiRec, dict(d=16, K=3, max_len=10, stage="finetune", **TIMIREC_B5B8), [0.693137, 0.692188, 0.689864]),
    "gru4rec": (GRU4Rec, dict(d=16), [3.891469, 3.739695, 3.403414]),
}


def _losses(cls, kw: dict, steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    model = make_model(cls, num_capsules=4, n_experts=3, **kw) if cls in (HORAE, MIRACLE) else cls(num_items=50, **kw)
    batch = make_batch(B=8, L=10, num_items=50, min_len=6)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(1)
    out = []
    for _ in range(steps):
        loss = torch.stack(list(model.training_loss(batch).values())).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


@pytest.mark.parametrize("name", list(GOLDEN))
def test_loss_curve_equals_the_one_before_the_optimisations(name):
    cls, kw, golden = GOLDEN[name]
    assert _losses(cls, kw) == pytest.approx(golden, rel=1e-5, abs=1e-5)


def test_cpu_dropout_equals_the_mask_times_scale_form_bit_for_bit():
    from zoo.modules.dropout import Dropout

    drop = Dropout(0.3).train()
    x = torch.randn(5, 7, requires_grad=True)
    g = torch.randn(5, 7)
    torch.manual_seed(3)
    y = drop(x)
    (y * g).sum().backward()
    torch.manual_seed(3)
    keep = torch.rand_like(x) >= 0.3  # b5b8ccd's form
    assert torch.equal(y, x.detach() * keep * (1.0 / 0.7))
    assert torch.equal(x.grad, g * (1.0 / 0.7) * keep)


def _speed_train():
    """benchmarks/speed_train.py as a module (it is a script, not a package member)."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("speed_train", root / "benchmarks" / "speed_train.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    return st


def report(recipes: list[str], runs: dict, peak: float, tmp_path):  # noqa: ANN001, ANN201
    """speed_train's report of ``runs`` (fixed machine info) in ``tmp_path/s.md``; returns its args."""
    import argparse
    import time

    args = argparse.Namespace(baseline="b5b8ccd", warmup=1, seconds=4.0, min_steps=3, repeats=1, out=tmp_path / "s.md")
    info = {"date": "d", "git_commit": "c", "nproc": "2", "cpu": "cpu", "platform": "p", "python": "3",
            "torch": "t", "torch_threads": 1, "loadavg": "0 0 0", "machine_free_flag": True, "free_g": ""}
    _speed_train().write_report(args, recipes, runs, info, peak, "b5b8ccd", "c", "", [], time.time(), "cmd", True)
    return args


def test_speed_train_report_shows_the_current_side_alone_when_the_baseline_failed(tmp_path):
    """A recipe the baseline commit lacks (its worker fails) keeps this checkout's figures, with no
    ratio; a recipe that failed on both sides says so."""
    ok = {"sec_per_step": 2.0, "cpu_per_step": 1.5, "seq_per_s": 100.0, "epoch_s": 600.0, "gflops": 10.0,
          "flops_per_step": 3.0e10, "steps_per_epoch": 400, "batch_rows": 256}
    runs = {"tisasrec": {"baseline": [{"failed": True, "rc": 1}], "current": [ok]},
            "sasrec": {"baseline": [{"failed": True, "rc": 1}], "current": [{"failed": True, "rc": 1}]}}
    args = report(["tisasrec", "sasrec"], runs, 100.0, tmp_path)
    rows = {line.split("|")[1].strip(): line for line in args.out.read_text().splitlines() if line.startswith("| ")}
    cells = [c.strip() for c in rows["tisasrec"].split("|")[1:-1]]
    assert cells[:5] == ["tisasrec", "400", "failed (see the log)", "1.500", "no ratio"]
    assert cells[7] == "600 s" and cells[10] == "20.00 (20.0 %)" and len(cells) == 11
    assert "failed or not run" in rows["sasrec"]


def test_speed_train_exact_ceiling_is_baseline_over_random_draws_plus_flops_at_peak(tmp_path):
    """The second table: floor = rng share x CPU s/step + FLOPs / peak; ceiling = baseline / floor."""
    base = {"sec_per_step": 3.0, "cpu_per_step": 3.0, "seq_per_s": 1.0, "epoch_s": 1.0, "gflops": 1.0,
            "flops_per_step": 1.0e10, "steps_per_epoch": 10, "batch_rows": 256, "rng_share": 0.3, "matmul_share": 0.5}
    cur = dict(base, cpu_per_step=2.0, sec_per_step=2.0, rng_share=0.25, matmul_share=0.5)
    # floor = 0.25 * 2.0 + 1e10 / (20 GFLOP/s) = 0.5 + 0.5 = 1.0 s; ceiling = 3.0 / 1.0
    assert _speed_train().exact_floor(cur, 20.0) == 1.0
    runs = {"horae": {"baseline": [base], "current": [cur]}}
    text = report(["horae"], runs, 20.0, tmp_path).out.read_text()
    row = [line for line in text.splitlines() if line.startswith("| horae | 2.000")][0]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "0.500 (25 %)" and cells[3] == "1.000 (50 %) at 10 GFLOP/s" and cells[4] == "0.500"
    assert cells[5] == "1.000" and cells[6] == "2.00x" and cells[7] == "**3.00x**"
    # without the profile (an older JSON) the second table is left out
    runs = {"horae": {"baseline": [base], "current": [{k: v for k, v in cur.items() if "share" not in k}]}}
    assert "exact ceiling" not in report(["horae"], runs, 20.0, tmp_path).out.read_text()


def test_speed_train_main_job_floor_spreads_products_over_cores_but_not_random_draws(tmp_path):
    """The third section: the README's main job (3 pre-training + 7 fine-tuning epochs) at each
    step's exact floor, products over 2 cores, random draws on one (torch's CPU generator is serial)."""
    st = _speed_train()
    step = {"sec_per_step": 1.0, "cpu_per_step": 1.0, "seq_per_s": 1.0, "epoch_s": 1.0, "gflops": 1.0,
            "batch_rows": 256, "matmul_share": 0.5}
    pre = dict(step, steps_per_epoch=100, rng_share=0.2, flops_per_step=4.0e10)   # 0.2 s draws, 2 s of products
    fine = dict(step, steps_per_epoch=50, rng_share=0.1, flops_per_step=2.0e10)    # 0.1 s draws, 1 s of products
    runs = {"horae_pretrain": {"baseline": [], "current": [pre]}, "horae": {"baseline": [], "current": [fine]}}
    f = st.main_job_floor(runs, peak=20.0, cores=2)
    # draws: 3 * 100 * 0.2 + 7 * 50 * 0.1 = 95 s; products: (300 * 2 + 350 * 1) / 2 = 475 s
    assert f == {"rng_s": 95.0, "matmul_s": 475.0, "floor_s": 570.0}
    text = "\n".join(st.main_job_lines(runs, 20.0))
    assert "| 1.6 min | 7.9 min | **9.5 min** | 10 min: the floor is within it |" in text
    # a stage without its profile: no estimate
    assert st.main_job_floor({"horae_pretrain": runs["horae_pretrain"]}, 20.0) is None
    assert st.main_job_lines({"horae": runs["horae"]}, 20.0) == []


def test_timirec_predictor_dense_gru_equals_the_packed_one():
    """TiMiRec's target-interest predictor (Eq. 14) runs its GRU as one dense recurrence over the
    right-padded rows: its final states and gradients equal the packed GRU's (an empty row reads
    its first position in both)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from zoo.modules.multi_interest import TargetInterestPredictor
    from zoo.modules.padding import oldest_first

    torch.manual_seed(0)
    pred = TargetInterestPredictor(num_items=30, d=8, K=3)
    seq = torch.randint(1, 31, (6, 9))
    for row, n in enumerate([9, 1, 4, 0, 2, 7]):
        seq[row, : 9 - n] = 0  # left-padded
    results = []
    for dense in (False, True):
        pred.zero_grad()
        if dense:
            s = pred.summary(seq)
        else:
            pad = seq > 0
            x = oldest_first(pred.item_emb(seq), pad)
            _, h = pred.gru(pack_padded_sequence(x, pad.sum(1).clamp(min=1), batch_first=True, enforce_sorted=False))
            s = h[-1]
        s.sin().sum().backward()
        results.append((s.detach(), *[p.grad.clone() for p in pred.gru.parameters()], pred.item_emb.weight.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
