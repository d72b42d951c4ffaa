"""Helpers shared by the learned scorers: roles, safe checkpoint loading, strict key checks, batching.

Checkpoints from the hub are untrusted. ``load_state_dict_file`` therefore reads ``.safetensors`` with
safetensors and everything else with ``torch.load(weights_only=True)``, which refuses any pickle that
would build an object other than tensors and plain containers (a pickle carrying code is rejected
before it runs). Nothing here passes ``trust_remote_code``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from spo.metrics.base import ScorerError

# float64 is not a config option; parity tests use it to compare formulas far below 1e-5.
_DTYPES = {"float32", "float16", "bfloat16", "float64"}


def require_roles(metric: str, weights: Mapping[str, str], required: Sequence[str],
                  optional: Sequence[str] = ()) -> dict[str, Path]:
    """Check the ``weights`` roles a scorer gets; return them as paths.

    Raises ScorerError naming a missing role and the config key that provides it, or an unknown role.
    """
    weights = dict(weights or {})
    for role in required:
        if not weights.get(role):
            raise ScorerError(
                f"metric '{metric}' needs the weights role '{role}': set "
                f"`metrics.<name>.weights.{role}` in the config (roles: required "
                f"{list(required)}, optional {list(optional)})")
    unknown = sorted(set(weights) - set(required) - set(optional))
    if unknown:
        raise ScorerError(f"metric '{metric}' does not know the weights roles {unknown}; "
                          f"allowed: {list(required) + list(optional)}")
    out = {}
    for role, path in weights.items():
        p = Path(path)
        if not p.exists():
            raise ScorerError(f"metric '{metric}': weights role '{role}' points to '{p}', which does "
                              f"not exist")
        out[role] = p
    return out


def torch_dtype(dtype: str):
    import torch

    if dtype not in _DTYPES:
        raise ScorerError(f"unknown dtype '{dtype}'; allowed: {sorted(_DTYPES)}")
    return getattr(torch, dtype)


def load_state_dict_file(path: str | Path, *, unwrap: Sequence[str] = ("state_dict",)) -> dict[str, Any]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict, without running pickled code.

    Args:
        path: a ``.safetensors`` file, or a torch pickle (``.pt``/``.pth``/``.bin``).
        unwrap: container keys to descend into when the file holds ``{"state_dict": {...}}``
            (the HPSv2 layout); a ``module.`` prefix (DataParallel) is stripped.

    Raises:
        ScorerError: the file is not a plain tensor checkpoint (e.g. a pickle that builds objects).
    """
    import pickle

    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a truncated or non-safetensors file
            raise _refused(path, exc) from exc
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # weights_only=True raises this for any global outside torch's allowlist: the pickle
            # would build an arbitrary object (or run code), so it is refused, never retried.
            raise _refused(path, exc) from exc
        except Exception as exc:  # noqa: BLE001 - EOFError, zip errors of a truncated file, ...
            raise _refused(path, exc) from exc
    for key in unwrap:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ScorerError(f"checkpoint '{path}' is not a flat mapping of tensors (found "
                          f"{type(obj).__name__}); is it the right file?")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _refused(path: Path, exc: BaseException) -> ScorerError:
    return ScorerError(f"refused to load checkpoint '{path}': it is not a plain tensor checkpoint "
                       f"loadable with torch.load(weights_only=True) ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}). Untrusted pickles are never "
                       f"unpickled; the file may be truncated, corrupt, or carry code")


def check_keys(found: Iterable[str], expected: Iterable[str], what: str, *,
               ignored: Iterable[str] = ()) -> None:
    """Raise ScorerError listing missing and unexpected keys unless ``found`` == ``expected``.

    ``ignored`` keys may be present or absent (e.g. buffers older code saved, unused heads).
    """
    found, expected, ignored = set(found), set(expected), set(ignored)
    missing = sorted(expected - found)
    unexpected = sorted(found - expected - ignored)
    if missing or unexpected:
        raise ScorerError(
            f"{what}: the checkpoint's keys do not match the expected layout (wrong model or "
            f"version, or a truncated file). missing {len(missing)}: {_short(missing)}; "
            f"unexpected {len(unexpected)}: {_short(unexpected)}")


def check_shapes(state: Mapping[str, Any], reference: Mapping[str, Any], what: str) -> None:
    bad = [f"{k}: {tuple(state[k].shape)} != {tuple(reference[k].shape)}" for k in reference
           if k in state and tuple(state[k].shape) != tuple(reference[k].shape)]
    if bad:
        raise ScorerError(f"{what}: {len(bad)} tensors have the wrong shape: {_short(bad)}")


def _short(items: Sequence[str], n: int = 8) -> str:
    return "[" + ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "") + "]"


def hf_from_pretrained(cls, folder: Path, what: str, *, dtype):
    """``cls.from_pretrained(folder)`` offline, raising ScorerError on any missing/unexpected key."""
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype,
                                          output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ScorerError(f"{what}: cannot load a {cls.__name__} from '{folder}': "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(str(m) for m in (info.get("mismatched_keys") or []))
    if missing or unexpected or mismatched:
        raise ScorerError(f"{what}: '{folder}' does not match {cls.__name__}: missing {_short(missing)}; "
                          f"unexpected {_short(unexpected)}; mismatched {_short(mismatched)}")
    return model.eval()


def scorer_batch_size(spec) -> int:
    """``metrics.<name>.batch_size`` of the typed ``spec`` (``spo.config_blocks.MetricSpec``);
    absent: 8, a scorer's own default (the scoring stage's is 16, ``spo.score``)."""
    return 8 if spec.batch_size is None else spec.batch_size


def batches(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` items."""
    if size < 1:
        raise ScorerError(f"batch_size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def check_inputs(metric: str, images: Sequence[Any], prompts: Sequence[str]) -> None:
    from PIL import Image

    if len(images) != len(prompts):
        raise ScorerError(f"metric '{metric}': got {len(images)} images but {len(prompts)} prompts")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise ScorerError(f"metric '{metric}': item {i} is a {type(im).__name__}, not a PIL image")
