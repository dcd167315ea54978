"""Install, list and verify pretrained models for offline use (``lungseg-model``;
``lungseg.artifacts.pretrained``).

    lungseg-model install <folder|zip> [--name NAME] [--force]
    lungseg-model list
    lungseg-model verify NAME

``install`` copies a folder written by ``python -m lungseg.export format=pretrained`` (or a zip of
one) into the local model store once its model.safetensors matches the SHA-256 its model card
records and the folder loads; then ``LungSegmenter.from_pretrained("<name>")`` finds it by name with
no network, re-checking the weights each time.
"""

from __future__ import annotations

import argparse
import sys

from lungseg.artifacts.model_card import WEIGHTS_FILE
from lungseg.artifacts.pretrained import install
from lungseg.artifacts.store import file_sha256, installed, store_dir, verify, verify_folder
from lungseg.errors import CheckpointError, exit_on_user_error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lungseg-model", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("install", help="install a pretrained folder or zip for offline use")
    add.add_argument(
        "source", help="a folder written by lungseg.export format=pretrained, or a zip of one"
    )
    add.add_argument("--name", help="the name to load it by (default: the folder's or zip's)")
    add.add_argument("--force", action="store_true", help="replace a model of the same name")
    commands.add_parser("list", help="list the installed models and check each one's weights")
    check = commands.add_parser("verify", help="check an installed model's weights (its card)")
    check.add_argument("name")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    """The ``lungseg-model`` command: install, list, verify (exit code 2, one line, on refusal)."""
    args = _parser().parse_args(argv)
    if args.command == "install":
        folder = install(args.source, args.name, args.force)
        print(
            f"installed {folder.name} at {folder} (model.safetensors SHA-256 "
            f"{file_sha256(folder / WEIGHTS_FILE)}); load it with "
            f'LungSegmenter.from_pretrained("{folder.name}")'
        )
    elif args.command == "list":
        models = installed()
        if not models:
            print(f"no models installed in {store_dir()}")
        failed = 0
        for name, folder in models:
            try:
                print(f"{name}\tok\t{verify_folder(folder)}")
            except CheckpointError as err:
                failed += 1
                print(f"{name}\trefused\t{err}")
        return 2 if failed else 0
    else:
        print(f"{args.name}: ok (model.safetensors SHA-256 {verify(args.name)})")
    return 0


def cli() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
