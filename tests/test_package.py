"""The package's shape: folders named like the stages, no import cycle, small modules,
and a client side that never loads PyTorch."""

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "src" / "resnet_triton"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted name below resnet_triton ("build.engine"; a package is its __init__) -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resnet_triton"):
            base = node.module.removeprefix("resnet_triton").removeprefix(".")
            for alias in node.names:
                name = f"{base}.{alias.name}".lstrip(".")
                found.add(name if name in known else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("resnet_triton."):
                    found.add(alias.name.removeprefix("resnet_triton."))
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module's explicit imports of the package's modules."""
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def package_of(name: str) -> str | None:
    return name.rsplit(".", 1)[0] if "." in name else None


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None.

    Importing a submodule runs its package's __init__ first: that implicit edge is
    followed too, but it closes no cycle, because a package being imported is already
    in sys.modules when its own __init__ imports the submodule. An explicit import of
    a module still being imported does close one, a submodule's of its package included.
    """
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        package = package_of(node)
        edges = [(nxt, True) for nxt in sorted(graph.get(node, ()))]
        edges += [(package, False)] if package in graph else []
        for nxt, explicit in edges:
            if state.get(nxt) == "open":
                if explicit:
                    return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                continue
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


MAX_FUNCTION_LINES = 60  # one screen (STYLE.md)


def functions_over(limit: int, *roots: Path) -> dict[str, int]:
    """ "path:function" -> lines, for every function under `roots` longer than `limit`
    lines, counted from its def line to the last line of its body (decorators left out,
    docstring and comments in)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found[f"{path.relative_to(root.parent)}:{node.name}"] = lines
    return found


def test_folders_are_the_stages_and_the_core_stays_at_the_top():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == {"build", "client", "pipeline", "serving", "training"}
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {
        "__init__", "__main__", "cli", "data", "demo", "digits", "endpoints", "errors",
        "explain", "listing", "predict", "preprocess", "resnet", "spec",
    }  # fmt: skip


def test_tests_mirror_the_package():
    for package in ("build", "client", "pipeline", "serving", "training"):
        assert list((ROOT / "tests" / package).glob("test_*.py")), package
    for module in ("spec", "preprocess", "data", "resnet", "cli", "explain"):
        assert (ROOT / "tests" / f"test_{module}.py").is_file(), module
    # pytest imports test modules by basename (no __init__.py): two alike fail collection.
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_every_test_folder_is_collected():
    """pytest skips folders named like build/ by default; none of ours may be skipped."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    collected = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")}
    assert on_disk - collected == set()


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "client.classifier" in graph and "serving.server" in graph["serving.serve"]
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # A package's __init__ importing its submodule is no cycle ...
    assert cycle({"pkg": {"pkg.a"}, "pkg.a": set()}) is None
    # ... but the submodule importing a name from that __init__ is one.
    assert cycle({"pkg": {"pkg.a"}, "pkg.a": {"pkg"}}) == ["pkg", "pkg.a", "pkg"]
    # A cycle through the implicit import of a package's __init__.
    graph = {"a": {"pkg.b"}, "pkg": {"c"}, "pkg.b": set(), "c": {"a"}}
    assert cycle(graph) == ["a", "pkg.b", "pkg", "c", "a"]


def test_no_function_in_src_or_perf_is_over_60_lines():
    assert functions_over(MAX_FUNCTION_LINES, ROOT / "src", ROOT / "perf") == {}


def test_the_function_finder_counts_from_def_to_the_last_line(tmp_path):
    def body(indent: str) -> str:  # 58 lines
        return "".join(f"{indent}x{i} = {i}\n" for i in range(58))

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "long.py").write_text(
        f"@decorator\n@other\ndef fits():\n{body('    ')}    return 1\n\n\n"  # 60 lines
        f"class A:\n    async def over(self):\n{body(' ' * 8)}        # a comment counts\n"
        "        return 2\n"  # 61 lines
    )
    assert functions_over(60, tmp_path / "code") == {"code/long.py:over": 61}


def test_lower_stages_do_not_import_upward():
    graph = import_graph()
    core = {"errors", "spec", "preprocess", "listing", "data", "resnet", "endpoints", "digits",
            "explain"}  # fmt: skip
    for name in core:
        assert graph[name] <= core, (name, graph[name] - core)
    for name in ("client", "client.classifier", "client.classify"):
        assert not {d for d in graph[name] if d.split(".")[0] in ("serving", "build")}, name


def test_no_module_is_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_client_cli_runs_without_pytorch():
    script = (
        "import sys\n"
        "from resnet_triton.client import AsyncClassifier, Classifier\n"
        "from resnet_triton import cli\n"
        "try:\n"
        "    cli.main(['classify', '--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "usage: resnet-triton classify" in result.stdout
    assert result.stdout.splitlines()[-1] == "[]"


def test_tensorboard_is_the_tracking_extra_not_a_base_dependency():
    """An install without extras (a client, a serving image) does not pull TensorBoard;
    training without it says so once and goes on (tests/training/test_tracking.py)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = lambda specs: {re.split(r"[=<>\[ ;]", spec, maxsplit=1)[0] for spec in specs}  # noqa: E731
    assert "tensorboard" not in named(project["dependencies"])
    assert "tensorboard" in named(project["optional-dependencies"]["tracking"])
    # make setup installs the tracking extra, so the tests' TensorBoard reader is there
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*\.\[[^\]]*\btracking\b", makefile)
