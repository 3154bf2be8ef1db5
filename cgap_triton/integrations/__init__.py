"""Our kernels inside other people's pruning code.

- :mod:`cgap_triton.integrations.optim` — :func:`carry_optimizer_state`: after a pruning library replaced
  parameters, point the optimizer at the live ones and cut their state with the gather kernel.
- :mod:`cgap_triton.integrations.torch_pruning` — ``KernelImportance`` (Torch-Pruning importance from one
  ``channel_stats`` launch), ``record_pruning`` and ``prune_step``. Needs the optional ``torch-pruning``
  package and is imported only when asked for, so this package imports without it.
"""
