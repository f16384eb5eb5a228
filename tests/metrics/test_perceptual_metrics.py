"""Perceptual metrics: LPIPS (per image) and FID (per test set, a dataset-level metric), random weights.

LPIPS is checked against the reference ``lpips`` package reading torchvision weights from the hub
cache (DA-CLIP's call), FID's Fréchet distance against scipy's matrix square root, and the
dataset-level FID through VLUNetModel validation, alone and sharded over 2 gloo ranks.
"""
import os.path as osp
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
from scipy import linalg
from torch import distributed
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.models import alexnet

import vlunet  # noqa: F401
from vlunet.metrics.dataset_level import is_dataset_level
from vlunet.metrics.fid_metric import (
    FrechetInceptionDistance,
    _random_inception_state,
    calculate_fid,
    frechet_distance,
    gaussian_statistics,
    inception_network,
)
from vlunet.metrics.lpips_metric import calculate_lpips
from vlunet.metrics.restoration_metric import FLOAT_RGB, UINT8_BGR, metric_input

from basicsr.metrics import calculate_metric
from basicsr.utils import tensor2img
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

CPU = torch.device('cpu')
FID_DIMS = 64  # the first Inception block only: fast, and the same code path as 2048
FID_METRIC = {'type': 'calculate_fid', 'dims': FID_DIMS, 'inception_weights': 'random', 'device': 'cpu'}
METRICS = {'psnr_float': {'type': 'calculate_psnr_float_rgb'}, 'fid': FID_METRIC}
PLAIN_NET = {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 1, 'upscale': 1,
             'act_type': 'relu'}


def _image(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    """Float32 RGB (H, W, 3) in [0, 1] made of random 8x8 blocks: image-like structure, not white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 1, width // 8 + 1, 3))
    return np.kron(coarse, np.ones((8, 8, 1)))[:height, :width].astype(np.float32)


def _lpips(img, img2, **options) -> float:
    """LPIPS with a seeded random AlexNet trunk and the lpips package's (non-negative) linear heads."""
    return calculate_lpips(img, img2, backbone_weights='random', device='cpu', **options)


# --------------------------------------------------------------------------- LPIPS

def test_lpips_is_zero_for_identical_images_and_grows_with_the_noise():
    image = _image(0)
    noise = np.random.default_rng(1).standard_normal(image.shape).astype(np.float32)
    assert metric_input(calculate_lpips) == FLOAT_RGB
    assert _lpips(image, image) == 0.0
    distances = [_lpips(np.clip(image + sigma * noise, 0, 1), image) for sigma in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert distances[0] > 0 and all(a < b for a, b in zip(distances, distances[1:])), distances
    noisy = np.clip(image + 0.1 * noise, 0, 1)
    assert _lpips(image, noisy) == pytest.approx(_lpips(noisy, image), rel=1e-5)  # symmetric


def test_lpips_clips_crops_and_rejects_bad_inputs():
    image, other = _image(2), _image(3)
    assert _lpips(1.5 * other - 0.2, image) == pytest.approx(_lpips(np.clip(1.5 * other - 0.2, 0, 1), image), rel=1e-6)
    damaged = image.copy()
    damaged[:4] = 1 - damaged[:4]  # only the top border differs
    assert _lpips(damaged, image) > 0 and _lpips(damaged, image, crop_border=4) == 0.0
    with pytest.raises(TypeError, match='float images'):
        _lpips((image * 255).astype(np.uint8), (image * 255).astype(np.uint8))
    with pytest.raises(ValueError, match='same shape'):
        _lpips(image, image[:-1])
    with pytest.raises(ValueError, match="calculate_lpips.net: 'squeeze'"):
        _lpips(image, image, net='squeeze')


def _alexnet_features_state() -> dict:
    """A torchvision AlexNet state dict with random features (seed 7); the classifier, which LPIPS never uses, is
    stride-0 zeros so that the file stays small."""
    with torch.device('meta'):
        shapes = {key: value.shape for key, value in alexnet(weights=None).state_dict().items()}
    generator = torch.Generator().manual_seed(7)
    return {key: (0.1 * torch.randn(shape, generator=generator) if key.startswith('features.')
                  else torch.zeros(1).expand(shape)) for key, shape in shapes.items()}


def test_lpips_equals_the_lpips_package_with_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    assert torch.hub.get_dir() == str(tmp_path / 'hub')
    cached = tmp_path / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth'
    cached.parent.mkdir(parents=True)
    torch.save(_alexnet_features_state(), cached)
    image, restored = _image(4), np.clip(_image(4) + 0.1 * _image(5) - 0.05, 0, 1)
    ours = calculate_lpips(restored, image, net='alex', device='cpu')  # backbone_weights ~: the hub cache
    reference = lpips.LPIPS(net='alex', verbose=False)  # DA-CLIP's call: torchvision reads the same cached file
    to_tensor = lambda array: torch.from_numpy(array).permute(2, 0, 1)[None]  # noqa: E731
    with torch.no_grad():
        expected = float(reference(to_tensor(image) * 2 - 1, to_tensor(restored) * 2 - 1))
    assert ours == pytest.approx(expected, rel=1e-5)
    assert abs(ours - _lpips(restored, image)) > 0.01 * ours  # the file was read (random weights differ)


def test_missing_weight_files_name_the_file_its_url_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    assert torch.hub.get_dir() == str(tmp_path / 'hub')
    cache = str(tmp_path / 'hub' / 'checkpoints')
    image = _image(6)
    with pytest.raises(FileNotFoundError) as lpips_error:
        calculate_lpips(image, image, net='vgg')
    message = str(lpips_error.value)
    for expected in ('https://download.pytorch.org/models/vgg16-397923af.pth', osp.join(cache, 'vgg16-397923af.pth'),
                     'calculate_lpips.backbone_weights', 'random'):
        assert expected in message
    with pytest.raises(FileNotFoundError) as fid_error:
        calculate_fid()
    message = str(fid_error.value)
    for expected in ('https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/'
                     'weights-inception-2015-12-05-6726825d.pth',
                     osp.join(cache, 'weights-inception-2015-12-05-6726825d.pth'), 'calculate_fid.inception_weights'):
        assert expected in message
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'mine.pth')):
        calculate_lpips(image, image, backbone_weights=str(tmp_path / 'mine.pth'))
    torch.save({'features.0.weight': torch.zeros(1)}, tmp_path / 'wrong.pth')
    with pytest.raises(ValueError, match='is not a torchvision AlexNet state dict'):
        calculate_lpips(image, image, backbone_weights=str(tmp_path / 'wrong.pth'), device='cpu')


# --------------------------------------------------------------------------- FID

def _reference_frechet(mean1, cov1, mean2, cov2) -> float:
    """The textbook formula with scipy's general matrix square root."""
    root = linalg.sqrtm(cov1 @ cov2).real
    return float(np.sum((mean1 - mean2) ** 2) + np.trace(cov1 + cov2 - 2 * root))


def test_frechet_distance_of_hand_made_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 4))
    mean1, mean2, cov1, cov2 = rng.standard_normal(6), rng.standard_normal(6), a @ a.T + 0.1 * np.eye(6), b @ b.T
    assert frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(_reference_frechet(mean1, cov1, mean2, cov2),
                                                                       rel=1e-7)
    assert frechet_distance(mean1, cov1, mean1, cov1) == pytest.approx(0, abs=1e-9)
    variances1, variances2 = np.array([4.0, 1.0, 0.0]), np.array([1.0, 9.0, 2.0])  # closed form for diagonal ones
    expected = 1.0 + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2)
    assert frechet_distance(np.zeros(3), np.diag(variances1), np.array([1.0, 0, 0]), np.diag(variances2)) == \
        pytest.approx(expected, rel=1e-9)


def test_gaussian_statistics_from_sums_equal_numpy_mean_and_cov():
    samples = np.random.default_rng(1).standard_normal((9, 5)) + 3
    mean, cov = gaussian_statistics(9, samples.sum(0), samples.T @ samples)
    np.testing.assert_allclose(mean, samples.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(samples, rowvar=False), rtol=1e-9, atol=1e-12)


def _uint8_pairs(count: int):
    """(restored, ground truth) uint8 BGR pairs of different sizes, as BasicSR's tensor2img gives them."""
    pairs = []
    for index in range(count):
        truth = _image(10 + index, 32 + 4 * index, 40)
        restored = np.clip(truth + 0.15 * _image(30 + index, 32 + 4 * index, 40) - 0.07, 0, 1)
        pairs.append(tuple((array[..., ::-1] * 255).round().astype(np.uint8) for array in (restored, truth)))
    return pairs


def _features(images, network) -> np.ndarray:
    """Inception features of uint8 BGR images, computed directly on RGB tensors (N, D)."""
    with torch.no_grad():
        return np.concatenate([network(torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1)[None])[0].double()
                               .numpy() for image in images])


def _reference_fid(pairs, network) -> float:
    restored, truth = (_features([pair[k] for pair in pairs], network) for k in (0, 1))
    return _reference_frechet(restored.mean(0), np.cov(restored, rowvar=False), truth.mean(0),
                              np.cov(truth, rowvar=False))


def test_fid_of_a_set_with_itself_is_zero_and_matches_an_independent_computation():
    assert is_dataset_level(calculate_fid) and metric_input(calculate_fid) == UINT8_BGR
    pairs = _uint8_pairs(4)
    itself = calculate_fid(dims=FID_DIMS, inception_weights='random', device='cpu')
    other = calculate_fid(dims=FID_DIMS, inception_weights='random', device='cpu')
    for restored, truth in pairs:
        itself.add(truth, truth)
        other.add(restored, truth)
    trace = np.trace(gaussian_statistics(4, *_sums(itself))[1])
    # 4 images, 64 features: singular covariances, whose zero eigenvalues come out as round-off and enter through a
    # square root (measured: 2e-7 of the trace here, for either computation)
    assert abs(itself.value(itself.statistics())) <= 1e-5 * trace
    network = inception_network(FID_DIMS, None, CPU)
    assert other.value(other.statistics()) == pytest.approx(_reference_fid(pairs, network), abs=1e-5 * trace)
    assert other.value(other.statistics()) > 1e-3 * trace
    single = calculate_fid(dims=FID_DIMS, inception_weights='random', device='cpu')
    single.add(*pairs[0])
    assert np.isnan(single.value(single.statistics()))  # no covariance from one image


def _sums(metric: FrechetInceptionDistance):
    row = metric.statistics().reshape(2, -1)[1].numpy()
    return row[1:1 + FID_DIMS], row[1 + FID_DIMS:].reshape(FID_DIMS, FID_DIMS)


def test_fid_reads_its_weight_file_like_torch_fidelity(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    state = {key: value + 0.05 * torch.randn(value.shape, generator=torch.Generator().manual_seed(3))
             if value.is_floating_point() and 'running_var' not in key else value
             for key, value in _random_inception_state().items()}
    path = tmp_path / 'inception.pth'
    torch.save(state, path)
    ours = inception_network(FID_DIMS, str(path), CPU)
    reference = FeatureExtractorInceptionV3('inception-v3-compat', [str(FID_DIMS)],
                                            feature_extractor_weights_path=str(path))
    images = torch.from_numpy(np.stack([pair[0][..., ::-1] for pair in _uint8_pairs(1)] * 2)).permute(0, 3, 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(ours(images)[0], reference(images)[0], rtol=0, atol=0)
        assert not torch.allclose(ours(images)[0], inception_network(FID_DIMS, None, CPU)(images)[0])
    torch.save({'not': torch.zeros(1)}, tmp_path / 'wrong.pth')
    with pytest.raises(ValueError, match='is not the FID Inception state dict'):
        calculate_fid(dims=FID_DIMS, inception_weights=str(tmp_path / 'wrong.pth'), device='cpu')


def test_fid_refuses_per_image_use_and_bad_dims():
    image = _uint8_pairs(1)[0][0]
    with pytest.raises(TypeError, match='dataset-level metric'):
        calculate_metric({'img': image, 'img2': image}, {'type': 'calculate_fid', 'inception_weights': 'random'})
    with pytest.raises(ValueError, match='calculate_fid.dims: 100'):
        METRIC_REGISTRY.get('calculate_fid')(dims=100, inception_weights='random')


# --------------------------------------------------------------------------- FID in validation

class _PairSet(Dataset):
    """(lq, gt) float tensors of different sizes, like a validation folder."""

    def __init__(self, count: int):
        self.opt = {'name': 'perceptual'}
        self.truths = [torch.from_numpy(_image(50 + i, 24 + 4 * i, 32)).permute(2, 0, 1) for i in range(count)]

    def __len__(self):
        return len(self.truths)

    def __getitem__(self, index):
        gt = self.truths[index]
        return {'lq': (0.8 * gt + 0.1).clamp(0, 1), 'gt': gt, 'lq_path': f'{index}.png', 'gt_path': f'{index}.png'}


def _model(folder: Path, **extra):
    torch.manual_seed(0)
    opt = {'name': 'perceptual', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': PLAIN_NET, 'path': {'results_root': str(folder), 'visualization': str(folder / 'vis')},
           'val': {'save_img': False, 'metrics': METRICS}, **extra}
    return MODEL_REGISTRY.get('VLUNetModel')(opt)


def test_validation_computes_fid_over_the_whole_set_and_tables_it(tmp_path):
    model = _model(tmp_path)
    dataset = _PairSet(5)
    model.validation(DataLoader(dataset), 'test', None)
    pairs, psnrs = [], []
    for index in range(len(dataset)):
        model.feed_data(default_collate([dataset[index]]))
        model.test()
        pairs.append((tensor2img([model.output.cpu()]), tensor2img([model.gt.cpu()])))
        psnrs.append(calculate_metric({'img': model.output[0].permute(1, 2, 0).numpy(),
                                       'img2': model.gt[0].permute(1, 2, 0).numpy()}, METRICS['psnr_float']))
    results = model.dataset_results['perceptual']
    assert results['fid'] == pytest.approx(_reference_fid(pairs, inception_network(FID_DIMS, None, CPU)), rel=1e-4)
    assert results['fid'] > 0 and results['psnr_float'] == pytest.approx(np.mean(psnrs), rel=1e-6)
    table = (tmp_path / 'results.md').read_text()
    assert '| Dataset | Images | psnr_float | fid |' in table
    assert f'| perceptual | 5 | {results["psnr_float"]:.4f} | {results["fid"]:.4f} |' in table


def _validate_on_rank(rank: int, world_size: int, init_file: str, folder: str) -> None:
    distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    model = _model(Path(folder) / f'rank{rank}', dist=True)
    model.validation(DataLoader(_PairSet(5)), 'test', None)
    torch.save(dict(model.dataset_results['perceptual']), osp.join(folder, f'rank{rank}.pt'))
    distributed.destroy_process_group()


@pytest.mark.multiprocess
def test_two_rank_validation_gives_the_fid_of_one_rank(tmp_path):
    torch.multiprocessing.spawn(_validate_on_rank, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    single = _model(tmp_path / 'single')
    single.validation(DataLoader(_PairSet(5)), 'test', None)
    expected = single.dataset_results['perceptual']
    for rank in range(2):
        results = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        assert results['fid'] == pytest.approx(expected['fid'], rel=1e-6)
        assert results['psnr_float'] == pytest.approx(expected['psnr_float'], rel=1e-9)
