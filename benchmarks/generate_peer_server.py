"""The peer for benchmarks/serve_generation.py: a plain FastAPI app around transformers'
`generate`, as the transformers docs show it.

What a team writes in half an hour: the model and tokenizer loaded once, a sync endpoint
(FastAPI runs it in its thread pool, so concurrent requests run concurrent `generate` calls),
the chat template, and for `stream: true` a `TextIteratorStreamer` fed by `generate` in a
thread, sent as Server-Sent Events. No batching across requests.

    python benchmarks/generate_peer_server.py MODEL_DIR --port 8002 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from collections.abc import Iterator

from pydantic import BaseModel

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # same setting as tailorml's service
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class Req(BaseModel):
    prompt: str
    max_new_tokens: int = 128
    stream: bool = False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8002)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()

    def inputs(prompt: str) -> dict[str, torch.Tensor]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return dict(tok(text, return_tensors="pt", add_special_tokens=False))

    def run(prompt: str, n: int, streamer: TextIteratorStreamer | None = None) -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(
                **inputs(prompt),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
                streamer=streamer,
            )

    run("warm up", 2)
    app = FastAPI()

    @app.post("/v1/generate", response_model=None)
    def generate(req: Req) -> dict[str, object] | StreamingResponse:
        if not req.stream:
            enc = inputs(req.prompt)
            out = run(req.prompt, req.max_new_tokens)
            text = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            return {"output": text}
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        worker = threading.Thread(target=run, args=(req.prompt, req.max_new_tokens, streamer))
        worker.start()

        def events() -> Iterator[str]:
            for piece in streamer:
                if piece:
                    yield f"data: {json.dumps({'text': piece})}\n\n"
            worker.join()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
