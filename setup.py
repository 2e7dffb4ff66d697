"""Build of fer_fast: the Python package, the Triton kernels as ``fer_fast.kernels``."""
from setuptools import setup

setup(
    packages=["fer_fast", "fer_fast.kernels"],
    package_dir={"fer_fast": "fer_fast", "fer_fast.kernels": "kernels"},
)
