"""`run --help`'s list of settings: every variable with its default and meaning."""

from __future__ import annotations

from module_controller.settings import Settings

# Defaults that `repr` would not say well, for `run --help`.
_DEFAULT_TEXT = {
    "client_id": "a new UUID",
    "enable_mqtt_tunnel": "true; false when ENABLE_HTTP_TUNNEL=true",
    "namespace": "the operator pod's own namespace, else 'default'",
}


def describe_settings() -> str:
    """Every setting with its variable, default and meaning, for `run --help`."""
    lines = []
    for name, field in Settings.model_fields.items():
        if name in _DEFAULT_TEXT:
            default = _DEFAULT_TEXT[name]
        elif field.default_factory is not None:
            default = "computed"
        elif isinstance(field.default, bool):
            default = str(field.default).lower()  # as it is written in a manifest
        else:
            default = repr(field.default) if field.default not in (None, "") else "unset"
        lines.append(f"  {name.upper():<26} {field.description} (default: {default})")
    return "\n".join(lines)
