"""Convert a downloaded real dataset into the toolkit's layout (docs/method.md §4), with foreground masks (docs/method.md §2).

    python -m kdq.function.stages.prepare_data cub    --src CUB_200_2011 --out data/cub
    python -m kdq.function.stages.prepare_data voc    --src VOCdevkit    --out data/voc
    python -m kdq.function.stages.prepare_data ilsvrc --src imagenet     --out data/ilsvrc [--classes n02129165 ...]

Writes ``<out>/<split>/<class>/<image>``, masks ``<out>/seg/<split>/<class>/<stem>.png`` (> 0 is foreground:
0/255, CUB its soft grey values) and
``<out>/dataset.json`` (options, classes, counts).  Splits: cub ``train test``, voc ``train val`` (object crops),
ilsvrc ``train val``.  Files appear atomically; rerunning the same command resumes an interrupted run (what is
there is kept, the result is checked against the plan).  ``--classes @FILE`` reads the names from FILE.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


from kdq.function.data.prepare import cub as prep_cub

from kdq.function.data.prepare import ilsvrc as prep_ilsvrc

from kdq.function.data.prepare import voc as prep_voc
from kdq.function.cli import Parser, run
from kdq.function.progress import progress
from kdq.function.data.prepare.common import Writer, check_out_not_in_src, finish_output, open_output, summary_lines

log = logging.getLogger(__name__)

PREPARERS = {m.NAME: m for m in (prep_cub, prep_voc, prep_ilsvrc)}
CLASS_HELP = {
    "cub": "class subset: names as in classes.txt (001.Black_footed_Albatross) or their ids (1 or 001); "
           "default all 200",
    "voc": "category subset of the 20 VOC categories (aeroplane ... tvmonitor); default all 20",
    "ilsvrc": "wnids to prepare, or 'all' (every train folder); default the ten mammals "
              + " ".join(prep_ilsvrc.DEFAULT_CLASSES),
}


SHORT_HELP = {
    "cub": "CUB-200-2011: train/test, masks from the segmentation PNGs",
    "voc": "PASCAL VOC 2012: object crops (box x1.2) with instance masks, train/val",
    "ilsvrc": "ImageNet CLS-LOC class subset: train/val, box masks where a box is known",
}


class _SubParser(Parser):
    """A subcommand's parser: ``--debug`` given before the subcommand must survive its defaults."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for action in self._actions:
            if action.dest == "debug":
                action.default = argparse.SUPPRESS  # absent here: keep the main parser's value


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.split("\n\n")[0], fromfile_prefix_chars="@")
    sub = p.add_subparsers(dest="dataset", required=True, metavar="{cub,voc,ilsvrc}", parser_class=_SubParser)
    for name, module in PREPARERS.items():
        sp = sub.add_parser(name, help=SHORT_HELP[name], description=module.__doc__,
                            fromfile_prefix_chars="@")
        sp.add_argument("--src", type=Path, required=True, help="the dataset as downloaded and extracted")
        sp.add_argument("--out", type=Path, required=True,
                        help="dataset root to write (new, empty, or an earlier run of the same command)")
        sp.add_argument("--classes", nargs="+", default=None, metavar="NAME", help=CLASS_HELP[name])
        if name != "voc":  # voc writes crops, there is nothing to link to
            sp.add_argument("--link", action="store_true",
                            help="symlink each image to its source instead of copying it")
        else:
            sp.set_defaults(link=False)
        sp.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (it is plain lines anyway when stderr is not a terminal)")
        sp.add_argument("--overwrite", action="store_true",
                        help="rewrite every file, and redo a dataset prepared with other options (removing its "
                             "files that this run does not plan)")
        module.add_arguments(sp)
    return p


def main(args: argparse.Namespace) -> dict:
    module = PREPARERS[args.dataset]
    check_out_not_in_src(args.out, args.src)
    plan = module.plan(args)
    check_out_not_in_src(args.out, plan.root)
    overwrite = open_output(args.out, module.NAME, plan.options, args.overwrite)
    writer = Writer(args.out, link=args.link, overwrite=overwrite)
    # plain lines when stderr is not a terminal (logs); on an error the bar is cleared, leaving one line
    with progress(total=len(plan.units), desc=f"{module.NAME} images", enabled=args.progress) as bar:
        try:
            for unit in plan.units:
                unit(writer)
                bar.update()
        except BaseException:
            bar.leave = False
            raise
    removed = writer.verify(plan.splits)
    if removed:
        log.info("removed %d file(s) left by an earlier preparation with other options", len(removed))
    record = finish_output(args.out, module.NAME, plan, writer)
    for line in summary_lines(args.out, module.NAME, plan.classes, writer, plan.notes, plan.no_mask_note):
        print(line)
    return record


def cli(argv=None) -> int:
    """The console command: parse ``argv`` (default: the command line), run, return the exit status."""
    return run(get_args_parser, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
