"""Test-wide set-up (at the project root so it also covers ``pytest --nbval-lax notebooks/``).

Outputs of every test (and of the notebooks nbval executes) go to a fresh temp folder, never into your
``outputs/`` — not even when ``MUXL_OUTPUTS`` points to your own runs. The kernels nbval and papermill start
inherit this environment.
"""

import os
import tempfile

os.environ["MUXL_OUTPUTS"] = tempfile.mkdtemp(prefix="muxl-test-outputs-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
