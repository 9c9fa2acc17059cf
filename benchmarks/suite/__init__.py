"""The benchmark suite behind ``python -m benchmarks``: sections a-h.

``context`` (settings per mode, scratch files, the timer), ``assets`` (models),
``throughput`` (a, g), ``torchcmp`` (b, c), ``memio`` (d, e), ``precision`` (f),
``gpu`` (h), ``report`` (Markdown).  What each section measures: ``benchmarks/README.md``.
"""
