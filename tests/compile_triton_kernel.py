"""Compile the ST-Layout Triton kernel for a GPU target on a machine without one (run by
test_attention.py in a subprocess: Triton's interpreter, which the other tests use, patches the
compiler's language in-process). Prints one JSON line per tile config: {"config", "shared"}.

    python tests/compile_triton_kernel.py ARCH DTYPE HEAD_DIM [HEAD_DIM ...]    e.g. 90 fp16 40 80 160
"""

import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from videograin.method import triton_layout

arch, dtype, *head_dims = sys.argv[1:]
kernel = triton_layout._layout_attention_kernel
pointers = dict(Q=dtype, K=dtype, V=dtype, OUT=dtype, Q_BITS="i64", K_BITS="i64", LAM="fp32")
signature = {
    name: "*" + pointers[name] if name in pointers
    else "fp32" if name == "qk_scale" else "constexpr" if name.isupper() else "i32"
    for name in kernel.arg_names
}
for head_dim in map(int, head_dims):
    d_pad = max(16, triton.next_power_of_2(head_dim))
    configs = triton_layout._prune(triton_layout._configs(), {}, D_PAD=d_pad)
    # every tile config without a key tail (SD's token counts), the first one with a tail too
    for config, even_k in [(c, True) for c in configs] + [(configs[0], False)]:
        constants = dict(HEAD_DIM=head_dim, D_PAD=d_pad, PRECISION="ieee" if dtype == "fp32" else "tf32",
                         EVEN_K=even_k, **config.kwargs)
        indexed = {(kernel.arg_names.index(name),): value for name, value in constants.items()}
        source = ASTSource(kernel, signature, constexprs=indexed)
        compiled = triton.compile(source, target=GPUTarget("cuda", int(arch), 32),
                                  options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
        described = {"HEAD_DIM": head_dim, "EVEN_K": even_k, **config.kwargs,
                     "num_warps": config.num_warps, "num_stages": config.num_stages}
        print(json.dumps({"config": described, "shared": compiled.metadata.shared}))
