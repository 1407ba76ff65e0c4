"""The scripts of each page: every one once, and no Thebe loader where Thebe is off.

* Sphinx 7.4 writes an inline script that an extension registers after the builder started (as
  sphinx-thebe and sphinx-togglebutton do) twice into every page: once as registered, once again
  from the registry (filename None, then ""). Twice is harmless for ``var togglebuttonSelector``,
  but ``const THEBE_JS_URL`` declared twice is an uncaught SyntaxError on every page (which
  scripts/browser_check.py reports). The second copy of a script is dropped.
* sphinx-thebe adds its loader to every page, with the address of Thebe on a CDN (unpkg.com),
  even where no page offers the "live code" button. With ``launch_buttons: thebe`` off (the
  book's setting), its script and style are left out: no page refers to a CDN.

Registered in ``_config.yml`` under ``sphinx: local_extensions``.
"""

from __future__ import annotations

from sphinx.application import Sphinx


def _key(asset) -> tuple:
    filename = getattr(asset, "filename", asset) or ""
    attributes = getattr(asset, "attributes", {}) or {}
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _thebe_on(app: Sphinx) -> bool:
    options = app.config.html_theme_options or {}
    return bool((options.get("launch_buttons") or {}).get("thebe"))


def _is_thebe(asset) -> bool:
    filename = str(getattr(asset, "filename", "") or "")
    body = str((getattr(asset, "attributes", {}) or {}).get("body", ""))
    return "sphinx-thebe." in filename or "THEBE_JS_URL" in body


def tidy_assets(app: Sphinx, pagename, templatename, context, doctree) -> None:
    drop_thebe = not _thebe_on(app)
    for name in ("script_files", "css_files"):
        assets = context.get(name)
        if not isinstance(assets, list):
            continue
        seen, kept = set(), []
        for asset in assets:
            key = _key(asset)
            if key in seen or (drop_thebe and _is_thebe(asset)):
                continue
            seen.add(key)
            kept.append(asset)
        assets[:] = kept


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", tidy_assets, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
