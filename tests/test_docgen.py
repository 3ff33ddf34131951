"""docs/models.md is generated from the model docstrings and signatures (zoo/docgen.py) and cannot drift."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import docgen

ROOT = Path(__file__).resolve().parents[1]
PAPER_MODELS = ("MIRACLE", "HORAE", "TiMiRec", "HM4SR", "TiSASRec")  # the models with public official code


@pytest.fixture(scope="module")
def index() -> dict[str, docgen.ModelDoc]:
    return docgen._class_index()


def test_committed_page_equals_the_generated_one():
    committed = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    assert committed == docgen.render(), "docs/models.md is stale: run `python -m zoo.docgen` and commit it"


@pytest.mark.parametrize("name", [m for m, _ in docgen.MODELS] + [docgen.BASE[0]])
def test_every_option_is_described(name, index):
    assert docgen.undocumented(name, index) == [], (
        f"{name}: describe these __init__ options in the class docstring's Args section "
        "or in the module's paper-vs-code table"
    )


def test_every_model_file_is_on_the_page(index):
    files = {f for _, f in docgen.MODELS} | {docgen.BASE[1], "__init__.py"}
    assert {p.name for p in (ROOT / "zoo" / "models").glob("*.py")} <= files
    assert all(name in index for name, _ in docgen.MODELS)


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_switch_table_names_real_options_with_their_real_defaults(name, index):
    """Each row of the paper-vs-code table names an option of the model, and its default cell
    starts with that option's default in the signature (the table cannot contradict the code)."""
    rows = [r for r in docgen.switch_table(index[name].module_doc) if docgen.table_switch(r)]
    assert rows, f"{name} has no paper-vs-code table"
    opts = {p.name: p.default for p, _ in docgen.options(name, index)}
    for row in rows:
        switch = docgen.table_switch(row)
        assert switch in opts, f"{name}: table row {switch!r} is not an __init__ option"
        cell = docgen.table_default(row)
        assert cell is not None, f"{name}: the default cell of {switch!r} must start with ``value``"
        assert ast.literal_eval(cell) == ast.literal_eval(opts[switch]), (name, switch, cell, opts[switch])


def test_defaults_changed_to_the_official_code():
    """Issue #15 item 0: the defaults where paper and code disagree (code, except clear bugs)."""
    index = docgen._class_index()
    expect = {
        "MIRACLE": {
            "score_with_id": "True", "attention_activation": "'leaky_relu'", "train_mask_token": "False",
            "mask_pad_logit": "False",
        },
        "HORAE": {
            "rope": "'qk'", "overflow_to_pad": "False",  # the code's two bugs stay switches
            "intra_mode": "'code'", "anchor_capsule": "'target_argmax'", "anchor_mask_items": "True",
            "contrastive_weight": "0.001", "orthogonality_weight": "0.01", "gru_zero_pads": "False",
        },
        "HM4SR": {
            "temporal_experts_trainable": "True",  # the code's bug stays a switch
            "abs_time_unit": "1.0", "mask_pad_logit": "False", "false_negatives": "'zero_logit'",
        },
    }
    for name, want in expect.items():
        opts = {p.name: p.default for p, _ in docgen.options(name, index)}
        assert {k: opts[k] for k in want} == want, name


def test_args_section_parser_golden():
    doc = '''Summary.

    Args:
        d: hidden size (300).  n_layers / n_heads: encoder
            depth and heads (2 / 2).
        mode: ``"a"`` or ``"b"``.  Note: not an option.
        **kwargs: base options.
    '''
    doc = ast.get_docstring(ast.parse(f'"""{doc}"""'), clean=True)
    got = docgen.parse_args_section(doc, ["d", "n_layers", "n_heads", "mode", "missing"])
    assert got == {
        "d": "hidden size (300).",
        "n_layers": "encoder depth and heads (2 / 2).",
        "n_heads": "encoder depth and heads (2 / 2).",
        "mode": '``"a"`` or ``"b"``. Note: not an option.',
    }


def test_docgen_imports_no_torch_and_check_mode():
    code = "import sys, zoo.docgen as g; g.render(); assert 'torch' not in sys.modules; sys.exit(g.main(['--check']))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
