"""Router artifacts: a folder with `meta.json` and `arrays.npz`. The only I/O in `routers`.

meta.json: format_version, router (name), version, models, strong, weak, data_sha256,
features (featurizer spec), params, metrics, calibration ({name: threshold}), familiarity (the
`unfamiliar` distance model's settings, its arrays stored as `familiarity_*`; absent in artifacts
of routers without features), split (how the held-out items were chosen).
Loading checks the format version and raises `ArtifactError` on any mismatch or damage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import Identity, Router
from routers.errors import ArtifactError
from routers.familiarity import Familiarity
from routers.features import featurizer_from_spec
from routers.learned import FeatureBase, FeatureRouter, Standardizer
from routers.reference import OracleRouter, RandomRouter
from routers.semantic import SemanticRouter, semantic_config_from_obj
from routers.training import FEATURE_ROUTERS

__all__ = ["FORMAT_VERSION", "Artifact", "load", "load_artifact", "save", "update_meta"]

FORMAT_VERSION = 1
META = "meta.json"
ARRAYS = "arrays.npz"
_FAM = "familiarity_"
_KEYS = "train_item_keys"


class Artifact:
    """A loaded router with the metadata it was saved with."""

    def __init__(
        self,
        router: Router,
        meta: Mapping[str, Any],
        train_keys: np.ndarray[Any, Any] | None = None,
    ) -> None:
        self.router = router
        self.meta = dict(meta)
        self.train_keys = train_keys  # `item_keys` of the training records, when saved

    @property
    def calibration(self) -> dict[str, float]:
        """Named thresholds; one that was not finite when saved (JSON has no inf) is absent."""
        return {
            str(k): float(v) for k, v in self.meta.get("calibration", {}).items() if v is not None
        }

    @property
    def familiarity(self) -> Familiarity | None:
        """The router's `unfamiliar` distance model (None when it has none)."""
        return self.router.familiarity if isinstance(self.router, FeatureRouter) else None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.meta.get("metrics", {}))


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def save(
    router: Router,
    directory: str | Path,
    *,
    data_sha256: str = "",
    metrics: Mapping[str, Any] | None = None,
    calibration: Mapping[str, float] | None = None,
    split: Mapping[str, Any] | None = None,
    train_keys: np.ndarray[Any, Any] | None = None,
) -> Path:
    """Write the artifact folder (created if needed; existing files replaced). `split`: how
    the training command chose its held-out items ({"holdout", "salt"}), so `eval` can use
    them by default; `train_keys`: `item_keys` of the training records, so `eval` can tell
    training items from new ones."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    features = (
        router.featurizer.spec() if isinstance(router, FeatureRouter | SemanticRouter) else None
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "router": router.name,
        "version": router.version,
        "models": list(router.models),
        "strong": router.strong,
        "weak": router.weak,
        "data_sha256": data_sha256,
        "features": features,
        "params": router.params(),
        "metrics": dict(metrics or {}),
        "calibration": dict(calibration or {}),
    }
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in router.arrays().items()}
    familiarity = router.familiarity if isinstance(router, FeatureRouter) else None
    if familiarity is not None:
        meta["familiarity"] = familiarity.meta()
        arrays.update({_FAM + k: np.asarray(v) for k, v in familiarity.arrays().items()})
    if split is not None:
        meta["split"] = dict(split)
    if train_keys is not None:
        arrays[_KEYS] = np.asarray(train_keys, dtype=np.uint64)
    with (path / ARRAYS).open("wb") as fh:
        np.savez(fh, **arrays)
    (path / META).write_text(json.dumps(_clean(meta), indent=2, sort_keys=True) + "\n")
    return path


def update_meta(directory: str | Path, fields: Mapping[str, Any]) -> None:
    """Replace top-level fields of an artifact's meta.json (e.g. calibration, metrics)."""
    path = Path(directory) / META
    meta = _read_meta(Path(directory))
    meta.update(fields)
    path.write_text(json.dumps(_clean(meta), indent=2, sort_keys=True) + "\n")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is not a router artifact: no {META}") from exc
    except NotADirectoryError as exc:
        raise ArtifactError(f"{path} is not a router artifact: not a folder") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read {path / META}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path / META} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path / META} is not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has artifact format version {version!r}; this build reads version "
            f"{FORMAT_VERSION}: retrain with `llmroute train`"
        )
    return meta


def load_artifact(directory: str | Path) -> Artifact:
    path = Path(directory)
    meta = _read_meta(path)
    try:
        with np.load(path / ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        own = {k: v for k, v in arrays.items() if not k.startswith(_FAM) and k != _KEYS}
        familiarity = (
            Familiarity.from_saved(
                meta["familiarity"],
                {k[len(_FAM) :]: v for k, v in arrays.items() if k.startswith(_FAM)},
            )
            if meta.get("familiarity")
            else None
        )
        router = _build(meta, own, familiarity)
    except ArtifactError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: damaged artifact ({exc!r})") from exc
    return Artifact(router, meta, arrays.get(_KEYS))


def load(directory: str | Path) -> Router:
    """Load the router saved in `directory`."""
    return load_artifact(directory).router


def _build(
    meta: Mapping[str, Any],
    a: Mapping[str, np.ndarray[Any, Any]],
    familiarity: Familiarity | None = None,
) -> Router:
    identity = Identity(
        version=str(meta["version"]),
        models=tuple(str(m) for m in meta["models"]),
        strong=str(meta["strong"]),
        weak=str(meta["weak"]),
    )
    name = meta["router"]
    params = meta["params"]
    if name == "random":
        return RandomRouter(identity, seed=int(params["seed"]))
    if name == "oracle":
        return OracleRouter(identity, dict(zip(a["keys"].tolist(), a["values"], strict=True)))
    featurizer = featurizer_from_spec(meta["features"])
    if name == "semantic":
        return SemanticRouter(identity, semantic_config_from_obj(params), featurizer)
    router_type = FEATURE_ROUTERS.get(name)
    if router_type is not None:
        base = FeatureBase(identity, featurizer, Standardizer(a["center"], a["scale"]), familiarity)
        return router_type.from_saved(base, params, a)
    raise ArtifactError(f"unknown router kind {name!r} in artifact")
