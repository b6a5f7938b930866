"""tailrank serving: the gRPC ranking server over Feast features and ONNX Runtime."""
