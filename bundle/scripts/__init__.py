"""Custom code of the pancreas_ct_c2fnas_segmentation bundle (package name ``scripts``, as model-zoo and MONAI Label
expect): data, settings, transforms, handlers and the runtime tuning. The network family and the search are the
packages ``networks`` and ``search``: installed with the project in the repository, copied beside ``scripts/`` in
the released bundle.

Importing it makes bad-input errors show as their one message (``scripts.errors``).
"""

from scripts.errors import install_excepthook

install_excepthook()
