"""The stages a flow runs (``steps``: data, training, compression, export, verification, latency,
report), ``sparsifying`` (BMR on individual weights), the run's quality ``checks``, ``post_training``
curves and ``resume`` of a stopped run."""
