"""Speed of stylenet on this machine against the reference configuration (``stylenet-bench``).

:mod:`~stylenet.bench.measure` times and measures memory, :mod:`~stylenet.bench.training` holds the
training step and its table of variants, :mod:`~stylenet.bench.worker` runs one measurement in a fresh
process, :mod:`~stylenet.bench.sections` the inference, Gatys, convolution and data sections, and
:mod:`~stylenet.bench.report` the derived figures, targets and the printed table.
"""
