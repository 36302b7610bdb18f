"""The project's layout: the course tools load without torch, imports run down the layers, and no module or
function outgrows a reading."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
MAX_PARAMETERS = 8  # positional and keyword-only, `self` and `cls` not counted

# Bottom first. A module imports from lower layers, and from its own layer only within its own package, or
# along one of ONE_WAY: no two of a layer's packages import each other.
LAYERS = [
    {"flags"},
    {"config", "course"},
    {"datasets", "modules", "models", "optimizer"},
    {"training"},
    {"classifier", "paraphrase_detection", "sonnet_generation", "evaluation", "prepare_submit", "utils"},
    {"predict", "export", "benchmark"},  # commands that use a task script's model and data as it builds them
    {"tools"},
    {"experiments"},
]
TASK_SCRIPTS = ("classifier", "paraphrase_detection", "sonnet_generation")
ONE_WAY = {("course", "config"),  # the course's paraphrase answers are GPT-2's yes/no token ids
           ("models", "modules"),  # a model is built of the modules
           ("export", "predict"),  # an export rebuilds the run as predict.py does
           *((script, "evaluation") for script in TASK_SCRIPTS)}  # the scripts grade as the course does
NO_TORCH = ["evaluation", "prepare_submit", "course.files", "course.sonnets", "course.metrics", "course.hand_in",
            "course.gold", "flags", "config"]

# Run in a fresh interpreter: imports `module`, printing the stack of whatever imports torch.
PROBE = """
import importlib, sys, traceback

class ReportTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            traceback.print_stack()
        return None

sys.meta_path.insert(0, ReportTorch())
importlib.import_module(sys.argv[1])
sys.exit("torch" in sys.modules)
"""


def project_files() -> list[Path]:
    """Every Python file of the project's own code: the top-level modules and the packages, not the tests."""
    packages = [path for path in ROOT.iterdir() if (path / "__init__.py").is_file() and path.name != "tests"]
    return sorted([*ROOT.glob("*.py"), *(file for package in packages for file in package.rglob("*.py"))])


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT))


def top_name(path: Path) -> str:
    """The top-level module or package a file belongs to."""
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def layer_of(name: str) -> int | None:
    return next((number for number, layer in enumerate(LAYERS) if name in layer), None)


def imported_names(tree: ast.Module, package: str) -> list[tuple[int, str, str]]:
    """(line, top-level name, the import as written) of every import in the file, those inside functions too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0], f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = package if node.level else node.module.split(".")[0]
            written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            found.append((node.lineno, target, written))
    return found


def import_allowed(importer: str, imported: str) -> bool:
    low, high = layer_of(imported), layer_of(importer)
    return low < high or importer == imported or (importer, imported) in ONE_WAY


@pytest.mark.parametrize("module", NO_TORCH)
def test_the_course_tools_and_the_bottom_layers_load_without_torch(module):
    probe = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0, f"importing {module} loads torch:\n{probe.stderr}"


def test_imports_run_down_the_layers():
    files = project_files()
    first_party = {top_name(path) for path in files}
    unplaced = sorted(name for name in first_party if layer_of(name) is None)
    assert not unplaced, f"in no layer of LAYERS: {', '.join(unplaced)}"
    upward = []
    for path in files:
        importer = top_name(path)
        for line, imported, written in imported_names(ast.parse(path.read_text(), str(path)), importer):
            if imported in first_party and not import_allowed(importer, imported):
                upward.append(f"{shown(path)}:{line}: {written} ({importer} is in layer {layer_of(importer)}, "
                              f"{imported} in layer {layer_of(imported)})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_module_is_longer_than_450_lines():
    long = [f"{shown(path)}: {count} lines" for path in project_files()
            if (count := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines:\n" + "\n".join(long)


def parameter_count(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    arguments = function.args
    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    return len(names) - (names[:1] in (["self"], ["cls"]))


def test_no_function_takes_more_than_8_parameters():
    many = [f"{shown(path)}:{node.lineno}: {node.name} takes {parameter_count(node)}"
            for path in project_files() for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > MAX_PARAMETERS]
    assert not many, f"more than {MAX_PARAMETERS} parameters:\n" + "\n".join(many)
