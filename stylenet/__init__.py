"""stylenet: fast neural style transfer (Johnson, Alahi & Fei-Fei, ECCV 2016).

Kept light on purpose: importing ``stylenet`` pulls in neither Lightning nor Hydra, so the
inference CLI and notebooks start fast.
"""

__version__ = "0.1.0"


class StylenetError(Exception):
    """A user-facing error: ``str(err)`` is one line that names the offending file or setting."""
