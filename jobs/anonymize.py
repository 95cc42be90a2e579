"""Entrypoint for ``ray job submit``: the same job as ``raypipe anonymize``.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/anonymize.py --config jobs/configs/s3-gpu.yaml

INPUT and OUTPUT may come from the config file or be given as arguments; method flags override it.
"""

from __future__ import annotations

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["anonymize", *sys.argv[1:]]))
