"""xrl bench on Ray with GPUs (issue 40): each job's task asks Ray for the spec's ``gpus_per_job``
(``num_gpus``). Tested on a local Ray that declares one GPU on a CPU machine, the jobs computing
on ``device = "cpu"``: the tasks hold the GPU share they asked for, and the results are the
same files as in process."""

from __future__ import annotations

import json
import sys

import pytest
import ray
from test_bench import TINY, comparable, same_maps, write_spec

from xrl import cli
from xrl.bench import load_results, load_spec, run_bench, runner
from xrl.bench.runner import start_local_ray

GPU_SPEC = TINY.replace("gallery = 2\n", 'gallery = 2\ndevice = "cpu"\ngpus_per_job = 0.5\n')


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    """A local Ray of 2 CPUs that declares 1 GPU (none is there: Ray only counts it)."""
    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(2, num_gpus=1, object_store_memory=100 * 1024**2)
    yield
    ray.shutdown()


def _records_resources(job, model, blob, digest, device="cpu"):
    """The Ray task of a job, also recording what Ray assigned it (in the worker section of its
    result, which no comparison reads)."""
    output = runner._guarded(job, model, runner._local_copy(blob, digest), device)
    context = ray.get_runtime_context()
    output["result"]["worker"]["resources"] = context.get_assigned_resources()
    output["result"]["worker"]["device"] = device
    return output


def test_jobs_ask_ray_for_their_gpu_share_and_give_the_in_process_results(tmp_path, ray_with_a_gpu, monkeypatch):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    monkeypatch.setattr(runner, "_remote_job", _records_resources)
    path = write_spec(tmp_path, GPU_SPEC)
    assert cli.main(["bench", str(path), "--check"]) == 0
    spec = load_spec(path)
    assert spec.gpus() == 0.5
    there = run_bench(spec, tmp_path / "ray", ray="auto", progress=False)
    here = run_bench(write_spec(tmp_path, TINY, "plain.toml"), tmp_path / "in-process", progress=False)
    jobs = sorted((there / "jobs").rglob("*.json"))
    assert len(jobs) == 6
    for p in jobs:
        worker = json.loads(p.read_text())["worker"]
        assert worker["resources"] == {"CPU": 1.0, "GPU": 0.5}, (p, worker)  # num_gpus=gpus_per_job
        assert worker["device"] == "cpu"
    a, b = load_results(here), load_results(there)
    assert b["jobs"] == {"total": 6, "done": 6, "failed": 0, "missing": 0}
    assert comparable(a) == comparable(b)
    same_maps(here, there)
    assert a["spec"] == b["spec"]  # where the jobs ran is not part of what they computed


def test_num_gpus_follows_the_device_by_default(tmp_path, monkeypatch):
    """Without ``gpus_per_job``: 1 GPU per job on CUDA, none on the CPU (what ``.options`` gets)."""
    asked = []

    class Remote:
        def options(self, **options):
            asked.append(options)
            return self

    def fake_remote(**options):
        return lambda function: Remote()

    monkeypatch.setattr(ray, "remote", fake_remote)
    for device, want in (("cuda", 1), ("cpu", 0)):
        spec = load_spec(write_spec(tmp_path, TINY), device=device)
        list(runner._ray_tasks(ray, [], spec.device, spec.gpus()))
        assert asked[-1] == {"num_gpus": want}
