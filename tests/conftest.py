"""The MONAI Label tests need the real monailabel, which lives in its own environment (`make label-setup`, run by
`make test-label`); the default environment skips collecting them."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("monailabel") else ["test_monailabel.py"]
