"""Per-dataset prepare routes: one module per dataset family, each calling ``register_route``.

Importing this package imports every module in it (so a new family is one new file, with no list
to edit here); ``stages.data.prepare.load_routes`` does that on first use, so importing
``stages.data`` itself stays light.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
