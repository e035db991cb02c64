"""The package's shape: no import loops (module-level or lazy), no oversized modules."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"latentstore": "latentstore", "latentstore_kernels": "kernels", "latentstore_train": "train"}


def _modules() -> dict[str, str]:
    out = {}
    for name, folder in PACKAGES.items():
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), os.path.join(ROOT, folder))[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join([name] + rel)] = os.path.join(root, f)
    return out


def _is_main_guard(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _imports(mod: str, path: str, modules: dict) -> set[str]:
    """Every package module `mod` imports, at module level or inside functions (not under `if __name__`)."""
    tree = ast.parse(open(path).read())
    pkg = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    found = set()
    skip = {id(n) for top in ast.walk(tree) if _is_main_guard(top) for n in ast.walk(top)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != mod and not mod.startswith(n + "."):  # a package's own __init__ is not a loop
                found.add(n)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_loops():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert not _cycles(graph)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]  # the checker itself finds loops


def test_no_module_over_400_lines():
    big = {m: n for m, p in _modules().items() if (n := sum(1 for _ in open(p))) > 400}
    assert not big, big
