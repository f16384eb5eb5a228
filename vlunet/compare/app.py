"""A local web app: upload a photo, choose methods, see the detected degradation and the restorations, download them.

Usage (``pip install '.[app]'``)::

    vlunet-compare-app -m VLU-Net=options/demo/test_demo.yml \
        -m "NAFNet+DA-CLIP=options/demo/compare_nafnet_daclip_demo.yml"
    # then open http://127.0.0.1:7860 in a browser

Built with Gradio (a maintained, widely used library for model demos: upload, image slider, gallery and file
download components, and a client library the tests drive it with over HTTP). It listens on 127.0.0.1 only
(``--host`` to change it, at your own risk), restores with the same :class:`~vlunet.inference.Restorer` as the
comparison (each method built once, on first use), and validates every upload before any work: the file size
(``--max-upload-mb``), that it is an image of a supported type (PNG, JPEG, BMP, TIFF, WebP; read by its content,
not its name) and its dimensions (``--max-pixels``); each problem is one clear message in the page. Everything it
writes (Gradio's upload cache included) goes under ``--output`` (default ``results/app``).
"""
import argparse
import importlib.util
import os
import os.path as osp
import threading
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image

SUPPORTED_FORMATS = ('PNG', 'JPEG', 'BMP', 'TIFF', 'WEBP')
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_UPLOAD_MB = 25


class UploadError(ValueError):
    """An upload that cannot be restored; the message says why and what is accepted."""


def check_upload(path: Optional[str], max_bytes: int, max_pixels: int) -> Tuple[int, int]:
    """(width, height) of the uploaded image at ``path``, or :class:`UploadError` (missing, too large, not a supported
    image, too many pixels). Reads the header only before the size checks (no decompression bomb is decoded)."""
    if not path or not osp.isfile(path):
        raise UploadError('upload a photo first.')
    size = osp.getsize(path)
    if size > max_bytes:
        raise UploadError(f'the file is {size / 2 ** 20:.1f} MB; the most this app accepts is '
                          f'{max_bytes / 2 ** 20:.0f} MB (--max-upload-mb).')
    try:
        with Image.open(path) as image:
            kind, (width, height) = image.format, image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        raise UploadError(f'the file is not an image this app can read (supported: {", ".join(SUPPORTED_FORMATS)}).') \
            from None
    if kind not in SUPPORTED_FORMATS:
        raise UploadError(f'{kind} images are not supported (supported: {", ".join(SUPPORTED_FORMATS)}).')
    if width * height > max_pixels:
        raise UploadError(f'the image is {width}x{height} = {width * height:,} pixels; the most this app restores is '
                          f'{max_pixels:,} pixels (--max-pixels). Downscale or crop it.')
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError) as error:
        raise UploadError(f'the image file is damaged and cannot be decoded ({error}).') from None
    return width, height


class RestorationService:
    """The methods of the app, each built on first use, and the restoration of one upload into the output folder."""

    def __init__(self, methods: Sequence, output: str, device: Optional[str], max_bytes: int, max_pixels: int):
        self.methods = {spec.name: spec for spec in methods}
        self.output, self.device = osp.abspath(output), device
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.restorers: Dict[str, object] = {}
        self.lock = threading.Lock()

    def restorer(self, name: str):
        from vlunet.compare.methods import build_restorer
        if name not in self.restorers:
            self.restorers[name] = build_restorer(self.methods[name], self.device)
        return self.restorers[name]

    def restore(self, path: Optional[str], names: Sequence[str]) -> Tuple[str, List[Tuple[str, str]], List[str]]:
        """(Markdown of the detected degradations, [(restored PNG, caption)], [restored PNG]) of the upload at
        ``path`` with the methods ``names``; :class:`UploadError` for a bad upload or no method."""
        from vlunet.compare.runner import one_line
        from vlunet.inference import load_image, save_image
        check_upload(path, self.max_bytes, self.max_pixels)
        unknown = [name for name in names if name not in self.methods]
        if not names or unknown:
            raise UploadError(f'choose one or more of the methods: {", ".join(self.methods)}.')
        image = load_image(path)
        folder = osp.join(self.output, uuid.uuid4().hex)
        save_image(osp.join(folder, 'input.png'), image)
        lines, gallery, files = ['| Method | Detected degradation |', '|---|---|'], [], []
        with self.lock:
            for name in names:
                try:
                    restored, guess = self.restorer(name).restore_and_detect(image)
                except Exception as error:  # one method failing must not hide the others
                    lines.append(f'| {name} | failed: {one_line(error)} |')
                    continue
                target = osp.join(folder, f'{"".join(c if c.isalnum() or c in "-_" else "_" for c in name)}.png')
                save_image(target, restored)
                lines.append(f'| {name} | {guess.prompt if guess else "- (no encoder)"} |')
                gallery.append((target, name))
                files.append(target)
        return '\n'.join(lines), gallery, files


def build_app(service: RestorationService):
    """The Gradio Blocks of the app; the restore endpoint is ``/restore`` (photo path, method names)."""
    import gradio as gr

    def restore(path, names):
        try:
            table, gallery, files = service.restore(path, names or [])
        except UploadError as error:
            raise gr.Error(str(error)) from None
        slider = (osp.join(osp.dirname(files[0]), 'input.png'), files[0]) if files else None
        return table, slider, gallery, files

    with gr.Blocks(title='vlunet: which method?') as app:
        gr.Markdown('## Restore a photo with each method\nUpload a photo, choose methods, press Restore. The slider '
                    'compares the input (left) with the first method (right).')
        with gr.Row():
            photo = gr.File(label='Photo (PNG, JPEG, BMP, TIFF, WebP)', type='filepath')
            names = gr.CheckboxGroup(list(service.methods), value=list(service.methods)[:1], label='Methods')
        button = gr.Button('Restore', variant='primary')
        table = gr.Markdown()
        slider = gr.ImageSlider(label='Input | restored', type='filepath')
        gallery = gr.Gallery(label='Restored', columns=4)
        files = gr.File(label='Download', file_count='multiple')
        button.click(restore, [photo, names], [table, slider, gallery, files], api_name='restore')
    return app


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='vlunet-compare-app', description=__doc__.split('\n\n')[0])
    parser.add_argument('-m', '--method', action='append', required=True, metavar='NAME=SOURCE',
                        help='a method, as for vlunet-compare (repeat for each)')
    parser.add_argument('-o', '--output', default=osp.join('results', 'app'), help='folder for everything written')
    parser.add_argument('--device', help='cpu, cuda, cuda:N or auto (default: each option file\'s)')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1: this machine)')
    parser.add_argument('--port', type=int, default=7860, help='port (default 7860)')
    parser.add_argument('--max-pixels', type=int, default=DEFAULT_MAX_PIXELS, help='largest image, in pixels')
    parser.add_argument('--max-upload-mb', type=float, default=DEFAULT_MAX_UPLOAD_MB, help='largest upload, in MB')
    return parser.parse_args(argv)


def launch(args: argparse.Namespace, block: bool = True):
    """Start the app for ``args``; returns the running Gradio app (``block=False``: in a background thread)."""
    output = osp.abspath(args.output)
    os.makedirs(output, exist_ok=True)
    # Gradio's cache (uploads, served files) inside the output folder: read once, when gradio is first imported
    os.environ['GRADIO_TEMP_DIR'] = osp.join(output, 'uploads')
    import vlunet  # noqa: F401  (BasicSR compatibility fixes and registration first)
    from vlunet.compare.methods import parse_method
    methods = [parse_method(text) for text in args.method]
    max_bytes = int(args.max_upload_mb * 2 ** 20)
    app = build_app(RestorationService(methods, osp.join(output, 'restored'), args.device, max_bytes,
                                       args.max_pixels))
    app.queue().launch(server_name=args.host, server_port=args.port, prevent_thread_lock=not block,
                       max_file_size=max_bytes, allowed_paths=[output], show_error=True, quiet=not block)
    return app


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec('gradio') is None:  # not imported here: launch sets its cache folder first
        print("error: the app needs the app extra: pip install 'vlunet[app]' (or pip install gradio).")
        return 2
    try:
        launch(args)
    except ValueError as error:
        print(f'error: {" ".join(str(error).split())}')
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
