"""A helper of the resume tests: make a finished run look killed."""

import shutil


def interrupt_at(run_dir, step):
    """Make a finished run look killed right after its checkpoint at `step` (what `--resume` then finds)."""
    shutil.rmtree(run_dir / "final")
    for checkpoint in (run_dir / "checkpoints").glob("step_*"):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)
    (run_dir / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")
