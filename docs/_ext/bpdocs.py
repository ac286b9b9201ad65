"""bpcore's Sphinx extension: code that runs at build time, and the generated API pages.

Directives
----------
``bp-doctest``
    A doctest session (``>>>`` prompts and the expected output), run by the build
    with :mod:`doctest` in the page's namespace.  An output that differs is an
    :class:`~sphinx.errors.ExtensionError`: the build stops, with or without ``-W``.
``bp-run``
    Python code executed in the page's namespace; what it prints is shown below
    it (for numbers that cannot be compared, such as measured times).  With
    ``:figure: NAME`` the current matplotlib figure is saved at build time and
    shown.  An exception stops the build.
``bp-ops FAMILY``
    The API of one family of operations: each function of
    :mod:`bpcore.reference` with its compiled twin ``bpcore.<name>``, side by
    side.  Families are assigned by name, so a new operation appears without
    editing the docs (in "other" when no rule matches).
``bp-cli``
    ``python -m bpcore``'s subcommands and options, read from the argparse
    parser that :func:`bpcore.cli.main` builds.
``bp-source FILE FUNCTION``
    One top-level ``def``/``cdef`` function of a source file (``.pyx`` included):
    the build fails if it is gone, so a page that explains it cannot go stale.
``bp-readme-code HEADING`` (option ``:index: N``, default 0)
    The N-th fenced code block under a README heading (the README's code
    is what the tests build and run).

Role ``:bp-eval:`expr``` inserts ``str(eval(expr))`` in the page's namespace.

Checks (warnings, so ``sphinx-build -W`` fails)
---------------------------------------------------
* every public name of ``bpcore``, ``bpcore.reference``, ``bpcore.distributed``,
  ``bpcore.sklearn`` and every public method of ``bpcore.MLP`` is documented
  somewhere (``bp-undocumented``);
* an array parameter or return value of a validated docstring states its shape
  (``BP01``; see ``numpydoc_validation_checks`` in conf.py for the rest).
"""
import contextlib
import doctest
import importlib
import inspect
import io
import os
import re
import traceback

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------
# Executed code
# ---------------------------------------------------------------------------

def _namespace(env):
    """The page's namespace: shared by its code blocks, fresh for every page.

    NOTE: Sphinx clears ``env.temp_data`` after reading each document, so no
    state leaks from one page into the next.
    """
    return env.temp_data.setdefault("bp_namespace", {"__name__": "__bpdocs__"})


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(requires):
    """The modules of ``requires`` that cannot be imported (none in CI: there it fails)."""
    missing = []
    for name in requires:
        try:
            importlib.import_module(name)
        except ImportError:
            if _in_ci():
                raise ExtensionError(f"the docs need {name!r} to run their code (CI=true)")
            missing.append(name)
    return missing


def _fail(message):
    """Stop the build, whatever ``-W`` says: a page must not show a number it did not compute.

    ``BPDOCS_KEEP_GOING=1`` logs a warning instead and goes on (for writing pages:
    ``sphinx-build -W --keep-going`` then lists every difference and still fails).
    """
    if os.environ.get("BPDOCS_KEEP_GOING"):
        logger.warning(message, type="bpdocs", subtype="executed")
    else:
        raise ExtensionError(message)


class _Executed(SphinxDirective):
    """A block of code the build runs in the page's namespace (``:requires:`` modules)."""

    has_content = True
    option_spec = {"requires": directives.unchanged}

    def run(self):
        # NOTE: a page whose code runs is read again by every build, incremental
        # ones included, so its numbers are always those of the bpcore imported now.
        if not hasattr(self.env, "bp_executed"):
            self.env.bp_executed = set()
        self.env.bp_executed.add(self.env.docname)
        missing = _missing((self.options.get("requires") or "").replace(",", " ").split())
        if missing:
            return self.not_run(missing)
        return self.execute("\n".join(self.content) + "\n", _namespace(self.env))

    def where(self):
        source, line = self.get_source_info()
        return f"{os.path.relpath(source, ROOT)}:{line}"

    def not_run(self, missing):
        note = nodes.note()
        note += nodes.paragraph(text=f"Not run in this build: {', '.join(missing)} is not "
                                     f"installed (the code is shown as written).")
        note["classes"].append("bp-not-run")
        return [self.code_block(), note]

    def code_block(self, language="python"):
        text = "\n".join(self.content)
        block = nodes.literal_block(text, text, language=language)
        block["classes"].append("bp-executed")
        return block


class BpDoctest(_Executed):
    """A doctest session run by the build; a differing output stops the build."""

    def execute(self, text, namespace):
        test = doctest.DocTestParser().get_doctest(text, namespace, self.where(),
                                                   self.where(), 0)
        runner = doctest.DocTestRunner(
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
        report = io.StringIO()
        runner.run(test, out=report.write, clear_globs=False)
        namespace.update(test.globs)  # NOTE: DocTest ran on a copy of the namespace
        if runner.failures:
            _fail(f"doctest failed at {self.where()}:\n{report.getvalue()}")
        return [self.code_block("pycon")]


class BpRun(_Executed):
    """Code executed by the build; its printed output (and figure) shown below it."""

    option_spec = {**_Executed.option_spec, "figure": directives.unchanged,
                   "caption": directives.unchanged, "alt": directives.unchanged,
                   "hide-code": directives.flag}

    def execute(self, code, namespace):
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(code, self.where(), "exec"), namespace)
        except Exception:
            _fail(f"code failed at {self.where()}:\n{traceback.format_exc()}")
        result = [] if "hide-code" in self.options else [self.code_block()]
        if printed.getvalue():
            out = printed.getvalue().rstrip("\n")
            block = nodes.literal_block(out, out, language="text")
            block["classes"].append("bp-output")
            result.append(block)
        if "figure" in self.options:
            result.append(self.figure(self.options["figure"]))
        return result

    def figure(self, name):
        import matplotlib.pyplot as plt

        if not plt.get_fignums():
            raise ExtensionError(f"{self.where()}: `:figure:` but the code drew no figure")
        folder = os.path.join(self.env.app.doctreedir, "bp_figures")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.env.docname.replace('/', '-')}-{name}.png")
        fig = plt.gcf()
        fig.savefig(path, dpi=100)
        plt.close("all")
        # NOTE: the image lives in the build directory (as matplotlib's plot
        # directive does it); Sphinx resolves the URI against the page's source
        # folder and copies the file into _images/.
        here = os.path.dirname(os.path.join(self.env.srcdir, self.env.docname))
        image = nodes.image(uri=os.path.relpath(path, here),
                            alt=self.options.get("alt", name))
        figure = nodes.figure("", image)
        if self.options.get("caption"):
            caption, _ = self.state.inline_text(self.options["caption"], self.lineno)
            figure += nodes.caption("", "", *caption)
        return figure


def bp_eval_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:bp-eval:`expr```: the value of ``expr`` in the page's namespace, as text."""
    env = inliner.document.settings.env
    try:
        value = eval(text, _namespace(env))
    except Exception:
        _fail(f"{env.docname}:{lineno}: :bp-eval:`{text}` failed:\n{traceback.format_exc()}")
        value = "(failed)"
    return [nodes.Text(str(value))], []


# ---------------------------------------------------------------------------
# Generated API pages
# ---------------------------------------------------------------------------

FAMILIES = {
    "dense": "Dense products",
    "activations": "Activations",
    "losses": "Losses",
    "optimizers": "Optimizer updates",
    "other": "Other operations",
}


def family_of(name):
    """The API page of operation ``name`` (by its name, so new operations find a page)."""
    if "loss" in name or "cross_entropy" in name:
        return "losses"
    if name.endswith("_update"):
        return "optimizers"
    if name == "matmul" or name.startswith("linear_"):
        return "dense"
    if name.endswith(("_forward", "_backward")):
        return "activations"
    return "other"


def _module_of(obj):
    module = getattr(obj, "__module__", None)
    return module or "bpcore"


def _rst(lines, directive):
    container = nodes.container()
    nested_parse_with_titles(directive.state, StringList(lines, directive.get_source_info()[0]),
                             container)
    return container.children


class BpOps(SphinxDirective):
    """Each operation of one family, its compiled twin and its NumPy twin side by side."""

    required_arguments = 1

    def run(self):
        import bpcore
        from bpcore import reference

        family = self.arguments[0]
        if family not in FAMILIES:
            raise self.error(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
        names = [n for n in reference.__all__ if family_of(n) == family]
        if not names:
            return _rst(["No operation of bpcore falls in this family today."], self)
        lines = []
        for name in names:
            backend = bpcore.backend_of(name)
            compiled = getattr(bpcore, name)
            where = _module_of(compiled)
            lines += [name, "-" * len(name), "",
                      f"Twins: ``bpcore.{name}`` ({backend}, in ``{where}``) and "
                      f"``bpcore.reference.{name}`` (NumPy).", "",
                      ".. container:: bp-twins", "",
                      "   .. container:: bp-twin bp-compiled", "",
                      f"      **bpcore.{name}** -- "
                      + ("the compiled twin." if backend == "compiled" else
                         "no compiled twin yet: this is the NumPy reference itself."), "",
                      f"      .. autofunction:: bpcore.{name}", "",
                      "   .. container:: bp-twin bp-reference", "",
                      f"      **bpcore.reference.{name}** -- the NumPy specification.", "",
                      f"      .. autofunction:: bpcore.reference.{name}", ""]
        return _rst(lines, self)


class BpCli(SphinxDirective):
    """``python -m bpcore``'s subcommands and options, from its argparse parser."""

    def run(self):
        import argparse

        parser = _cli_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {c.dest: c.help for c in sub._choices_actions}
        lines = ["Usage::", "", "   " + parser.format_usage().strip(), ""]
        for name, child in sub.choices.items():
            title = f"python -m bpcore {name}"
            lines += [title, "-" * len(title), "", _escape(helps.get(name) or ""), "",
                      "::", ""]
            lines += ["   " + line for line in child.format_usage().strip().splitlines()]
            lines += [""]
            for action in child._actions:
                if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                    continue
                term = ", ".join(action.option_strings) or action.dest
                if action.option_strings and action.nargs != 0:
                    term += " " + (action.metavar or action.dest.upper())
                text = (action.help or "") % {**vars(action), "prog": child.prog}
                extra = []
                if action.choices:
                    extra.append("one of " + ", ".join(f"``{c}``" for c in action.choices))
                if action.option_strings and action.nargs != 0 and action.default is not None:
                    extra.append(f"default ``{action.default}``")
                lines += [f"``{term}``",
                          "   " + _escape(text) + (f" ({'; '.join(extra)})" if extra else ""),
                          ""]
        return _rst(lines, self)


def _escape(text):
    return re.sub(r"([\\`*|_])", r"\\\1", text)


def _cli_parser():
    """The parser :func:`bpcore.cli.main` builds, caught as it parses.

    NOTE: the CLI builds its parser inside ``main``; rather than duplicate it,
    ``parse_args`` of its parser class is replaced for one call and raises with
    the parser, so these pages always show exactly what ``--help`` shows.
    """
    from bpcore import cli

    class Caught(Exception):
        pass

    def catch(self, *args, **kwargs):
        raise Caught(self)

    cls = cli._Parser
    original = cls.__dict__.get("parse_args")
    cls.parse_args = catch
    try:
        cli.main([])
    except Caught as caught:
        return caught.args[0]
    finally:
        if original is None:
            del cls.parse_args
        else:
            cls.parse_args = original
    raise ExtensionError("bpcore.cli.main did not build an argparse parser")


_DEF = re.compile(r"^(?:cdef|cpdef|def)\s.*?\b(\w+)\s*\(")


class BpSource(SphinxDirective):
    """One top-level function of a source file, shown as it is today."""

    required_arguments = 2

    def run(self):
        path, function = self.arguments
        full = os.path.join(ROOT, path)
        with open(full, encoding="utf-8") as f:
            lines = f.read().splitlines()
        start = next((i for i, line in enumerate(lines)
                      if (m := _DEF.match(line)) and m.group(1) == function), None)
        if start is None:
            raise ExtensionError(f"{path} has no top-level function {function!r} any more; "
                                 f"update the page that shows it ({self.env.docname})")
        end = start + 1
        while end < len(lines) and (not lines[end] or lines[end][0].isspace()
                                    or lines[end].startswith(")")):
            end += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        text = "\n".join(lines[start:end])
        self.env.note_dependency(full)
        block = nodes.literal_block(text, text,
                                    language="cython" if path.endswith((".pyx", ".pxd"))
                                    else "python")
        caption = nodes.caption("", f"{path}: {function}")
        wrapper = nodes.container("", caption, block, literal_block=True)
        return [wrapper]


class BpReadmeCode(SphinxDirective):
    """The INDEX-th fenced code block under a README heading."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec = {"index": directives.nonnegative_int}

    def run(self):
        heading = self.arguments[0]
        index = self.options.get("index", 0)
        readme = os.path.join(ROOT, "README.md")
        self.env.note_dependency(readme)
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        start = text.find("\n" + heading + "\n")
        if start < 0:
            raise ExtensionError(f"README.md has no heading {heading!r} any more "
                                 f"({self.env.docname})")
        level = heading.split(" ", 1)[0]
        section = text[start + 1:]
        nxt = re.search(rf"\n{re.escape(level)} ", section[len(heading):])
        if nxt:
            section = section[:len(heading) + nxt.start()]
        blocks = re.findall(r"\n```(\w*)\n(.*?)\n```", section, re.S)
        if index >= len(blocks):
            raise ExtensionError(f"README.md's {heading!r} has no code block #{index}")
        language, code = blocks[index]
        block = nodes.literal_block(code, code, language=language or "text")
        return [block]


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

_ARRAY = re.compile(r"\b(array_like|ndarray|array)\b")
_SHAPED = re.compile(r"shape|\bscalar\b|\bblock\b|sequence of|list of|like ``|"
                     r"shaped like|same as|same array")


def check_shapes(app, what, name, obj, options, lines):
    """BP01: an array parameter or return value must say its shape (type or text)."""
    from numpydoc.docscrape import NumpyDocString

    if what not in ("function", "method") or not name.startswith("bpcore"):
        return
    excluder = app.config.numpydoc_validation_excluder
    if excluder is not None and excluder.search(name):
        return
    doc = NumpyDocString(inspect.getdoc(obj) or "")
    bad = []
    for section in ("Parameters", "Returns"):
        for item in doc[section]:
            text = item.type + " " + " ".join(item.desc)
            if _ARRAY.search(item.type) and not _SHAPED.search(text):
                bad.append(f"{section[:-1].lower()} {item.name or item.type!r}")
    if bad:
        logger.warning(f"[bpdocs] BP01: the docstring of {name!r} gives no shape for: "
                       f"{', '.join(bad)} (write e.g. ``array_like, shape (n_samples, n_in)``"
                       f" or ``same shape as ``x````)", type="bpdocs", subtype="BP01")


def public_names():
    """Every public name the API reference must document (full dotted names)."""
    import bpcore
    from bpcore import distributed, reference
    names = {f"bpcore.{n}" for n in bpcore.__all__ if n not in ("reference", "__version__")}
    names |= {f"bpcore.reference.{n}" for n in reference.__all__}
    names |= {f"bpcore.distributed.{n}" for n in distributed.__all__}
    try:
        from bpcore import sklearn
    except ImportError:
        pass
    else:
        names |= {f"bpcore.sklearn.{n}" for n in sklearn.__all__}
    names |= {f"bpcore.MLP.{n}" for n, _ in inspect.getmembers(bpcore.MLP)
              if not n.startswith("_")}
    return names


def check_coverage(app, env):
    if not app.config.bpdocs_check_coverage:
        return
    documented = set(env.get_domain("py").objects)
    for name in sorted(public_names() - documented):
        logger.warning(f"[bpdocs] public name {name} is not documented in the API reference "
                       f"(add it to a page under docs/api/)", type="bpdocs",
                       subtype="undocumented")


def executed_pages(app, env, added, changed, removed):
    """Pages with executed code are always read again (see ``_Executed.run``)."""
    return sorted(getattr(env, "bp_executed", set()) - set(removed))


def purge(app, env, docname):
    getattr(env, "bp_executed", set()).discard(docname)


def setup(app):
    app.add_config_value("bpdocs_check_coverage", True, "env")
    app.add_directive("bp-doctest", BpDoctest)
    app.add_directive("bp-run", BpRun)
    app.add_directive("bp-ops", BpOps)
    app.add_directive("bp-cli", BpCli)
    app.add_directive("bp-source", BpSource)
    app.add_directive("bp-readme-code", BpReadmeCode)
    app.add_role("bp-eval", bp_eval_role)
    app.connect("autodoc-process-docstring", check_shapes, priority=400)
    app.connect("env-check-consistency", check_coverage)
    app.connect("env-get-outdated", executed_pages)
    app.connect("env-purge-doc", purge)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
