"""clotclf core: plugin contracts, plugin manager, pipeline steps and CLI.

The core holds no concrete component: every patch source, patch filter, backbone and head
arrives through the ``clotclf.plugins`` entry-point group (see ``hookspecs.py``).
"""

__version__ = "0.1.0"
