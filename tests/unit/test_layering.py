"""Imports point up the layer list, never down (STYLE.md): checked on the source with `ast`."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "newllm"

# what each layer may import from newllm (besides itself)
ALLOWED = {
    "data": set(),
    "models": set(),
    "config": {"models"},  # New-LLM's options are NewLLMConfig's: imported inside the functions that read them
    "training": {"config", "data", "models"},
    "evaluation": {"config", "data", "models"},  # config: BenchConfig checks its bounds as the experiment does
    "reporting": set(),
    "pipeline": {"config", "data", "models", "training", "evaluation", "reporting"},
    "recall": {"config", "data", "models", "evaluation", "pipeline"},
    "cli": {"config", "data", "models", "training", "evaluation", "reporting", "pipeline", "recall"},
}


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _newllm_imports(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("newllm."):
            layers.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            layers.update(a.name.split(".")[1] for a in node.names if a.name.startswith("newllm."))
    return layers


SOURCES = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    layer = _layer(path)
    assert layer in ALLOWED, f"{layer} is not a known layer: add it to ALLOWED and STYLE.md"
    wrong = _newllm_imports(path) - ALLOWED[layer] - {layer}
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


@pytest.mark.parametrize("layer", ["reporting", "config"])
def test_torch_free_layers(layer):
    """reporting imports no torch; config.py imports none itself (New-LLM's options reach it through
    NewLLMConfig, imported where they are read: test_config_loads_torch_only_for_new_llm_options)."""
    paths = [PACKAGE / f"{layer}.py"] if (PACKAGE / f"{layer}.py").exists() else list((PACKAGE / layer).rglob("*.py"))
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "torch" not in names, f"{path} imports torch"


def test_config_imports_the_models_only_inside_functions():
    """`import newllm.config` stays cheap: NewLLMConfig (torch, transformers) is imported where New-LLM's options
    are read, never at the module's top level."""
    tree = ast.parse((PACKAGE / "config.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    top += [n for block in tree.body if isinstance(block, ast.Try) for n in block.body if isinstance(n, ast.Import)]
    modules = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in modules if m.split(".")[0] in ("newllm", "torch", "transformers")}, modules


def test_config_loads_torch_only_for_new_llm_options():
    """Loading a preset without New-LLM options imports no torch; one that sets them reads NewLLMConfig."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from newllm.config import load_config\n"
        "load_config('full', ['model.names=new_llm,lstm', 'pretrain.lr=0.1'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch before any option'\n"
        "load_config('full', ['model.hidden_size=96'])\n"
        "assert 'transformers' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
