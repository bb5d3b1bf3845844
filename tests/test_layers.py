"""The layers, checked from the import graph (every import statement, also inside functions).

``shared/`` is what several services use and imports no service; a service imports
``shared/`` and no other service; the coordinator (``services/coordinator``) is the one place
that wires services together. Adding an import that breaks this fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "dtlr"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join((PACKAGE, *parts)).removesuffix(".__init__")


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every module a source file imports (relative imports resolved against ``name``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                prefix = ".".join(base)
                module = f"{prefix}.{node.module}" if node.module else prefix
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def layer(module: str) -> str | None:
    """'shared', 'services.<name>', or None for modules outside DTLR's layers."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    if parts[1] == "shared":
        return "shared"
    if parts[1] == "services" and len(parts) > 2:
        return f"services.{parts[2]}"
    return None


def violations(importer: str, imported: set[str]) -> list[str]:
    """The imports of ``importer`` that break the layering rule."""
    own = layer(importer)
    out = []
    for target in sorted(imported):
        other = layer(target)
        if own is None or other is None or other == own or other == "shared":
            continue
        if own == "shared":
            out.append(f"{importer} imports the service module {target}")
        elif own != "services.coordinator":
            out.append(f"{importer} ({own}) imports another service: {target}")
    return out


def project_modules() -> dict[str, Path]:
    files = [*REPO.glob("shared/**/*.py"), *REPO.glob("services/**/*.py")]
    return {module_name(p): p for p in files}


def test_shared_imports_no_service_and_services_import_no_other_service() -> None:
    found = []
    for name, path in project_modules().items():
        found += violations(name, imported_modules(path.read_text(encoding="utf-8"), name,
                                                   path.name == "__init__.py"))
    assert found == []


def test_the_rule_catches_a_new_import_from_shared_into_a_service() -> None:
    modules = project_modules()
    assert "dtlr.shared.store" in modules and "dtlr.services.modeler.run" in modules
    bad = "def f():\n    from dtlr.services.modeler.run import run_modeler\n"
    assert violations("dtlr.shared.store", imported_modules(bad, "dtlr.shared.store")) == [
        "dtlr.shared.store imports the service module dtlr.services.modeler.run",
        "dtlr.shared.store imports the service module dtlr.services.modeler.run.run_modeler"]
    relative = "from ...services.extractor import stage\n"
    assert violations("dtlr.shared.stats.dca", imported_modules(relative,
                                                                "dtlr.shared.stats.dca"))
    across = "import dtlr.services.modeler.stats_cli\n"
    assert violations("dtlr.services.gpu_worker.metrics",
                      imported_modules(across, "dtlr.services.gpu_worker.metrics"))
    wiring = "from dtlr.services.gpu_worker import tasks\n"
    assert violations("dtlr.services.coordinator.pipeline",
                      imported_modules(wiring, "dtlr.services.coordinator.pipeline")) == []


def test_loading_the_gpu_worker_does_not_load_the_modeler() -> None:
    import subprocess
    import sys

    code = ("import sys, dtlr.services.gpu_worker.run, dtlr.services.gpu_worker.tasks; "
            "print(sorted(m for m in sys.modules if m.startswith('dtlr.services.modeler') "
            "or m in ('statsmodels.api', 'skops')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, encoding="utf-8")
    assert out.stdout.strip() == "[]"
