"""roost: the AT Protocol network in Python.

The ``roost`` package holds the shared protocol core (primitives, repository
engine, identity, lexicons, XRPC) and the ``roost`` command line.
"""

__version__ = "0.1.0"
