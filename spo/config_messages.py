"""Messages for config problems found by the JSON schema: each names the key and the fix."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _key_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _at(config: Any, path: list) -> Any:
    for key in path:
        config = config[key] if isinstance(config, (dict, list)) else None
    return config


def _unpinned_message(where: str, hub_id: str, revision: str | None) -> str:
    """A hub model or checkpoint without a pinned commit: name the key, the id and the fix."""
    got = "no `revision:`" if revision is None else f"revision {revision!r}, not a full commit hash"
    return (f"config key '{where}' names hub id '{hub_id}' with {got}; a branch or tag can move and "
            f"silently change the row. Pin it: add `revision: <40-hex commit>` (look it up with "
            f"`python -c \"import huggingface_hub as h; print(h.model_info('{hub_id}').sha)\"` or on "
            f"the repository's 'Files and versions' page), or set `path:` to a local copy instead")


def schema_error_message(error, config: Any = None) -> str:
    """Turn one jsonschema ValidationError into a message that names the key and the fix."""
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        messages = []
        for key in extra:
            full = f"{where}.{key}" if error.absolute_path else key
            hint = suggest(key, allowed)
            messages.append(
                f"config key '{full}' is not allowed{hint}; allowed keys here: {', '.join(allowed)}"
            )
        return "; ".join(messages)
    if error.validator == "required":
        return f"config key '{where}' is missing a required entry: {error.message}"
    if error.validator == "enum":
        return (f"config key '{where}' has value {error.instance!r}; allowed values: "
                f"{', '.join(map(repr, error.validator_value))}")
    if error.validator == "pattern" and error.absolute_path and error.absolute_path[-1] == "revision":
        source = _at(config, list(error.absolute_path)[:-1])
        return _unpinned_message(where.rsplit(".", 1)[0], (source or {}).get("id", "?"), error.instance)
    if error.validator == "oneOf":
        got = sorted(error.instance) if isinstance(error.instance, dict) else error.instance
        if (isinstance(error.instance, dict) and "id" in error.instance
                and "revision" not in error.instance and not {"path", "tiny"} & set(error.instance)):
            return _unpinned_message(where, error.instance["id"], None)
        if "revision" in str(error.validator_value) and "tiny" in str(error.validator_value):
            return (f"config key '{where}' must give exactly one of: {{id, revision}} (hub, with a "
                    f"pinned revision), {{path}} (local folder or file) or {{tiny}}; got {got!r}")
        if "hub_parquet" in str(error.validator_value):
            return f"config key '{where}' must give exactly one of: path, hub_parquet; got {got!r}"
        return f"config key '{where}' has value {error.instance!r}, which matches none of the allowed forms"
    if error.validator == "propertyNames":
        return f"config key '{where}' has an invalid name: {error.message}"
    return f"config key '{where}' has value {error.instance!r}: {error.message}"
