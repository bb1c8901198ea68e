"""The router registry: a folder of versioned artifacts and a `CURRENT` file naming the promoted
one. This module is the only one that reads or writes `CURRENT`.

    routers/CURRENT                        one line: v0003-classifier-1a2b3c4d5e6f
    routers/v0003-classifier-1a2b3c4d5e6f/ meta.json, arrays.npz    (meta.version = folder name)

A version is `v{N}-{router}-{data hash}` with N one above the highest in the folder
(`routers.promotion.next_version`). A new artifact is written to a temporary folder and renamed
into place (a clash with a concurrent writer takes the next N); `CURRENT` is replaced atomically
(written aside, then `os.replace`), so a reader sees the old or the new version, never a
half-written one. A member whose `router.artifact` is a registry serves its current version
(`resolve_artifact`) and, with `router.watch_s`, follows promotions.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from routers.artifact import save, update_meta
from routers.base import Router
from routers.promotion import next_version

__all__ = ["CURRENT", "Registry", "RegistryError", "resolve_artifact"]

CURRENT = "CURRENT"


class RegistryError(ValueError):
    """A registry operation that cannot be done (no such artifact, no free version name)."""


class Registry:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def current(self) -> Path | None:
        """The promoted artifact's folder, or None when nothing was promoted yet."""
        try:
            name = (self.folder / CURRENT).read_text("utf-8").strip()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return self.folder / name if name else None

    def versions(self) -> list[str]:
        """The names of the artifact folders (those with a meta.json), in name order."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name
            for p in self.folder.iterdir()
            if not p.name.startswith(".") and (p / "meta.json").is_file()
        )

    def promote(self, version: str) -> None:
        """Point CURRENT at `version`, atomically."""
        if not (self.folder / version / "meta.json").is_file():
            raise RegistryError(f"{self.folder / version} is not an artifact")
        tmp = self.folder / f".{CURRENT}.{uuid.uuid4().hex}"
        tmp.write_text(version + "\n", encoding="utf-8")
        os.replace(tmp, self.folder / CURRENT)

    def add(
        self,
        router: Router,
        *,
        data_hash: str,
        metrics: dict[str, Any],
        calibration: dict[str, float],
        quantiles: list[float],
    ) -> tuple[str, Path]:
        """Write the router as the next version (not promoted); returns (version, folder)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}"
        save(router, tmp, data_sha256=data_hash, metrics=metrics, calibration=calibration)
        if quantiles:
            update_meta(tmp, {"score_quantiles": quantiles})
        for _ in range(100):
            version = next_version((p.name for p in self.folder.iterdir()), router.version)
            update_meta(tmp, {"version": version, "trained_version": router.version})
            try:
                (self.folder / version).mkdir()  # reserves the name: fails if another took it
            except FileExistsError:
                continue
            os.rename(tmp, self.folder / version)  # replaces the empty reserved folder
            return version, self.folder / version
        raise RegistryError(f"could not find a free version name in {self.folder}")


def resolve_artifact(path: str | Path) -> Path:
    """An artifact folder, or the promoted version of a registry (its CURRENT file names it)."""
    return Registry(path).current() or Path(path)
