"""`textback connectors new NAME`: a connector package that passes the conformance kit as generated."""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import ConfigError

TEMPLATES = Path(__file__).with_name("scaffold_templates")

README = """# textback-{id}

The {name} connector for textback, scaffolded by `textback connectors new`.

- `{package}/manifest.yaml`: what the connector is (capabilities, secrets, limits).
- `{package}/connector.py`: the connector; replace the example API calls with {name}'s.
- `{package}/emulator.py`: a local {name} emulator speaking its wire format, for tests and the sandbox.
- `{package}/kit.py` and `tests/test_conformance.py`: the conformance kit, in one line.

```sh
pip install -e . && pytest
textback connectors install {id} --business BUSINESS --set api_key=...
```
"""

TEST = '''from connectors.testing import conformance_suite
from {package}.kit import {cls}Kit

Test{cls}Conformance = conformance_suite({cls}Kit())
'''


def names(name: str) -> dict[str, str]:
    ident = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not re.match(r"^[a-z][a-z0-9_]{1,40}$", ident):
        raise ConfigError(
            f"{name!r} does not make a connector id (letters, digits, underscores; start with a letter)"
        )
    cls = "".join(part.capitalize() for part in ident.split("_")) + "Connector"
    return {"id": ident, "name": name, "cls": cls, "package": f"textback_{ident}"}


def scaffold(name: str, directory: Path) -> Path:
    values = names(name)
    root = directory / f"textback-{values['id']}"
    if root.exists():
        raise ConfigError(f"{root} already exists; pick another --dir or remove it")
    package = root / values["package"]
    (root / "tests").mkdir(parents=True)
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    for template, target in (
        ("connector.py.tmpl", package / "connector.py"),
        ("emulator.py.tmpl", package / "emulator.py"),
        ("kit.py.tmpl", package / "kit.py"),
        ("manifest.yaml.tmpl", package / "manifest.yaml"),
        ("pyproject.toml.tmpl", root / "pyproject.toml"),
    ):
        text = (TEMPLATES / template).read_text(encoding="utf-8").format(**values)
        target.write_text(text, encoding="utf-8")
    (root / "tests" / "test_conformance.py").write_text(TEST.format(**values), encoding="utf-8")
    (root / "README.md").write_text(README.format(**values), encoding="utf-8")
    return root
