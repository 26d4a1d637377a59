"""Datasets: standard on-disk layouts, class names and templates as data files, transforms."""
