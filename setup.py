"""Build the loader's native engine (plain C++17, no CUDA needed); metadata is in pyproject.toml."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

_CSRC = "libs/loader/csrc"

ext_modules = [
    Pybind11Extension(
        "libs.loader._native",
        sources=[f"{_CSRC}/{name}.cpp" for name in ("bindings", "engine", "memory", "xxh3")],
        depends=[f"{_CSRC}/{name}.hpp" for name in ("engine", "memory", "xxh3")],
        cxx_std=17,
        extra_compile_args=["-O3", "-fvisibility=hidden", "-Wall", "-Wextra"],
        extra_link_args=["-pthread"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
