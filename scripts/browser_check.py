"""Open every page of the built book in headless Chromium and check what a reader gets.

    python scripts/browser_check.py _build/html            # the pages of _toc.yml
    python scripts/browser_check.py _build/strict/_build/html --toc _toc.yml

The site is served over http from localhost, with every request to another host refused (and
recorded): the book must work offline. Each page is opened at a desktop width (1280 px) and on a
phone (390 px), and checked for:

console   no console error and no uncaught page error
images    every <img> loaded (naturalWidth > 0)
math      where the page has math: MathJax (the site's own copy) typeset every formula, no
          TeX error, no "$$" left in the text
requests  no request to another host than the local server, no local request that failed
phone     at 390 px nothing scrolls or overflows sideways but code blocks (pre, .highlight)
code      at 1280 px a code block whose lines are at most 88 characters does not scroll
explorer  on a page with a .sagan-explorer widget: it says data-ready="1", and a click on its
          .sagan-explorer-image canvas changes data-query ("row,col") and the readout
          (.sagan-explorer-readout, which mentions gamma)

Prints one row per page (OK, FAIL, or - where a check does not apply), then what failed, and
exits with 1 when any check failed. Uses the `playwright` package with the system's Chromium
(/usr/bin/chromium, or --chromium PATH, or $CHROMIUM): no browser download.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CODE_COLUMNS = 88
CHECKS = ["console", "images", "math", "requests", "phone", "code", "explorer"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # no name resolves but localhost: the network is off for the browser itself as well
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
# Where a block may scroll sideways on a phone: code, as source or as text output.
CODE_SELECTOR = "pre, .highlight, div[class*='highlight-']"


# --- the pages ------------------------------------------------------------------------------------


def toc_pages(toc_path: Path) -> list[str]:
    """The pages of a Jupyter Book _toc.yml, as paths of .html files inside the site."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text())
    files: list[str] = []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    files.append(toc["root"])
    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return [str(Path(f).with_suffix("")) + ".html" for f in files]


def all_pages(site: Path) -> list[str]:
    skip = {"genindex.html", "search.html"}
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).parts[0].startswith("_") and p.name not in skip
    )


# --- serving the site ---------------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line per request
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --- what a page reports -------------------------------------------------------------------------


@dataclass
class PageResult:
    page: str
    status: dict[str, str] = field(default_factory=lambda: dict.fromkeys(CHECKS, "-"))
    details: list[tuple[str, str]] = field(default_factory=list)

    def ok(self, check: str) -> None:
        if self.status[check] != "FAIL":
            self.status[check] = "OK"

    def fail(self, check: str, detail: str) -> None:
        self.status[check] = "FAIL"
        if (check, detail) not in self.details:
            self.details.append((check, detail))

    @property
    def failed(self) -> bool:
        return "FAIL" in self.status.values()


JS_IMAGES = """
async () => {
  const images = [...document.images];
  for (const img of images) if (img.loading === "lazy") img.loading = "eager";
  await Promise.race([
    Promise.all(images.map(img => img.complete ? null : new Promise(r => {
      img.addEventListener("load", r); img.addEventListener("error", r); }))),
    new Promise(r => setTimeout(r, 5000)),
  ]);
  return images.map(img => ({src: img.currentSrc || img.src, complete: img.complete,
                             width: img.naturalWidth}));
}
"""

JS_MATH = """
async () => {
  const math = document.querySelectorAll("span.math, div.math, .math-wrapper .math");
  const mj = window.MathJax;
  const result = {elements: math.length, loaded: !!(mj && mj.startup), script: null,
                  untypeset: [], errors: [], dollars: []};
  const script = [...document.scripts].find(s => /mathjax/i.test(s.src || ""));
  result.script = script ? script.src : null;
  if (mj && mj.startup && mj.startup.promise) {
    await Promise.race([mj.startup.promise, new Promise(r => setTimeout(r, 15000))]);
  }
  for (const el of math) {
    if (!el.querySelector("mjx-container") && !el.closest("mjx-container"))
      result.untypeset.push(el.textContent.trim().slice(0, 60));
  }
  for (const err of document.querySelectorAll("mjx-merror, mjx-container [data-mjx-error]"))
    result.errors.push((err.getAttribute("data-mjx-error") || err.textContent).slice(0, 80));
  // an undefined macro is typeset as its name in red (the noundefined extension)
  for (const text of document.querySelectorAll("mjx-container mtext[mathcolor='red']")) {
    if (/^\\\\[A-Za-z]+$/.test(text.textContent.trim()))
      result.errors.push(`undefined macro ${text.textContent.trim()}`);
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const skip = "pre, code, script, style, textarea, mjx-container, .highlight";
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.nodeValue.includes("$$") && !node.parentElement.closest(skip))
      result.dollars.push(node.nodeValue.trim().slice(0, 60));
  }
  return result;
}
"""

# Every element that scrolls sideways (or makes the page do so), with the elements that stick out.
JS_OVERFLOW = """
(codeSelector) => {
  const describe = el => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    const cls = [...el.classList].slice(0, 3).join(".");
    if (cls) s += "." + cls;
    const parent = el.parentElement && el.parentElement.closest("section[id], div.cell[id]");
    return parent ? `${s} (in #${parent.id})` : s;
  };
  const visible = el => {
    const style = getComputedStyle(el);
    if (style.display === "none" || style.visibility === "hidden") return false;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0;
  };
  const problems = [];
  const vw = document.documentElement.clientWidth;
  // 1. the page itself
  if (document.documentElement.scrollWidth > vw + 1) {
    const culprits = new Map();
    const fixed = el => {
      for (let a = el; a && a !== document.body; a = a.parentElement)
        if (getComputedStyle(a).position === "fixed") return true;
      return false;
    };
    const clipped = el => {
      for (let a = el.parentElement; a && a !== document.body; a = a.parentElement)
        if (getComputedStyle(a).overflowX !== "visible") return true;
      return false;
    };
    for (const el of document.body.querySelectorAll("*")) {
      if (!visible(el) || el.closest(codeSelector) || fixed(el)) continue;
      const r = el.getBoundingClientRect();
      if (r.right <= vw + 1) continue;
      const p = el.parentElement;
      if (p && p !== document.body && p.getBoundingClientRect().right > vw + 1) continue;
      if (!clipped(el))
        culprits.set(el, `${describe(el)} ${Math.round(r.width)}px wide, ` +
                         `right edge at ${Math.round(r.right)}px`);
    }
    // text that sticks out of its element (a long word, an address)
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const range = document.createRange();
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const el = node.parentElement;
      if (!node.nodeValue.trim() || !el || el.closest(codeSelector) || culprits.has(el)) continue;
      range.selectNodeContents(node);
      const r = range.getBoundingClientRect();
      if (r.width === 0 || r.right <= vw + 1 || !visible(el) || fixed(el) || clipped(el)) continue;
      culprits.set(el, `text "${node.nodeValue.trim().slice(0, 40)}" in ${describe(el)}, ` +
                       `right edge at ${Math.round(r.right)}px`);
    }
    problems.push(`the page is ${document.documentElement.scrollWidth}px wide at ${vw}px: ` +
                  ([...culprits.values()].slice(0, 3).join("; ") || "no single element found"));
  }
  // 2. boxes that scroll sideways inside the page
  for (const el of document.body.querySelectorAll("*")) {
    const ox = getComputedStyle(el).overflowX;
    if (ox !== "auto" && ox !== "scroll") continue;
    if (el.scrollWidth <= el.clientWidth + 1 || !visible(el)) continue;
    if (el.matches(codeSelector) || el.closest(codeSelector)) continue;
    const box = el.getBoundingClientRect();
    const inner = [];
    for (const child of el.querySelectorAll("*")) {
      if (!visible(child)) continue;
      const r = child.getBoundingClientRect();
      if (r.right <= box.right + 1 && r.left >= box.left - 1) continue;
      const p = child.parentElement;
      if (p && p !== el) {
        const pr = p.getBoundingClientRect();
        if (pr.right > box.right + 1 || pr.left < box.left - 1) continue;
      }
      inner.push(child);
    }
    // only code sticks out: a code block inside (a wrapper of) this box
    const isCode = c => c.matches(codeSelector) || c.closest(codeSelector);
    if (inner.length && inner.every(isCode)) continue;
    const what = inner.slice(0, 2).map(
      c => `${describe(c)} ${Math.round(c.getBoundingClientRect().width)}px`);
    problems.push(`${describe(el)} scrolls sideways (${el.scrollWidth}px in ${el.clientWidth}px)` +
                  (what.length ? `: ${what.join("; ")}` : ""));
  }
  return problems;
}
"""

JS_CODE = """
(columns) => {
  const problems = [];
  for (const pre of document.querySelectorAll("div.highlight > pre, pre.literal-block")) {
    const lines = pre.textContent.replace(/\\n$/, "").split("\\n");
    const longest = Math.max(...lines.map(l => l.length));
    if (longest > columns || pre.scrollWidth <= pre.clientWidth + 1) continue;
    const section = pre.closest("section[id]");
    problems.push(`a block of ${longest}-character lines scrolls (${pre.scrollWidth}px in ` +
                  `${pre.clientWidth}px)${section ? " in #" + section.id : ""}: ` +
                  lines.find(l => l.length === longest).trim().slice(0, 50));
  }
  return problems;
}
"""


def check_explorer(page, result: PageResult, label: str) -> None:
    roots = page.locator(".sagan-explorer")
    if roots.count() == 0:
        return
    for i in range(roots.count()):
        root = roots.nth(i)
        name = f"{label} explorer {i + 1}"
        try:
            root.scroll_into_view_if_needed(timeout=3000)
            page.wait_for_function(
                "el => el.getAttribute('data-ready') === '1'",
                arg=root.element_handle(),
                timeout=5000,
            )
        except Exception:
            ready = root.get_attribute("data-ready")
            result.fail("explorer", f"{name}: data-ready is {ready!r}, not '1', after 5 s")
            continue
        canvas = root.locator(".sagan-explorer-image").first
        readout = root.locator(".sagan-explorer-readout").first
        if canvas.count() == 0 or readout.count() == 0:
            result.fail("explorer", f"{name}: no .sagan-explorer-image or .sagan-explorer-readout")
            continue
        box = canvas.bounding_box()
        if not box or box["width"] < 4 or box["height"] < 4:
            result.fail("explorer", f"{name}: the canvas is not visible ({box})")
            continue
        before = (root.get_attribute("data-query"), readout.inner_text())
        states = []
        for fx, fy in ((0.2, 0.3), (0.8, 0.7)):
            canvas.click(position={"x": box["width"] * fx, "y": box["height"] * fy}, timeout=3000)
            try:
                page.wait_for_function(
                    "([el, q]) => el.getAttribute('data-query') !== q",
                    arg=[root.element_handle(), (states[-1] if states else before)[0]],
                    timeout=3000,
                )
            except Exception:
                pass
            states.append((root.get_attribute("data-query"), readout.inner_text()))
        queries = [q for q, _ in states]
        if not all(q and re.fullmatch(r"\d+,\d+", q) for q in queries):
            result.fail("explorer", f"{name}: data-query after two clicks is {queries}")
        elif queries[0] == queries[1] or before[0] == queries[1]:
            result.fail("explorer", f"{name}: data-query did not change: {before[0]} -> {queries}")
        elif states[0][1] == states[1][1] or before[1] == states[1][1]:
            result.fail("explorer", f"{name}: the readout did not change after a click")
        elif not all("gamma" in text.lower() or "γ" in text for _, text in states):
            result.fail(
                "explorer", f"{name}: the readout does not mention gamma: {states[-1][1]!r}"
            )
        else:
            result.ok("explorer")


def check_page(
    context, base: str, page_path: str, result: PageResult, label: str, scrollable: str
) -> None:
    """Open one page in one browser context (one viewport) and record what fails."""
    local = urlsplit(base).netloc
    requests: list[str] = []
    failed_local: list[str] = []
    errors: list[str] = []
    page = context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on(
        "console",
        lambda m: errors.append(f"console: {m.text[:200]}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: errors.append(f"page error: {str(e)[:200]}"))
    page.on(
        "response",
        lambda r: (
            failed_local.append(f"{r.status} {r.url}")
            if r.status >= 400 and urlsplit(r.url).netloc == local
            else None
        ),
    )
    page.on(
        "requestfailed",
        lambda r: (
            failed_local.append(f"{r.failure} {r.url}") if urlsplit(r.url).netloc == local else None
        ),
    )
    try:
        response = page.goto(f"{base}/{page_path}", wait_until="load", timeout=20000)
        if response is None or response.status >= 400:
            status = response.status if response else "no response"
            result.fail("requests", f"{label}: the page itself: {status}")
            return
        # images
        images = page.evaluate(JS_IMAGES)
        broken = [i["src"] for i in images if not i["complete"] or i["width"] == 0]
        for src in broken:
            result.fail("images", f"{label}: not loaded: {src}")
        if not broken:
            result.ok("images")
        # math
        math = page.evaluate(JS_MATH)
        if math["elements"]:
            if not math["loaded"]:
                result.fail(
                    "math", f"{label}: {math['elements']} formulas but MathJax did not load"
                )
            for text in math["untypeset"][:3]:
                result.fail("math", f"{label}: not typeset: {text}")
            for text in math["errors"][:3]:
                result.fail("math", f"{label}: TeX error: {text}")
            if math["loaded"] and not math["untypeset"] and not math["errors"]:
                result.ok("math")
        for text in math["dollars"][:3]:
            result.fail("math", f"{label}: '$$' left in the text: {text}")
        # the phone: sideways overflow; the desktop: code that fits in 88 columns does not scroll
        if label == "phone":
            problems = page.evaluate(JS_OVERFLOW, scrollable)
            for problem in problems[:5]:
                result.fail("phone", problem)
            if not problems:
                result.ok("phone")
        else:
            problems = page.evaluate(JS_CODE, CODE_COLUMNS)
            for problem in problems[:5]:
                result.fail("code", problem)
            if not problems:
                result.ok("code")
        check_explorer(page, result, label)
        page.wait_for_timeout(100)  # late console messages
    except Exception as error:  # a page that hangs or crashes fails, the others still run
        result.fail("console", f"{label}: {type(error).__name__}: {str(error).splitlines()[0]}")
    finally:
        page.close()
    for text in errors:
        result.fail("console", f"{label}: {text}")
    if not errors:
        result.ok("console")
    outside = sorted(
        {u for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")}
        - {u for u in requests if urlsplit(u).netloc == local}
    )
    for url in outside:
        result.fail("requests", f"{label}: request to another host: {url}")
    for text in failed_local:
        result.fail("requests", f"{label}: {text}")
    if not outside and not failed_local:
        result.ok("requests")


def table(results: list[PageResult]) -> str:
    width = max([len("page")] + [len(r.page) for r in results])
    lines = ["page".ljust(width) + "  " + "  ".join(c.ljust(8) for c in CHECKS)]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(r.page.ljust(width) + "  " + "  ".join(r.status[c].ljust(8) for c in CHECKS))
    return "\n".join(line.rstrip() for line in lines)


def find_chromium(given: str | None) -> str | None:
    """--chromium, $CHROMIUM, /usr/bin/chromium, else a Chromium or Chrome on the PATH."""
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    candidates = [given, os.environ.get("CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(name) for name in names]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, nargs="?", default=ROOT / "_build" / "html")
    parser.add_argument("--toc", type=Path, default=ROOT / "_toc.yml",
                        help="the pages to open (default: the repository's _toc.yml)")  # fmt: skip
    parser.add_argument("--all", action="store_true", help="every .html of the site instead")
    parser.add_argument("--chromium", help="the browser (default: /usr/bin/chromium)")
    parser.add_argument(
        "--allow-scroll",
        action="append",
        default=[],
        metavar="SELECTOR",
        help="also let these scroll sideways on a phone (e.g. 'table')",
    )
    args = parser.parse_args(argv)
    scrollable = ", ".join([CODE_SELECTOR, *args.allow_scroll])

    site = args.site.resolve()
    if not (site / "_static").is_dir():
        print(f"browser_check: {site} is not a built site (no _static/)", file=sys.stderr)
        return 2
    pages = all_pages(site) if args.all or not args.toc.is_file() else toc_pages(args.toc)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("browser_check: no Chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    start = time.perf_counter()
    server, base = serve(site)
    results = [PageResult(p) for p in pages]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            contexts = {
                "desktop": browser.new_context(viewport=DESKTOP),
                "phone": browser.new_context(
                    viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
                ),
            }
            for context in contexts.values():
                # nothing leaves the machine: requests to other hosts are recorded, then refused
                context.route(
                    "**/*",
                    lambda route: (
                        route.continue_()
                        if urlsplit(route.request.url).netloc == urlsplit(base).netloc
                        else route.abort("internetdisconnected")
                    ),
                )
            for result in results:
                if not (site / result.page).is_file():
                    result.fail("requests", "the page is not in the site")
                    continue
                for label, context in contexts.items():
                    check_page(context, base, result.page, result, label, scrollable)
            browser.close()
    finally:
        server.shutdown()

    print(table(results))
    failures = [(r.page, c, d) for r in results for c, d in r.details]
    if failures:
        print(f"\n{len(failures)} problem(s):")
        for page, check, detail in failures:
            print(f"  {page}: {check}: {detail}")
    elapsed = time.perf_counter() - start
    print(f"\n{len(results)} pages, 2 viewports, {elapsed:.1f} s: ", end="")
    print("FAILED" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
