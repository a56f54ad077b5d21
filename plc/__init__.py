"""A did:plc directory."""
