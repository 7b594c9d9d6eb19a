"""The floor of the load benchmark: a trivial Ray Serve app, the same HTTP ingress and one replica, no work.

    python benchmarks/echo_app.py --port 8001 [--ingress haproxy|proxy]

`--ingress` as `serve.http_ingress` (`serving.http_ingress`): HAProxy straight to the replica's own
port (the default, as for `recsys serve`), or Serve's HTTP proxy actor.

Answers `POST /recommend` with the request's user id and `GET /healthz` with ok, until interrupted.
"""

# No postponed annotations here: FastAPI must read the `Body` annotation through `serve.ingress`, which
# it cannot resolve from a string.
import argparse
import os
import signal
import time
from typing import Annotated, Any, get_args

import ray
from fastapi import Body, FastAPI
from ray import serve

from recsys.config import HttpIngress
from serving.http_ingress import ingress_environment

api = FastAPI()


@serve.deployment(max_ongoing_requests=100)
@serve.ingress(api)
class Echo:
    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/recommend")
    def recommend(self, body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        return {"user_id": body.get("user_id"), "items": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ingress", choices=get_args(HttpIngress), default="haproxy")
    args = parser.parse_args()
    os.environ.update(ingress_environment(args.ingress))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(Echo.bind(), name="echo", route_prefix="/", blocking=False)  # type: ignore[attr-defined]
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        time.sleep(0.2)
    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()


if __name__ == "__main__":
    main()
