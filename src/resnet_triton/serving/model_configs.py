"""The config.pbtxt of each model, built with protobuf from the spec and the serving
configuration; serving/repository.py lays them out into a repository and says why each
setting is what it is."""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.plans import Plans
from resnet_triton.serving.probe import warmup_image
from resnet_triton.spec import (
    CAPTURE_INPUT,
    INPUT_NAME,
    OUTPUT_NAME,
    REJECT_BELOW,
    REJECT_RATE,
    ModelSpec,
)

DEFAULTS = ServingConfig()
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"  # the pytorch target's (build/torch_artifacts.py)
LABELS_FILE = "labels.txt"
WARMUP_FILE = "image"  # in <model>/warmup/, where Triton looks for input_data_file
# The fused model's parameter that says what it is: the model clients send images to,
# under the ensemble's name (server.ensemble_names reads it).
LAYOUT_PARAM = "layout"


def _model(
    spec: ModelSpec, serving: ServingConfig, name: str, kind, instances: int, delay_us: int
) -> mc.ModelConfig:
    """What the preprocess and classifier models share, whatever their backend."""
    # One version is served: a new model replaces the old in the same folder (VERSION);
    # rollouts and rollbacks happen between repositories in the model store.
    versions = mc.ModelVersionPolicy.Latest(num_versions=1)
    return mc.ModelConfig(
        name=name,
        max_batch_size=spec.max_batch_size,
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(serving.preferred_batch_sizes),
            max_queue_delay_microseconds=delay_us,
        ),
        instance_group=[mc.ModelInstanceGroup(count=instances, kind=kind)],
        version_policy=mc.ModelVersionPolicy(latest=versions),
    )


def _python_model(spec, serving, name, env_path: str, params: dict[str, str], instances, delay_us):
    config = _model(spec, serving, name, mc.ModelInstanceGroup.KIND_CPU, instances, delay_us)
    config.backend = "python"
    for key, value in {**params, "EXECUTION_ENV_PATH": env_path}.items():
        config.parameters[key].string_value = value
    return config


def _classifier_warmup(spec: ModelSpec) -> list[mc.ModelWarmup]:
    pixels = mc.ModelWarmup.Input(
        data_type=mc.TYPE_UINT8, dims=list(spec.preprocessing.input_shape), zero_data=True
    )
    return [
        mc.ModelWarmup(
            name=f"zeros, batch {size}", batch_size=size, inputs={spec.names.pixels: pixels}
        )
        for size in sorted({1, spec.max_batch_size})
    ]


def _pixels(spec: ModelSpec, cls):
    """8-bit RGB, channels first; the classifier normalizes (build/export.py)."""
    tensor = cls(
        name=spec.names.pixels, data_type=mc.TYPE_UINT8, dims=list(spec.preprocessing.input_shape)
    )
    if cls is mc.ModelInput:
        tensor.format = mc.ModelInput.FORMAT_NCHW  # what image clients read (image_client.py)
    return tensor


def _scores(spec: ModelSpec) -> mc.ModelOutput:
    """Softmax probabilities with the labels, so class_count answers "score:index:label"."""
    return mc.ModelOutput(
        name=spec.names.scores,
        data_type=mc.TYPE_FP32,
        dims=[spec.num_classes],
        label_filename=LABELS_FILE,
    )


def preprocess_config(
    spec: ModelSpec, env_path: str, serving: ServingConfig = DEFAULTS
) -> mc.ModelConfig:
    params = {
        **spec.preprocessing.to_params(),
        INPUT_NAME: spec.names.image,
        OUTPUT_NAME: spec.names.pixels,
    }
    name, instances = spec.names.preprocess, serving.preprocess_instances
    delay = serving.preprocess_queue_delay_us
    config = _python_model(spec, serving, name, env_path, params, instances, delay)
    config.input.append(_encoded(spec))
    config.output.append(_pixels(spec, mc.ModelOutput))
    image = mc.ModelWarmup.Input(data_type=mc.TYPE_STRING, dims=[1], input_data_file=WARMUP_FILE)
    if serving.warmup:
        config.model_warmup.append(
            mc.ModelWarmup(name="real photo", batch_size=1, inputs={spec.names.image: image})
        )
    return config


def dali_preprocess_config(
    spec: ModelSpec, target: str, serving: ServingConfig = DEFAULTS
) -> mc.ModelConfig:
    """Encoded bytes (UINT8 [-1]) -> pixels in DALI; no dynamic batcher (serving/dali.py)."""
    kind = mc.ModelInstanceGroup.KIND_GPU if target == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config = _model(spec, serving, spec.names.preprocess, kind, serving.preprocess_instances, 0)
    config.ClearField("dynamic_batching")
    config.backend = "dali"
    config.input.append(mc.ModelInput(name=spec.names.image, data_type=mc.TYPE_UINT8, dims=[-1]))
    config.output.append(_pixels(spec, mc.ModelOutput))
    size = len(warmup_image())
    image = mc.ModelWarmup.Input(data_type=mc.TYPE_UINT8, dims=[size], input_data_file=WARMUP_FILE)
    if serving.warmup:
        config.model_warmup.append(
            mc.ModelWarmup(name="real photo", batch_size=1, inputs={spec.names.image: image})
        )
    return config


def _onnx_params(spec: ModelSpec, serving: ServingConfig) -> dict[str, str]:
    """What a Python model running ONNX Runtime reads (serving/triton_models.py)."""
    params = {
        "onnx_file": ONNX_FILE,
        "intra_op_threads": str(serving.intra_op_threads),
        "allow_spinning": str(int(serving.allow_spinning)),
    }
    for key, value in ((REJECT_BELOW, spec.reject_below), (REJECT_RATE, spec.reject_rate)):
        if value is not None:  # the "unknown" answers' metrics (serving/model_metrics.py)
            params[key] = repr(value)
    return params


def _encoded(spec: ModelSpec) -> mc.ModelInput:
    """Encoded image bytes, one TYPE_STRING element per batch item (the Python path)."""
    return mc.ModelInput(name=spec.names.image, data_type=mc.TYPE_STRING, dims=[1])


def classifier_config(
    spec: ModelSpec, env_path: str, serving: ServingConfig = DEFAULTS
) -> mc.ModelConfig:
    params = {
        **_onnx_params(spec, serving),
        "nice": str(serving.classifier_nice),
        INPUT_NAME: spec.names.pixels,
        OUTPUT_NAME: spec.names.scores,
    }
    name, instances = spec.names.classifier, serving.classifier_instances
    delay = serving.classifier_queue_delay_us
    if serving.capture:  # the encoded images' size, for /dev/shm (serving/resources.py)
        params[CAPTURE_INPUT] = spec.names.image
        params["max_bytes"] = str(spec.preprocessing.max_bytes)
    config = _python_model(spec, serving, name, env_path, params, instances, delay)
    config.input.append(_pixels(spec, mc.ModelInput))
    if serving.capture:  # optional: clients that send pixels alone have no image
        config.input.append(_encoded(spec))
        config.input[-1].optional = True
    config.output.append(_scores(spec))
    if serving.warmup:
        config.model_warmup.extend(_classifier_warmup(spec))
    return config


def captures(serving: ServingConfig, target: str) -> bool:
    """Whether the ensemble passes the classifier the encoded images too, for capturing
    live traffic (serving.capture): where the classifier is the Python backend's."""
    return serving.capture and target == "cpu"


def fused_config(
    spec: ModelSpec, env_path: str, serving: ServingConfig = DEFAULTS
) -> mc.ModelConfig:
    """serving.layout fused: the ensemble's inputs and outputs, decoded and scored in one model."""
    names = spec.names
    params = {  # intra_op_threads: an instance alone on one image
        **spec.preprocessing.to_params(),
        **_onnx_params(spec, serving),
        INPUT_NAME: names.image,
        OUTPUT_NAME: names.scores,
        CAPTURE_INPUT: names.image,
        LAYOUT_PARAM: "fused",
    }
    instances, delay = serving.fused_instances, serving.classifier_queue_delay_us
    config = _python_model(spec, serving, names.ensemble, env_path, params, instances, delay)
    config.dynamic_batching.preferred_batch_size[:] = serving.fused_preferred_batch_sizes
    config.input.append(_encoded(spec))
    config.output.append(_scores(spec))
    image = mc.ModelWarmup.Input(data_type=mc.TYPE_STRING, dims=[1], input_data_file=WARMUP_FILE)
    if serving.warmup:  # one photo (the instance's all-cores session), then a full batch
        config.model_warmup.extend(
            mc.ModelWarmup(name=f"real photo, batch {size}", batch_size=size,
                           inputs={names.image: image})
            for size in sorted({1, spec.max_batch_size})
        )  # fmt: skip
    return config


def tensorrt_classifier_config(
    spec: ModelSpec, plans: Plans, serving: ServingConfig = DEFAULTS
) -> mc.ModelConfig:
    """The GPU classifier: TensorRT plans, one per compute capability."""
    gpu = mc.ModelInstanceGroup.KIND_GPU
    config = _model(
        spec, serving, spec.names.classifier, gpu, serving.classifier_instances,
        serving.classifier_queue_delay_us,
    )  # fmt: skip
    config.platform = "tensorrt_plan"
    config.input.append(_pixels(spec, mc.ModelInput))
    config.output.append(_scores(spec))
    config.cc_model_filenames.update(plans.by_capability)
    if plans.portable:
        config.default_model_filename = plans.portable
    if serving.warmup:
        config.model_warmup.extend(_classifier_warmup(spec))
    return config


def pytorch_classifier_config(spec: ModelSpec, serving: ServingConfig = DEFAULTS) -> mc.ModelConfig:
    """The pytorch target's classifier: model.pt (TorchScript) in Triton's PyTorch backend.

    CPU instances: the torchscript gate measured the file on the CPU (a GPU instance runs
    other kernels, TF32 among them, that no gate has seen). The backend binds the input
    to the TorchScript forward's argument of the same name (build/torch_artifacts.py
    names it from the spec) and the one output by its position.
    """
    config = _model(
        spec, serving, spec.names.classifier, mc.ModelInstanceGroup.KIND_CPU,
        serving.classifier_instances, serving.classifier_queue_delay_us,
    )  # fmt: skip
    config.backend = "pytorch"
    config.platform = "pytorch_libtorch"
    config.default_model_filename = TORCHSCRIPT_FILE
    config.input.append(_pixels(spec, mc.ModelInput))
    config.output.append(_scores(spec))
    if serving.warmup:
        config.model_warmup.extend(_classifier_warmup(spec))
    return config


def ensemble_config(
    spec: ModelSpec, serving: ServingConfig = DEFAULTS, target: str = "cpu"
) -> mc.ModelConfig:
    names = spec.names
    encoded = (
        mc.ModelInput(name=names.image, data_type=mc.TYPE_UINT8, dims=[-1])
        if serving.preprocess_backend == "dali"
        else _encoded(spec)
    )
    steps = [
        mc.ModelEnsembling.Step(
            model_name=names.preprocess,
            model_version=-1,
            input_map={names.image: names.image},
            output_map={names.pixels: "pixels"},
        ),
        mc.ModelEnsembling.Step(
            model_name=names.classifier,
            model_version=-1,
            input_map={names.pixels: "pixels"},
            output_map={names.scores: names.scores},
        ),
    ]
    if captures(serving, target):
        steps[1].input_map[names.image] = names.image
    config = mc.ModelConfig(
        name=names.ensemble,
        platform="ensemble",
        max_batch_size=spec.max_batch_size,
        input=[encoded],
        output=[_scores(spec)],
        ensemble_scheduling=mc.ModelEnsembling(step=steps),
    )
    if spec.reject_below is not None:  # clients read it from the config and answer "unknown"
        config.parameters[REJECT_BELOW].string_value = repr(spec.reject_below)
    return config
