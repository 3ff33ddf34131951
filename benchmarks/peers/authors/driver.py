"""Train the authors' own MIRACLE or HORAE for one epoch on an exported split, then rank the test users.

Run by ``run.py`` in a child process (its working folder is the run folder: the authors' code
writes ``./local_data`` and ``./saved_model`` relative to it):

    python benchmarks/peers/authors/driver.py --model miracle --src /path/Miracle \
        --recbole /path/to/recbole-1.2.1 --data runs/peers/authors/data/miracle --seed 0 --out RUN

The authors' source is imported unmodified from ``--src`` (a checkout; its folder must be named
``Miracle`` / ``Horae`` for MIRACLE's ``from Miracle.sequential_recommender import``).  Before
it is imported, this process

* puts ``shims/`` first on ``sys.path`` (``torch_scatter.scatter_add``, ``termcolor``, and
  ``transformers.optimization.AdamW`` = ``torch.optim.AdamW``);
* makes ``recbole.model.layers`` importable: MIRACLE uses RecBole 1.2.1's file from ``--recbole``
  (an unpacked wheel), HORAE its own vendored RecBole 1.1.1 (with its RoPE edit); in both,
  ``recbole.utils`` is replaced by a module holding only ``recbole/utils/enum_type.py`` (the one
  thing ``layers.py`` imports from it; the real package pulls logging/tensorboard dependencies);

and, monkeypatched from here (the files stay as they are):

* ``pretrainDataset.torch.zeros([1, 768])`` -> ``[1, D]``: the loader's hard-coded BERT width of
  the pad row, D = the exported features' width (MiniLM: 384);
* the config is the authors' ``get_config()`` with an empty command line (their defaults), then
  updated with the zoo recipe's sizes (``--set``), the data folder, ``stage: trans``, CPU, and no
  pre-trained file;
* ``main.py`` is not run: its ``NotImplementedError`` forbids fine-tuning without a pre-trained
  file, and its ``trainer.train()`` runs to early stopping.  Instead this driver builds the same
  objects (``PretrainDataloader``, the model, ``PretrainTrainer``) and calls
  ``trainer.train_epoch(0)`` once, timed (wall and process CPU seconds), then scores the test
  users with the model's own ``full_sort_predict``.

Output in ``--out``: ``test_metrics.json`` + ``ranks.npz`` (the zoo's per-user format: the
target's 0-based pessimistic rank among items 1..N, pad excluded, as the zoo ranks), and
``epoch.json`` (times, steps, mean training loss, and the authors' own ``cal_recall`` /
``cal_ndcg`` on the same score matrix, which keep the pad item as a candidate and break ties by
``topk``'s order).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def prepare_imports(model: str, src: Path, recbole: Path | None) -> None:
    """sys.path and sys.modules set-up described in the module docstring."""
    if model == "miracle" and src.name != "Miracle":
        raise SystemExit(f"--src {src}: the folder must be named 'Miracle' (miracle.py imports Miracle.sequential_recommender)")
    rb_root = src if model == "horae" else recbole
    if rb_root is None or not (rb_root / "recbole" / "model" / "layers.py").is_file():
        raise SystemExit(f"no recbole/model/layers.py under {rb_root} (MIRACLE: give --recbole, an unpacked recbole 1.2.1)")
    sys.path[:0] = [str(HERE / "shims"), str(src), str(src.parent), str(rb_root)]
    import recbole  # noqa: F401  (the real package's __init__: a version string only)

    if Path(recbole.__file__).resolve().parent != (rb_root / "recbole").resolve():
        raise SystemExit(f"recbole imported from {recbole.__file__}, expected {rb_root / 'recbole'}")
    stub = types.ModuleType("recbole.utils")
    enums = _load_file("recbole.utils.enum_type", rb_root / "recbole" / "utils" / "enum_type.py")
    stub.__dict__.update({k: v for k, v in vars(enums).items() if not k.startswith("__")})
    sys.modules["recbole.utils"] = stub
    sys.modules["recbole.utils.enum_type"] = enums


class _TorchWithWidth(types.ModuleType):
    """``torch`` for the authors' loader, except that ``zeros([1, 768])`` gets the features' width."""

    def __init__(self, torch_mod: types.ModuleType, width: int) -> None:
        super().__init__("torch")
        self._torch, self._width = torch_mod, width

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    def zeros(self, *size, **kw):
        if len(size) == 1 and list(size[0]) == [1, 768]:
            size = ([1, self._width],)
        return self._torch.zeros(*size, **kw)


def set_seed(seed: int) -> None:
    """The seeds the authors' ``main.set_seed`` sets (python, numpy, torch)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["miracle", "horae"], required=True)
    ap.add_argument("--src", type=Path, required=True, help="the authors' checkout (unmodified)")
    ap.add_argument("--recbole", type=Path, default=None, help="MIRACLE: folder holding recbole/ (RecBole 1.2.1)")
    ap.add_argument("--data", type=Path, required=True, help="folder holding <name>/ from export.py")
    ap.add_argument("--name", default="ML")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", default="{}", help="JSON dict of config values over parser_dic()")
    ap.add_argument("--limit-batches", type=int, default=0, help="smoke tests only: train on the first N batches")
    a = ap.parse_args(argv)
    src, out = a.src.resolve(), a.out.resolve()
    data = a.data.resolve()
    prepare_imports(a.model, src, a.recbole.resolve() if a.recbole else None)

    import numpy as np
    import torch

    from zoo.ranks import Ranks, per_user, save_ranks

    sys.argv = [sys.argv[0]]  # their get_config() parses sys.argv: defaults only
    import parser as their_parser  # noqa: E402  (the authors' parser.py)
    import pretrainDataset
    import pretrainTrainer
    from metrics import cal_ndcg, cal_recall

    Model = getattr(__import__(a.model), "Miracle" if a.model == "miracle" else "Horae")

    manifest = json.loads((data / a.name / "export.json").read_text(encoding="utf-8"))
    width = int(manifest["text_dim"])
    pretrainDataset.torch = _TorchWithWidth(torch, width)

    config = their_parser.get_config()  # their defaults: parser_dic() + parse_args() defaults (argv is empty)
    config.update(json.loads(a.set))
    config.update(dataset=a.name, data_path=str(data) + "/", local_save_path="./local_data/", cuda=False,
                  gpu_id=0, load_model_path="", save_flag=0, stage="trans", device=torch.device("cpu"))
    config["adaptor_layers"] = [width, config["hidden_size"]]
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    set_seed(a.seed)
    loader = pretrainDataset.PretrainDataloader(config)
    train_dl, valid_dl, test_dl = loader.generate_dataloader(config)
    model = Model(config).to(config["device"])
    trainer = pretrainTrainer.PretrainTrainer(model, config, train_dl, valid_dl, test_dl)

    losses: list[float] = []
    calc = model.calculate_loss

    def calculate_loss(batch):
        res = calc(batch)
        losses.append(float(res[0].detach()))
        return res

    model.calculate_loss = calculate_loss
    if a.limit_batches:
        import itertools

        trainer.train_dataloader = list(itertools.islice(train_dl, a.limit_batches))
    t0, c0 = time.perf_counter(), time.process_time()
    model.epoch_step()
    trainer.train_epoch(0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    # test: the model's own full ranking; the zoo's rank convention on top
    model.eval()
    users, ranks, scores_all, labels_all = [], [], [], []
    t1 = time.perf_counter()
    with torch.no_grad():
        for batch in test_dl:
            trainer.trans_device(batch)
            scores, labels = model.full_sort_predict(batch)  # [B, N+1] (pad column 0 included)
            s = scores.float()
            target = s.gather(1, labels.view(-1, 1))
            ranks.append(((s[:, 1:] >= target).sum(1) - 1).numpy())  # others scoring >= target, pad excluded
            users.append(batch["users"].numpy())
            scores_all.append(scores)
            labels_all.append(labels)
    test_s = time.perf_counter() - t1
    uid = json.loads((data / a.name / "user_ids.json").read_text(encoding="utf-8"))
    users_np = np.concatenate(users)
    r = Ranks("full", np.asarray([str(uid[u]) for u in users_np]), np.concatenate(ranks).astype(np.int64),
              manifest["num_items"], [10, 50])
    save_ranks(out / "ranks.npz", r)
    test = {f"test/{m}": float(per_user(r, m).mean()) for m in r.metric_names()}
    ks = [10, 50]
    own = {"recall": cal_recall(labels_all, scores_all, ks), "ndcg": cal_ndcg(labels_all, scores_all, ks)}
    cfg = {k: v for k, v in config.items() if k not in ("text_emb", "device")}
    blob = {
        "test": test,
        "config": {"model": {"class_path": f"authors.{Model.__name__}", "init_args": cfg},
                   "seed_everything": a.seed, "trainer": {"max_epochs": 1}},
        "epochs": 1,
    }
    (out / "test_metrics.json").write_text(json.dumps(blob, indent=1, default=str) + "\n", encoding="utf-8")
    epoch = {"side": "authors", "model": a.model, "seed": a.seed, "train_wall_s": wall, "train_cpu_s": cpu,
             "steps": len(losses), "mean_loss": float(np.mean(losses)), "test_wall_s": test_s,
             "threads": torch.get_num_threads(), "limit_batches": a.limit_batches, "authors_metrics_pad_included": {
                 f"{m}@{k}": float(v) for m in own for k, v in zip(ks, own[m])},
             "src": str(src), "torch": torch.__version__}
    (out / "epoch.json").write_text(json.dumps(epoch, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(epoch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
