"""Peak memory of one configuration (model, length, mode), measured in a fresh Python process.

In-process numbers are wrong for torch: ru_maxrss never goes down, tracemalloc does not see
torch's allocations, and a parent's earlier peaks leak into a child's ru_maxrss across exec. So
the child builds the model and inputs, runs the step once (one-time allocations such as kernel
caches and parameter gradients' first touch), frees the gradients, resets its high-water mark
(/proc/self/clear_refs, Linux), runs the step again and reports VmHWM minus the RSS it had just
before. Large allocations are forced to mmap so that freed tensors leave RSS and the baseline is
honest (glibc otherwise raises its mmap threshold after the first big free and keeps the memory).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

_MARK = "TFM_BENCH_PEAK"
_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


class MemoryUnavailable(Exception):
    pass


def peak_bytes(spec, length: int, mode: str, timeout: float = 600) -> int:
    """Peak RSS above the built model and inputs, in bytes, from a fresh child process."""
    request = json.dumps({"spec": spec.to_json(), "length": length, "mode": mode})
    done = subprocess.run([sys.executable, "-m", "tf_migrate.bench.memory", request], check=False,
                          capture_output=True, text=True, env=os.environ | _ENV, timeout=timeout)
    found = [line.split()[1] for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not found:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MemoryUnavailable(f"memory child failed (exit {done.returncode}): {tail}")
    return int(found[-1])


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS


def _child(request: dict) -> int:
    from tf_migrate.bench.setup import ModelSpec, load, make_inputs, step

    spec = ModelSpec(**request["spec"])
    model, module = load(spec)
    args = make_inputs(spec, model, module, request["length"])
    step(model, args, request["mode"])
    model.zero_grad(set_to_none=True)
    gc.collect()
    base = _status("VmRSS")
    _reset_peak()
    step(model, args, request["mode"])
    return max(0, _status("VmHWM") - base)


if __name__ == "__main__":
    print(_MARK, _child(json.loads(sys.argv[1])), flush=True)
