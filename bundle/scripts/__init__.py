"""Custom code of the pancreas_ct_c2fnas_segmentation bundle (package name ``scripts``, as model-zoo and MONAI Label
expect). In the repository ``networks`` and ``search`` are links to the top-level packages; a released bundle
carries copies of them."""
