"""The serving stage: the Triton model repository, the models Triton runs, the server.

repository     render config.pbtxt files from the spec, publish gated model files
triton_models  the Python-backend models (preprocess, ONNX Runtime classifier)
server         start and stop tritonserver (the nvidia-pytriton wheel's, or another)
container      the same for docker-compose.yml's tritonserver service
serve          `resnet-triton serve`: the server, supervised
probe          one real inference through an ensemble (health checks)
"""
