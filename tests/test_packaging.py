"""The installed package holds every module: pyproject's package list covers the source tree."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_for_installation():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "cgap_triton").rglob("__init__.py")}
    assert on_disk <= listed, f"not installed by a regular (non-editable) install: {sorted(on_disk - listed)}"
    assert config["package-dir"]["cgap_triton.kernels"] == "kernels" and (ROOT / "kernels" / "__init__.py").is_file()


def test_kernels_import_nothing_from_the_trainer():
    for path in (ROOT / "kernels").glob("*.py"):
        text = path.read_text()
        assert "cgap_triton" not in text.replace("cgap_triton.kernels", ""), path.name
        assert "from .." not in text, path.name
