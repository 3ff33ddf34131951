"""Render ``docs/models.md`` from the model files' docstrings and ``__init__`` signatures.

The page is generated, never edited by hand: ``tests/test_docgen.py`` checks that the committed
file equals :func:`render` and that every ``__init__`` option of every model is described in its
class docstring's ``Args`` section or in its paper-vs-code table.  After changing a model's
docstring or a default, regenerate it:

    python -m zoo.docgen            # writes docs/models.md
    python -m zoo.docgen --check    # exit 1 if docs/models.md is stale

The files are parsed with :mod:`ast` (nothing is imported, so no torch), which also means the
page shows the defaults exactly as written in the source.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "zoo" / "models"
DOCS_PATH = ROOT / "docs" / "models.md"

# (class, file) in page order: the five papers' models, then the baselines they compare against.
MODELS: tuple[tuple[str, str], ...] = (
    ("MIRACLE", "miracle.py"),
    ("HORAE", "horae.py"),
    ("TiMiRec", "timirec.py"),
    ("HPCL4SR", "hpcl4sr.py"),
    ("HM4SR", "hm4sr.py"),
    ("SASRec", "sasrec.py"),
    ("TiSASRec", "tisasrec.py"),
    ("GRU4Rec", "gru4rec.py"),
    ("ComiRec", "comirec.py"),
    ("MIND", "mind.py"),
    ("Pop", "pop.py"),
)
BASE = ("SequentialRecommender", "base.py")  # options every model takes (documented once)
TABLE_HEADER = "| switch | paper form | code form | default | why |"


@dataclass
class Param:
    name: str
    default: str  # source text of the default ("" = required)


@dataclass
class ModelDoc:
    """What the page needs of one class: its docstrings, own options and parent."""

    name: str
    file: str
    module_doc: str
    class_doc: str
    params: list[Param]
    parent: str | None  # base class name (first base)
    args: dict[str, str] = field(default_factory=dict)  # option -> its Args description

    @property
    def qualname(self) -> str:
        return f"zoo.models.{Path(self.file).stem}.{self.name}"


def _class_index() -> dict[str, ModelDoc]:
    """Every class of zoo/models/*.py by name (parsed, not imported)."""
    index: dict[str, ModelDoc] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_doc = ast.get_docstring(tree) or ""
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            params: list[Param] = []
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    params = _signature(item.args)
            parent = ast.unparse(node.bases[0]) if node.bases else None
            index[node.name] = ModelDoc(node.name, path.name, module_doc, ast.get_docstring(node) or "", params, parent)
    for name, doc in index.items():  # entries may also name inherited options (they end the one before)
        names = [p.name for p, _ in options(name, index)] or [p.name for p in doc.params]  # the base: its own
        doc.args = parse_args_section(doc.class_doc, names)
    return index


def _signature(args: ast.arguments) -> list[Param]:
    """Named options of ``__init__`` (self, *args and **kwargs left out) with their defaults."""
    from zoo.catalog import named_arguments

    return [Param(a.arg, "" if d is None else ast.unparse(d)) for a, d in named_arguments(args)]


def args_block(class_doc: str) -> str:
    """The indented block under the ``Args...:`` line of a class docstring ("" if none)."""
    lines = class_doc.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Args") and line.rstrip().endswith(":"):
            block = []
            for nxt in lines[i + 1 :]:
                if nxt.strip() and not nxt.startswith(" "):
                    break
                block.append(nxt)
            return "\n".join(block)
    return ""


def parse_args_section(class_doc: str, names: list[str]) -> dict[str, str]:
    """``{option: description}`` from the Args section; entries may share a line
    (``d: size.  n_layers / n_heads: depth.``) and a description (``a / b: ...``)."""
    block = args_block(class_doc)
    if not block or not names:
        return {}
    name_re = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    entry = re.compile(rf"(?<=  )((?:{name_re})(?:\s*/\s*(?:{name_re}))*):(?=\s)")
    matches = list(entry.finditer(block))
    out: dict[str, str] = {}
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(block)
        text = block[m.end() : end]
        text = re.split(r"\n\s*\*\*kwargs:", text)[0]  # the base-class line ends the last entry
        desc = " ".join(text.split())
        for name in re.split(r"\s*/\s*", m.group(1)):
            out.setdefault(name, desc)
    return out


def switch_table(module_doc: str) -> list[dict[str, str]]:
    """Rows of the paper-vs-code table (``switch | paper form | code form | default | why``)."""
    lines = module_doc.splitlines()
    try:
        start = lines.index(TABLE_HEADER)
    except ValueError:
        return []
    rows = []
    keys = [c.strip() for c in TABLE_HEADER.strip("|").split("|")]
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows.append(dict(zip(keys, cells)))
    return rows


def table_switch(row: dict[str, str]) -> str | None:
    """The option a table row is about (``None`` for "(no switch)" rows)."""
    m = re.fullmatch(r"``(\w+)``", row["switch"])
    return m.group(1) if m else None


def table_default(row: dict[str, str]) -> str | None:
    """The literal the default cell starts with (``"leaky_relu"`` in ``"leaky_relu"`` (code))."""
    m = re.match(r"``([^`]+)``", row["default"])
    return m.group(1) if m else None


def lineage(name: str, index: dict[str, ModelDoc]) -> list[ModelDoc]:
    """The class and its model parents, nearest first, stopping before the common base."""
    chain = []
    while name in index and name != BASE[0]:
        chain.append(index[name])
        name = index[name].parent or ""
    return chain


def options(name: str, index: dict[str, ModelDoc]) -> list[tuple[Param, ModelDoc]]:
    """Every option of a model (own first, then inherited), each with the class that documents it."""
    seen: set[str] = set()
    out = []
    for doc in lineage(name, index):
        for p in doc.params:
            if p.name not in seen:
                seen.add(p.name)
                out.append((p, doc))
    return out


def undocumented(name: str, index: dict[str, ModelDoc]) -> list[str]:
    """Options of a model described neither in an Args section nor in a paper-vs-code table."""
    if name == BASE[0]:
        return [p.name for p in index[name].params if p.name not in index[name].args]
    chain = lineage(name, index)
    tabled = {table_switch(r) for doc in chain for r in switch_table(doc.module_doc)}
    return [p.name for p, doc in options(name, index) if p.name not in doc.args and p.name not in tabled]


def _md(text: str) -> str:
    """Sphinx roles to Markdown code (``:class:`X``` -> ```X```)."""
    return re.sub(r":(?:class|mod|func|meth|attr):`~?([^`]+)`", r"`\1`", text)


def _cell(text: str) -> str:
    return _md(text).replace("|", "\\|")


def _options_table(rows: list[tuple[Param, ModelDoc]]) -> list[str]:
    out = ["| option | default | meaning |", "|---|---|---|"]
    for p, doc in rows:
        default = f"`{p.default}`" if p.default else "required"
        out.append(f"| `{p.name}` | {_cell(default)} | {_cell(doc.args.get(p.name, 'see the table above'))} |")
    return out


def render() -> str:
    """The whole of docs/models.md."""
    index = _class_index()
    out = [
        "# Models",
        "",
        "<!-- Generated by `python -m zoo.docgen` from the model files' docstrings and __init__",
        "     signatures; edit those, not this file (tests/test_docgen.py checks they agree). -->",
        "",
        "One section per model: the paper, the equations implemented (the model file's docstring),",
        "every switch where the paper and the authors' code disagree, and every option with its",
        "default.  Rule for those switches (DESIGN.md \"Decisions\"): the default is what produced the",
        "paper's tables, i.e. the authors' code, except clear bugs; the paper's printed form stays a",
        "switch.  Options every model takes (learning rate, metrics, pre-trained checkpoint, ...) are",
        "listed once, [at the end](#options-every-model-takes).",
        "",
    ]
    for name, _file in MODELS:
        doc = index[name]
        out += ["", f"## {name}", "", f"`{doc.qualname}`", "", _md(doc.module_doc).rstrip(), ""]
        if doc.class_doc and doc.class_doc.split("\n\n")[0] != doc.module_doc.split("\n\n")[0]:
            summary = doc.class_doc.split("Args")[0].strip()
            if summary:
                out += [_md(summary), ""]
        chain = lineage(name, index)
        own = [(p, d) for p, d in options(name, index) if d is doc]
        if own:
            out += ["### Options", ""] + _options_table(own) + [""]
        for parent in chain[1:]:
            inherited = [(p, d) for p, d in options(name, index) if d is parent]
            if inherited:
                out += [f"Inherited from `{parent.qualname}`:", ""] + _options_table(inherited) + [""]
        if not own and len(chain) == 1:
            out += ["No options of its own.", ""]
    base = index[BASE[0]]
    out += ["", "## Options every model takes", "", f"`{base.qualname}`", ""]
    out += _options_table([(p, base) for p in base.params]) + [""]
    return "\n".join(out).rstrip() + "\n"


def write(path: Path = DOCS_PATH) -> None:
    """Write the page atomically (:func:`zoo.runfiles.atomic_write`)."""
    from zoo.runfiles import atomic_write

    atomic_write(path, render())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.docgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/models.md differs from the docstrings")
    args = parser.parse_args(argv)
    if args.check:
        current = DOCS_PATH.read_text(encoding="utf-8") if DOCS_PATH.exists() else ""
        if current != render():
            print(f"{DOCS_PATH} is stale: run `python -m zoo.docgen`", file=sys.stderr)
            return 1
        return 0
    write()
    print(f"wrote {DOCS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
