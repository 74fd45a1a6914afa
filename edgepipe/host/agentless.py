"""Devices driven without an agent: runners pushed over adb or ssh (host side).

A phone cannot run the agent (ai-edge-litert and executorch publish no Android wheels; Termux
cannot install manylinux ones), but it can run LiteRT's prebuilt ``benchmark_model``
(android_arm64, linux_aarch64) and a lean ExecuTorch runner built for it. A device added with
``--adb SERIAL --runner PATH…`` (or ``--ssh USER@HOST --runner PATH…``) is measured this way:
the artifact and the runners are pushed to a work folder on the device, run there with the
job's threads, warm-up and runs, their output read into the agent's result records
(:mod:`edgepipe.host.benchmark_model` for ``benchmark_model``; the lean runner's JSON as the
agent reads it), and the work folder removed when the session ends.

:class:`AgentlessClient` answers the calls :mod:`edgepipe.host.profiling` makes of an agent
(``info``, ``upload``, ``submit``, ``wait``, ``etdump``), so ``profile``, ``profile --compare``
and ``run`` work on such a device unchanged. What cannot be known this way is said, not
filled in: ``benchmark_model`` gives no per-run times (the median is null unless the build
prints one, p90/p99 always null), the device's clocks and temperatures are not read, and
latency-table batches need the agent.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..device.native_runner import (
    LIBRARIES,
    elf_machine,
    executorch_root,
    read_runner_output,
    runner_arguments,
)
from ..device.store import JobSpec, StoreError
from ..errors import EdgepipeError
from ..manifest import Manifest
from .benchmark_model import UnreadableOutput, latency_record, op_times, parse_output
from .client import checked_artifact

# a runner's runtime, by its file name
RUNNER_NAMES = {"benchmark_model": "litert", "et_runner": "executorch"}
DEFAULT_WORK = {"adb": "/data/local/tmp/edgepipe", "ssh": "/tmp/edgepipe"}
NOT_READ = ("not read: the device is driven without an agent (runners over {how}); its clocks, "
            "governors and temperatures are unknown")


def runner_runtime(path: Path) -> tuple[str, str | None]:
    """The runtime a runner program is for (by its name) and its architecture (from its ELF
    header; None for a script). Raises :class:`EdgepipeError` in one line for a runner that
    is missing, not executable, not a program or not named for a runtime."""
    if not path.exists():
        raise EdgepipeError(f"runner {path} does not exist")
    if not path.is_file():
        raise EdgepipeError(f"runner {path} is not a file (a folder?): give the program itself")
    if not os.access(path, os.X_OK):
        raise EdgepipeError(f"runner {path} is not executable (chmod +x it)")
    # TensorFlow publishes LiteRT's as android_aarch64_benchmark_model, linux_aarch64_...
    runtime = next((r for n, r in RUNNER_NAMES.items() if n in path.name), None)
    if runtime is None:
        raise EdgepipeError(f"runner {path.name}: cannot tell which runtime it runs; name it "
                            f"…benchmark_model… (LiteRT) or …et_runner… (ExecuTorch)")
    machine = elf_machine(path)
    if machine is None:
        with open(path, "rb") as f:
            if f.read(2) != b"#!":
                raise EdgepipeError(f"runner {path} is not a program (neither ELF nor a script)")
    return runtime, machine


class Transport:
    """A shell on the device, and files to and from it."""

    how: str = ""

    def run(self, command: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def push(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def pull(self, remote: str, local: Path) -> None:
        raise NotImplementedError

    def _checked(self, cmd: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise EdgepipeError(f"{what}: cannot start {cmd[0]} ({exc.strerror})") from None
        if done.returncode:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["?"]
            raise EdgepipeError(f"{what} failed ({self.how}): {last[0][:300]}")
        return done


class AdbTransport(Transport):
    def __init__(self, adb: str, serial: str) -> None:
        self.base, self.how = [adb, "-s", serial], f"adb {serial}"

    def run(self, command: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        # adb ≥ 1.0.36 returns the remote command's exit status (Android 7+)
        return subprocess.run([*self.base, "shell", command], capture_output=True, text=True,
                              timeout=timeout)

    def push(self, local: Path, remote: str) -> None:
        self._checked([*self.base, "push", str(local), remote], f"pushing {local.name}")

    def pull(self, remote: str, local: Path) -> None:
        self._checked([*self.base, "pull", remote, str(local)], f"pulling {Path(remote).name}")


class SshTransport(Transport):
    """Files go through the ssh channel itself (``cat``), so the device needs no sftp or scp
    server, only a shell."""

    def __init__(self, ssh: list[str], target: str) -> None:
        self.ssh, self.target, self.how = ssh, target, f"ssh {target}"

    def run(self, command: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh, command], capture_output=True, text=True,
                              timeout=timeout)

    def _stream(self, command: str, what: str, stdin: Any = None, stdout: Any = None) -> None:
        try:
            done = subprocess.run([*self.ssh, command], stdin=stdin, stdout=stdout,
                                  stderr=subprocess.PIPE)
        except OSError as exc:
            raise EdgepipeError(f"{what}: cannot start ssh ({exc.strerror})") from None
        if done.returncode:
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise EdgepipeError(f"{what} failed ({self.how}): {last[0][:300]}")

    def push(self, local: Path, remote: str) -> None:
        with open(local, "rb") as f:
            self._stream(f"cat > {_quote(remote)}", f"copying {local.name}", stdin=f)

    def pull(self, remote: str, local: Path) -> None:
        partial = local.with_name(f".{local.name}.partial")
        with open(partial, "wb") as f:
            self._stream(f"cat {_quote(remote)}", f"copying {Path(remote).name} back",
                         stdout=f)
        partial.replace(local)


def _quote(path: str) -> str:
    return shlex.quote(path)


class AgentlessClient:
    """An agent's calls, answered by running runners on the device (see the module's text).

    ``runners``: the runner programs on this host ({runtime: path}); ``work``: the device's
    work folder (created, then removed by :meth:`close`)."""

    def __init__(self, name: str, transport: Transport, runners: dict[str, Path],
                 work: str, cache: Path | None = None) -> None:
        self.name, self.transport, self.runners, self.work = name, transport, runners, work
        self.cache = cache
        self._local = Path(tempfile.mkdtemp(prefix="edgepipe-agentless-"))
        self._info: dict[str, Any] | None = None
        self._uploaded: dict[str, tuple[Path, Manifest]] = {}
        self._pushed: set[str] = set()
        self._jobs: dict[str, dict[str, Any]] = {}

    # -- the device ----------------------------------------------------------------------
    def _shell(self, command: str, what: str, timeout: float | None = None
               ) -> subprocess.CompletedProcess:
        try:
            return self.transport.run(command, timeout)
        except OSError as exc:
            raise EdgepipeError(f"{what}: cannot reach the device ({self.transport.how}: "
                                f"{exc.strerror})") from None
        except subprocess.TimeoutExpired:
            raise EdgepipeError(f"{what}: no answer within {timeout:.0f} s "
                                f"({self.transport.how})") from None

    def health(self) -> dict[str, Any]:
        self.info()
        return {"status": "ok"}

    def info(self) -> dict[str, Any]:
        """What the device says about itself through its shell (no fingerprint: a latency
        table needs the agent's identity)."""
        if self._info is not None:
            return self._info
        script = ("echo machine=$(uname -m); echo hostname=$(uname -n); "
                  "echo cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN); "
                  "echo model=$(getprop ro.product.model 2>/dev/null); "
                  "echo cpu=$(grep -m1 -i -E '^(model name|Hardware)' /proc/cpuinfo "
                  "| cut -d: -f2-)")
        done = self._shell(script, f"reading {self.name}", timeout=60)
        if done.returncode:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["?"]
            raise EdgepipeError(f"device {self.name} does not answer ({self.transport.how}): "
                                f"{last[0][:300]}")
        fields = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        machine = fields.get("machine", "").strip() or None
        cores = fields.get("cores", "").strip()
        self._info = {
            "hostname": fields.get("hostname", "").strip() or None, "machine": machine,
            "cpu_model": fields.get("cpu", "").strip() or fields.get("model", "").strip()
            or None,
            "cores": int(cores) if cores.isdigit() else None,
            "fingerprint": None, "identity_words": None,
            "runtimes": {r: f"{p.name} (runner, no agent)" for r, p in self.runners.items()},
            "agent": None, "driven_by": f"runners over {self.transport.how}, no agent"}
        for path in self.runners.values():
            arch = runner_runtime(path)[1]
            if arch is not None and machine is not None and arch != machine:
                raise EdgepipeError(f"runner {path} is built for {arch}; device {self.name} is "
                                    f"{machine}")
        return self._info

    def _push_once(self, local: Path, remote: str, executable: bool = False) -> str:
        if remote not in self._pushed:
            self.transport.push(local, remote)
            if executable:
                self._shell(f"chmod 755 {_quote(remote)}", f"chmod {Path(remote).name}")
            self._pushed.add(remote)
        return remote

    def _prepare(self) -> None:
        if "." not in self._pushed:
            done = self._shell(f"mkdir -p {_quote(self.work)}/bin {_quote(self.work)}/lib",
                               f"creating the work folder {self.work}", timeout=60)
            if done.returncode:
                raise EdgepipeError(f"cannot create the work folder {self.work} on "
                                    f"{self.name}: {done.stderr.strip()[:300]}")
            self._pushed.add(".")

    def close(self) -> None:
        """Remove the work folder on the device and the local one."""
        if "." in self._pushed:
            self._shell(f"rm -rf {_quote(self.work)}", f"cleaning {self.work}", timeout=60)
            self._pushed.clear()
        shutil.rmtree(self._local, ignore_errors=True)

    # -- the agent's calls ---------------------------------------------------------------
    def artifacts(self) -> list[dict[str, Any]]:
        return []

    def upload(self, artifact: Path, check_present: bool = True) -> dict[str, Any]:
        """Checked here, pushed when a job needs it (a job for a format the device has no
        runner for is refused at :meth:`submit`)."""
        artifact = Path(artifact)
        manifest, sha = checked_artifact(artifact)
        self._uploaded[sha] = (artifact, manifest)
        return {"sha256": sha, "name": artifact.name, "size": artifact.stat().st_size}

    def delete(self, sha: str) -> dict[str, Any]:
        self._uploaded.pop(sha, None)
        return {"deleted": sha}

    def submit(self, **spec: Any) -> dict[str, Any]:
        """Run the job now (one at a time: the host waits for it); the record is kept for
        :meth:`job` and :meth:`wait`."""
        if spec.get("kind", "benchmark") != "benchmark":
            raise EdgepipeError(f"device {self.name} is driven without an agent: its runners "
                                f"time models; {spec['kind']} jobs need the agent")
        if spec.get("items"):
            raise EdgepipeError(f"device {self.name} is driven without an agent: latency-table "
                                "batches need the agent (`edgepipe agent serve` on the device)")
        if spec.get("affinity"):
            raise EdgepipeError(f"device {self.name} is driven without an agent: --affinity "
                                "is not supported by the runners here")
        if spec.get("runner") == "python":
            raise EdgepipeError(f"device {self.name} has no Python: ask for runner native or "
                                "auto")
        sha = spec.get("artifact")
        if sha not in self._uploaded:
            raise EdgepipeError(f"artifact {str(sha)[:12]} was not uploaded in this session")
        path, manifest = self._uploaded[sha]
        runtime = {".tflite": "litert", ".pte": "executorch"}.get(path.suffix)
        if runtime not in self.runners:
            have = ", ".join(f"{p.name} ({r})" for r, p in self.runners.items())
            raise EdgepipeError(f"device {self.name} has no runner for {path.name} (its "
                                f"runners: {have}): add one with `edgepipe device add "
                                f"{self.name} … --runner PATH`")
        self.info()  # reachable, and the runners are for its architecture
        try:  # the agent's own validation and defaults
            spec = asdict(JobSpec.from_dict(spec))
        except StoreError as exc:
            raise EdgepipeError(str(exc)) from None
        job_id = uuid.uuid4().hex[:12]
        job: dict[str, Any] = {"id": job_id, "state": "running", "spec": spec,
                               "result": None, "error": None, "progress": {}}
        self._jobs[job_id] = job
        folder = self._local / job_id
        folder.mkdir()
        try:
            self._prepare()
            if path.suffix == ".tflite":
                job["result"] = self._litert(spec, path, sha, manifest)
            else:
                job["result"] = self._executorch(spec, path, sha, manifest, folder)
            job["state"] = "done"
        except EdgepipeError as exc:
            job["state"], job["error"] = "failed", str(exc)
        return {"id": job_id, "state": job["state"]}

    def job(self, job_id: str) -> dict[str, Any]:
        if job_id not in self._jobs:
            raise EdgepipeError(f"no job {job_id} in this session")
        return self._jobs[job_id]

    def wait(self, job_id: str, on_progress: Any = None, **_: Any) -> dict[str, Any]:
        job = self.job(job_id)
        if on_progress:
            on_progress(job)
        if job["state"] == "failed":
            raise EdgepipeError(f"job {job_id} failed on the device: {job['error']}")
        return job

    def etdump(self, job_id: str) -> bytes:
        path = self._local / job_id / "etdump.etdp"
        if not path.is_file():
            raise EdgepipeError(f"job {job_id} wrote no ETDump")
        return path.read_bytes()

    # -- runners -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"start": None, "end": None, "flags": [], "readable": {},
                "not_read": NOT_READ.format(how=self.transport.how)}

    def _run_tool(self, command: str, what: str) -> str:
        done = self._shell(command, what)
        text = done.stdout + "\n" + done.stderr
        if done.returncode:
            last = " | ".join(text.strip().splitlines()[-3:])
            raise EdgepipeError(f"{what} failed on {self.name} (exit {done.returncode}): "
                                f"{last[:400] or 'no output'}")
        return text

    def _litert(self, spec: dict[str, Any], path: Path, sha: str,
                manifest: Manifest) -> dict[str, Any]:
        runner = self.runners["litert"]
        tool = self._push_once(runner, f"{self.work}/bin/{runner.name}", executable=True)
        graph = self._push_once(path, f"{self.work}/{sha[:16]}{path.suffix}")
        base = (f"{_quote(tool)} --graph={_quote(graph)} --num_threads={spec['threads']} "
                f"--warmup_min_secs=0")
        first = manifest.inputs[0] if manifest.inputs else None
        given: dict[str, Any] = {}
        if first is not None and first.shape_signature and -1 in first.shape_signature:
            # a free input size: benchmark_model would run the file's placeholder shape
            base += (f" --input_layer={_quote(first.name)} --input_layer_shape="
                     + ",".join(str(d) for d in first.shape))
            given = {"shape": list(first.shape)}
        text = self._run_tool(f"{base} --warmup_runs={spec['warmup']} "
                              f"--num_runs={spec['runs']} --min_secs={spec['min_seconds']}",
                              f"{runner.name} on {path.name}")
        try:
            out = parse_output(text)
        except UnreadableOutput as exc:
            last = " | ".join(text.strip().splitlines()[-3:])
            raise EdgepipeError(f"{runner.name}'s output cannot be read ({exc}): "
                                f"{last[:400] or 'no output'}") from None
        latency = latency_record(out.runs)
        result: dict[str, Any] = {
            "runtime": "litert",
            "measured_by": {"path": "benchmark_model", "runner": runner.name,
                            "words": f"LiteRT {runner.name} over {self.transport.how} "
                                     "(no agent)"},
            "threads": spec["threads"], "affinity": None,
            "input": {**given, "data": "benchmark_model's own random input"},
            "latency": latency,
            "load_ms": out.init_ms,
            "memory": {"rss_before_load_mb": None, "peak_rss_mb": out.memory_mb.get("peak"),
                       "footprint_delta_mb": out.memory_mb.get("overall_delta"),
                       "process": runner.name},
            "per_op": {"available": False, "reason": "per-op not available because it was "
                                                     "not asked for (profile=false)"},
            "device_state": self._state(),
        }
        if spec["profile"]:
            result["per_op"] = self._litert_ops(spec, base, runner.name, path.name,
                                                latency["mean_ms"])
        return result

    def _litert_ops(self, spec: dict[str, Any], base: str, tool: str, name: str,
                    unprofiled_mean_ms: float) -> dict[str, Any]:
        text = self._run_tool(f"{base} --warmup_runs=3 --num_runs={spec['profile_runs']} "
                              f"--min_secs=0 --enable_op_profiling=true",
                              f"{tool} --enable_op_profiling on {name}")
        try:
            out = parse_output(text)
            if out.ops is None:
                raise UnreadableOutput("it printed no 'Operator-wise Profiling Info' section")
            runs = int(out.runs["count"])
            run_ms = out.runs["avg"] / 1000
            times, convention = op_times(out.ops, runs, run_ms)
        except UnreadableOutput as exc:
            return {"available": False,
                    "reason": f"per-op not available because {tool}'s op profile cannot be "
                              f"read: {exc}"}
        return {"available": True, "source": "benchmark_model", "tool": tool,
                "runs": runs, "run_ms": run_ms, "times_called": convention,
                "ops": [{**asdict(op), "ms_per_run": t} for op, t in zip(out.ops, times,
                                                                         strict=True)],
                # benchmark_model prints means only: the overhead is a ratio of means
                "profiled_ms": [run_ms], "unprofiled_ms": [unprofiled_mean_ms],
                "stat": "mean"}

    def _executorch(self, spec: dict[str, Any], path: Path, sha: str, manifest: Manifest,
                    folder: Path) -> dict[str, Any]:
        from ..device.worker import example_input, native_result

        runner = self.runners["executorch"]
        self._push_libraries(runner)
        tool = self._push_once(runner, f"{self.work}/bin/{runner.name}", executable=True)
        program = self._push_once(path, f"{self.work}/{sha[:16]}{path.suffix}")
        x = example_input(manifest)
        local_x = folder / "x.f32"
        np.ascontiguousarray(x, dtype=np.float32).tofile(local_x)
        remote_x = f"{self.work}/{folder.name}.f32"
        self.transport.push(local_x, remote_x)
        etdump = f"{self.work}/{folder.name}.etdp" if spec["profile"] else None
        args = runner_arguments(program, remote_x, x.shape, threads=spec["threads"],
                                warmup=spec["warmup"], runs=spec["runs"],
                                min_seconds=spec["min_seconds"], etdump=etdump,
                                profiled_runs=spec["profile_runs"])
        command = (f"LD_LIBRARY_PATH={_quote(self.work + '/lib')} {_quote(tool)} "
                   + " ".join(_quote(a) for a in args))
        done = self._shell(command, f"{runner.name} on {path.name}")
        out = read_runner_output(done.returncode, done.stdout, done.stderr, path.name)
        if etdump is not None:
            self.transport.pull(etdump, folder / "etdump.etdp")
        result = native_result(spec, out, x, runner.name,
                               "etdump.etdp" if etdump else None,
                               where=f" over {self.transport.how} (no agent)")
        result["affinity"] = None
        result["device_state"] = self._state()
        return result

    def _push_libraries(self, runner: Path) -> None:
        """The executorch libraries the runner links, for its architecture: this host's
        installed wheel when the architectures match, else that architecture's wheel
        (downloaded once, as ``device build-runner`` does)."""
        arch = runner_runtime(runner)[1] or platform.machine()
        if arch == platform.machine():
            root = executorch_root()
            if root is None:
                raise EdgepipeError("the lean runner needs executorch's libraries, taken from "
                                    "the executorch wheel here: pip install executorch")
        else:
            from ..device.native_runner import cache_folder, executorch_version
            from .runner_build import wheel_runtime

            root = wheel_runtime(arch, executorch_version(),
                                 self.cache or cache_folder().parent)
        for name in LIBRARIES:
            lib = root / "lib" / f"lib{name}.so"
            if not lib.is_file():
                raise EdgepipeError(f"{lib} is missing: the runner cannot load on the device")
            self._push_once(lib, f"{self.work}/lib/{lib.name}")

