//! CNAB-in-OCI: find the config, read bundle.json, the relocation map.
