"""kernels/ is a pure kernel library: it imports nothing from fer_fast (which imports it), and
fer_fast detects the interpreter through it, the one definition."""
import ast
from pathlib import Path

import fer_fast.kernels

KERNELS_DIR = Path(fer_fast.kernels.__path__[0])


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: must stay inside kernels/ (one level)
                assert node.level == 1, f"{path.name} imports from outside kernels/: {ast.dump(node)}"
            else:
                names.add(node.module)
    return names


def test_no_kernel_module_imports_fer_fast():
    paths = sorted(KERNELS_DIR.glob("*.py"))
    assert len(paths) >= 5, "kernels/ modules not found"
    for path in paths:
        bad = {m for m in _imported_modules(path) if m == "fer_fast" or m.startswith("fer_fast.")}
        assert not bad, f"kernels/{path.name} imports {sorted(bad)}"


def test_interpreter_detection_follows_how_kernels_were_defined():
    import triton
    from fer_fast.kernels import bn_act, is_interpreter
    assert is_interpreter() == (not isinstance(bn_act._apply_kernel, triton.runtime.JITFunction))
    # kernels/__init__.py names the variable once (INTERPRETER_ENV), for processes that set it
    for path in [*Path(fer_fast.__file__).parent.glob("*.py"), *KERNELS_DIR.glob("*.py")]:
        if path == KERNELS_DIR / "__init__.py":
            continue
        literals = {node.value for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert "TRITON_INTERPRET" not in literals, (
            f"{path.name} reads TRITON_INTERPRET itself; use fer_fast.kernels.is_interpreter()")
