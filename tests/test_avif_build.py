"""AVIF in every Pillow build: stock Pillow's codec, or pillow-avif-plugin under pillow-simd
(`make PILLOW=simd`), and a build with neither offers no AVIF instead of failing renders."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from imgproxy import avif
from imgproxy.options import ENCODINGS

ROOT = Path(__file__).resolve().parent.parent

# A build without any AVIF codec, in a child interpreter: Pillow reports none and the plugin is missing.
WITHOUT_AVIF = """
import json, sys
import PIL.features
real = PIL.features.check
PIL.features.check = lambda feature, *a, **k: False if feature == "avif" else real(feature, *a, **k)
sys.modules["pillow_avif"] = None  # `import pillow_avif` raises ImportError
from imgproxy import avif
from imgproxy.config import ConfigError, load_config
from imgproxy.errors import BadRequest
from imgproxy.options import parse_options
from imgproxy.pipeline import negotiate
found = {"available": avif.AVAILABLE, "negotiated": list(negotiate("image/avif,image/webp,*/*"))}
try:
    parse_options([("encoding", "avif")], {})
except BadRequest as exc:
    found["encoding"] = [exc.status, str(exc)]
try:
    load_config(environ={"IMGPROXY_RENDER__DEFAULT_FORMAT": "avif"})
except ConfigError as exc:
    found["config"] = str(exc)
print(json.dumps(found))
"""


def test_this_build_reads_and_writes_avif():
    assert avif.AVAILABLE and "avif" in ENCODINGS
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, format="AVIF", quality=60)
    with Image.open(io.BytesIO(out.getvalue())) as back:
        assert (back.format, back.size) == ("AVIF", (64, 48))
        assert back.convert("RGB").getpixel((32, 24))[0] > 150


def test_a_build_without_avif_neither_negotiates_nor_accepts_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_AVIF], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["available"] is False
    assert found["negotiated"] == ["webp"]
    status, message = found["encoding"]
    assert status == 400 and "avif" in message and "webp" in message  # the allowed list lacks avif
    assert "allowed: jpeg, png, webp, gif, jxl, auto" in message
    assert 'render.default_format: "avif" is not available' in found["config"]
