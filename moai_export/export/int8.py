"""int8 quantization of an exported fp32 ONNX graph: the ways onnxruntime can do it, with the
knobs `moai-export onnx --int8-method` and bench/int8_study.py choose between.

Only the MatMuls whose second input is a weight (an initializer) are quantized: the attention
MatMuls multiply two activations, and softmax probabilities of a 1024-token document (~1e-3 each)
would round to zero in a per-tensor uint8 grid. The token embedding is a Gather and stays fp32.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

# What `--int8-method` offers, the default first. Figures from bench/int8_study.py against the fp32
# PEFT reference, passages of autorag-ko: min cosine in the 513-1024 token bucket, docs/s vs fp32
# ONNX. Random-weight examples lack the outlier activations of trained models, so the default is
# the scheme that also held where dynamic did not (tiny example, MiniLM).
INT8_METHODS = {
    "weight-only": "int8 weight blocks of 32, int8 activations per block (MatMulNBits); holds the gate on long "
                   "documents: min cosine 0.9995 at 1.85x fp32 docs/s (full-size shape), >= 0.9990 over all 720 "
                   "passages of the tiny example",
    "dynamic": "per-channel int8 weights, uint8 activations with one scale per tensor (onnxruntime dynamic "
               "quantization); faster (2.80x fp32, min cosine 0.9969 on the full-size shape) but fell to 0.895 "
               "on long passages of the tiny example and 0.975 on MiniLM: short texts only, gated on your data",
}
DEFAULT_INT8_METHOD = next(iter(INT8_METHODS))


def quantize_int8(fp32: Path, dst: Path, method: str, *, large: bool = False) -> None:
    """Write the int8 graph of `method` (one of INT8_METHODS) for the fp32 graph `fp32`."""
    if method == "dynamic":
        quantize_dynamic_matmuls(fp32, dst, large=large)
    elif method == "weight-only":
        quantize_weight_only(fp32, dst, large=large)
    else:
        raise ValueError(f"unknown int8 method {method!r}")


def weight_matmuls(model) -> list:
    """The MatMul nodes of `model` (an onnx.ModelProto) that multiply by a weight."""
    weights = {t.name for t in model.graph.initializer}
    return [node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def quantize_dynamic_matmuls(fp32: Path, dst: Path, *, per_channel: bool = True, keep_fp32: Iterable[str] = (),
                             large: bool = False) -> None:
    """Dynamic int8: int8 weights (symmetric, per output channel or per tensor) and uint8
    activations whose scale onnxruntime computes per tensor, per call. `keep_fp32` names
    MatMul nodes left in float32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_quantizer():
        quantize_dynamic(
            str(fp32), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
            op_types_to_quantize=["MatMul"], nodes_to_exclude=list(keep_fp32), use_external_data_format=large,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )


def quantize_weight_only(fp32: Path, dst: Path, *, bits: int = 8, block_size: int = 32, large: bool = False) -> None:
    """MatMulNBits: int8 weights in blocks of `block_size` along the reduction axis, each block
    with its own scale. accuracy_level 4 lets the kernel quantize activations to int8 per block
    too, so the products run in int8 with block-local scales instead of one per tensor."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=bits)
    with quiet_quantizer():
        quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=large)


def quantize_static_matmuls(fp32: Path, dst: Path, calibration: Sequence[dict], *, keep_fp32: Iterable[str] = (),
                            large: bool = False) -> None:
    """Static int8 (QDQ): per-channel int8 weights, uint8 activations with ONE scale per tensor
    fixed from MinMax calibration on `calibration` (feeds: input_ids / attention_mask arrays)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration)

        def get_next(self):
            return next(self.feeds, None)

    with quiet_quantizer():
        quantize_static(
            str(fp32), str(dst), Feeds(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep_fp32), use_external_data_format=large,
            calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True},
        )


@contextmanager
def quiet_quantizer():
    """The quantizers log hints and one INFO line per node; keep the terminal readable."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
