"""Sphinx configuration of bpcore's documentation.

Build: ``sphinx-build -W docs docs/_build/html`` (warnings are errors).  Every
number of the tutorial is computed by the build (``docs/_ext/bpdocs.py``), and
the API reference is generated from the docstrings, validated by numpydoc.
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "_ext"))
# A checkout built in place (``python setup.py build_ext --inplace``) documents
# itself; otherwise the installed bpcore is imported (a plain checkout has no
# compiled modules to import).
if glob.glob(os.path.join(ROOT, "bpcore", "_gemm*.so")):
    sys.path.insert(0, ROOT)

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are drawn without a display

import bpcore  # noqa: E402

project = "bpcore"
author = "the bpcore developers"
copyright = "the bpcore developers"
release = version = bpcore.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "bpdocs",
]
exclude_patterns = ["_build", "**/_build"]
smartquotes = False  # options such as --target stay two hyphens
templates_path = []
html_static_path = ["_static"]
html_css_files = ["bpcore.css"]
html_theme = "pydata_sphinx_theme"
html_title = f"bpcore {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    # The operations' pages need the width for their two columns.
    "secondary_sidebar_items": {"**": ["page-toc"], **{
        f"api/{family}": [] for family in ("dense", "activations", "losses", "optimizers",
                                           "other")}},
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"**": ["sidebar-nav-bs"]}
# NOTE: without it the theme's script logs "Got invalid theme mode" on a reader's
# first visit (nothing stored yet); the light/dark switch follows the system.
html_context = {"default_mode": "auto"}
html_show_sourcelink = False
html_copy_source = False
# NOTE: no math extension: MathJax would be fetched from the network by the
# reader's browser; the tutorial writes its equations in plain text.

# No network at build time: intersphinx inventories are not fetched.
intersphinx_mapping = {}

autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the stubs' annotations would repeat the numpydoc types

# numpydoc -------------------------------------------------------------------
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# A public docstring that does not document its parameters or its return value
# fails the build (``-W``).  The checks:
#   GL08 no docstring, SS01 no summary line,
#   PR01 a parameter not documented, PR02 an unknown parameter documented,
#   PR03 parameters in the wrong order, PR10 "name: type" without the space,
#   RT01 no Returns section although the function returns something.
# docs/_ext/bpdocs.py adds BP01: an array parameter or return without a shape.
numpydoc_validation_checks = {"GL08", "SS01", "PR01", "PR02", "PR03", "PR10", "RT01"}


def _compiled_twins_deferring_to_their_reference():
    """Names of compiled twins whose docstring says "See :func:`bpcore.reference.<name>`".

    Those docstrings are one line by design (the compiled modules belong to
    the kernels; their signature is tested equal to the reference's), and the
    reference function beside them on the same page is validated in full.
    """
    names = []
    for name in bpcore.reference.__all__:
        doc = getattr(bpcore, name).__doc__ or ""
        if (bpcore.backend_of(name) == "compiled"
                and f":func:`bpcore.reference.{name}`" in doc):
            names.append(name)
    return names


# The exclusion list, and why each entry is there:
numpydoc_validation_exclude = {
    # compiled twins deferring to their reference (see the function above)
    *(rf"^bpcore\.{name}$" for name in _compiled_twins_deferring_to_their_reference()),
    # scikit-learn's own methods, inherited by the bpcore.sklearn estimators
    r"^bpcore\.sklearn\.MLP(Classifier|Regressor)\.(?!__init__)\w+$",
}
