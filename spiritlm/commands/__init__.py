"""Every command of the ``spiritlm`` script: ``<name>_cmd.py`` with ``register(subparsers)``; the
recipe arguments every configurable command shares (``add_recipe_args``, ``recipe_overrides``)."""

import argparse  # noqa: E402


def add_recipe_args(p: argparse.ArgumentParser, recipe_required: bool = False, out_key: str | None = None) -> None:
    """The common ``RECIPE`` + ``--set key=value`` pair every configurable command takes; with
    ``out_key``, also ``--out DIR`` as a shorthand for ``--set <out_key>=DIR``."""
    p.add_argument(
        "recipe",
        nargs=None if recipe_required else "?",
        help="recipe file (.toml/.yaml) mapping onto the command's config dataclass",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set seed=3 --set model.n_layers=2 (repeatable)",
    )
    if out_key:
        p.add_argument("--out", help=f"output directory (same as --set {out_key}=...)")
        p.set_defaults(out_key=out_key)


def named_paths(items, what: str = "NAME=DIR") -> dict[str, str]:
    """``["a=DIR", ...]`` -> ``{"a": "DIR"}``; an item without ``=`` is refused naming the form."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: give {what}")
        out[name] = path
    return out


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus the one ``--out`` stands for, in that order."""
    out = getattr(args, "out", None)
    return list(args.overrides) + ([f"{args.out_key}={out}"] if out and getattr(args, "out_key", None) else [])


def add_asr_items_args(p: argparse.ArgumentParser) -> None:
    """Where the transcribed audio of an ASR evaluation comes from (read by :func:`asr_items`)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="a data-stage manifest (JSON Lines: audio_path + text + split)")
    src.add_argument("--dir", help="a folder of <id>.wav + <id>.txt (e.g. ../shared/data/real_speech/librivox)")
    p.add_argument("--split", default="heldout", help="manifest split to score ('' = all)")


def asr_items(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    from spiritlm.transcripts import manifest_items, text_dir_items

    return manifest_items(args.manifest, args.split) if args.manifest else text_dir_items(args.dir)
