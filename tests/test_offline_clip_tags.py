"""An open_clip ``pretrained`` tag whose weights are neither cached nor downloadable is one line from the option
check, before anything is created (issue 25, item 7); cached or reachable weights pass, unknown tags are named."""
import os

import pytest

import vlunet  # noqa: F401
from vlunet.archs import degradation_clip_arch
from vlunet.options import _network_errors

from helpers import REPO_ROOT, run_entry

DACLIP_TAGGED = {'network_clip': {'type': 'DACLIP', 'backbone': 'ViT-B-32', 'pretrained': 'laion2b_s34b_b79k'}}


def test_a_tag_without_cached_weights_offline_is_one_problem(monkeypatch):
    monkeypatch.setattr(degradation_clip_arch, '_cached_weights', lambda config: False)
    monkeypatch.setattr(degradation_clip_arch, '_reachable', lambda url, timeout=3.0: False)
    problems = _network_errors(DACLIP_TAGGED)
    assert len(problems) == 1 and '\n' not in problems[0]
    assert problems[0].startswith('network_clip.pretrained: the open_clip weights ViT-B-32/laion2b_s34b_b79k are '
                                  'neither cached nor downloadable')
    assert 'set `pretrained:` to the local file path' in problems[0]
    degradation_encoder = {'degradation_encoder': {'type': 'DegradationCLIP', 'pretrained': 'laion2b_s34b_b79k'}}
    assert _network_errors(degradation_encoder)[0].startswith('degradation_encoder.pretrained: the open_clip weights '
                                                              'ViT-B-32/laion2b_s34b_b79k')  # the default backbone


def test_cached_or_downloadable_weights_pass_and_unknown_tags_are_named(monkeypatch):
    monkeypatch.setattr(degradation_clip_arch, '_reachable', lambda url, timeout=3.0: False)
    monkeypatch.setattr(degradation_clip_arch, '_cached_weights', lambda config: True)
    assert _network_errors(DACLIP_TAGGED) == []
    monkeypatch.setattr(degradation_clip_arch, '_cached_weights', lambda config: False)
    monkeypatch.setattr(degradation_clip_arch, '_reachable', lambda url, timeout=3.0: True)
    assert _network_errors(DACLIP_TAGGED) == []
    misspelt = {'network_clip': dict(DACLIP_TAGGED['network_clip'], pretrained='laion2b')}
    assert _network_errors(misspelt)[0].startswith("network_clip.pretrained: 'laion2b' is neither a file nor an "
                                                   'open_clip tag of ViT-B-32 (tags: openai,')


@pytest.mark.multiprocess
def test_training_offline_stops_before_creating_anything(tmp_path):
    run = run_entry('train', ['-opt', os.path.join(REPO_ROOT, 'options', 'train_clip_nhrbl.yml')], cwd=str(tmp_path),
                    extra_env={'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf')})
    assert run.returncode != 0
    assert 'network_clip.pretrained: the open_clip weights ViT-B-32/laion2b_s34b_b79k are neither cached nor ' \
           'downloadable' in run.stderr
    assert 'Traceback' not in run.stderr and not (tmp_path / 'experiments').exists()
