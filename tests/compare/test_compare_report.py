"""The comparison's index.html in a real headless Chromium: offline from a file URL, table, every image, the slider.

Needs Chromium and its driver from the system's packages (Debian: ``apt-get install -y chromium chromium-driver``)
and ``selenium`` (the test extra); without them the test is skipped with the reason. The screenshot is saved as
``report.png`` in the test's temporary folder (its path is printed).
"""
import json
import shutil

import numpy as np
import pytest
import torch

import vlunet  # noqa: F401  (registration)
from vlunet.compare import cli

from basicsr.archs import build_network

from helpers import smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
CHROMIUM = ('chromium', 'chromium-browser', 'google-chrome')


def _browser():
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install selenium)')
    binary = next((shutil.which(name) for name in CHROMIUM if shutil.which(name)), None)
    driver_path = shutil.which('chromedriver') or (binary and shutil.which('chromedriver', path='/usr/lib/chromium'))
    if not binary or not driver_path:
        pytest.skip('no Chromium browser and driver installed (Debian: apt-get install -y chromium chromium-driver)')
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,2000',
                     '--disable-gpu'):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    """A comparison of two tiny random networks (network JSON + weights) on paired folders."""
    root = tmp_path_factory.mktemp('report')
    for index in range(2):
        clean = smooth_image(20 + index, 32, 40)
        write_image(str(root / 'gt' / f'photo {index}.png'), clean)
        write_image(str(root / 'lq' / f'photo {index}.png'), (clean * 0.6).astype(np.uint8))
    torch.manual_seed(1)
    for name in ('a', 'b'):
        torch.save({'params': build_network(dict(TINY_VLUNET)).state_dict()}, str(root / f'{name}.pth'))
    (root / 'net.json').write_text(json.dumps(TINY_VLUNET))
    network = root / 'net.json'
    status = cli.main(['-m', f'VLU-Net A={network}:{root / "a.pth"}', '-m', f'B+C={network}:{root / "b.pth"}',
                       '--lq', str(root / 'lq'), '--gt', str(root / 'gt'), '-o', str(root / 'out'), '--no-progress'])
    assert status == 0
    return root / 'out' / 'index.html'


def test_the_report_is_self_contained(report):
    page = report.read_text()
    assert 'http://' not in page and 'https://' not in page and '<link' not in page  # no CDN, no network
    assert page.count('type="range"') == 4  # 2 images x 2 methods


def test_the_report_in_a_headless_browser(report):
    browser = _browser()
    try:
        browser.execute_cdp_cmd('Network.enable', {})  # no network: everything must come from the files
        browser.execute_cdp_cmd('Network.emulateNetworkConditions', {'offline': True, 'latency': 0,
                                                                     'downloadThroughput': 0, 'uploadThroughput': 0})
        browser.get(report.as_uri())
        assert browser.execute_script('return document.readyState') == 'complete'
        headers = [cell.text for cell in browser.find_elements('css selector', 'table th')]
        assert 'Method' in headers and 'Parameters' in headers and 'psnr_float' not in headers
        rows = browser.find_elements('css selector', 'table tbody tr')
        assert any(row.text.startswith('VLU-Net A') for row in rows) and any(row.text.startswith('B+C')
                                                                             for row in rows)
        images = browser.execute_script('return Array.from(document.images).map(i => [i.src, i.complete, '
                                        'i.naturalWidth])')
        assert len(images) == 2 + 2 * 2 * 2  # a grid per image, a before/after pair per image and method
        broken = [source for source, complete, width in images if not complete or width == 0]
        assert not broken, f'broken images: {broken}'
        assert all(source.startswith(report.parent.as_uri() + '/') for source, _, _ in images)  # files next to it

        slider = browser.find_element('css selector', '.ba input[type=range]')
        after = slider.find_element('xpath', '..').find_element('css selector', '.after')
        before = after.value_of_css_property('clip-path')
        from selenium.webdriver import ActionChains
        ActionChains(browser).move_to_element_with_offset(slider, -slider.size['width'] // 2 + 3, 0).click().perform()
        moved = int(slider.get_attribute('value'))
        assert moved < 20 and after.value_of_css_property('clip-path') != before
        assert f'{moved}%' in after.value_of_css_property('clip-path')
        screenshot = report.parent / 'report.png'
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 1000
        print(f'screenshot: {screenshot}')
    finally:
        browser.quit()
