"""The techniques tier: one module per technique, each holding only its mechanism and importing only the
core and the runner (never another technique): ``lora``, ``prune``, ``quantize``, ``distill``,
``distributed``, ``explain``, ``privacy``, ``federated``. Reachable as ``lib.lora``, ``lib.prune``, ...
(see :mod:`lib`)."""
