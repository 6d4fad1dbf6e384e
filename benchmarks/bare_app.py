"""The baseline of benchmarks/poll_throughput.py: a FastAPI endpoint with nothing of ours in it,
served by uvicorn exactly as `rollout api` serves the real one (same loop, parser and keep-alive;
no access log, which the real poll should not need either).

    .venv/bin/python -m benchmarks.bare_app --port 8001
"""

import argparse

import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.post("/api/updates/next")
async def next_job() -> dict[str, None]:
    return {"job": None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, timeout_keep_alive=30)


if __name__ == "__main__":
    main()
