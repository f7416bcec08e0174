"""From a folder of labelled images to a fine-tuned ResNet served by Triton (README.md).

The version is the distribution's: importlib.metadata.version("resnet-triton").
"""
