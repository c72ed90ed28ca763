"""HOSciatic algorithms, free of Qt so they run in Slicer, its console and plain Python.

The chain, one module per step:
``ossification`` (HO islands on CT) -> ``nerve`` (sciatic nerve centreline and
calibre) -> ``contact`` (distance, contact and encasement). ``scene`` moves data
between MRML nodes and arrays; ``pipeline`` runs the chain on a scene; ``cli``
is the ``hosciatic`` command.
"""

__version__ = "0.1.0"
