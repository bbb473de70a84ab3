"""Code shared by every ccaa process: transport, config, logging, metrics, HTTP."""
