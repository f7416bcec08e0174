"""The build stage: checkpoint -> ONNX -> (INT8 | TensorRT plan) -> accuracy gates -> repository.

command   `resnet-triton build`: BuildOptions, run() and its BuildResult
export    the ONNX export and its spec metadata
quantize  ONNX Runtime INT8 (QDQ) quantization
engine    TensorRT plans and the GPU they are built for
verify    the accuracy gates (Polygraphy)
manifest  content hashes and the manifest beside every published model file

The package imports nothing itself, so `build.engine` (GPU detection) loads
without PyTorch.
"""
