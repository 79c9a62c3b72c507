"""Build the Cython core (ext/pretrade/_core) into the pretrade._core package.

Build switches (environment variables):

PRETRADE_DEBUG=1
    Debug build: bounds and wraparound checks on, line tracing
    (CYTHON_TRACE) for coverage and profilers, annotated HTML next to each
    .pyx, -O0 -g.

PRETRADE_SKIP_CORE=1
    Build the package without the core. The Makefile's editable install
    sets it, so that the core is compiled once, by `make build`, in place
    (compiling it inside the editable install as well cost ~30 s more).
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

ROOT = Path(__file__).parent
CORE = ROOT / "ext" / "pretrade" / "_core"
DEBUG = os.environ.get("PRETRADE_DEBUG") == "1"
SKIP_CORE = os.environ.get("PRETRADE_SKIP_CORE") == "1"

directives = {
    "language_level": 3,
    "embedsignature": True,
    # Methods as plain builtin methods, not introspectable function objects:
    # nothing here needs their __signature__ (embedsignature puts it in the
    # docstring), and the extra code cost a fifth of positions.c's compile.
    "binding": False,
    # Release builds: the .pyx files turn bounds checks off per function,
    # only where a test covers the bounds.
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
}
macros = []
# Release builds carry no debug information (-g0 overrides the -g of Python's
# own flags): it cost 15% of the compile, which is most of a fresh `make serve`.
cflags = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
if DEBUG:
    directives["linetrace"] = True
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]

extensions = [
    Extension(
        f"pretrade._core.{pyx.stem}",
        [str(pyx.relative_to(ROOT))],
        include_dirs=[str(CORE.relative_to(ROOT))],
        define_macros=macros,
        extra_compile_args=cflags + ["-Wno-unused-function"],
        libraries=["pthread"],
    )
    # Largest first: with --parallel, positions (two thirds of the C) starts
    # at once and the others compile beside it.
    for pyx in sorted(CORE.glob("*.pyx"), key=lambda path: -path.stat().st_size)
]

def _directives_changed() -> bool:
    """Whether this file changed since the C was generated: cythonize only
    compares the .pyx with its .c, so new directives would otherwise not apply."""
    built = [pyx.with_suffix(".c") for pyx in CORE.glob("*.pyx")]
    this = Path(__file__).stat().st_mtime
    return any(c.exists() and c.stat().st_mtime < this for c in built)


setup(
    ext_modules=[] if SKIP_CORE else cythonize(
        extensions,
        include_path=["ext"],
        compiler_directives=directives,
        annotate=DEBUG,
        nthreads=os.cpu_count() or 1,
        force=_directives_changed(),
    ),
)
