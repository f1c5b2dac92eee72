"""onnxruntime: which ONNX form of group norm and batch norm runs fastest (csub.interop.to_onnx).

Each form is one small graph at a cPreResNet20 norm shape, timed in its own session with
one thread; figures are medians, with each form's time over the fastest one's.

  python benchmarks/bench_onnx_norms.py
"""
import os
import platform
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

rng = np.random.default_rng(0)


def graph(nodes, inits, C, H, opset):
    """Serialised model y = nodes(x), x and y (N, C, H, H)."""
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", C, H, H]) for n in ("x", "y")]
    g = helper.make_graph(nodes, "g", io[:1], io[1:], [nh.from_array(v, k) for k, v in inits.items()])
    ops = [helper.make_opsetid("", opset)]
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = helper.find_min_ir_version_for(ops)
    onnx.checker.check_model(m)
    return m.SerializeToString()


def gn_forms(C, H, G):
    gam = rng.normal(1, .2, C).astype(np.float32)
    bet = rng.normal(0, .2, C).astype(np.float32)
    shapes = {"s1": np.array([0, G, -1], np.int64), "s2": np.array([0, C, H, H], np.int64),
              "g": gam.reshape(C, 1, 1), "b": bet.reshape(C, 1, 1)}
    out = {}
    if G == C:
        out["InstanceNormalization"] = graph(
            [helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"], epsilon=1e-5)],
            {"g": gam, "b": bet}, C, H, 17)
    out["Reshape+IN+Reshape+Mul+Add"] = graph([
        helper.make_node("Reshape", ["x", "s1"], ["r"]),
        helper.make_node("InstanceNormalization", ["r", "one", "zero"], ["n"], epsilon=1e-5),
        helper.make_node("Reshape", ["n", "s2"], ["r2"]),
        helper.make_node("Mul", ["r2", "g"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        dict(shapes, one=np.ones(G, np.float32), zero=np.zeros(G, np.float32)), C, H, 17)
    out["GroupNormalization-21"] = graph(
        [helper.make_node("GroupNormalization", ["x", "g", "b"], ["y"], epsilon=1e-5, num_groups=G)],
        {"g": gam, "b": bet}, C, H, 21)
    out["ReduceMean decomposition"] = graph([
        helper.make_node("Reshape", ["x", "s1"], ["r"]),
        helper.make_node("ReduceMean", ["r", "ax"], ["mu"]), helper.make_node("Sub", ["r", "mu"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]), helper.make_node("ReduceMean", ["d2", "ax"], ["var"]),
        helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["nrm"]), helper.make_node("Reshape", ["nrm", "s2"], ["r2"]),
        helper.make_node("Mul", ["r2", "g"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        dict(shapes, ax=np.array([2], np.int64), eps=np.array(1e-5, np.float32)), C, H, 18)
    return out


def bn_forms(C, H):
    gam = rng.normal(1, .2, C).astype(np.float32)
    bet = rng.normal(0, .2, C).astype(np.float32)
    mean = rng.normal(0, .1, C).astype(np.float32)
    var = rng.uniform(.5, 2, C).astype(np.float32)
    sc = (gam / np.sqrt(var + 1e-5)).astype(np.float32)
    sh = (bet - mean * sc).astype(np.float32)
    return {"BatchNormalization": graph(
                [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-5)],
                {"g": gam, "b": bet, "m": mean, "v": var}, C, H, 17),
            "Mul+Add": graph([helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "h"], ["y"])],
                             {"s": sc.reshape(C, 1, 1), "h": sh.reshape(C, 1, 1)}, C, H, 17)}


def median_ms(blob, x, reps):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        s.run(None, {"x": x})
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        s.run(None, {"x": x})
        t.append(time.perf_counter() - t0)
    return float(np.median(t)) * 1e3


def report(label, forms, x, reps):
    res = {k: median_ms(b, x, reps) for k, b in forms.items()}
    best = min(res.values())
    print(f"{label}: " + "; ".join(f"{k} {v:.3f} ms ({v / best:.2f}x)" for k, v in res.items()))


def main():
    print(f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, one thread")
    for N in (1, 64):
        reps = 41 if N == 1 else 11
        for C, H, G in ((64, 32, 64), (64, 32, 32), (256, 8, 32)):
            report(f"group norm N={N} C={C} H=W={H} groups={G}", gn_forms(C, H, G),
                   rng.normal(0, 1, (N, C, H, H)).astype(np.float32), reps)
        for C, H in ((64, 32), (256, 8)):
            report(f"batch norm N={N} C={C} H=W={H}", bn_forms(C, H),
                   rng.normal(0, 1, (N, C, H, H)).astype(np.float32), reps)


if __name__ == "__main__":
    main()
