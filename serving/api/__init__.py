"""Generated gRPC stubs for protos/ (regenerate with `make protos`; do not edit)."""
