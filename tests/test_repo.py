"""The repository keeps its promises: CI runs the README's test command; the library has no import
cycle, no function over 80 lines and a short training driver; the README's Layout names what is in
the tree, and every file that the docs, comments and docstrings name exists."""

from __future__ import annotations

import ast
import io
import pathlib
import re
import subprocess
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Run the tests", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_test_command() in ci_lines


# --------------------------------------------------------------------------- the library's shape

PACKAGE = ROOT / "flowers_jax"
MAX_FUNCTION_LINES = 80


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True inside `if TYPE_CHECKING:` (imports there never run)."""
    while node in parents:
        node, child = parents[node], node
        if isinstance(node, ast.If) and child in node.body and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The flowers_jax modules `path` imports anywhere in it (top level and inside functions).

    `from a.b import c` counts as importing a.b.c when that is a module, else a.b.
    """
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != here}


def _import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) for p in paths}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_import_graph_check_sees_a_cycle():
    """The check itself: a cycle through a function-level import is found, a chain is not."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    graph = _import_graph()
    assert "flowers_jax.data.layout" in graph["flowers_jax.data.pipeline"]  # a top-level import
    assert "flowers_jax.abstain" in graph["flowers_jax.config"]  # a function-level one


def test_no_import_cycle_in_flowers_jax():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_in_flowers_jax_is_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() is {lines} lines")
    assert not long, "\n".join(long)


# The training driver (issue #16: one flat loop over global steps, read in one sitting).
DRIVER = {"train_and_evaluate": 60, "_train": 60}


def test_the_training_driver_is_short():
    tree = ast.parse((PACKAGE / "train.py").read_text())
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert set(DRIVER) <= set(lengths), "the driver functions were renamed: update DRIVER"
    assert all(lengths[name] <= limit for name, limit in DRIVER.items()), {n: lengths[n] for n in DRIVER}


# --------------------------------------------------------------------------- files the prose names

# Paths as prose names them: under a top-level folder of the repository ("flowers_jax/models/",
# "docs/design.md"), or a file of a kind the repository holds ("kernels.py", "launch/README.md").
_FILE_KINDS = ("py", "md", "sh", "mjs", "toml")
_TOP = ("flowers_jax", "tests", "benchmarks", "configs", "launch", "export", "docs", ".ci")
_KINDS, _TOPS = "|".join(_FILE_KINDS), "|".join(re.escape(t) for t in _TOP)
_PATH = re.compile(rf"(?<![\w./~$}}-])((?:[\w.-]+/)*[\w.-]+\.(?:{_KINDS})(?!\w)|(?:{_TOPS})/[\w./-]*)")
# Modules as prose names them: flowers_jax.export.cli, benchmarks.common.
_MODULE = re.compile(r"(?<![\w.])((?:flowers_jax|benchmarks|configs)(?:\.\w+)+)")


def _repo_files() -> list[str]:
    """What git tracks, and what it does not ignore (a change in progress), relative to ROOT."""
    try:
        out = [
            subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
            for args in (["ls-files"], ["ls-files", "--others", "--exclude-standard"])
        ]
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return sorted({f for lines in out for f in lines if f and (ROOT / f).exists()})


def _python_prose(text: str) -> list[tuple[int, str]]:
    """(line, text) of the comments and docstrings (strings that stand as statements) of Python
    source, not of its code."""
    parts, statement_start = [], True
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and statement_start):
            parts.append((tok.start[0], tok.string))
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            statement_start = tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING)
    return parts


def _prose(name: str, text: str) -> list[tuple[int, str]]:
    """(line, text) of what in a file is prose: all of a Markdown file, a program's comments (and
    Python's docstrings)."""
    if name.endswith(".md"):
        return [(1, text)]
    if name.endswith(".py"):
        return _python_prose(text)
    if name.endswith((".js", ".mjs")):
        return [(text[: m.start()].count("\n") + 1, m.group()) for m in re.finditer(r"//[^\n]*|/\*.*?\*/", text, re.S)]
    if name.endswith((".sh", ".toml")) or name == ".ci/run":
        comments = (re.search(r"(?:^|\s)#(.*)", line) for line in text.splitlines())  # not ${#x}
        return [(i, m.group(1)) for i, m in enumerate(comments, 1) if m]
    return []


def _missing_references(prose: dict[str, list[tuple[int, str]]], files: list[str], generated: set[str]) -> list[str]:
    """ "file:line: reference" for each path or module named in `prose` ({file: its prose}) that is
    not one of `files` (or a folder of them). A relative path may be relative to the root or to
    any folder above the file that names it; a bare file name must be some file's name. Paths in a
    `generated` folder (git ignores them: node_modules/, workdirs/), outside the checkout (../) and
    placeholders (benchmarks/X.py) are not checked."""
    present = set(files) | {str(p) for f in files for p in pathlib.PurePosixPath(f).parents if str(p) != "."}
    names = {pathlib.PurePosixPath(f).name for f in files}
    missing = []
    for name, fragments in prose.items():
        here = pathlib.PurePosixPath(name).parent
        for line, fragment in fragments:
            for offset, ref, kind in _references(fragment):
                parts = ref.split("/" if kind == "path" else ".")
                if ref.startswith("../") or generated & set(parts) or _placeholder(parts):
                    continue
                if kind == "module":
                    ok = _module_exists(parts, present)
                else:
                    bases = [here, *here.parents]
                    ok = ref in names or any(str(base / ref).removeprefix("./") in present for base in bases)
                if not ok:
                    missing.append(f"{name}:{line + fragment[:offset].count(chr(10))}: {ref}")
    return missing


def _placeholder(parts: list[str]) -> bool:
    """A path like benchmarks/X.py: one capital letter stands for any name."""
    return any(re.fullmatch(r"[A-Z](\.\w+)?", p) for p in parts)


def _references(text: str):
    """(offset, reference, "path" or "module") of each path and module named in `text`."""
    for m in _PATH.finditer(text):
        yield m.start(), m.group(1).rstrip(".,:;)/"), "path"
    for m in _MODULE.finditer(text):
        yield m.start(), m.group(1), "module"


def _module_exists(parts: list[str], present: set[str]) -> bool:
    """Dotted `parts` name a module (its file or its package folder), or a module followed by a name
    (not checked further), or a package followed by a name its __init__.py has."""
    for i in range(1, len(parts) + 1):
        path = "/".join(parts[:i])
        if f"{path}.py" in present:
            return True
        if path not in present:
            init = "/".join(parts[: i - 1]) + "/__init__.py"
            return (
                i > 1 and init in present and re.search(rf"\b{parts[i - 1]}\b", (ROOT / init).read_text()) is not None
            )
    return True


def _generated_folders() -> set[str]:
    """Folder names .gitignore ignores (made by install scripts and runs: node_modules, workdirs, ...)."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return {line.strip("/") for line in lines if line.endswith("/") and "*" not in line}


def test_the_reference_check_sees_a_missing_file():
    files = ["docs/design.md", "flowers_jax/models/kernels.py", "flowers_jax/models/layers.py", "README.md"]
    files += ["flowers_jax/__init__.py", "flowers_jax/models/__init__.py"]
    code = '''"""Kernels: see flowers_jax/models/kernels.py and docs/design.md, §kernels."""
x = "DESIGN_NOTES.md"  # code is not prose; a comment citing DESIGN.md is
# models/kernels.py, flowers_jax/gone.py, flowers_jax.models.kernels.resolve, flowers_jax.old_module
'''
    prose = {"flowers_jax/models/layers.py": _prose("flowers_jax/models/layers.py", code)}
    prose["README.md"] = [(1, "Run `benchmarks/X.py`;\n`export/node_modules/` after install; `../shared/x.md`.")]
    assert _missing_references(prose, files, {"node_modules"}) == [
        "flowers_jax/models/layers.py:2: DESIGN.md",
        "flowers_jax/models/layers.py:3: flowers_jax/gone.py",
        "flowers_jax/models/layers.py:3: flowers_jax.old_module",
    ]


def test_every_file_the_docs_and_comments_name_exists():
    files = _repo_files()
    kinds = (".md", ".py", ".js", ".mjs", ".sh", ".toml")
    prose = {f: _prose(f, (ROOT / f).read_text(errors="replace")) for f in files if f.endswith(kinds) or f == ".ci/run"}
    missing = _missing_references(prose, files, _generated_folders())
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def _layout() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"## Layout\n\n```\n(.+?)\n```", readme, re.S).group(1)


def test_the_readme_layout_names_every_folder_and_module():
    """Each top-level folder, each flowers_jax subpackage and module (by path, or by file name on the
    line of its folder) is in the README's Layout, and every path the Layout names exists."""
    layout = _layout()
    named = set(re.findall(r"[\w.]+/?[\w./]*", layout))
    top = {f.split("/")[0] for f in _repo_files() if "/" in f and not f.startswith(".")}
    assert top <= set(_TOP), f"a new top-level folder: add it to _TOP and the Layout: {top - set(_TOP)}"
    wanted = {f"{t}/" for t in top if not any(n.startswith(f"{t}/") for n in named)} | {
        f"flowers_jax/{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    absent = sorted(w for w in wanted if w not in named)
    absent += sorted(m for m in modules if f"flowers_jax/{m}" not in named and m not in named)
    assert not absent, f"not in the README's Layout: {absent}"
    paths = [w for w in named if w.split("/")[0] in _TOP and "/" in w and not _placeholder(w.split("/"))]
    assert all((ROOT / w).exists() for w in paths), [w for w in paths if not (ROOT / w).exists()]
