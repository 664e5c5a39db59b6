"""The demo upstream: a small backend of the kind the gateway is deployed in front of.

Two families of endpoints, matching the example `rules.yaml`:

Compute-like (an encrypted-compute / GPU job API, weighed per op):

    POST /api/v1/ops/{op}      → 200 {"op", "result", "job_id"}   unknown op → 404
    GET  /api/v1/jobs/{id}     → 200 {"job_id", "op", "status", "result"}  (free read)
    GET  /api/v1/status        → 200 {"status", "ops", "jobs"}           (free read)

OpenAI-like (an inference API, metered in tokens and settled from `usage`), see
`gateway.demo.chat`:

    GET  /v1/models
    POST /v1/chat/completions  (JSON, or SSE with `"stream": true`)

plus `GET /healthz`. Everything is deterministic so tests can assert exact values, and
nothing here knows about the gateway: it is a stand-in for somebody else's server.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.demo.chat import chat_routes
from gateway.demo.responses import error_response, json_response, read_json_object

Vector = list[float]
# An op takes the request's operands and returns its result (a vector, or text for
# the inference-as-a-job ops).
Op = Callable[[Vector, Vector, dict[str, Any]], Vector | str]

DEFAULT_A: Vector = [1.0, 2.0, 3.0, 4.0]
DEFAULT_B: Vector = [1.0, 1.0, 1.0, 1.0]
MAX_JOBS = 10_000  # remembered jobs; the oldest are forgotten so a long demo cannot grow


def _rotate(a: Vector, steps: int) -> Vector:
    if not a:
        return a
    k = steps % len(a)
    return a[k:] + a[:k]


def _poly_eval(a: Vector, coeffs: Vector) -> Vector:
    # Horner's rule, highest coefficient last as in numpy.polynomial: c0 + c1 x + c2 x².
    out = []
    for x in a:
        acc = 0.0
        for c in reversed(coeffs):
            acc = acc * x + c
        out.append(acc)
    return out


def _infer(model: str) -> Op:
    def run(a: Vector, b: Vector, params: dict[str, Any]) -> str:
        return f"{model}: {len(a)} inputs processed"

    return run


# The ops of a CKKS-style homomorphic-encryption API, computed in the clear: the point
# is that each has a distinct, checkable answer, not the cryptography.
OPS: dict[str, Op] = {
    "add": lambda a, b, p: [x + y for x, y in zip(a, b, strict=False)],
    "add-plain": lambda a, b, p: [x + y for x, y in zip(a, b, strict=False)],
    "negate": lambda a, b, p: [-x for x in a],
    "rescale": lambda a, b, p: [x / float(p.get("scale", 2.0)) for x in a],
    "multiply": lambda a, b, p: [x * y for x, y in zip(a, b, strict=False)],
    "multiply-plain": lambda a, b, p: [x * y for x, y in zip(a, b, strict=False)],
    "rotate": lambda a, b, p: _rotate(a, int(p.get("steps", 1))),
    "key_switch": lambda a, b, p: list(a),  # same plaintext under another key
    "poly-eval": lambda a, b, p: _poly_eval(a, [float(c) for c in p.get("coeffs", [0, 1, 1])]),
    "matmul": lambda a, b, p: [sum(x * y for x, y in zip(a, b, strict=False))],
    "bootstrap": lambda a, b, p: list(a),  # refreshes noise; the values are unchanged
    "infer_7b": _infer("demo-7b"),
    "infer_70b": _infer("demo-70b"),
}


def _vector(data: dict[str, Any], name: str, default: Vector) -> Vector:
    value = data.get(name, default)
    if not isinstance(value, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise ValueError(f"{name!r} must be a list of numbers")
    return [float(x) for x in value]


class JobLog:
    """The most recent jobs by id, so `GET /api/v1/jobs/{id}` can answer for them."""

    def __init__(self, capacity: int = MAX_JOBS) -> None:
        self._jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._ids = itertools.count(1)
        self._capacity = capacity

    def add(self, op: str, result: Vector | str) -> str:
        job_id = f"job_{next(self._ids):08d}"
        self._jobs[job_id] = {"job_id": job_id, "op": op, "status": "done", "result": result}
        if len(self._jobs) > self._capacity:
            self._jobs.popitem(last=False)
        return job_id

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)


def _compute_routes(jobs: JobLog) -> list[Route]:
    async def run_op(request: Request) -> Response:
        op_name: str = request.path_params["op"]
        op = OPS.get(op_name)
        if op is None:
            return error_response(404, "unknown_op",
                                  f"unknown op {op_name!r}; known: {', '.join(OPS)}")
        data = await read_json_object(request)
        if isinstance(data, Response):
            return data
        try:
            result = op(_vector(data, "a", DEFAULT_A), _vector(data, "b", DEFAULT_B), data)
        except (TypeError, ValueError) as exc:
            return error_response(400, "invalid_operands", str(exc))
        return json_response({"op": op_name, "result": result,
                              "job_id": jobs.add(op_name, result)})

    async def get_job(request: Request) -> Response:
        job = jobs.get(request.path_params["id"])
        if job is None:
            return error_response(404, "unknown_job", "no such job")
        return json_response(job)

    async def status(request: Request) -> Response:
        return json_response({"status": "ok", "ops": list(OPS), "jobs": len(jobs)})

    return [
        Route("/api/v1/ops/{op}", run_op, methods=["POST"]),
        Route("/api/v1/jobs/{id}", get_job, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
    ]


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


def build_demo_upstream() -> Starlette:
    """A fresh demo upstream app (its own job log), ready for uvicorn or `ASGITransport`."""
    return Starlette(routes=[
        *_compute_routes(JobLog()),
        *chat_routes(),
        Route("/healthz", healthz, methods=["GET"]),
    ])
