"""Build the LD_PRELOAD shim as part of the package.

The shim is a plain shared object that any dynamically linked program can
preload; it is built through setuptools' extension machinery only so that
``pip install`` needs nothing beyond a C compiler.  It is never imported by
Python, so it is installed under a fixed name (``libc_service/_shim.so``)
instead of the interpreter-specific extension suffix.
"""

from __future__ import annotations

import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildShim(build_ext):
    """Name the shim ``_shim.so`` and export only its interposed symbols."""

    def get_ext_filename(self, fullname: str) -> str:
        return fullname.replace(".", "/") + ".so"

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []


shim = Extension(
    "libc_service._shim",
    sources=sorted(glob.glob("libc_service/shim/*.c")),
    include_dirs=["libc_service/shim"],
    define_macros=[("_GNU_SOURCE", "1")],
    extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra"],
    extra_link_args=["-pthread", "-ldl"],
)

setup(ext_modules=[shim], cmdclass={"build_ext": BuildShim})
