"""broker.lazy: a placeholder module that becomes the real one on first attribute access."""

import subprocess
import sys


def test_placeholder_loads_on_first_use_and_keeps_working():
    code = (
        "import sys\n"
        "from broker.lazy import lazy_module\n"
        "lazy_module('colorsys')\n"
        "import colorsys as c\n"
        "assert type(c).__name__ == '_LazyModule' and 'rgb_to_hsv' not in vars(c)\n"
        "assert c.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)\n"
        "import colorsys as real\n"
        "assert type(real).__name__ == 'module' and real is sys.modules['colorsys']\n"
        "assert c.hsv_to_rgb is real.hsv_to_rgb\n"
        "lazy_module('colorsys')\n"
        "assert sys.modules['colorsys'] is real\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_server_process_does_not_load_openssl_without_tls():
    code = (
        "import sys, broker.__main__\n"
        "assert '_ssl' not in sys.modules and '_hashlib' not in sys.modules, sorted(sys.modules)\n"
        "import ssl\n"
        "assert ssl.create_default_context() is not None and '_ssl' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
