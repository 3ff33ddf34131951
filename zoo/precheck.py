"""Recipe errors found in milliseconds, before torch and Lightning are imported.

``zoo fit|validate|test|predict`` builds a LightningCLI parser, which imports torch, Lightning and
every model: about 10 s on a 2-core machine before a misspelt key is reported.  This pre-check
reads the same inputs as that parser -- the ``--config`` files (``yaml.safe_load``) and the
``--model.* / --data.* / --trainer.*`` flags -- and the names it accepts from the SOURCE files
(``zoo/catalog.py`` parses ``__init__`` signatures with :mod:`ast`; Lightning's ``Trainer`` and
``ZooCLI.add_arguments_to_parser`` the same way), so it answers in well under a second.

It reports only what it is sure of: invalid YAML, an unknown top-level / ``trainer`` / model or
data init-argument key, a ``zoo.models`` / ``datamodules`` class path that does not exist, and a
non-numeric value for an ``int``/``float`` argument.  Anything it cannot resolve (a user's own
class, ``**kwargs`` it cannot follow, a key given before the class that takes it, an abbreviated
``--trainer`` flag) is left to the full LightningCLI parse, which runs next as before.  A test
(``tests/test_commands.py``) checks that every recipe passes and that the names agree with the
real parser's.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from zoo import catalog

GROUPS = {"model": catalog.RECOMMENDER, "data": catalog.DATAMODULE}
CLASS_KEYS = ("class_path", "init_args", "dict_kwargs", "help")
HELP_FLAGS = ("-h", "--help")


class _Where:
    """Where a value was given: a YAML file and key path (line looked up only for a message) or a flag."""

    def __init__(self, path: Path | None = None, keys: tuple[str, ...] = (), flag: str = "") -> None:
        self.path, self.keys, self.flag = path, keys, flag

    def __str__(self) -> str:
        """``<file>, line N: <dotted key>`` or ``command line --flag``."""
        if self.path is None:
            return f"command line {self.flag}"
        line = key_line(self.path, self.keys)
        return f"{self.path}{f', line {line}' if line else ''}: {'.'.join(self.keys)}"


def _where(path: Path, keys: tuple[str, ...]) -> _Where:
    return _Where(path, keys)


@dataclass
class Setting:
    key: str  # first component of the init-arg key
    value: Any
    where: _Where
    from_file: bool


@dataclass
class Group:
    """What the inputs say about ``model`` or ``data``, in command-line order."""

    class_path: str | None = None
    class_where: _Where | None = None
    settings: list[Setting] = field(default_factory=list)

    def set_class(self, class_path: Any, where: _Where) -> None:
        class_path = None if class_path is None else str(class_path)
        if class_path and (class_path.endswith((".yaml", ".yml", ".json")) or Path(class_path).is_file()):
            class_path = f"<config file {class_path}>"  # jsonargparse reads the class from it: unknown here
        if class_path != self.class_path:
            # jsonargparse keeps earlier init_args the new class accepts and drops the others
            # silently, so only settings from here on are checked
            self.class_path, self.class_where, self.settings = class_path, where, []


class RecipeError(ValueError):
    """A recipe or command-line mistake found by the pre-check (the message names file, line and key)."""


# ----------------------------------------------------------------------------- what the parser accepts
def _lightning_trainer() -> tuple[str, str]:
    return ("lightning.pytorch.trainer.trainer", "Trainer")


def trainer_options() -> set[str] | None:
    sig = catalog.method_signature(_lightning_trainer())
    return set(sig.names) if sig.names else None


def _lightning_subcommand_skips() -> dict[str, set[str]] | None:
    """``LightningCLI.subcommands()``: the Trainer-method arguments that are not options."""
    node = catalog.class_node(("lightning.pytorch.cli", "LightningCLI"))
    fn = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "subcommands"), None) if node else None
    ret = next((n for n in ast.walk(fn) if isinstance(n, ast.Return)), None) if fn else None
    value = catalog.literal(ret.value) if ret else None
    return value if isinstance(value, dict) else None


def zoo_options() -> tuple[set[str], bool]:
    """The ``--name`` options ``ZooCLI.add_arguments_to_parser`` adds; False when it does more than
    ``parser.add_argument`` / ``link_arguments`` / ``set_defaults`` (then the set may be incomplete)."""
    node = catalog.class_node(("zoo.cli", "ZooCLI"))
    fn = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "add_arguments_to_parser"),
              None) if node else None
    if fn is None:
        return set(), False
    names, complete = set(), True
    for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
        if call.func.attr == "add_argument":
            flags = [catalog.literal(a) for a in call.args]
            long = [f for f in flags if isinstance(f, str) and f.startswith("--")]
            if long:
                names.add(long[0][2:].replace("-", "_"))
            else:
                complete = False
        elif call.func.attr not in ("link_arguments", "set_defaults") and isinstance(call.func.value, ast.Name) \
                and call.func.value.id == "parser":
            complete = False
    return names, complete


def top_level_options(subcommand: str) -> tuple[set[str], bool]:
    """Every top-level key of ``zoo <subcommand>``'s parser, and whether the set is complete."""
    names = {"config", "print_config", "seed_everything", "trainer", "model", "data"}
    skips = _lightning_subcommand_skips()
    method = catalog.method_signature(_lightning_trainer(), subcommand)
    extra, complete = zoo_options()
    if skips is None or subcommand not in skips or not method.names:
        return names | extra, False
    return names | (set(method.names) - set(skips[subcommand])) | extra, complete


# ----------------------------------------------------------------------------- reading the inputs
def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@lru_cache(maxsize=None)
def _compose(path: Path) -> Any:
    import yaml

    try:
        return yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None


def key_line(path: Path, keys: tuple[str, ...]) -> int | None:
    """1-based line of the mapping key ``keys`` (a path of nested keys) in a YAML file."""
    import yaml

    node, line, i = _compose(path), None, 0
    while i < len(keys):
        if not isinstance(node, yaml.MappingNode):
            return line
        found = {kn.value: (kn, vn) for kn, vn in node.value if isinstance(kn, yaml.ScalarNode)}
        # the key itself, or a dotted key spelling several levels at once (`trainer.max_epochs: 3`)
        j = next((j for j in range(len(keys), i, -1) if ".".join(keys[i:j]) in found), None)
        if j is None:
            return line
        kn, node = found[".".join(keys[i:j])]
        line, i = kn.start_mark.line + 1, j
    return line


def _suggest(key: str, names: set[str] | list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(key, sorted(names), n=n, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class _Inputs:
    """The recipe files and flags in order, reduced to what the checks need."""

    def __init__(self, subcommand: str) -> None:
        self.subcommand = subcommand
        self.groups = {g: Group() for g in GROUPS}
        self.top_keys: list[tuple[str, _Where]] = []  # (key, where) from config files
        self.trainer_keys: list[tuple[str, _Where, bool]] = []  # (key, where, exact)

    def add_file(self, path: Path) -> None:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:  # from the file: YAML errors name it
                cfg = yaml.safe_load(fh)
        except (OSError, UnicodeDecodeError):
            raise _Defer from None  # the full parser reports a missing/unreadable file
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {path} is not valid YAML: " + " ".join(str(e).split())) from None
        if cfg is None:
            return
        if not isinstance(cfg, dict):
            raise _Defer
        for key, value in _nested(cfg).items():
            key = str(key)
            self.top_keys.append((key, _where(path, (key,))))
            if key == "trainer" and isinstance(value, dict):
                self.trainer_keys += [(str(k), _where(path, ("trainer", str(k))), True) for k in value]
            elif key in GROUPS:
                self._group_value(key, value, path)

    def _group_value(self, group: str, value: Any, path: Path) -> None:
        g = self.groups[group]
        if value is None or isinstance(value, str):
            g.set_class(value, _where(path, (group,)))
            return
        if not isinstance(value, dict):
            return
        if "class_path" in value:
            g.set_class(value["class_path"], _where(path, (group, "class_path")))
        init = value.get("init_args")
        if isinstance(init, dict):
            for k, v in init.items():
                g.settings.append(Setting(str(k), v, _where(path, (group, "init_args", str(k))), True))

    def add_flag(self, flag: str, value: str | None) -> None:
        name = flag[2:]
        head, _, rest = name.partition(".")
        where = _Where(flag=flag)
        if head in GROUPS and value is not None:
            g = self.groups[head]
            if not rest:
                parsed = _yaml_value(value)
                if isinstance(parsed, dict):
                    if "class_path" in parsed:
                        g.set_class(parsed["class_path"], where)
                    for k, v in (parsed.get("init_args") or {}).items() if isinstance(parsed.get("init_args"), dict) else []:
                        g.settings.append(Setting(str(k), v, where, False))
                elif isinstance(parsed, str) and not value.startswith("{"):
                    g.set_class(value, where)
                return
            first, _, sub = rest.partition(".")
            if first == "class_path":
                g.set_class(value, where)
            elif first == "init_args" and sub:
                g.settings.append(Setting(sub.split(".")[0].rstrip("+"), _yaml_value(value), where, False))
            elif first not in CLASS_KEYS:
                g.settings.append(Setting(first.rstrip("+"), _yaml_value(value), where, False))
        elif head == "trainer" and rest:
            self.trainer_keys.append((rest.split(".")[0].rstrip("+"), where, False))


def _nested(cfg: dict[Any, Any]) -> dict[str, Any]:
    """Dotted keys as jsonargparse reads them in a config file: ``{"trainer.max_epochs": 3}`` ->
    ``{"trainer": {"max_epochs": 3}}`` (at every level; later keys win, as in the parser)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        value = _nested(value) if isinstance(value, dict) else value
        *parents, last = str(key).split(".")
        at = out
        for part in parents:
            if not isinstance(at.get(part), dict):
                at[part] = {}
            at = at[part]
        if isinstance(value, dict) and isinstance(at.get(last), dict):
            at[last] = {**at[last], **value}
        else:
            at[last] = value
    return out


class _Defer(Exception):
    """The pre-check cannot judge these inputs; the full parser will."""


def _split_flags(argv: list[str]) -> list[tuple[str, str | None]]:
    """``--flag value`` / ``--flag=value`` pairs; a flag followed by another flag has no value."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and "=" in tok:
            out.append(tuple(tok.split("=", 1)))
        elif tok.startswith("-"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("--"):
                out.append((tok, nxt))
                i += 1
            else:
                out.append((tok, None))
        i += 1
    return out


# ----------------------------------------------------------------------------- the checks
def _resolve(group: str, class_path: str, where: _Where | None) -> tuple[str, str] | None:
    """The class source behind a class path, an error for a missing zoo/datamodules class, or None."""
    if "." not in class_path:  # a short name: look among the zoo's own classes
        pool = catalog.model_classes() if group == "model" else [catalog.DATAMODULE]
        hits = [c for c in pool if c[1] == class_path]
        return hits[0] if len(hits) == 1 else None
    module, name = class_path.rsplit(".", 1)
    found = catalog.resolve_class(module, name)
    if found is not None:
        return found
    ours = module.split(".")[0] in ("zoo", "datamodules")
    known = [f"{m}.{c}" for m, c in (catalog.model_classes() if group == "model" else [catalog.DATAMODULE])]
    if ours and catalog.module_file(module) is None:
        raise RecipeError(f"{where}: class path '{class_path}': there is no module {module}"
                          f"{_suggest(class_path, known, 1)} (`zoo models` lists them)")
    tree = catalog.parse_module(module) if ours else None
    if tree is not None and not _binds(tree, name):
        raise RecipeError(f"{where}: class path '{class_path}': {module} has no class {name}"
                          f"{_suggest(class_path, known, 1)}")
    return None


def _binds(tree: ast.Module, name: str) -> bool:
    """Whether a module's top level binds ``name`` in any way (class, def, import, assignment, or a
    module ``__getattr__``, which may return any name)."""
    for node in catalog.top_level_statements(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return True
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name.split(".")[0]) == name
                                                                  for a in node.names):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(a.name == "*" for a in node.names):
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
            return True
    return False


def _numeric_kind(annotation: ast.expr | None) -> str | None:
    """``int`` / ``float`` when the annotation is exactly that (or it ``| None`` / ``Optional[...]``)."""
    if annotation is None:
        return None
    text = ast.unparse(annotation).replace(" ", "")
    for kind in ("int", "float"):
        if text in (kind, f"{kind}|None", f"None|{kind}", f"Optional[{kind}]", f"typing.Optional[{kind}]"):
            return kind
    return None


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _check_group(group: str, g: Group, subcommand: str) -> None:
    if not g.class_path or g.class_path.startswith("<"):
        return
    where_cls = _resolve(group, g.class_path, g.class_where)
    if where_cls is None:
        return
    sig = catalog.method_signature(where_cls)
    shown = f"{where_cls[0]}.{where_cls[1]}"
    for s in g.settings:
        if s.key not in sig.annotations:
            if sig.complete:
                raise RecipeError(
                    f"{s.where}: option '{s.key}' is not accepted by {shown}"
                    f"{_suggest(s.key, sig.names)} (`zoo {subcommand} --{group}.help {shown}` lists its options)")
            continue
        kind = _numeric_kind(sig.annotations[s.key])
        if kind and isinstance(s.value, str) and not _is_number(s.value):
            raise RecipeError(f"{s.where}: \"{s.key}\" of {shown} expects {kind}, "
                              f"got {s.value!r}")


def check(subcommand: str, argv: list[str]) -> None:
    """Raise :class:`RecipeError` for a mistake in ``zoo <subcommand> <argv>`` that is certain
    without importing torch; return silently otherwise (the full parse decides)."""
    if any(a in HELP_FLAGS or a.endswith(".help") for a in argv):
        return
    inputs = _Inputs(subcommand)
    try:
        for flag, value in _split_flags(argv):
            if flag in ("--config", "-c"):
                if value is None:
                    return
                inputs.add_file(Path(value))
            elif flag.startswith("--"):
                inputs.add_flag(flag, value)
        known, complete = top_level_options(subcommand)
        if complete:
            for key, where in inputs.top_keys:
                if key not in known:
                    raise RecipeError(f"{where}: option '{key}' is not accepted by `zoo {subcommand}`"
                                      f"{_suggest(key, known)} (top-level options: {', '.join(sorted(known))})")
        trainer = trainer_options()
        if trainer:
            for key, where, exact in inputs.trainer_keys:
                if key in trainer or (not exact and any(t.startswith(key) for t in trainer)):
                    continue  # argparse accepts an unambiguous abbreviation of a flag
                if key == "help":
                    continue
                raise RecipeError(f"{where}: option '{key}' is not accepted by Lightning's Trainer"
                                  f"{_suggest(key, trainer)}")
        for group, g in inputs.groups.items():
            _check_group(group, g, subcommand)
    except _Defer:
        return
