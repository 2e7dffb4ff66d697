"""Build of fer_fast: the Python package, the Triton kernels as ``fer_fast.kernels``, and the
native extension ``fer_fast._C`` compiled by CMake (see CMakeLists.txt).

``FER_FAST_CPU_ONLY=1`` builds the extension without its CUDA kernels. CMake builds in
``build/cmake-<python>/`` of the source tree and keeps it, so a reinstall recompiles nothing
unchanged (delete the folder for a clean build). Works for ``pip install .``
and for editable installs (``pip install -e .``: the .so lands in fer_fast/ of the source tree).
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources CMake compiles (CMakeLists.txt at the repository root)."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _tool(module: str, name: str) -> str:
    """Path of the cmake / ninja executable of the pip package (a build requirement)."""
    mod = __import__(module)
    bin_dir = getattr(mod, "CMAKE_BIN_DIR", None) or getattr(mod, "BIN_DIR")
    return str(Path(bin_dir) / name)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # a persistent CMake build folder in the source tree (ignored by git): installing again
        # (an extra, a reinstall) rebuilds only what changed; pip's own build folders are temporary
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}" / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        cpu_only = os.environ.get("FER_FAST_CPU_ONLY", "0") not in ("", "0")
        configure = [
            _tool("cmake", "cmake"), "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'ninja')}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DFER_FAST_CPU_ONLY={'ON' if cpu_only else 'OFF'}",
        ]
        subprocess.run(configure, check=True)
        subprocess.run([_tool("cmake", "cmake"), "--build", str(build_dir), "-j",
                        str(os.cpu_count() or 1)], check=True)


setup(
    packages=["fer_fast", "fer_fast.kernels"],
    package_dir={"fer_fast": "fer_fast", "fer_fast.kernels": "kernels"},
    package_data={"fer_fast": ["models/*"]},  # the bundled model, its card and run files
    ext_modules=[CMakeExtension("fer_fast._C")],
    cmdclass={"build_ext": CMakeBuild},
)
