"""The shape check: pydantic over the whole file, or over each part when it fails.

Validating the settings and every app on their own when the whole is invalid lets
every part's problems come out together, and lets the valid parts go on to the
checks that follow.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from wxtokend.config.explain import _FIXES, _describe, _explain, _loc
from wxtokend.config.models import _AppModel, _ConfigModel, _SettingsModel
from wxtokend.config.reader import _Loader

__all__ = ["_validate"]


def _validate(
    loader: _Loader, data: dict[Any, Any]
) -> tuple[_SettingsModel, list[_AppModel | None], list[str]]:
    """The settings, each app (None where invalid, so indices stay) and every shape problem.

    One pass over the whole file when it is valid; otherwise the settings and each
    app are validated on their own, so every part's problems come out together and
    the valid parts still get the checks that follow (secrets, duplicates...).
    """
    try:
        model = _ConfigModel.model_validate(data)
    except ValidationError:
        pass  # find out which parts are wrong, below
    else:
        return model, list(model.apps), []
    problems: list[str] = []
    settings = _valid_settings(loader, {k: v for k, v in data.items() if k != "apps"}, problems)
    return settings, _valid_apps(loader, data, problems), problems


def _valid_settings(loader: _Loader, data: dict[Any, Any], problems: list[str]) -> _SettingsModel:
    """The settings with every invalid key replaced by its default (after its problem)."""
    try:
        return _SettingsModel.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
    problems.extend(_problem(loader, e, tuple(e["loc"])) for e in errors)
    bad = {str(e["loc"][0]) for e in errors}
    try:
        return _SettingsModel.model_validate({k: v for k, v in data.items() if str(k) not in bad})
    except ValidationError:  # cannot happen: the defaults are valid
        return _SettingsModel.model_validate({})


def _valid_apps(
    loader: _Loader, data: dict[Any, Any], problems: list[str]
) -> list[_AppModel | None]:
    if "apps" not in data and (data.get("platforms") or data.get("suites")):
        return []  # a config for third-party platforms only
    if "apps" not in data:
        problems.append(loader.problem("apps", "is required but missing", _FIXES["apps"]))
        return []
    entries = data["apps"]
    if entries == [] and (data.get("platforms") or data.get("suites")):
        return []
    if not isinstance(entries, list) or not entries:
        problem = f"must be a list of apps, not {_describe(entries)}" if entries else "is empty"
        problems.append(loader.problem("apps", problem, _FIXES["apps"]))
        return []
    apps: list[_AppModel | None] = []
    for i, entry in enumerate(entries):
        app = None
        if not isinstance(entry, dict):
            problems.append(loader.problem(f"apps[{i}]", "is not a mapping", _FIXES["apps[]"]))
        else:
            try:
                app = _AppModel.model_validate(entry)
            except ValidationError as exc:
                problems.extend(_problem(loader, e, ("apps", i, *e["loc"])) for e in exc.errors())
        apps.append(app)
    return apps


def _problem(loader: _Loader, error: Any, loc: tuple[int | str, ...]) -> str:
    return loader.problem(_loc(loc), *_explain(error, loc))
