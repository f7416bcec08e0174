"""The build stage: checkpoint -> ONNX -> (INT8 | TensorRT plan) -> accuracy gates -> repository.

command   `resnet-triton build`: plan, export, gate, publish; its command line
options   BuildOptions, the Plan they resolve to, and BuildResult
gating    the gate step: every file the build made against its reference
export    the ONNX export and its spec metadata
torch_artifacts  TorchScript (model.pt) and torch.export (model.pt2) files, and their runner
quantize  ONNX Runtime INT8 (QDQ) quantization
engine    TensorRT plans and the GPU they are built for
verify    the accuracy gates (Polygraphy)
manifest  content hashes and the manifest beside every published model file

The package imports nothing itself, so `build.engine` (GPU detection) loads
without PyTorch.
"""
