"""PyTorch → ExecuTorch ``.pte`` lowered to XNNPACK (fp32, fp16, or int8 with PT2E).

Programs take their image input channels-last (dim order ``[0, 2, 3, 1]``, recorded in the
manifest): XNNPACK computes in NHWC, and a program exported for NCHW-contiguous input starts
with a transpose (``Transpose (ND, X8)``: 0.12 ms of MobileNetV3-Small int8's 1.43 ms at 224,
1 thread; README, "Runtimes compared layer by layer"). Such a program reads an
NCHW-contiguous tensor without complaint and computes on scrambled pixels, so every caller
lays its input out through :func:`edgepipe.device.runtimes.executorch_inputs`.

What XNNPACK does not take runs on ExecuTorch's portable kernels, some of which refuse or
misread channels-last tensors. So channel splits are rewritten as slices XNNPACK takes
(:func:`delegate_friendly`), every program is run once before it is written (its values checked
where ops run outside the delegate), a program that fails is exported for NCHW input instead,
and one that fails that way too is refused in one line (:func:`trial_run`).
"""

from __future__ import annotations

import operator
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..device.inspect_artifact import pte_delegation
from ..errors import EdgepipeError
from .base import Converted, Converter, float_spec
from .forms import Forms, runtime_forms
from .half import half_module
from .quantize import float_ops, keep_in_float, op_name, quantization_record, quantize_pt2e
from .source import SourceModel


def graph_stats(lowered: object) -> dict[str, object]:
    """Delegate partitions and the ops XNNPACK left outside them (each one costs a copy)."""
    graph = lowered.exported_program().graph_module.graph  # type: ignore[attr-defined]
    delegates, outside = 0, Counter()
    for node in graph.nodes:
        if node.op != "call_function" or node.target.__name__ == "getitem":
            continue
        if "executorch_call_delegate" in str(node.target):
            delegates += 1
        else:
            outside[op_name(node.target)] += 1
    return {"delegate_partitions": delegates, "ops_outside_delegate": dict(outside)}


def fp16_leftovers(lowered: object) -> dict[str, int]:
    """The float16 ops of an fp16 program that XNNPACK did not take (they run on ExecuTorch's
    portable kernels, one at a time), by op name."""
    graph = lowered.exported_program().graph_module.graph  # type: ignore[attr-defined]
    left: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op != "call_function" or "executorch_call_delegate" in str(node.target) \
                or node.target.__name__ == "getitem":
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dtype == torch.float16:
            left[op_name(node.target)] += 1
    return dict(left)


def _dim_order(t: torch.Tensor) -> list[int] | None:
    """The order of ``t``'s dims in memory, None when it is the shape's own order."""
    order = sorted(range(t.ndim), key=lambda d: -t.stride(d))
    return None if order == list(range(t.ndim)) else order


def global_pools_as_means(program: torch.export.ExportedProgram) -> int:
    """Rewrite ``adaptive_avg_pool2d(x, 1)`` as ``mean(x, [-1, -2], keepdim)`` in place; the
    count rewritten. On a channels-last program the pooling decomposes into a mean and an
    ``as_strided_copy`` that XNNPACK does not take (MobileNetV3-Small: 11 partitions and 10
    copies outside them; as a mean: 1 partition). Done on the exported graph, after
    quantization: the quantizer annotates the pooling, the q/dq pair stays around the mean."""
    pool = torch.ops.aten.adaptive_avg_pool2d.default
    count = 0
    graph = program.graph_module.graph
    for node in graph.nodes:
        if node.op == "call_function" and node.target is pool \
                and list(node.args[1]) in ([1, 1], [1]):
            node.target = torch.ops.aten.mean.dim
            node.args = (node.args[0], [-1, -2], True)
            count += 1
    if count:
        program.graph_module.recompile()
    return count


# ops that cut a tensor into consecutive pieces along one dim (their outputs are read with
# getitem): torch.chunk, torch.split (sizes or one size), torch.tensor_split
_SPLITS = ("chunk", "split", "split_with_sizes", "tensor_split", "split_with_sizes_copy",
           "split_copy")


def _recompiled(graph_module: torch.fx.GraphModule, count: int) -> int:
    """A rewritten graph checked and its code made again (where ``count`` nodes changed)."""
    if count:
        graph_module.graph.lint()
        graph_module.recompile()
    return count


def splits_as_slices(graph_module: torch.fx.GraphModule) -> int:
    """Rewrite each split of a tensor into consecutive pieces (``chunk``, ``split``,
    ``tensor_split``) as one ``slice`` per piece, in place; the count rewritten.

    XNNPACK takes ``slice_copy`` but not ``split_with_sizes_copy``, which such splits lower
    to: the split stays outside the delegate as a portable kernel, and on a channels-last
    program that kernel refuses the dim orders it is given at run time ("method->execute()
    failed with error 0x12", pytorch/executorch#21829). ShuffleNetV2 (torchvision's
    ``shufflenet_v2_x0_5``: 13 ``chunk`` s, 15 partitions) becomes one partition. In an int8
    graph XNNPACK's quantizer makes a slice share its input's quantization, which the
    delegate needs to take it (a split is not annotated and leaves each piece requantized):
    run it before the quantizer annotates (``quantize_pt2e(rewrite=...)``) and on the
    exported program. The pieces' sizes are read from the split's own output metadata."""
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or op_name(node.target) not in _SPLITS:
            continue
        source = node.args[0]
        pieces = node.meta.get("val")
        value = getattr(source, "meta", {}).get("val")
        users = list(node.users)
        if (not isinstance(pieces, (list, tuple)) or value is None
                or not all(u.op == "call_function" and u.target is operator.getitem
                           for u in users)):
            continue
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        dim = int(dim) % value.ndim
        bounds, start = [], 0
        for piece in pieces:
            size = piece.shape[dim]
            if not isinstance(size, int):  # a symbolic size: the pieces are not known here
                break
            bounds.append((start, start + size))
            start += size
        else:
            for user in users:
                begin, end = bounds[user.args[1]]
                with graph.inserting_before(user):
                    piece = graph.call_function(torch.ops.aten.slice.Tensor,
                                                (source, dim, begin, end))
                piece.meta = dict(user.meta)
                user.replace_all_uses_with(piece)
                graph.erase_node(user)
            graph.erase_node(node)
            count += 1
    return _recompiled(graph_module, count)


def global_means_kept_dims(graph_module: torch.fx.GraphModule) -> int:
    """Rewrite ``mean(x, [2, 3])`` of a 4-D ``x`` (dims dropped: ShuffleNetV2's and many
    classifiers' global pool) as ``mean(x, [-1, -2], keepdim=True)`` then ``flatten(1)``, in
    place; the count rewritten. XNNPACK takes the mean only with its dims kept: otherwise it
    runs outside the delegate and splits the graph in two partitions."""
    mean = torch.ops.aten.mean.dim
    graph = graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not mean:
            continue
        x = node.args[0]
        value = getattr(x, "meta", {}).get("val")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if (value is None or value.ndim != 4 or keep or node.kwargs.get("dtype") is not None
                or sorted(int(d) % 4 for d in node.args[1]) != [2, 3]):
            continue
        with graph.inserting_before(node):
            pooled = graph.call_function(mean, (x, [-1, -2], True))
            pooled.meta = {**node.meta, "val": value.mean((-1, -2), keepdim=True)}
            flat = graph.call_function(torch.ops.aten.flatten.using_ints, (pooled, 1))
            flat.meta = dict(node.meta)
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
        count += 1
    return _recompiled(graph_module, count)


def delegate_friendly(graph_module: torch.fx.GraphModule) -> dict[str, int]:
    """The rewrites that keep ops inside XNNPACK (:func:`splits_as_slices`,
    :func:`global_means_kept_dims`), in place; what each changed."""
    done = {"splits_as_slices": splits_as_slices(graph_module),
            "global_means_kept_dims": global_means_kept_dims(graph_module)}
    return {k: v for k, v in done.items() if v}


class FailsAtRunTime(Exception):
    """The lowered program does not execute on the runtime: its first error line, and the
    ops the program runs outside the delegate (op name -> count)."""

    def __init__(self, message: str, outside: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.outside = outside or {}


def _laid_out(x: torch.Tensor, like: torch.Tensor) -> list[torch.Tensor]:
    """``x`` in the memory order of ``like`` (the example the program was exported with)."""
    return [x.clone(memory_format=torch.channels_last)
            if _dim_order(like) == [0, 2, 3, 1] else x.contiguous()]


def trial_run(buffer: bytes, example: torch.Tensor,
              reference: tuple[torch.nn.Module, bool] | None = None) -> None:
    """Execute the program once, its input laid out as exported; raises
    :class:`FailsAtRunTime`. A program can lower and serialize and still fail in a portable
    kernel outside the delegate that refuses the dim order it is given ("error 0x12": split,
    roll, cumsum, index_select, amax on channels-last tensors), or run and compute on
    scrambled values (flip along channels, measured: max|Δ| 0.19 on outputs of 0.5).
    ``reference``: (the PyTorch module the program was exported from, whether it is fp32):
    the output must then match it on a seeded random input (fp32: max|Δ| within 1e-3 of the
    output's scale; int8 against its q/dq graph, fp16: cosine ≥ 0.99)."""
    from executorch.runtime import Runtime

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(example.shape, generator=gen).to(example.dtype)
    try:
        program = Runtime.get().load_program(buffer)
        method = program.load_method("forward")
        got = method.execute(_laid_out(x, example))[0]
    except (RuntimeError, ValueError) as exc:
        raise FailsAtRunTime((str(exc).strip().splitlines() or [type(exc).__name__])[0]) \
            from None
    if reference is None:
        return
    module, fp32 = reference
    with torch.no_grad():
        want = module(x)
    got, want = got.float().flatten(), want.float().flatten()
    error = float((got - want).abs().max())
    cosine = float(torch.nn.functional.cosine_similarity(got, want, dim=0))
    scale = max(1.0, float(want.abs().max()))
    if (fp32 and error > 1e-3 * scale) or cosine < 0.99:
        raise FailsAtRunTime(f"it runs, but its output is not PyTorch's: max|Δ| {error:.3g}, "
                             f"cosine {cosine:.3f}")


def outside_cost(buffer: bytes, example: torch.Tensor, runs: int = 10) -> dict[str, Any]:
    """What the ops outside the delegate cost, measured here: the program run ``runs`` times
    with ETDump on (after 3 warm-up runs, the thread count of the process), the medians of
    its own kernels' events (:func:`edgepipe.etdump.kernel_events`) against the median whole
    run. ``ms``: their sum; ``ops``: per op, its instances summed."""
    from executorch.extension.pybindings import portable_lib

    from ..etdump import kernel_events

    module = portable_lib._load_for_executorch_from_buffer(buffer, enable_etdump=True,
                                                           debug_buffer_size=0)
    inputs = _laid_out(example, example)
    for _ in range(3):
        module.forward(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "outside.etdp"
        module = portable_lib._load_for_executorch_from_buffer(buffer, enable_etdump=True,
                                                               debug_buffer_size=0)
        for _ in range(runs):
            module.forward(inputs)
        module.write_etdump_result_to_file(str(dump))
        events, total = kernel_events(dump)
    ops: Counter[str] = Counter()
    for event in events:
        if not event.delegated:
            ops[event.op] += statistics.median(event.raw_ms)
    spent = sum(ops.values())
    return {"ms": round(spent, 4), "run_ms": round(total, 4),
            "share": round(spent / total, 4) if total else None,
            "ops_ms": {k: round(v, 4) for k, v in ops.most_common()},
            "measured": f"here, ETDump, median of {runs} runs"}


def _refusal(src: SourceModel, precision: str, failed: FailsAtRunTime,
             nchw: FailsAtRunTime | None) -> str:
    """One line: the program lowers but does not run, in either layout."""
    outside = {**failed.outside, **(nchw.outside if nchw else {})}
    ops = ", ".join(f"{n} {op}" for op, n in sorted(outside.items(), key=lambda kv: -kv[1]))
    return (f"the executorch {precision} program of {src.name} lowers but fails at run "
            f"time ({failed}" + (f"; exported for NCHW input too: {nchw}" if nchw else "")
            + ")" + (f" in an op outside the XNNPACK delegate ({ops})" if ops else "")
            + ": convert it --to tflite, or change the model so that it does not need "
            "those ops")


class ExecuTorchConverter(Converter):
    format = "executorch"
    suffix = ".pte"
    extra = "executorch"
    requires = ("executorch",)
    distributions = ("executorch", "torchao")
    dynamic_size = True  # XNNPACK takes a dynamic height/width at static speed (measured)

    def convert(self, src: SourceModel, precision: str, calibration: list[torch.Tensor],
                path: Path, debug_info: bool = True, keep_float: tuple[str, ...] = ()
                ) -> Converted:
        example = src.example_input()
        if example.ndim == 4 and example.shape[1] > 1:
            # one channel: NCHW and NHWC are the same bytes, and a program exported
            # channels-last from a 1-channel example fails in XNNPACK at run time (error 0x1)
            example = example.to(memory_format=torch.channels_last)
        try:
            return self._convert(src, precision, calibration, path, debug_info, keep_float,
                                 example)
        except FailsAtRunTime as exc:
            first = exc
            if _dim_order(example) is None:
                raise EdgepipeError(_refusal(src, precision, first, None)) from None
        # a portable kernel outside the delegate that refuses channels-last dim orders:
        # the same program exported for NCHW-contiguous input (a transpose at its start)
        try:
            converted = self._convert(src, precision, calibration, path, debug_info,
                                      keep_float, example.contiguous())
        except FailsAtRunTime as exc:
            raise EdgepipeError(_refusal(src, precision, first, exc)) from None
        failed = str(first)
        converted.graph["exported_nchw"] = (
            f"the channels-last program failed at run time ({failed}); exported for "
            "NCHW-contiguous input instead")
        return converted

    def _convert(self, src: SourceModel, precision: str, calibration: list[torch.Tensor],
                 path: Path, debug_info: bool, keep_float: tuple[str, ...],
                 example: torch.Tensor) -> Converted:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower

        quant, floats = None, None
        rewrites: dict[str, int] = {}

        def rewrite(graph_module: torch.fx.GraphModule) -> None:
            for key, n in delegate_friendly(graph_module).items():
                rewrites[key] = rewrites.get(key, 0) + n

        # XNNPACK runs h-swish natively in fp32 and inside int8 partitions: keep the op whole.
        # SiLU as sigmoid * x in int8: the quantizer then keeps the multiply int8
        # (EfficientNet-B0 int8 6.93 vs 8.65 ms with aten.silu: benchmarks/foreign_models.py)
        forms = Forms(decomposed_silu=precision == "int8")
        with runtime_forms(src.module, example, forms) as swapped:
            module = src.module
            if precision == "fp16":
                # the whole program in half, its input and output too (see .half)
                module, example = half_module(module), example.half()
                quant = {"weights": "fp16", "activations": "fp16",
                         "io": "float16 (the runner converts from and to float32)"}
            if precision == "int8":
                quantizer = XNNPACKQuantizer().set_global(
                    get_symmetric_quantization_config(is_per_channel=True))
                for name in keep_float:
                    keep_in_float(quantizer, name)
                module = quantize_pt2e(module, example, quantizer, calibration,
                                       rewrite=rewrite)
                floats = float_ops(module)
                quant = quantization_record(
                    "PT2E static, XNNPACKQuantizer symmetric", src, calibration, keep_float)
            program = torch.export.export(module, (example,),
                                          dynamic_shapes=src.dynamic_shapes())
        rewrite(program.graph_module)
        pools = global_pools_as_means(program)
        # the ETRecord lets the host name the ops of an ETDump profiled on the device; it
        # costs lowering time and ~10 MB, so latency-table units go without (debug_info)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              generate_etrecord=debug_info)
        stats: dict[str, Any] = {**graph_stats(lowered), "forms_swapped": swapped}
        if rewrites:
            stats["rewritten_for_xnnpack"] = rewrites
        if precision == "fp16":
            left = fp16_leftovers(lowered)
            if left:
                raise EdgepipeError(
                    f"executorch fp16: XNNPACK does not take {', '.join(sorted(left))} in "
                    f"float16 ({src.name}); these ops would run on portable kernels: convert "
                    "without --fp16, or --to tflite for fp16")
        if pools:
            stats["global_pools_as_mean"] = pools
        if floats is not None:
            stats["float_ops"] = floats
        program_et = lowered.to_executorch()
        buffer = program_et.buffer
        # a program whose ops all run in the delegate has no portable kernel to be fed a
        # layout it does not take: running it is enough; otherwise its values are checked
        check = ((module, precision == "fp32")
                 if stats["ops_outside_delegate"] and _dim_order(example) else None)
        try:
            trial_run(buffer, example, check)
        except FailsAtRunTime as exc:
            raise FailsAtRunTime(str(exc), stats["ops_outside_delegate"]) from None
        if stats["ops_outside_delegate"] and debug_info:
            stats["outside_cost"] = outside_cost(buffer, example)
        path.write_bytes(buffer)
        stats["delegation"] = pte_delegation(path).to_dict()
        companions = {}
        if debug_info:
            etrecord = path.with_name(path.stem + ".etrecord")
            program_et.get_etrecord().save(str(etrecord))
            companions["etrecord"] = etrecord.name
        dtype = "float16" if precision == "fp16" else "float32"
        return Converted(
            path=path, precision=precision,
            inputs=[float_spec("input", example.shape, dim_order=_dim_order(example),
                               dtype=dtype)],
            outputs=[float_spec("output", src.output_shape, dtype=dtype)],
            quantization=quant, graph=stats, companions=companions,
        )
