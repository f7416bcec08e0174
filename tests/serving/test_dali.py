"""The DALI preprocessing option: the serialized pipeline, run on DALI's CPU operators here,
against torchvision and the Python path; the repository it renders; where it cannot run.

Tolerances, in 8-bit levels (the DALI graph decodes at full size, as torchvision does):
- real photos at 256/224 and 72/64: at most 1 level at every value, on average under 0.2;
- where the crop reaches the image's edge (299/299): the same inside, and up to 8 levels
  in the outermost row or column (DALI's resampling at the border), 99% within 1;
- odd files (gray, CMYK, palette, RGBA, 16-bit, Adam7, progressive, EXIF-rotated)
  against the Python path with draft decoding off: at most 1 level.
"""

import dataclasses
import http.server
import json
import threading

import numpy as np
import pytest
import torch
from conftest import PHOTOS
from PIL import Image
from test_preprocess import encode, fast_decoder_cases, levels, torchvision_eval
from tritonclient.grpc import model_config_pb2 as mc

from resnet_triton.client.protocol import encoded_batch
from resnet_triton.digits import demo_spec
from resnet_triton.preprocess import normalize, pixels_from_bytes
from resnet_triton.serving import dali
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.probe import probe
from resnet_triton.serving.repository import read_config, render, rendered_files, warmup_image
from resnet_triton.serving.server import ServerError, TritonServer
from resnet_triton.spec import Preprocessing, SpecError

DALI = ServingConfig(preprocess_backend="dali")


def pipeline(cfg: Preprocessing, target: str = "cpu") -> dali.CpuPipeline:
    spec = dataclasses.replace(demo_spec(), preprocessing=cfg)
    return dali.CpuPipeline(dali.serialized(spec, target, threads=2), spec.names.image)


@pytest.mark.parametrize("sizes", [(256, 224), (72, 64), (299, 299)])
def test_matches_torchvision_on_real_photos(sizes):
    cfg = Preprocessing(resize_size=sizes[0], crop_size=sizes[1])
    pixels = pipeline(cfg)([path.read_bytes() for path in PHOTOS])
    assert pixels.shape == (len(PHOTOS), 3, sizes[1], sizes[1]) and pixels.dtype == np.uint8
    for path, ours in zip(PHOTOS, pixels, strict=True):
        reference = torchvision_eval(cfg)(Image.open(path).convert("RGB")).numpy()
        diff = levels(normalize(ours[None], cfg)[0], reference, cfg)
        assert diff.mean() < 0.2, path.name
        assert diff[:, 1:-1, 1:-1].max() <= 1 + 1e-3, path.name
        if sizes[0] > sizes[1]:  # the crop stays inside: no border
            assert diff.max() <= 1 + 1e-3, path.name
        else:
            assert diff.max() <= 8 + 1e-3 and np.percentile(diff, 99) <= 1 + 1e-3, path.name


def test_odd_files_and_zero_padding_give_the_python_paths_pixels(tmp_path):
    cases = fast_decoder_cases(tmp_path) + [
        ("16-bit.png", encode(Image.fromarray(np.full((40, 60), 0xABCD, np.uint16)), "PNG"))
    ]
    cfg = Preprocessing(jpeg_draft=False)
    run = pipeline(cfg)
    payloads = [data for _, data in cases]
    alone = run(payloads)
    padded = encoded_batch(payloads, "UINT8")  # what the client sends a DALI ensemble
    assert padded.shape == (len(cases), max(len(p) for p in payloads))
    assert np.array_equal(run(list(padded)), alone)  # the decoders stop at the image's end
    for (name, data), ours in zip(cases, alone, strict=True):
        python_path = pixels_from_bytes([data], cfg)[0]
        assert np.abs(ours.astype(int) - python_path).max() <= 1, name
    assert alone[-1].min() == alone[-1].max() == 0xAB  # 16-bit: the high byte, as Pillow


def test_a_corrupt_image_fails_its_whole_batch():
    """Why the DALI model has no dynamic batcher: the error takes every image run with it."""
    run = pipeline(Preprocessing())
    good = PHOTOS[0].read_bytes()
    with pytest.raises(RuntimeError, match="decoders.image"):
        run([good, good[:2000]])


def test_the_dali_repository(tmp_path):
    spec = demo_spec()
    render(spec, tmp_path)  # the Python option first: switching removes its model.py
    for target in ("cpu", "gpu"):
        files = rendered_files(spec, target=target, serving=DALI)
        render(spec, tmp_path, target=target, serving=DALI)
        pre = read_config(tmp_path / "preprocess" / "config.pbtxt")
        assert pre.backend == "dali" and not pre.HasField("dynamic_batching")
        image, pixels = pre.input[0], pre.output[0]
        assert (image.name, image.data_type, list(image.dims)) == ("IMAGE", mc.TYPE_UINT8, [-1])
        assert (pixels.data_type, list(pixels.dims)) == (mc.TYPE_UINT8, [3, 224, 224])
        assert pre.max_batch_size == 32
        kind = mc.ModelInstanceGroup.KIND_GPU if target == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        assert [g.kind for g in pre.instance_group] == [kind]
        warmup = pre.model_warmup[0].inputs["IMAGE"]
        assert list(warmup.dims) == [len(warmup_image())]
        assert (tmp_path / "preprocess" / "warmup" / "image").read_bytes() == warmup_image()
        ensemble = read_config(tmp_path / "resnet_ensemble" / "config.pbtxt")
        assert (ensemble.input[0].data_type, list(ensemble.input[0].dims)) == (mc.TYPE_UINT8, [-1])
        model = files["preprocess/1/model.dali"]
        assert (tmp_path / "preprocess" / "1" / "model.dali").read_bytes() == model
        assert (b"mixed" in model) == (target == "gpu")  # nvJPEG decodes on the GPU target
        assert not (tmp_path / "preprocess" / "1" / "model.py").exists()
    render(spec, tmp_path)  # and back: the DALI file goes
    assert not (tmp_path / "preprocess" / "1" / "model.dali").exists()
    assert (tmp_path / "preprocess" / "1" / "model.py").is_file()


def test_the_cpu_target_file_is_what_runs():
    """The rendered model.dali, the file Triton's DALI backend loads, against the Python
    path (full decode): the spec's sizes and geometry reach the served graph."""
    model = rendered_files(demo_spec(), target="cpu", serving=DALI)["preprocess/1/model.dali"]
    assert b"mixed" not in model  # decoded on the CPU
    photos = [path.read_bytes() for path in PHOTOS]
    served = dali.CpuPipeline(model, "IMAGE")(photos)
    python_path = pixels_from_bytes(photos, Preprocessing(jpeg_draft=False))
    assert served.shape == python_path.shape == (len(PHOTOS), 3, 224, 224)
    assert np.abs(served.astype(int) - python_path).max() <= 1


@pytest.mark.parametrize(
    "serving, interpolation, message",
    [
        (ServingConfig(preprocess_backend="opencv"), "bilinear",
         "serving.preprocess_backend must be one of python, dali, got 'opencv'"),
        (DALI, "bicubic", "preprocessing.interpolation is 'bicubic'"),
        (ServingConfig(preprocess_backend="dali", dali_threads=0), "bilinear",
         "serving.dali_threads must be an integer >= 1, got 0"),
    ],
)  # fmt: skip
def test_bad_dali_settings_are_named(serving, interpolation, message):
    spec = dataclasses.replace(
        demo_spec(), preprocessing=Preprocessing(interpolation=interpolation)
    )
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        rendered_files(spec, serving=serving)


def test_the_wheels_tritonserver_refuses_a_dali_repository(tmp_path):
    render(demo_spec(), tmp_path, serving=DALI)
    with pytest.raises(ServerError, match="model.dali needs Triton's DALI backend") as error:
        TritonServer(tmp_path).start()
    assert "serving.preprocess_backend: python" in str(error.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI's GPU decoder needs a CUDA GPU")
def test_the_gpu_target_decodes_as_the_cpu_target():
    """nvJPEG and the GPU resize against the CPU operators (hardware JPEG decoders differ in
    rounding: held to the photos' tolerance against torchvision, 1 level)."""
    import nvidia.dali as nvidia_dali

    cfg = demo_spec().preprocessing
    model = rendered_files(demo_spec(), target="gpu", serving=DALI)["preprocess/1/model.dali"]
    gpu = nvidia_dali.Pipeline.deserialize(serialized_pipeline=model, device_id=0)
    gpu.build()
    photos = [path.read_bytes() for path in PHOTOS]
    gpu.feed_input("IMAGE", [np.frombuffer(p, np.uint8) for p in photos])
    (pixels,) = gpu.run()
    on_gpu = pixels.as_cpu().as_array()
    assert np.abs(on_gpu.astype(int) - pipeline(cfg)(photos)).max() <= 1


def test_the_probe_sends_a_dali_ensemble_uint8(tmp_path):
    """The liveness probe reads the input's datatype; NVIDIA's tritonserver (which has the
    DALI backend) cannot run here, so a stand-in answers Triton's two HTTP calls."""
    seen = {}

    class Triton(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # model metadata, as Triton answers it for the DALI ensemble
            self.answer(
                {
                    "name": "resnet_ensemble",
                    "versions": ["1"],
                    "platform": "ensemble",
                    "inputs": [{"name": "IMAGE", "datatype": "UINT8", "shape": [-1, -1]}],
                    "outputs": [{"name": "SCORES", "datatype": "FP32", "shape": [-1, 10]}],
                }
            )

        def do_POST(self):  # infer: JSON header, then the binary input
            body = self.rfile.read(int(self.headers["Content-Length"]))
            size = int(self.headers["Inference-Header-Content-Length"])
            seen["header"], seen["data"] = json.loads(body[:size]), body[size:]
            self.answer({"outputs": [{"name": "SCORES", "data": ["0.9:3:3"]}]})

        def answer(self, document):
            data = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Triton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        answer = probe(f"127.0.0.1:{server.server_port}", "resnet_ensemble")
    finally:
        server.shutdown()
        server.server_close()
    assert answer == "0.9:3:3"
    (image,) = seen["header"]["inputs"]
    assert (image["datatype"], image["shape"]) == ("UINT8", [1, len(warmup_image())])
    assert seen["data"] == warmup_image()  # the raw JPEG, no length prefix
