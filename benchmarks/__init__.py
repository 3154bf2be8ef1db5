"""Benchmarks of cgap_triton: kernels against torch, training cost, inference speed of the result.

``python -m benchmarks.run`` (``make bench``) runs every part the machine can run and writes results under
``benchmarks/results/<machine>/``; ``python -m benchmarks.compile_policy`` compares the compile policies.
"""
