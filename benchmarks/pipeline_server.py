"""The peer for benchmarks/serve_load.py: a plain FastAPI app around a Hugging Face pipeline.

This is what a team writes in ten minutes: one `pipeline("text-classification", model=folder)`,
a sync endpoint (FastAPI runs it in its thread pool), no batching across requests.

    python benchmarks/pipeline_server.py MODEL_DIR --port 8001 --threads 2
"""

from __future__ import annotations

import argparse
import os

from pydantic import BaseModel

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # same trap, same fix as tailorml
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Req(BaseModel):
    inputs: list[str]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    torch.set_num_threads(args.threads)
    pipe = pipeline("text-classification", model=args.model, device="cpu")
    pipe(["warm up"])
    app = FastAPI()

    @app.post("/v1/predict")
    def predict(req: Req) -> dict[str, object]:
        return {"predictions": pipe(req.inputs)}

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
