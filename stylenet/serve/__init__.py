"""``stylenet-serve``: a web page to try styles on photos and on the webcam, locally and offline.

Python's own threaded HTTP server and one static page (HTML, CSS, plain JavaScript): nothing to
install beyond stylenet, nothing fetched from elsewhere. The page uploads photos (one job per photo,
polled for progress), lets the user pick styles, strength and colour preservation, shows photo |
result side by side with a full-size download, and streams webcam frames one at a time.

Safety, in the modules that provide it:

* :mod:`~stylenet.serve.server`: 127.0.0.1 by default; one temporary folder for every upload and
  result, deleted on close.
* :mod:`~stylenet.serve.catalog`: models from the given folder only, named by the server's ids,
  loaded weights-only.
* :mod:`~stylenet.serve.limits`: a memory plan and an admission gate (workers, queue, 503 beyond).
* :mod:`~stylenet.serve.work`: uploads read with every input check of the CLI.
* :mod:`~stylenet.serve.handler`: the HTTP API, size-limited bodies, one-line JSON errors.
"""

from __future__ import annotations

from stylenet.serve.catalog import Catalog, ModelEntry, file_styles, model_entries
from stylenet.serve.handler import is_loopback
from stylenet.serve.limits import Busy, Gate, MemoryPlan
from stylenet.serve.server import DEFAULT_PORT, ServeConfig, StyleServer

__all__ = ["DEFAULT_PORT", "Busy", "Catalog", "Gate", "MemoryPlan", "ModelEntry", "ServeConfig", "StyleServer",
           "file_styles", "is_loopback", "model_entries"]
