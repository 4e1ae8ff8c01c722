"""What the gateway and the backend share: the gRPC stubs, the error map, the
similarity formula and the image checks that need no decoder.

Nothing here imports onnxruntime or OpenCV, so a gateway can run without them.
"""
