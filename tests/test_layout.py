"""The package keeps the layout docs/architecture.md describes: imports point down the stages of the data flow
and never close a circle, a package's children never import its front door (bladegpt's own
holds only __version__), every user error lives in
errors.py, and no module or class grows past what one reading holds. Read with `ast`, nothing imported."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bladegpt"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300

# The stages, lowest first: a module may import one of a lower stage, or a sibling in its own package.
STAGES = [
    ["errors"],  # foundations
    ["files", "strictjson", "encoding", "tensorfile"],
    ["config"],
    ["loss", "attention"],
    ["model", "tokenizer"],
    ["lora", "runtime"],
    ["runs"],
    ["checkpoint"],  # BladeGPT's own file
    ["sources"],  # pretrained weights in
    ["data"],  # prepare -> dataset
    ["generate"],  # checkpoint -> text
    ["train", "export"],  # dataset -> checkpoints; checkpoint -> other tools
    ["bench", "walltime"],
    ["serve"],  # checkpoint -> an OpenAI-style server and a chat page
    ["cli"],
    ["__main__"],
]
RANK = {room: rank for rank, rooms in enumerate(STAGES) for room in rooms}
# An import inside a function is for the CLI's instant --help (cli/), or a heavy dependency a caller may not need;
# never to get around a cycle. The BladeGPT modules imported so outside cli/, each with its reason:
LAZY = {"bladegpt/data/prepare.py": "sources (torch) only for --tokenizer-from: prepare stays torch-free",
        "bladegpt/data/speaker.py": "sources (torch) only for --tokenizer-from, as prepare.py",
        "bladegpt/data/frames.py": "the readers (86 ms: pysubs2, webvtt-py, ebooklib) only for chat --as"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def exists(name: str) -> bool:
    return is_package(name) or (ROOT / Path(*name.split("."))).with_suffix(".py").is_file()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) for every import of a bladegpt module, at module level and inside functions: a name
    imported from a package is its submodule when one exists, else the package's front door."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "bladegpt"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bladegpt":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub if exists(sub) else node.module, node.lineno))
    return found


EDGES = {name: imports(path) for name, path in MODULES.items()}


def room(name: str) -> str:
    return name.split(".")[1] if "." in name else "__init__"


def test_every_module_has_a_stage():
    assert {room(m) for m in MODULES} - {"__init__"} <= set(RANK), "add the new module to STAGES"


def test_imports_point_down_the_stages():
    wrong = []
    for source, targets in EDGES.items():
        for target, line in targets:
            if room(target) == "__init__" or room(target) == room(source):
                continue  # bladegpt.__version__; siblings in one package (the cycle test holds them)
            if RANK[room(target)] >= RANK[room(source)]:
                wrong.append(f"{MODULES[source].relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "imports up or across the stages:\n" + "\n".join(wrong)


def test_children_never_import_their_front_door():
    wrong = [f"{MODULES[source].relative_to(ROOT)}:{line} imports {target}"
             for source, targets in EDGES.items() for target, line in targets
             if is_package(target) and target not in (source, "bladegpt") and source.startswith(target + ".")]
    assert not wrong, "a child imports its package's __init__ (put what it needs in a leaf sibling):\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = {m: {t for t, _ in targets if t in MODULES and t != m} for m, targets in EDGES.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(cycles)


def test_function_level_imports_are_for_help_or_a_heavy_module():
    wrong = []
    for name, path in MODULES.items():
        where = str(path.relative_to(ROOT))
        if room(name) == "cli" or where in LAZY:
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                wrong += [f"{where}:{n.lineno}" for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))
                          and any(m.split(".")[0] == "bladegpt" for m in
                                  ([n.module or ""] if isinstance(n, ast.ImportFrom) else [a.name for a in n.names]))]
    assert not wrong, "BladeGPT modules imported inside functions (import them at the top, or name the reason in LAZY):\n" \
        + "\n".join(wrong)


def test_every_user_error_is_in_errors_py():
    errors = {n.name for n in ast.parse((PACKAGE / "errors.py").read_text()).body if isinstance(n, ast.ClassDef)}
    assert "UserError" in errors
    elsewhere = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                 for name, path in MODULES.items() if name != "bladegpt.errors"
                 for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
                 if any(isinstance(b, ast.Name) and b.id in errors or isinstance(b, ast.Attribute) and b.attr in errors
                        for b in node.bases)]
    assert not elsewhere, "user errors defined outside errors.py:\n" + "\n".join(elsewhere)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_classes_fit_one_reading(name):
    text = MODULES[name].read_text()
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} is {lines} lines, over {MAX_MODULE_LINES}: split it by concern"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{name}.{node.name} is {size} lines: give its parts their own state"


def test_scripts_import_only_public_names():
    private = [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}"
               for path in sorted((ROOT / "scripts").glob("*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bladegpt")
               for a in node.names if a.name.startswith("_") or any(p.startswith("_") for p in node.module.split("."))]
    assert not private, "scripts importing private names:\n" + "\n".join(private)
