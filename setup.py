"""Build the LD_PRELOAD shim as part of the package.

The shim is a plain shared object that any dynamically linked program can
preload; it is built through setuptools' extension machinery only so that
``pip install`` needs nothing beyond a C compiler.  It is never imported by
Python, so it is installed under a fixed name (``libc_service/_shim.so``)
instead of the interpreter-specific extension suffix. The launcher
(``libc_service/_launch``), which applies a prepared sandbox and executes
the program, is a plain executable built beside it by the same compiler.
"""

from __future__ import annotations

import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import LinkError


class BuildShim(build_ext):
    """Name the shim ``_shim.so`` and export only its interposed symbols."""

    def get_ext_filename(self, fullname: str) -> str:
        return fullname.replace(".", "/") + ".so"

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []

    def run(self) -> None:
        super().run()
        self._build_launcher()

    def _build_launcher(self) -> None:
        """Compile ``libc_service/_launch`` where the shim went (in place, or the build tree)."""
        target = os.path.join("." if self.inplace else self.build_lib, "libc_service")
        os.makedirs(target, exist_ok=True)
        objects = self.compiler.compile(
            ["libc_service/launcher/launch.c"],
            output_dir=self.build_temp,
            extra_postargs=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
        )
        try:  # static where the C library allows it: nothing to load before the program's own exec
            self.compiler.link_executable(objects, "_launch", output_dir=target, extra_postargs=["-static"])
        except LinkError:
            self.compiler.link_executable(objects, "_launch", output_dir=target)


shim = Extension(
    "libc_service._shim",
    sources=sorted(glob.glob("libc_service/shim/*.c")),
    include_dirs=["libc_service/shim"],
    define_macros=[("_GNU_SOURCE", "1")],
    extra_compile_args=["-O2", "-std=gnu11", "-fvisibility=hidden", "-pthread", "-Wall", "-Wextra"],
    extra_link_args=["-pthread", "-ldl"],
)

setup(ext_modules=[shim], cmdclass={"build_ext": BuildShim})
