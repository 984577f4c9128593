"""Hydra/OmegaConf helpers shared by every stage: config location and resolvers."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from omegaconf import OmegaConf

from i2dl.errors import PackageShadowedError

log = logging.getLogger(__name__)

#: Repository root (the folder holding ``i2dl/``, ``configs/``, ``models/``, ...).
ROOT_DIR = Path(__file__).resolve().parents[1]
#: Hydra config directory, read from the source tree (editable install).
CONFIG_DIR = ROOT_DIR / "configs"
#: Name of the primary config shared by every stage.
CONFIG_NAME = "train"
#: Top-level packages of this project besides ``i2dl`` (names a user's folder may shadow).
SIBLING_PACKAGES = ("models", "datamodules", "configs")


def check_packages() -> None:
    """Check that ``models``, ``datamodules`` and ``configs`` are this project's packages.

    The project's layout has generic top-level names: a ``models/`` folder in the working
    directory (first on ``sys.path`` under ``python -m``) would be imported instead.

    Raises:
        PackageShadowedError: (an ``ImportError``) a package resolves outside the
            repository; the message names both paths and the fix.
    """
    for name in SIBLING_PACKAGES:
        spec = importlib.util.find_spec(name)
        expected = ROOT_DIR / name / "__init__.py"
        found = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if found != expected.resolve():
            raise PackageShadowedError(
                f"the package {name!r} imported by i2dl is {found or 'missing'}, not i2dl's "
                f"own {expected}: a folder named {name!r} in the working directory or on "
                f"PYTHONPATH shadows it. Run i2dl from another folder, rename your "
                f"{name!r} folder, or reinstall i2dl with `pip install -e .`"
            )


def register_resolvers() -> None:
    """Register i2dl's OmegaConf resolvers (idempotent).

    - ``${i2dl_root:}``: absolute path of the repository root, so that the default
      ``paths.data_dir`` (``<root>/../shared/data``) does not depend on the working directory.
    """
    if not OmegaConf.has_resolver("i2dl_root"):
        OmegaConf.register_new_resolver("i2dl_root", lambda: str(ROOT_DIR))


register_resolvers()
