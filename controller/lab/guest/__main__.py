"""``python -m controller.lab.guest build|probe``: build the guest image, decide the accelerator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.lab.guest import accel, image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.lab.guest", description=__doc__)
    parser.add_argument("--cache", type=Path, default=image.DEFAULT_CACHE, help="image cache directory")
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("build", help="build (or find cached) the guest kernel + initrd and print their paths")
    probe = sub.add_parser("probe", help="decide kvm or tcg by a probe boot (cached per machine)")
    probe.add_argument("--accel-cache", type=Path, default=accel.DEFAULT_CACHE)
    probe.add_argument("--refresh", action="store_true", help="probe again even if a verdict is cached")
    args = parser.parse_args(argv)
    try:
        img = image.build(args.cache)
        if args.verb == "build":
            print(img.describe())
        else:
            v = accel.probe(img, args.accel_cache, refresh=args.refresh)
            print(f"accel {v.accel} (domain type {v.domain_type}){' (cached)' if v.cached else ''}: {v.reason}")
    except (image.BuildError, RuntimeError) as exc:
        print(f"veil guest: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
