"""XRPC handlers of the PDS, a module per namespace."""
