"""The package's shape: one-way layers, no import cycles, one home for Pyro's global state,
``__all__`` and docstrings on the public surface (checked on the source with ``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "regime_dmm"

#: Layers from the bottom up: a module may import its own layer or lower ones, never a higher one.
#: The exact-inference core is pure tensor maths on log-potentials (as dynamax's inference module):
#: it sits at the bottom so that every model, guide and consumer calls the same recursions.
LAYERS: list[set[str]] = [
    {"_version", "errors", "atomic", "threads", "processes", "inference", "inference.exact"},
    {"config", "checkpoints"},
    {"data", "data.loader", "data.observations", "data.features", "data.simulator", "data.sources"},
    {
        "models",
        "models.base",
        "models.penalties",
        "models.networks",
        "models.exact_dmm",
        "models.classic",
        "models.relaxed_dmm",
    },
    {"guides", "guides.base", "guides.globals", "guides.inference_network"},
    {
        "training",
        "training.annealing",
        "training.collapse",
        "training.em",
        "training.svi",
        "training.starting_values",
        "training.variants",
        "training.run_state",
        "training.hooks",
        "training.restarts",
    },
    {"fitted"},
    {"results", "naming"},
    {"evaluation", "nowcast", "arviz_export", "plots", "posterior_plots", "cross_market", "regime_checks", "backtest"},
    {"fitting"},
    {"persistence", "selection", "walkforward"},
    {"update", "calibration"},
    {"outputs"},
    {"sweep"},
    {"cli", ""},  # "" is the package itself (regime_dmm/__init__.py)
]
LAYER = {name: i for i, layer in enumerate(LAYERS) for name in layer}

#: Issue #18: Pyro's parameter store is the SVI loop's working memory and the point-mass guide keeps its
#: parameters there: only these modules use the store's API (``pyro.param``, ``get_param_store``, ...).
#: (``pyro.module`` in the models and the relaxed guide registers network weights when a Pyro step runs.)
PARAM_STORE_MODULES = {"training.svi", "guides.globals"}
#: The SVI module's store helpers are used by the restart runner (training) and by the fitted model, once,
#: to read its values out at construction; its queries use none of them (tests/test_fitted_model.py).
STORE_HELPERS = ("clear_parameters", "snapshot_parameters", "restore_parameters", "materialise", "isolated_parameters")
STORE_HELPER_USERS = {"training.restarts", "fitted"}
#: These consumers of a fit ask the fitted model; they never use the param store or poutine.
CONSUMERS = {
    "results",
    "nowcast",
    "selection",
    "arviz_export",
    "plots",
    "posterior_plots",
    "evaluation",
    "persistence",
    "update",
    "calibration",
    "outputs",
    "fitting",
    "sweep",
    "cli",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Package-internal modules imported by ``node`` in ``module`` (dotted, relative to regime_dmm)."""
    targets = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            is_package = MODULES[module].name == "__init__.py"
            base = module.split(".") if module else []
            if not is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            prefix = ".".join(base + ([node.module] if node.module else []))
            names = [prefix] + [f"{prefix}.{a.name}" if prefix else a.name for a in node.names]
        else:
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in names if n]
        names = [("regime_dmm." + n if node.level else n) for n in names]
    for name in names:
        if name == "regime_dmm" or name.startswith("regime_dmm."):
            inner = name[len("regime_dmm.") :] if name != "regime_dmm" else ""
            if inner in MODULES:
                targets.append(inner)
    return targets


def _imports() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):  # module level and inside functions alike
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(d for d in _resolve(module, node) if d != module)
        graph[module] = deps
    return graph


GRAPH = _imports()


def test_every_module_has_a_layer():
    assert set(MODULES) <= set(LAYER), sorted(set(MODULES) - set(LAYER))


def test_no_module_imports_a_layer_above_it():
    upward = [(m, d) for m, deps in GRAPH.items() for d in deps if LAYER[d] > LAYER[m]]
    assert not upward, upward


def test_no_import_cycles():
    seen: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(GRAPH[node]):
            if dep.startswith(node + ".") or node == "":
                continue  # a package importing its own submodules is not a cycle
            if seen.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack + [node, dep])}")
            if dep not in seen:
                visit(dep, stack + [node])
        seen[node] = 2

    for module in MODULES:
        if module not in seen:
            visit(module, [])


def test_no_function_level_imports_of_the_package():
    """Imports of the package's own modules sit at the top of each module (nothing is imported late to
    dodge a cycle or to save start-up time)."""
    late = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and _resolve(module, node):
                        late.append((module, func.name, ast.unparse(node)))
    assert not late, late


def _source_mentions(module: str, names: tuple[str, ...]) -> list[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            found.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in names:
            found.append(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found += [a.name for a in node.names if a.name in names]
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] in names:
                found.append(node.module)
    return found


def test_only_the_svi_loop_and_the_guides_touch_the_param_store():
    api = ("get_param_store", "clear_param_store", "param")  # "param": the attribute of pyro.param
    touching = {m for m in MODULES if _source_mentions(m, api)}
    assert touching == PARAM_STORE_MODULES
    helpers = {m for m in MODULES if _source_mentions(m, STORE_HELPERS)}
    assert helpers == STORE_HELPER_USERS


@pytest.mark.parametrize("module", sorted(CONSUMERS))
def test_consumers_use_neither_the_param_store_nor_poutine(module):
    assert not _source_mentions(module, ("get_param_store", "clear_param_store", "poutine", "param_state"))


def test_no_isinstance_dispatch_on_model_or_guide_classes_outside_their_layers():
    classes = (
        "ExactRegimeDMM",
        "RelaxedRegimeDMM",
        "ClassicMarkovSwitching",
        "GlobalsGuide",
        "PointGuide",
        "RelaxedGuide",
        "AutoLaplaceApproximation",
    )
    offenders = []
    for module, path in MODULES.items():
        if module.startswith(("models", "guides")) or module == "training.variants":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                text = ast.unparse(node.args[1])
                if any(c in text for c in classes):
                    offenders.append((module, text))
    assert not offenders, offenders


def test_public_modules_declare_all_and_document_their_public_api():
    missing_all, undocumented = [], []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not ast.get_docstring(tree):
            undocumented.append(f"{module} (module)")
        names = {
            t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
        }
        if "__all__" not in names:
            missing_all.append(module)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                overload = any(ast.unparse(d) in ("overload", "typing.overload") for d in node.decorator_list)
                if not ast.get_docstring(node) and not overload:
                    undocumented.append(f"{module}.{node.name}")
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if (
                            isinstance(item, ast.FunctionDef)
                            and not item.name.startswith("_")
                            and not ast.get_docstring(item)
                            and item.name not in ("forward",)
                        ):
                            undocumented.append(f"{module}.{node.name}.{item.name}")
    assert not missing_all, missing_all
    assert not undocumented, undocumented


def test_training_layers_take_one_hooks_object():
    """Issue #18, plumbing: the caller's side of training (log, progress bar, stop control, checkpoint, epoch
    callback) travels down ``run_restarts``, ``Variant.train`` and ``train_svi`` as one ``TrainingHooks``, not
    as the same keyword arguments threaded through each layer."""
    import inspect

    from regime_dmm.training.restarts import run_restarts
    from regime_dmm.training.svi import train_svi
    from regime_dmm.training.variants import VARIANTS

    threaded = {"log", "progress", "on_epoch", "stop", "stop_requested", "save", "checkpoint_every"}
    layers = [run_restarts, train_svi] + [type(v).train for v in VARIANTS.values()]
    for fn in layers:
        params = set(inspect.signature(fn).parameters)
        assert "hooks" in params, fn.__qualname__
        assert not params & threaded, (fn.__qualname__, sorted(params & threaded))
