"""``torch.compile`` for the detector's dense part: backbone + FPN and the RPN head
(``model.compile=true``).

These run on the padded batch tensor, whose shape is fixed when every image has the
configured square size (cxrdet's prepared PNGs), so they compile once (``dynamic=False``);
what follows them (proposal filtering, sampling, the box head on a varying number of
proposals) stays eager. ``nn.Module.compile`` compiles in place, so the state-dict keys do not
change. Compiling costs a minute or more at the first step; on the GPU it pays only where the
GPU check shows it does (``benchmarks/gpu_check.sh``: compiled and eager images/s).
"""

from __future__ import annotations

from torch import nn

BACKENDS = ("inductor", "aot_eager", "eager")  # aot_eager: graph capture without code generation


def compile_dense_part(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile ``model``'s backbone (+ FPN) and RPN head in place; returns ``model``."""
    if backend not in BACKENDS:
        raise ValueError(
            f"model.compile_backend={backend!r}: expected one of {', '.join(BACKENDS)}"
        )
    model.backbone.compile(dynamic=False, backend=backend)
    model.rpn.head.compile(dynamic=False, backend=backend)
    return model
