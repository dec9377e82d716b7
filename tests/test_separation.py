"""Four rooms, one-way doors: the engine never imports the notebook stack, and the
package import (what %load_ext does first) does not even import torch."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_engine_imports_torch_but_not_ipython_ipywidgets_or_matplotlib() -> None:
    modules = imported_after(
        "import prune_magic.engine as e; import torch; e.prune(torch.nn.Linear(4, 4), 'clip amount=0.5')"
    )
    assert "torch" in modules
    assert not {m for m in modules if m.split(".")[0] in {"IPython", "ipywidgets", "matplotlib"}}


def test_importing_the_package_is_cheap() -> None:
    assert "torch" not in imported_after("import prune_magic")
    assert "torch" not in imported_after("import prune_magic; hasattr(prune_magic, '__path__')")
    assert "prune_magic.engine" in imported_after("import prune_magic; prune_magic.engine")


def test_the_package_exposes_the_engine_api() -> None:
    import prune_magic
    import prune_magic.engine

    for name in prune_magic.engine.__all__:
        assert getattr(prune_magic, name) is getattr(prune_magic.engine, name)
    assert set(prune_magic.engine.__all__) <= set(dir(prune_magic))


def test_the_static_views_need_no_ipywidgets() -> None:
    """A terminal or nbconvert shows a cell's output through prune_magic.views alone."""
    modules = imported_after("import prune_magic.views")
    assert "matplotlib" in modules and "ipywidgets" not in modules
