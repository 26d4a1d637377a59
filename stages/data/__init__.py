"""Datasets: standard on-disk layouts, class names and templates as data files, transforms.

Importing the package registers every benchmark adapter (``imagenet``, ``group_shift``,
``cifar``, ``transfer``, ``wilds``, ``fmnist_demo``), ``custom`` (your own folder tree) and ``formats`` (CSV files, WebDataset shards) with ``stages.data.source.build_dataset``; they import only
the standard library and numpy, so this stays light.
"""

from stages.data import cifar, custom, fmnist_demo, formats, group_shift, imagenet, transfer, wilds  # noqa: F401  (registers the adapters)
