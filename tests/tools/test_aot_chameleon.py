"""The Chameleon-7B train step (configs/chameleon.py:7b) lowers for a TPU slice that libtpu describes.

Lowering only (tracing the real step with its shardings, no compile); the compiles themselves, on
v5p and v5e slices, are experiments/pod_fit.py's rows.
"""

from research import config as config_lib
from research.tools import aot


def test_chameleon_7b_train_step_lowers_for_v5p_8():
    config = config_lib.load("configs/chameleon.py:7b", ["mesh.data=1", "mesh.fsdp=4", "train.batch_size=4"])
    lowered = aot.lower_train_step(config, aot.slice_devices(aot.parse_slice("v5p-8")))
    program = lowered.as_text()
    assert "tensor<65536x4096xf32>" in program  # the embedding and output head over the 65,536 ids
    assert "tensor<32x32x128xf32>" in program  # QK-Norm gains and biases: 32 layers × 32 heads × head_dim 128
    assert len(lowered.out_info[0].params["layers"]["attention"]["q_norm"]) == 2  # scale and bias
