"""The comparison app over HTTP on 127.0.0.1 (Gradio's client): a restore, a non-image and an oversized image.

Skipped (with the reason) without the app extra (``pip install '.[app]'``: gradio, gradio_client).
"""
import importlib.util
import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

import vlunet  # noqa: F401  (registration)

from basicsr.archs import build_network

from helpers import smooth_image, write_image

if importlib.util.find_spec('gradio') is None or importlib.util.find_spec('gradio_client') is None:
    pytest.skip("the app extra is not installed (pip install '.[app]')", allow_module_level=True)

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture(scope='module')
def app(tmp_path_factory):
    """The app with two tiny random networks, listening on 127.0.0.1; yields (client, output folder, data folder)."""
    from vlunet.compare.app import launch, parse_args
    root = tmp_path_factory.mktemp('app')
    torch.manual_seed(0)
    for name in ('a', 'b'):
        torch.save({'params': build_network(dict(TINY_VLUNET)).state_dict()}, str(root / f'{name}.pth'))
    (root / 'net.json').write_text(json.dumps(TINY_VLUNET))
    port = _free_port()
    running = launch(parse_args(['-m', f'A={root / "net.json"}:{root / "a.pth"}', '-m',
                                 f'B={root / "net.json"}:{root / "b.pth"}', '-o', str(root / 'out'), '--port',
                                 str(port), '--max-pixels', str(64 * 64), '--device', 'cpu']), block=False)
    import gradio_client
    from gradio import route_utils
    assert route_utils.DEFAULT_TEMP_DIR.startswith(str(root / 'out'))  # the app writes only under its output
    try:
        yield gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False, download_files=str(root / 'client')), \
            root / 'out', root
    finally:
        running.close()


def handle_file(path: str):
    from gradio_client import handle_file as upload
    return upload(path)


def test_a_restore_request_returns_images_of_the_input_size(app):
    client, out, root = app
    photo = write_image(str(root / 'photo.png'), smooth_image(3, 40, 56))
    table, _, _, files = client.predict(handle_file(photo), ['A', 'B'], api_name='/restore')
    assert '| A |' in table and '| B |' in table
    assert len(files) == 2 and all(Image.open(path).size == (56, 40) for path in files)
    written = [path for path in out.rglob('*') if path.is_file()]
    assert written and all(str(path).startswith(str(out)) for path in written)


def test_a_non_image_upload_gets_a_clear_error(app):
    client, _, root = app
    (root / 'notes.png').write_text('not an image')
    with pytest.raises(Exception, match='not an image this app can read'):
        client.predict(handle_file(str(root / 'notes.png')), ['A'], api_name='/restore')


def test_an_oversized_image_gets_a_clear_error(app):
    client, _, root = app
    large = write_image(str(root / 'large.png'), np.zeros((80, 80, 3), np.uint8))
    with pytest.raises(Exception, match=r'80x80 = 6,400 pixels; the most this app restores is 4,096'):
        client.predict(handle_file(large), ['A'], api_name='/restore')
