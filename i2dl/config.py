"""Hydra/OmegaConf helpers shared by every stage: config location and resolvers."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

#: Repository root (the folder holding ``i2dl/``, ``configs/``, ``models/``, ...).
ROOT_DIR = Path(__file__).resolve().parents[1]
#: Hydra config directory, read from the source tree (editable install).
CONFIG_DIR = ROOT_DIR / "configs"
#: Name of the primary config shared by every stage.
CONFIG_NAME = "train"


def register_resolvers() -> None:
    """Register i2dl's OmegaConf resolvers (idempotent).

    - ``${i2dl_root:}``: absolute path of the repository root, so that the default
      ``paths.data_dir`` (``<root>/../shared/data``) does not depend on the working directory.
    """
    if not OmegaConf.has_resolver("i2dl_root"):
        OmegaConf.register_new_resolver("i2dl_root", lambda: str(ROOT_DIR))


register_resolvers()
