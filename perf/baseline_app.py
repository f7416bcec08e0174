"""The baseline the seed guides deploy: FastAPI, PIL preprocessing, ONNX Runtime per request.

POST /predict with the encoded image as the body; answers the top-1 label
index and score. One image per request, no batching, preprocessing written
the way tutorials write it (PIL decode, resize and crop), with the sizes and
interpolation of the model's spec (its ONNX metadata); the model is the one
Triton serves, so it normalizes the 8-bit pixels itself. Run by
perf/report.py under uvicorn with one worker:

    ONNX_MODEL=model_repository/classifier/1/model.onnx \\
        .venv/bin/uvicorn --app-dir perf baseline_app:app --port 8080
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from PIL import Image

from resnet_triton.build.export import spec_from_onnx

MODEL = Path(os.environ["ONNX_MODEL"])
PREP = spec_from_onnx(MODEL).preprocessing
RESAMPLE = Image.Resampling[PREP.interpolation.upper()]

app = FastAPI()
session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name


def preprocess(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    scale = PREP.resize_size / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), RESAMPLE)
    crop = PREP.crop_size
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    return np.asarray(image).transpose(2, 0, 1)[None]  # (1, 3, crop, crop) uint8


@app.post("/predict")
async def predict(request: Request) -> dict:
    body = await request.body()
    try:
        pixels = preprocess(body)
    except Exception as exc:  # noqa: BLE001 - a baseline: any decode failure is a 400
        raise HTTPException(400, f"cannot decode image: {exc}") from None
    scores = session.run(None, {input_name: pixels})[0][0]
    return {"index": int(scores.argmax()), "score": float(scores.max())}
