"""The client side: a library over gRPC and HTTP (classifier) and `resnet-triton classify`.

Nothing here imports PyTorch or the server side.
"""

from resnet_triton.client.classifier import (
    PROTOCOLS,
    AsyncClassifier,
    Classifier,
    ClientError,
    ModelInfo,
    Prediction,
    Result,
    encode_image,
    parse_classification,
)

__all__ = [
    "PROTOCOLS", "AsyncClassifier", "Classifier", "ClientError", "ModelInfo", "Prediction",
    "Result", "encode_image", "parse_classification",
]  # fmt: skip
