"""The package's layers import one way: no module imports one of a later layer, no two
modules import each other (directly or round a cycle), counting imports made inside
functions too; and compiling a model loads no benchmark, CLI or search code."""
import ast
import pathlib
import subprocess
import sys
import textwrap

import lego_tvm
import lego_tvm.schedules

PACKAGE = pathlib.Path(lego_tvm.__file__).parent
# Installed, schedules/ is lego_tvm.schedules; in an editable install it stays outside.
SCHEDULES = pathlib.Path(lego_tvm.schedules.__file__).parent
# Lowest first. A module may import its own layer and those before it (DEVELOPERS.md says
# what each layer holds). "lego_tvm" is the package's lazy facade over all of them.
LAYERS = [("support",), ("nn", "zoo"), ("frontend",), ("op",), ("recognize",), ("transform",),
          ("schedules",), ("backend",), ("tuning",), ("runtime", "check"), ("compiler", "dynamo_backend"),
          ("bench",), ("cli", "__main__"), ("",)]


def layer_of(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    for rank, names in enumerate(LAYERS):
        if first in names:
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to DEVELOPERS.md")


def package_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for root, prefix in ((PACKAGE, ["lego_tvm"]), (SCHEDULES, ["lego_tvm", "schedules"])):
        for path in root.rglob("*.py"):
            parts = prefix + list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: pathlib.Path, known) -> set[str]:
    """The package modules ``module`` imports, anywhere in its source."""
    found = set()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            # "from package import module" names the module, else the names are in target.
            candidates = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known
                          else target for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:
            while name and name not in known:     # a name inside a module: the module
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("lego_tvm"):
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def is_package_init(module: str, graph) -> bool:
    return any(other.startswith(module + ".") for other in graph)


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "lego_tvm.backend.onednn" in graph["lego_tvm.runtime"]      # imported in load()
    assert "lego_tvm.tuning.logs" in graph["lego_tvm.compiler"]
    assert "lego_tvm.schedules.lego_cpu" in graph["lego_tvm.tuning.search"]


def test_no_module_imports_a_later_layer():
    graph = import_graph()
    wrong = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
             for a, targets in graph.items() for b in targets
             if layer_of(b) > layer_of(a) and not is_package_init(b, graph)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_compiling_loads_no_benchmark_cli_or_search_code():
    script = textwrap.dedent("""
        import sys, torch, lego_tvm
        model = lego_tvm.LegoConv2d(8, 8, 3, 2, 0.5).eval()
        lego_tvm.compile(model, (torch.randn(1, 8, 6, 6),), tuning_logs="auto")
        print(" ".join(sorted(m for m in sys.modules if m.startswith("lego_tvm"))))
    """)
    loaded = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                            text=True, timeout=600, cwd="/").stdout.split()
    assert "lego_tvm.compiler" in loaded and "lego_tvm.tuning.logs" in loaded
    forbidden = [m for m in loaded if m.startswith(("lego_tvm.bench", "lego_tvm.cli",
                                                    "lego_tvm.tuning.search"))]
    assert not forbidden, forbidden
