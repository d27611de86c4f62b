"""Nothing in src/ or scripts/ unpickles: no bare torch.load, pickle, or np.load(allow_pickle=True).

Checkpoints are safetensors + JSON (docs/reliability.md); unpickling a downloaded or tampered file
runs arbitrary code, so a new unsafe load must fail this test rather than slip into review.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("src", "scripts")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
PICKLE_CALLS = {"load", "loads", "Unpickler", "open"}  # shelve.open unpickles too


def _dotted(node) -> str:
    """`torch.load` for the expression torch.load; "" for anything not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(source: str, filename: str = "<string>") -> list[str]:
    """`file:line: reason` for each call in `source` that may unpickle."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name → what it was imported as (`np` → numpy, `load` → torch.load)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            continue
        head, _, rest = name.partition(".")
        name = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
        module, _, function = name.rpartition(".")
        where = f"{filename}:{node.lineno}"
        if name in ("torch.load", "torch.serialization.load") and not _keyword_is(node, "weights_only", True):
            found.append(f"{where}: {name} without weights_only=True")
        elif module.split(".")[0] in PICKLE_MODULES and function in PICKLE_CALLS:
            found.append(f"{where}: {name} unpickles")
        elif name in ("numpy.load", "np.load") and any(k.arg == "allow_pickle" for k in node.keywords):
            if not _keyword_is(node, "allow_pickle", False):
                found.append(f"{where}: {name} with allow_pickle")
    return found


def test_no_unsafe_loads_in_the_code():
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]
    assert files, "nothing scanned: is ROOT right?"
    problems = [
        problem
        for path in files
        for problem in unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    hint = "use safetensors / JSON, or torch.load(..., weights_only=True)"
    assert not problems, f"unsafe loads ({hint}):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=False)",
        "import torch as t\nt.load(path, map_location='cpu')",
        "from torch import load\nload(path)",
        "import pickle\npickle.load(handle)",
        "import pickle\npickle.loads(data)",
        "from pickle import loads as l\nl(data)",
        "import dill\ndill.load(handle)",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import numpy\nnumpy.load('x.npy', allow_pickle=flag)",
    ],
)
def test_checker_catches_unsafe_loads(source):
    assert len(unsafe_loads(source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "import numpy as np\nnp.load('x.npy')",
        "import numpy as np\nnp.load('x.npy', allow_pickle=False)",
        "import json\njson.load(handle)",
        "from safetensors.torch import load_file\nload_file('model.safetensors')",
    ],
)
def test_checker_allows_safe_loads(source):
    assert unsafe_loads(source) == []
