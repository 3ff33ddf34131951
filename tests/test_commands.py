"""The command line without torch: `zoo --help`, `zoo models`, `zoo recipes`, `zoo data stats`,
the recipe pre-check (zoo/precheck.py) and the note when a new data cache is built."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from zoo import catalog, entry, precheck

ROOT = Path(__file__).resolve().parents[1]
ZOO = str(Path(sys.executable).parent / "zoo")
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
HEAVY = ("torch", "lightning", "pandas")


def run_zoo(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([ZOO, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def imports_of(*args: str) -> tuple[int, list[str]]:
    """Run ``zoo <args>`` in a fresh interpreter; its exit code and which heavy packages it imported."""
    code = ("import sys; from zoo.entry import main; rc = main(sys.argv[1:]); "
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("HEAVY"))
    return r.returncode, ast.literal_eval(line[len("HEAVY "):])


@pytest.fixture(scope="module")
def cache(ml_folder, tmp_path_factory) -> Path:
    from datamodules.base import prepare_dataset
    from datamodules.processing import ProcessingOptions

    root = tmp_path_factory.mktemp("cache")
    return prepare_dataset("movielens", {"path": str(ml_folder)}, opts=ProcessingOptions(k_core=2),
                           cache_dir=str(root), verbose=False).path


# ----------------------------------------------------------------------------- speed
def fast_commands(cache: Path) -> dict[str, list[str]]:
    return {
        "help": ["--help"],
        "models": ["models"],
        "recipes": ["recipes"],
        "data stats": ["data", "stats", str(cache)],
        "config error": ["fit", "--config", "recipes/sasrec.yaml", "--model.init_args.no_such_arg", "3"],
    }


def test_fast_commands_import_neither_torch_nor_lightning(cache):
    for name, args in fast_commands(cache).items():
        rc, heavy = imports_of(*args)
        assert heavy == [], f"zoo {' '.join(args)} imported {heavy}"
        assert rc == (2 if name == "config error" else 0), name


def test_fast_commands_answer_within_two_seconds(cache):
    """Wall time of the real console script, as a user runs it.  CI machines are shared (2 cores,
    other jobs), so each command runs three times and the fastest run counts: the bound is on
    the command's own cost, not on the machine's load.  (Before lazy imports: 9-16 s each.)"""
    slow = {}
    for name, args in fast_commands(cache).items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            r = run_zoo(*args)
            best = min(best, time.perf_counter() - t0)
        assert r.returncode == (2 if name == "config error" else 0), (name, r.stderr[-2000:])
        if best > 2.0:
            slow[name] = round(best, 2)
    assert not slow, f"slower than 2 s (fastest of 3 runs): {slow}"


# ----------------------------------------------------------------------------- zoo --help
def test_help_lists_every_available_command_with_its_description(capsys):
    assert entry.main(["--help"]) == 0
    out = capsys.readouterr().out
    cmds = entry.available_commands()
    for name in ("fit", "validate", "test", "predict", "data", "models", "recipes"):
        assert name in cmds
    for name, cmd in cmds.items():
        assert f"  {name}" in out and cmd.description in out
        assert len(cmd.description) < 100 and "\n" not in cmd.description
    for name in set(entry.COMMANDS) - set(cmds):  # module not in this installation: not offered
        assert f"  {name} " not in out


def test_registry_hides_commands_whose_module_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(entry.COMMANDS, "nowhere", entry.Command("zoo.no_such_module", "main", "a command not installed"))
    monkeypatch.setitem(entry.COMMANDS, "deep", entry.Command("no_such_package.sub", "main", "nor this one"))
    assert "nowhere" not in entry.available_commands() and "deep" not in entry.available_commands()
    assert entry.main(["nowhere"]) == 2
    assert "unknown command 'nowhere'" in capsys.readouterr().err


def test_unknown_command_suggests_the_closest(capsys):
    assert entry.main(["modles"]) == 2
    assert "did you mean `zoo models`?" in capsys.readouterr().err


def test_registry_dispatches_with_the_arguments_after_the_name(monkeypatch, tmp_path):
    mod = tmp_path / "zoo_fake_cmd.py"
    mod.write_text("def run(argv):\n    SEEN.append(argv)\n    return 7\nSEEN = []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(entry.COMMANDS, "fake", entry.Command("zoo_fake_cmd", "run", "a test command"))
    assert entry.main(["fake", "--x", "1"]) == 7
    seen = importlib.import_module("zoo_fake_cmd").SEEN
    assert seen == [["--x", "1"]]


def test_fit_help_is_still_lightning_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        entry.main(["fit", "--config", "recipes/sasrec.yaml", "--help"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--trainer.max_epochs" in out and "--data.help" in out and "--monitor" in out


# ----------------------------------------------------------------------------- zoo models / recipes
def test_every_model_file_names_its_paper():
    """PAPER is what `zoo models` prints; its venue must also be the one the module docstring cites."""
    for module, name in catalog.model_classes():
        paper = catalog.module_constant(module, "PAPER")
        assert isinstance(paper, dict) and paper.get("title") and paper.get("venue"), module
        if paper["venue"] != "-":
            doc = ast.get_docstring(catalog.parse_module(module)) or ""
            assert paper["venue"] in " ".join(doc.split()[:40]), (module, paper["venue"])


def test_zoo_models_lists_every_model_with_paper_recipes_and_protocol(capsys):
    assert entry.main(["models", "--markdown"]) == 0
    rows = [ln.strip("|").split(" | ") for ln in capsys.readouterr().out.splitlines()[2:]]
    by_name = {r[0].strip(): [c.strip() for c in r] for r in rows}
    assert {"SASRec", "TiSASRec", "GRU4Rec", "ComiRec", "MIND", "MIRACLE", "HORAE", "TiMiRec", "HPCL4SR", "HM4SR",
            "Pop"} == set(by_name)
    assert "MultiInterestRecommender" not in by_name  # a shared base, not a model
    for path in RECIPES:  # every recipe is listed under the model its class_path builds
        cls = yaml.safe_load(path.read_text())["model"]["class_path"].rsplit(".", 1)[1]
        assert path.stem in by_name[cls][3].split(), (path.stem, cls)
    assert by_name["HORAE"][1:3] == ["HORAE: Temporal Multi-Interest Pre-training for Sequential Recommendation",
                                     "ACM TOIS 2025"]
    assert by_name["HPCL4SR"][4] == "user_split" and by_name["SASRec"][4] == "leave_one_out"
    assert by_name["ComiRec"][4] == "user_split (also leave_one_out)"  # comirec_dr/sa vs comirec_sa_plus


def test_zoo_recipes_lists_each_recipe_with_its_data_and_protocol(capsys):
    assert entry.main(["recipes", "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = {r[0]: r for r in ([c.strip() for c in ln.strip("|").split(" | ")] for ln in out.splitlines()[2:] if ln.startswith("|"))}
    assert set(rows) == {p.stem for p in RECIPES}
    for path in RECIPES:
        cfg = yaml.safe_load(path.read_text())
        data = cfg["data"]["init_args"]
        _, stage, model, phrase, protocol = rows[path.stem]
        assert model == cfg["model"]["class_path"].rsplit(".", 1)[1]
        assert protocol == data.get("protocol", "leave_one_out")
        assert phrase.startswith(data.get("format") or data["pretrain_domains"][0]["format"])
    assert rows["miracle_pretrain"][1] == "pre-train" and rows["miracle"][1] == "fine-tune"
    assert rows["sasrec"][1] == "train" and rows["horae_office"][3] == "amazon2018: Office_Products.csv"


def test_zoo_recipes_takes_another_folder(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("# my SASRec\nmodel:\n  class_path: zoo.models.sasrec.SASRec\n"
                                        "data:\n  init_args:\n    format: tafeng\n    paths: {path: /x/tafeng.csv}\n"
                                        "    protocol: user_split\n")
    assert entry.main(["recipes", "--recipes", str(tmp_path), "-v"]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and "tafeng: tafeng.csv" in out and "user_split" in out and "my SASRec" in out


# ----------------------------------------------------------------------------- recipe pre-check
@pytest.mark.parametrize("sub", entry.LIGHTNING)
def test_precheck_passes_every_recipe(sub):
    for recipe in RECIPES:
        precheck.check(sub, ["--config", str(recipe)])  # raises RecipeError on a false alarm


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


BAD = [  # (extra args after `fit --config recipes/sasrec.yaml`, substrings of the message)
    (lambda t: ["--config", write(t, "model:\n  init_args:\n    d_model: 16\n")],
     ["recipe.yaml, line 3: model.init_args.d_model", "'d_model' is not accepted by zoo.models.sasrec.SASRec"]),
    (lambda t: ["--config", write(t, "model:\n  init_args:\n    d: sixteen\n")],
     ["line 3", '"d"', "expects int", "'sixteen'"]),
    (lambda t: ["--model.init_args.no_such_arg", "3"], ["command line --model.init_args.no_such_arg", "'no_such_arg'"]),
    (lambda t: ["--model.n_layres", "3"], ["'n_layres'", "did you mean 'n_layers'?"]),
    (lambda t: ["--data.init_args.k_cor=3"], ["'k_cor' is not accepted by datamodules.base.SequentialDataModule",
                                              "did you mean 'k_core'"]),
    (lambda t: ["--model.init_args.lr", "fast"], ['"lr"', "expects float", "'fast'"]),
    (lambda t: ["--config", write(t, "monitr: val/ndcg@10\n")], ["line 1: monitr", "not accepted by `zoo fit`",
                                                                 "did you mean 'monitor'"]),
    (lambda t: ["--config", write(t, "trainer:\n  max_epoch: 3\n")], ["line 2: trainer.max_epoch", "Trainer",
                                                                       "'max_epochs'"]),
    (lambda t: ["--trainer.max_epochz", "3"], ["command line --trainer.max_epochz", "'max_epochs'"]),
    (lambda t: ["--config", write(t, "seed_everything: 1\nmodel.init_args.d_model: 16\n")],
     ["recipe.yaml, line 2: model.init_args.d_model", "'d_model' is not accepted"]),
    (lambda t: ["--config", write(t, "model:\n  class_path: zoo.models.sasrek.SASRec\n")],
     ["line 2: model.class_path", "no module zoo.models.sasrek", "did you mean 'zoo.models.sasrec.SASRec'?"]),
    (lambda t: ["--model", "zoo.models.sasrec.SasRec"], ["zoo.models.sasrec has no class SasRec"]),
    (lambda t: ["--model", "zoo.models.gru4rec.GRU4Rec", "--model.init_args.n_heads", "2"],
     ["'n_heads' is not accepted by zoo.models.gru4rec.GRU4Rec"]),
    (lambda t: ["--config", write(t, "model:\n  class_path: zoo.models.sasrec.SASRec\n  init_args: {d: 16\n")],
     ["recipe.yaml is not valid YAML", "line 3"]),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_precheck_names_file_line_and_key(case, tmp_path):
    extra, want = BAD[case]
    with pytest.raises(precheck.RecipeError) as e:
        precheck.check("fit", ["--config", "recipes/sasrec.yaml", *extra(tmp_path)])
    for w in want:
        assert w in str(e.value), (w, str(e.value))


GOOD = [  # what the full parser accepts, or what only it can judge: no false alarm
    ["--trainer.max_epoch", "3"],  # argparse abbreviation of --trainer.max_epochs
    ["--model.init_args.lr", "1e-3"],  # a float for jsonargparse although YAML 1.1 reads a string
    ["--model", "zoo.models.gru4rec.GRU4Rec", "--model.init_args.d", "8"],  # recipe's SASRec-only keys dropped
    ["--model", "mypackage.models.MyModel", "--model.init_args.anything", "1"],  # a user's class: not ours to judge
    ["--model.init_args.num_items", "5"],  # linked from the data, still an option
    ["--model.d", "8", "--data.paths", '{"path": "x"}', "--data.init_args.format_options", "{a: 1}"],
    ["--trainer.devices", "-1", "--seed_everything", "3", "--run_dir", "/tmp/x", "--ckpt_path", "last"],
    ["--config", "/no/such/file.yaml"],  # the full parser says the file is missing
    ["--model.help", "zoo.models.sasrec.SASRec"],
    ["--print_config"],
    ["--model", "zoo.yaml", "--model.init_args.whatever", "1"],  # a config file for the model, not a class path
    "trainer.max_epochs: 3\nmodel.init_args.d: 8\nmodel:\n  init_args.n_layers: 1\n",  # dotted keys in a file
]


@pytest.mark.parametrize("case", range(len(GOOD)))
def test_precheck_leaves_valid_or_unknown_inputs_to_the_full_parser(case, tmp_path):
    extra = ["--config", write(tmp_path, GOOD[case])] if isinstance(GOOD[case], str) else GOOD[case]
    precheck.check("fit", ["--config", "recipes/sasrec.yaml", *extra])


def test_precheck_knows_exactly_what_the_real_parser_accepts(tmp_path, capsys):
    """The names the pre-check reads from source files equal the LightningCLI parser's: top-level
    keys of each subcommand, Trainer options, every model's and the datamodule's init args; every
    argument it type-checks as int/float is one the real parser rejects 'sixteen' for; and a
    config printed by the real parser (what a run folder's config.yaml holds) passes."""
    from jsonargparse import ArgumentParser

    from zoo.cli import SequentialDataModule, SequentialRecommender, ZooCLI, run_cli

    class Stop(Exception):
        pass

    class Probe(ZooCLI):
        def parse_arguments(self, parser, args):
            raise Stop(self)

    with pytest.raises(Stop) as stop:
        Probe(SequentialRecommender, SequentialDataModule, subclass_mode_model=True, subclass_mode_data=True,
              args=["fit"], auto_configure_optimizers=False, parser_kwargs={"exit_on_error": False})
    cli = stop.value.args[0]
    for sub, parser in cli._subcommand_parsers.items():
        top = {a.dest.split(".")[0] for a in parser._actions if a.dest != "help"}
        known, complete = precheck.top_level_options(sub)
        assert complete and known == top, sub
        assert precheck.trainer_options() == {a.dest.split(".", 1)[1].split(".")[0] for a in parser._actions
                                              if a.dest.startswith("trainer.")}
    for where in catalog.model_classes() + [catalog.DATAMODULE]:
        cls = getattr(importlib.import_module(where[0]), where[1])
        real = ArgumentParser(exit_on_error=False)
        real.add_class_arguments(cls, "m")
        sig = catalog.method_signature(where)
        assert sig.complete and set(sig.names) == {a.dest[2:].split(".")[0] for a in real._actions
                                                   if a.dest.startswith("m.")}, where
        for name, ann in sig.annotations.items():
            if precheck._numeric_kind(ann):
                with pytest.raises(Exception):
                    real.parse_args([f"--m.{name}", "sixteen"])
    for recipe in ("sasrec", "horae_office", "hpcl4sr_tmall", "timirec_pretrain"):
        with pytest.raises(SystemExit):
            run_cli(["fit", "--config", str(ROOT / "recipes" / f"{recipe}.yaml"), "--print_config"])
        saved = tmp_path / f"{recipe}.yaml"
        saved.write_text(capsys.readouterr().out)
        for sub in entry.LIGHTNING:
            precheck.check(sub, ["--config", str(saved)])


def test_config_error_through_the_console_script_is_one_clear_line():
    r = run_zoo("fit", "--config", "recipes/sasrec.yaml", "--model.init_args.n_layer", "3")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("zoo: error")]
    assert errors == ["zoo: error (recipe): command line --model.init_args.n_layer: option 'n_layer' is not accepted "
                      "by zoo.models.sasrec.SASRec; did you mean 'n_layers' or 'input_layernorm'? "
                      "(`zoo fit --model.help zoo.models.sasrec.SASRec` lists its options)"]


# ----------------------------------------------------------------------------- data cache note
def test_new_cache_names_the_option_that_differs(ml_folder, tmp_path, capsys):
    from datamodules.base import prepare_dataset
    from datamodules.processing import ProcessingOptions

    root = str(tmp_path / "cache")
    first = prepare_dataset("movielens", {"path": str(ml_folder)}, opts=ProcessingOptions(k_core=2), cache_dir=root,
                            verbose=False)
    assert capsys.readouterr().err == ""  # nothing to explain for the first cache
    second = prepare_dataset("movielens", {"path": str(ml_folder)}, opts=ProcessingOptions(k_core=2, require_text=True),
                             cache_dir=root, verbose=False)
    err = capsys.readouterr().err
    assert second.path != first.path
    assert f"building a new cache {second.path.name}" in err and str(first.path) in err
    assert "require_text: False -> True" in err and "k_core" not in err
    prepare_dataset("movielens", {"path": str(ml_folder)}, opts=ProcessingOptions(k_core=2), cache_dir=root, verbose=False)
    assert capsys.readouterr().err == ""  # loaded, not built
    third = prepare_dataset("movielens", {"path": str(ml_folder)}, opts=ProcessingOptions(k_core=3, require_text=True),
                            cache_dir=root, verbose=False)
    err = capsys.readouterr().err
    assert str(second.path) in err and "k_core: 2 -> 3" in err and "require_text" not in err  # the closest cache
    assert json.loads((third.path / "stats.json").read_text())["format_options"] == {}


def test_no_note_when_the_raw_files_are_other_files(ml_folder, tmp_path, capsys):
    from conftest import write_movielens_latest

    from datamodules.base import prepare_dataset
    from datamodules.processing import ProcessingOptions

    root = str(tmp_path / "cache")
    prepare_dataset("movielens", {"path": str(ml_folder)}, opts=ProcessingOptions(k_core=2), cache_dir=root, verbose=False)
    other = write_movielens_latest(tmp_path / "other", seed=3)
    prepare_dataset("movielens", {"path": str(other)}, opts=ProcessingOptions(k_core=3), cache_dir=root, verbose=False)
    assert capsys.readouterr().err == ""


def test_data_prepare_prints_the_note(ml_folder, tmp_path, capsys):
    from zoo.data_cli import data_main

    common = ["prepare", "--format", "movielens", "--path", str(ml_folder), "--out", str(tmp_path), "--k", "2"]
    assert data_main(common) == 0
    capsys.readouterr()
    assert data_main([*common, "--require-text"]) == 0
    out = capsys.readouterr()
    assert "require_text: False -> True" in out.err and "- interactions:" in out.out
