"""The documentation site, checked as a reader sees it.

The site is built exactly as README says (``sphinx-build -W``: warnings are
errors, so numpydoc's validation and bpdocs' checks are part of it), into a
temporary directory, against this bpcore.  Then headless Chromium opens the
tutorial's pages over the DevTools protocol (on a pipe: no websocket, no extra
package), takes a PNG of each and reports every console error, uncaught
exception and failed load; the loss-curve figure must be drawn, referenced by
its page and rendered; and every internal link and anchor of every page must
resolve.  Small throw-away projects check that the build really fails when a
tutorial output differs, when executed code raises, and when a docstring
misses a parameter or a shape.

CI (``CI=true``) requires Sphinx, numpydoc, the theme, matplotlib and Chromium
(``.ci/run`` installs Debian's chromium if missing); elsewhere a missing one
skips.
"""
import base64
import fcntl
import html.parser
import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.parse
from pathlib import Path

import pytest

import bpcore
from conftest import import_oracle

# A Sphinx build and a browser: in CI (CI=true) and with --runslow; not in a plain
# local `pytest`, nor in the sanitizer rerun (.ci/sanitize).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BUILD_TIMEOUT = 240


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_docs_tools():
    for name in ("sphinx", "numpydoc", "pydata_sphinx_theme", "matplotlib"):
        import_oracle(name)


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if _in_ci():
            pytest.fail("chromium is required in CI (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed")
    return path


def _sphinx(srcdir, outdir, *options):
    """``sphinx-build -W`` in a fresh interpreter importing this bpcore; the CompletedProcess."""
    env = dict(os.environ)
    env.pop("BPDOCS_KEEP_GOING", None)
    package_parent = str(Path(bpcore.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "-q", *options, str(srcdir),
                           str(outdir)], cwd=str(outdir.parent), env=env, capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site: its html directory (built once for the module)."""
    _require_docs_tools()
    out = tmp_path_factory.mktemp("docs") / "html"
    started = time.perf_counter()
    res = _sphinx(DOCS, out)
    assert res.returncode == 0, f"the docs build failed:\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}"
    print(f"docs built in {time.perf_counter() - started:.1f} s")
    return out


# ---------------------------------------------------------------------------
# Internal links
# ---------------------------------------------------------------------------

class _Page(html.parser.HTMLParser):
    """The ids a page defines and the URLs it refers to (a, link, img, script)."""

    ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.urls, self.images = set(), [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        url = attrs.get(self.ATTRS.get(tag, ""))
        if url:
            self.urls.append((tag, url))
        if tag == "img" and url:
            self.images.append(url)


def _pages(site):
    """The site's HTML pages (``_static`` holds the theme's assets, templates among them)."""
    return [p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts]


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_every_internal_link_and_anchor_resolves(site):
    pages = {path: _parse(path) for path in _pages(site)}
    assert len(pages) >= 20
    broken = []
    for path, page in pages.items():
        for tag, url in page.urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme or parts.netloc or url.startswith(("mailto:", "javascript:")):
                continue  # external: the pages load nothing from outside (checked below)
            target = (path.parent / urllib.parse.unquote(parts.path)).resolve() \
                if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{path.relative_to(site)}: <{tag}> {url} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if urllib.parse.unquote(parts.fragment) not in ids:
                    broken.append(f"{path.relative_to(site)}: <{tag}> {url} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_pages_load_nothing_from_the_network(site):
    """Scripts, styles and images are the site's own (a reader offline sees the same page)."""
    external = [f"{path.relative_to(site)}: <{tag}> {url}"
                for path in _pages(site) for tag, url in _parse(path).urls
                if tag != "a" and urllib.parse.urlsplit(url).netloc]
    assert not external, "\n".join(external)


def test_every_tutorial_and_guide_number_was_computed(site):
    """No executed block was skipped for a missing module (in CI every one runs)."""
    skipped = [str(p.relative_to(site)) for p in _pages(site)
               if "bp-not-run" in p.read_text(encoding="utf-8")]
    if _in_ci():
        assert not skipped
    executed = sum(p.read_text(encoding="utf-8").count("bp-executed")
                   for p in (site / "tutorial").glob("*.html"))
    assert executed >= 20  # the tutorial's code blocks, each run by the build


def test_the_loss_curve_is_drawn_and_referenced(site):
    page = _parse(site / "tutorial" / "training.html")
    curves = [src for src in page.images if "loss-curve" in src]
    assert len(curves) == 1, page.images
    image = (site / "tutorial" / curves[0]).resolve()
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # The measured times are on the page, next to the figure.
    text = (site / "tutorial" / "training.html").read_text(encoding="utf-8")
    assert "s for 500 steps" in text


# ---------------------------------------------------------------------------
# The browser: Chromium over the DevTools protocol, on a pipe
# ---------------------------------------------------------------------------

class _Browser:
    """Headless Chromium driven with ``--remote-debugging-pipe`` (fds 3 and 4, NUL-framed JSON)."""

    def __init__(self, executable, profile):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # in the child, before exec: the pipes become fds 3 (in) and 4 (out)
            # NOTE: moved above 10 first, so neither dup2 overwrites the other's source.
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, close_fds=False, start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events = []

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)

    def _read(self, deadline):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=None, timeout=60):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, session, timeout=60):
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method and event.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            event = self._read(deadline)
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    def render(self, url, png):
        """Load ``url``, write a PNG of it; return (problems, images) seen by the page."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1280, "height": 1600, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        images = self.send("Runtime.evaluate", {
            "expression": "JSON.stringify(Array.from(document.images).map("
                          "i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]))",
            "returnByValue": True}, session=session)["result"]["value"]
        shot = self.send("Page.captureScreenshot", {"format": "png"}, session=session)
        png.write_bytes(base64.b64decode(shot["data"]))
        problems = []
        for event in [e for e in self.events if e.get("sessionId") == session]:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                problems.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                problems.append(f"console.{params['type']}: "
                                + " ".join(str(a.get("value", a.get("description")))
                                           for a in params["args"]))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                problems.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
        self.events = [e for e in self.events if e.get("sessionId") != session]
        self.send("Target.closeTarget", {"targetId": target})
        return problems, json.loads(images)


def test_tutorial_pages_render_without_console_errors(site, tmp_path):
    browser = _Browser(_chromium(), tmp_path / "profile")
    pages = sorted((site / "tutorial").glob("*.html")) + [site / "index.html",
                                                          site / "api" / "activations.html"]
    try:
        for page in pages:
            png = tmp_path / f"{page.parent.name}-{page.stem}.png"
            problems, images = browser.render(page.resolve().as_uri(), png)
            assert not problems, f"{page.relative_to(site)}:\n" + "\n".join(problems)
            data = png.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, page
            broken = [src for src, loaded in images if not loaded]
            assert not broken, f"{page.relative_to(site)}: images not rendered: {broken}"
            if page.name == "training.html":
                assert any("loss-curve" in src for src, loaded in images if loaded)
    finally:
        browser.close()


def test_the_browser_check_sees_errors(tmp_path):
    """The check above can fail: a page with a script error, a console.error and a
    missing script and image gives each problem, and the image is reported unrendered."""
    browser = _Browser(_chromium(), tmp_path / "profile")
    page = tmp_path / "bad.html"
    page.write_text('<html><head><script src="missing.js"></script></head><body>'
                    '<img src="missing.png"><script>console.error("boom");'
                    'undefinedFunction();</script></body></html>')
    try:
        problems, images = browser.render(page.as_uri(), tmp_path / "bad.png")
    finally:
        browser.close()
    text = "\n".join(problems)
    assert "console.error: boom" in text
    assert "undefinedFunction" in text
    assert "missing.js" in text
    assert images == [["missing.png", False]]


# ---------------------------------------------------------------------------
# The build fails when it must
# ---------------------------------------------------------------------------

MINI_CONF = """
import runpy, sys
sys.path.insert(0, {here!r})
globals().update({{k: v for k, v in runpy.run_path({conf!r}).items()
                  if not k.startswith("__")}})
extensions = ["sphinx.ext.autodoc", "numpydoc", "bpdocs"]
html_theme = "basic"
html_static_path = []
html_css_files = []
bpdocs_check_coverage = False
"""

MINI_MODULE = '''
def missing_a_parameter(x, y):
    """Add.

    Parameters
    ----------
    x : int
        A number.

    Returns
    -------
    int
        The sum.
    """
    return x + y


def missing_a_shape(x):
    """Sum.

    Parameters
    ----------
    x : ndarray
        The values.

    Returns
    -------
    float
        Their sum.
    """
    return float(x.sum())
'''

MINI_PAGES = {
    "passes": """
        .. bp-doctest::

           >>> import bpcore
           >>> print(f"{bpcore.sigmoid_forward([0.9775])[0]:.9f}")
           0.726611880
        """,
    "differs": """
        .. bp-doctest::

           >>> import bpcore
           >>> print(f"{bpcore.sigmoid_forward([0.9775])[0]:.4f}")
           0.2734
        """,
    "raises": """
        .. bp-run::

           import bpcore
           bpcore.sgd_update([1.0], [1.0], lr=-1.0)
        """,
    "parameter": """
        .. autofunction:: bpcore_mini.missing_a_parameter
        """,
    "shape": """
        .. autofunction:: bpcore_mini.missing_a_shape
        """,
}
MINI_ERRORS = {"differs": "doctest failed", "raises": "code failed",
               "parameter": "PR01: Parameters {'y'} not documented",
               "shape": "BP01: the docstring of 'bpcore_mini.missing_a_shape' gives no shape"}


@pytest.mark.parametrize("case", list(MINI_PAGES))
def test_the_build_fails_when_it_must(tmp_path, case):
    _require_docs_tools()
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "bpcore_mini.py").write_text(MINI_MODULE)
    (src / "conf.py").write_text(MINI_CONF.format(here=str(tmp_path),
                                                  conf=str(DOCS / "conf.py")))
    (src / "index.rst").write_text("Mini\n====\n" + textwrap.dedent(MINI_PAGES[case]))
    res = _sphinx(src, tmp_path / "out", "-b", "dummy")
    output = res.stdout + res.stderr
    if case == "passes":
        assert res.returncode == 0, output
    else:
        assert res.returncode != 0
        assert MINI_ERRORS[case] in output, output
