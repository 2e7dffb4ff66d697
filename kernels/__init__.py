"""Triton kernels of fer_fast (installed as ``fer_fast.kernels``)."""
