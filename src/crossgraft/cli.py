"""The `crossgraft` command and the seeds' console scripts: a thin dispatcher to the two families' command lines.

Errors from bad input or settings (`CrossgraftError`) are printed as one message and exit with status 2; any
other exception is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from crossgraft import __version__
from crossgraft.errors import CrossgraftError

USAGE = f"""usage: crossgraft FAMILY COMMAND [options]

crossgraft {__version__}: graft cross-modal attention onto pretrained vision-language models and train them fairly
against their base models.

families:
  anomaly   anomaly-aware CLIP (AA-CLIP and its cross-attention variants); `crossgraft anomaly --help`
  llava     LLaVA-OneVision with alternating attention; `crossgraft llava --help`
"""


def _guarded(run: Callable[[], int]) -> int:
    try:
        return run()
    except CrossgraftError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """A command that ran under torchrun / accelerate launch closes its process group before the interpreter exits:
    left to the interpreter's shutdown, gloo's connection threads can abort one process (SIGABRT) while another
    still uses them. (torch is looked up, never imported here: a command that did not need it stays light.)"""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"crossgraft {__version__}")
        return 0
    family, rest = argv[0], argv[1:]
    # each family's modules load only when it is asked for: one family's command never waits for the other's
    if family == "anomaly":
        from crossgraft.anomaly.cli import main as family_main
    elif family == "llava":
        from crossgraft.llava.cli import main as family_main
    else:
        print(f"error: unknown family {family!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return _guarded(lambda: family_main(rest))


# ----------------------------------------------------------------------- the seeds' command lines, as scripts
def _anomaly_script(command: str, prog: str, argv: Sequence[str] | None, **defaults: object) -> int:
    from crossgraft.anomaly.cli import run

    args = list(sys.argv[1:] if argv is None else argv)
    return _guarded(lambda: run(command, args, prog=prog, **defaults))


def train_cross_attention(argv: Sequence[str] | None = None) -> int:
    """`train_cross_attention` (seed 000): `crossgraft anomaly train` with the cross_attn variant."""
    return _anomaly_script("train", "train_cross_attention", argv, variant="cross_attn")


def train_cross_attention_feedback(argv: Sequence[str] | None = None) -> int:
    """`train_cross_attention_feedback` (seed 001): the cross_attn variant, 3 feedback rounds by default."""
    return _anomaly_script("train", "train_cross_attention_feedback", argv, variant="cross_attn", num_feedback_loops=3)


def train_cross_attention_feedback_v2(argv: Sequence[str] | None = None) -> int:
    """`train_cross_attention_feedback_v2` (seed 001's second script): the same command as the feedback one; the
    per-epoch gradient norms it was written for are in every run's log."""
    return _anomaly_script(
        "train", "train_cross_attention_feedback_v2", argv, variant="cross_attn", num_feedback_loops=3
    )


def test_stage2_gradients(argv: Sequence[str] | None = None) -> int:
    """`test_stage2_gradients` (seed 001): `crossgraft anomaly grad-flow`."""
    return _anomaly_script("grad-flow", "test_stage2_gradients", argv)


test_stage2_gradients.__test__ = False  # type: ignore[attr-defined]  # a console script, not a test to collect


def train_alternating(argv: Sequence[str] | None = None) -> int:
    """`train_alternating` (seed 004): `crossgraft llava train`."""
    from crossgraft.llava.cli import run

    args = list(sys.argv[1:] if argv is None else argv)
    return _guarded(lambda: run("train", args, prog="train_alternating"))


if __name__ == "__main__":
    sys.exit(main())
