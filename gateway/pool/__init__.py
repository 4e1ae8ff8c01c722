"""The model backends behind the gateway: pools of gRPC members, their processes and wire."""
