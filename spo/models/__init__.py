"""Model loading (hub id + pinned revision, or a local path), tiny stand-ins, backbone adapters."""
