"""Readable errors for checkpoints that do not fit a VLUNet: which keys differ, and the likely cause."""
from typing import Dict, List, Mapping

import torch

MAX_LISTED = 12
DEGRADATION_KEYS_SUFFIX = 'gradient_step.degradation_keys'


def _listed(title: str, items: List[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f'\n    ... and {len(items) - len(shown)} more' if len(items) > len(shown) else ''
    return f'  {title} ({len(items)}):\n' + '\n'.join(f'    {item}' for item in shown) + more


def _likely_causes(expected: Mapping[str, torch.Size], loaded: Mapping[str, torch.Tensor],
                   net_config: Dict) -> List[str]:
    """Guesses, most specific first, at the constructor argument or file format behind a mismatch."""
    causes = []
    if any(key.startswith('net.') or 'prompt_param' in key for key in loaded):
        causes.append('this is an official VLU-Net (Lightning) state dict: convert it first with '
                      '`python scripts/convert_official_checkpoint.py SRC OUT_DIR`')
    keys = [key for key in expected if key.endswith(DEGRADATION_KEYS_SUFFIX) and key in loaded]
    if keys:
        bank, expected_bank = loaded[keys[0]].shape, expected[keys[0]]
        if len(bank) == 5 and bank[1] != expected_bank[1]:
            causes.append(f'the checkpoint has {bank[1]} degradation keys, this VLUNet has '
                          f'de_dim={net_config["de_dim"]}: set network_g.de_dim: {bank[1]}')
        if len(bank) == 5 and bank[-1] != expected_bank[-1]:
            causes.append(f'the checkpoint\'s first-level key size is {bank[-1]}, this VLUNet has '
                          f'key_size={net_config["key_size"]}: set network_g.key_size: {bank[-1]}')
    embed = loaded.get('embed.weight')
    if embed is not None and embed.shape[0] != expected['embed.weight'][0]:
        causes.append(f'the checkpoint has base width {embed.shape[0]}, this VLUNet has dim={net_config["dim"]}: '
                      f'set network_g.dim: {embed.shape[0]}')
    if not causes:
        causes.append('the checkpoint was saved from a VLUNet built with other arguments (num_blocks, '
                      'num_refinement_blocks, heads, ffn_expansion_factor, degradation_dim): use those of the '
                      'checkpoint\'s training option file')
    return causes


def state_dict_mismatch_message(expected: Mapping[str, torch.Size], loaded: Mapping[str, torch.Tensor],
                                net_config: Dict, strict: bool) -> str:
    """Describe why ``loaded`` does not fit a network whose tensors have the ``expected`` shapes.

    Args:
        expected: Key -> shape of the network's state dict.
        loaded: The state dict being loaded.
        net_config: The network's constructor arguments (for the suggested fix).
        strict: When False, missing and unexpected keys are allowed; only shape mismatches count.

    Returns:
        An empty string when the state dict fits, else a multi-line message.
    """
    mismatched = [f'{key}: checkpoint {list(loaded[key].shape)}, network {list(shape)}'
                  for key, shape in expected.items() if key in loaded and tuple(loaded[key].shape) != tuple(shape)]
    missing = [key for key in expected if key not in loaded] if strict else []
    unexpected = [key for key in loaded if key not in expected] if strict else []
    if not (mismatched or missing or unexpected):
        return ''
    sections = [_listed(title, items) for title, items in
                (('shape mismatches', mismatched), ('missing from the checkpoint', missing),
                 ('unexpected in the checkpoint', unexpected)) if items]
    causes = '\n'.join(f'  - {cause}' for cause in _likely_causes(expected, loaded, net_config))
    return ('The checkpoint does not fit this VLUNet:\n' + '\n'.join(sections) + '\nLikely cause:\n' + causes)
