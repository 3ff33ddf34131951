"""In-batch negatives under DDP: every process's rows are the negatives (``gather_rows``), so two
processes of B/2 rows give exactly the gradient of one process of B rows (HM4SR's IDCL/PCL, every
``false_negatives`` mode), and processes holding different numbers of rows exchange them whole.
Two real gloo processes on the CPU, beside one process on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODES = ("exclude", "keep", "zero_logit")

SCRIPT = textwrap.dedent('''
    import sys, types, torch, torch.distributed as dist
    from zoo.models.hm4sr import HM4SR
    from zoo.modules.distributed import gather_rows
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    world, B = 2, 8
    if rank >= 0:
        dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
    own = slice(rank * B // 2, (rank + 1) * B // 2) if rank >= 0 else slice(None)
    result = {}
    for mode in %r:
        torch.manual_seed(0)
        enc_a, enc_b = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
        xa, xb = torch.randn(B, 6), torch.randn(B, 6)
        target = torch.tensor([3, 1, 3, 2, 1, 5, 3, 4])  # repeated targets, across processes too
        fake = types.SimpleNamespace(hparams=types.SimpleNamespace(false_negatives=mode))
        loss = HM4SR.contrastive(fake, enc_a(xa[own]), enc_b(xb[own]), 0.5, target[own])
        loss.backward()
        grads = [p.grad.clone() for p in (*enc_a.parameters(), *enc_b.parameters())]
        if rank >= 0:
            for g in grads:  # what DDP does: the mean over processes
                dist.all_reduce(g)
                g /= world
        result[mode] = {"loss": loss.detach(), "grads": grads}
    if rank >= 0:  # uneven shares (the epoch's last batch): 5 rows and 3
        result["rows"], result["offset"] = gather_rows(torch.arange((5, 3)[rank]) + 100 * rank)
        dist.destroy_process_group()
    torch.save(result, out)
''' % (MODES,))


def launch(script: str, tmp: Path) -> tuple[dict, dict, dict]:
    """``script`` as ranks 0 and 1 of a gloo group and as one process (rank -1) on the whole batch;
    their saved results, in that order."""
    (tmp / "worker.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OMP_NUM_THREADS="1")
    outs = [tmp / f"rank{r}.pt" for r in (0, 1, -1)]
    procs = [subprocess.Popen([sys.executable, str(tmp / "worker.py"), str(r), str(tmp / "init"), str(o)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, o in zip((0, 1, -1), outs)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return tuple(torch.load(o, weights_only=True) for o in outs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict, dict]:
    return launch(SCRIPT, tmp_path_factory.mktemp("ddp_in_batch"))


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_of_half_the_rows_train_as_one_process(runs, mode):
    r0, r1, one = (r[mode] for r in runs)
    assert torch.allclose((r0["loss"] + r1["loss"]) / 2, one["loss"], atol=1e-6)  # DDP's mean of the means
    for g0, g1, g in zip(r0["grads"], r1["grads"], one["grads"]):
        assert torch.equal(g0, g1)  # all-reduced
        assert torch.allclose(g0, g, atol=1e-6), (g0 - g).abs().max()


def test_processes_with_different_numbers_of_rows_exchange_them_whole(runs):
    """The rows travel padded to the largest share and arrive unpadded, in rank order."""
    r0, r1, _ = runs
    assert r0["rows"].tolist() == [0, 1, 2, 3, 4, 100, 101, 102] and r0["offset"] == 0
    assert torch.equal(r1["rows"], r0["rows"]) and r1["offset"] == 5


def test_one_process_is_unchanged():
    from zoo.modules.distributed import gather_rows

    x = torch.randn(3, 2, requires_grad=True)
    rows, offset = gather_rows(x)
    assert rows is x and offset == 0


MODEL_SCRIPT = textwrap.dedent('''
    import sys, torch, torch.distributed as dist
    import zoo.models.miracle as miracle_mod, zoo.models.horae as horae_mod
    from conftest import make_batch
    from test_miracle import L, N_ITEMS, make_model
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    world, B = 2, 8
    # the augmentations' masks as a function of the items (one process draws them for the whole
    # batch, two for their halves: random masks would differ); uneven masked counts per process
    mask = lambda seq, ratio, min_len: (seq % 3 == 0) & (seq > 0)
    miracle_mod.random_item_mask = horae_mod.random_item_mask = mask
    if rank >= 0:
        dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world)
    own = slice(rank * B // 2, (rank + 1) * B // 2) if rank >= 0 else slice(None)
    result = {}
    for name, cls in (("miracle", miracle_mod.MIRACLE), ("horae", horae_mod.HORAE)):
        torch.manual_seed(0)
        model = make_model(cls, stage="pretrain").eval()  # no dropout: the same numbers in every process
        batch = {k: v[own] for k, v in make_batch(B=B, L=L, num_items=N_ITEMS, min_len=6).items()}
        terms = model.training_loss(batch)
        keys = sorted(k for k in ("rec", "balance", "interest_cl", "pre_post") if k in terms)
        sum(terms[k] for k in keys).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if rank >= 0:
            for g in grads.values():
                dist.all_reduce(g)
                g /= world
        result[name] = {"keys": keys, "loss": sum(terms[k] for k in keys).detach(), "grads": grads,
                        "masked": int(mask(batch["item_seq"], 0, 0).sum())}
    if rank >= 0:
        dist.destroy_process_group()
    torch.save(result, out)
''')


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory) -> tuple[dict, dict, dict]:
    return launch(MODEL_SCRIPT, tmp_path_factory.mktemp("ddp_models"))


@pytest.mark.parametrize("name", ["miracle", "horae"])
def test_pretraining_in_batch_terms_under_two_processes_equal_one_process(model_runs, name):
    """MIRACLE's and HORAE's pre-training L_rec (in-batch softmax), l_b (balance over the batch's
    items and targets), l_i / L_aug (interest contrast over the batch's masked items, uneven counts
    per process) and HORAE's L_pre-post: two processes of 4 rows give one process's gradient on 8."""
    r0, r1, one = (r[name] for r in model_runs)
    assert r0["keys"] == one["keys"] and {"rec", "balance", "interest_cl"} <= set(one["keys"])
    assert name == "miracle" or "pre_post" in one["keys"]
    assert r0["masked"] != r1["masked"]  # the interest contrast's rows split unevenly
    assert r0["grads"].keys() == one["grads"].keys()
    for n, g in one["grads"].items():
        assert torch.equal(r0["grads"][n], r1["grads"][n])
        assert torch.allclose(r0["grads"][n], g, atol=1e-5, rtol=1e-4), (n, (r0["grads"][n] - g).abs().max())
