"""Inference precision (vlunet.utils.precision.inference_amp): what each device computes natively, and one clear
error naming the fix where it does not."""
import os.path as osp

import pytest
import torch

from vlunet.utils import precision
from vlunet.utils.precision import inference_amp, native_bf16

CPU = torch.device('cpu')


def test_fp32_is_no_autocast_and_bf16_is_bfloat16_autocast(monkeypatch):
    assert not inference_amp('fp32', CPU).enabled
    monkeypatch.setattr(precision, 'native_bf16', lambda device: True)
    amp = inference_amp('bf16', CPU)
    assert amp.enabled and amp.dtype == torch.bfloat16


def test_bf16_on_a_cpu_without_bf16_instructions_names_the_fix(monkeypatch):
    monkeypatch.setattr(precision, 'native_bf16', lambda device: False)
    with pytest.raises(ValueError, match='no native bf16 instructions \\(AVX512-BF16 or AMX\\).*--precision fp32'):
        inference_amp('bf16', CPU)


def test_fp16_needs_cuda_and_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match='fp16 needs a CUDA device.*--precision fp32'):
        inference_amp('fp16', CPU)
    with pytest.raises(ValueError, match="expected one of \\['fp32', 'bf16', 'fp16'\\], got 'int8'"):
        inference_amp('int8', CPU)


@pytest.mark.skipif(not osp.isfile('/proc/cpuinfo'), reason='reads the CPU flags of Linux')
def test_native_bf16_detection_agrees_with_the_cpu_flags():
    with open('/proc/cpuinfo') as cpuinfo:
        flags = next((line.split(':', 1)[1].split() for line in cpuinfo if line.startswith('flags')), [])
    assert native_bf16(CPU) == ('avx512_bf16' in flags or 'amx_tile' in flags)


def test_without_torchs_private_cpu_checks_the_cpu_flags_decide(monkeypatch):
    expected = native_bf16(CPU)
    for feature in ('avx512_bf16', 'amx_tile'):
        monkeypatch.delattr(torch.cpu, f'_is_{feature}_supported', raising=False)
    if osp.isfile('/proc/cpuinfo'):
        assert native_bf16(CPU) == expected
    else:
        assert native_bf16(CPU) is False
