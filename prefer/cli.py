"""The `prefer` command: one subcommand per stage, each a thin call into a stage module.

Every subcommand takes `--config FILE.yaml` and dotted overrides (`optimizer.lr=3e-4`); `prefer STAGE --help` lists
every key with its default, `prefer config STAGE` prints them as the YAML `--config` takes. Bad input exits with
code 2 and one line naming the file, line or field.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from prefer.errors import PreferError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`prefer: error: ...`, exit 2) like every other bad input."""

    def error(self, message: str):
        command = self.prog.removeprefix("prefer").strip()
        hint = f"; see prefer {command + ' ' if command else ''}--help"
        print(f"prefer: error: {command + ': ' if command else ''}{message}{hint}", file=sys.stderr)
        sys.exit(2)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with config values (overridden by KEY=VALUE arguments)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optimizer.lr=3e-4")


class _Commands:
    """add_parser that lists the config keys of a subcommand (with defaults and comments) in its --help."""

    def __init__(self, commands):
        self.commands = commands

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        from prefer.config import STAGE_CONFIGS, describe

        if name in STAGE_CONFIGS:
            cls = STAGE_CONFIGS[name]
            kwargs["epilog"] = (
                f"config keys ({cls.__name__}; set them as KEY=VALUE or in --config YAML; "
                f"`prefer config {name}` prints them as YAML):\n{describe(cls)}"
            )
            kwargs["formatter_class"] = argparse.RawDescriptionHelpFormatter
        return self.commands.add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from prefer.config import STAGE_CONFIGS

    parser = _Parser(prog="prefer", description=__doc__.splitlines()[0])
    commands = _Commands(parser.add_subparsers(dest="command", required=True))

    show = commands.add_parser("config", help="print a stage's full default config as YAML (every key, commented)")
    show.add_argument("stage", choices=sorted(STAGE_CONFIGS))

    demo = commands.add_parser("demo", help="MLE vs conditional training on a scored corpus, end to end (the main job)")
    demo.add_argument(
        "--task",
        choices=["pii", "pep8", "toxicity"],
        help="pii (default: Debian changelogs), pep8 (stdlib code) or toxicity (fortunes)",
    )
    demo.add_argument(
        "--pipeline",
        choices=["pretraining", "rlhf"],
        default="pretraining",
        help="pretraining (default: MLE vs conditional training) or rlhf (InstructGPT, short)",
    )
    _common(demo)

    rlhf = commands.add_parser(
        "rlhf",
        help="InstructGPT on one task: synthetic labelers -> SFT -> reward models -> "
        "best-of-n / PPO / PPO-ptx, one evaluation protocol; table + figures",
    )
    _common(rlhf)

    experiment = commands.add_parser("experiment", help="one model per objective on the same tokens: table + figures")
    experiment.add_argument("--task", choices=["pii", "pep8", "toxicity"])
    experiment.add_argument("--objectives", help="comma-separated, e.g. mle,filtering,conditional,ul,rwr,awr (default)")
    _common(experiment)

    pretrain = commands.add_parser("pretrain", help="pretrain one model with a PHF objective")
    pretrain.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    pretrain.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from this model (same as model.init_from=...); from a prefer snapshot, "
        "train.tokens counts its tokens: finetuning with feedback for the rest of the budget",
    )
    _common(pretrain)

    corpus = commands.add_parser(
        "corpus",
        help="build and score a task's corpus; print its score summary "
        "(data.shard_index=I data.num_shards=N: score one shard; then N alone: merge)",
    )
    _common(corpus)

    evaluate = commands.add_parser("evaluate", help="misalignment of a checkpoint's samples, as JSON")
    evaluate.add_argument("checkpoint", help="a model directory (e.g. runs/pretrain/final)")
    _common(evaluate)

    sample = commands.add_parser("sample", help="print samples of a checkpoint")
    sample.add_argument("checkpoint")
    sample.add_argument("-n", "--num-samples", type=int, default=4)
    sample.add_argument(
        "--prompt",
        choices=["auto", "none", "good", "bad"],
        default="auto",
        help="control token after <|endoftext|> (auto: good for conditional models)",
    )
    sample.add_argument(
        "--block",
        choices=["auto", "none", "bad", "good", "both"],
        default="auto",
        help="control tokens never sampled (auto: <|bad|> for conditional models prompted good, <|good|> prompted bad)",
    )
    sample.add_argument("--max-new-tokens", type=int, default=128)
    sample.add_argument("--temperature", type=float, default=0.7)
    sample.add_argument("--top-p", type=float, default=0.9)
    sample.add_argument("--seed", type=int, default=0)
    sft = commands.add_parser("sft", help="supervised finetuning on demonstrations (loss on responses only)")
    sft.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    _common(sft)

    reward = commands.add_parser("reward", help="train a reward model on K-way rankings")
    reward.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    _common(reward)

    label = commands.add_parser("label", help="write rankings and demonstrations for prompts")
    label.add_argument(
        "--synthetic",
        action="store_true",
        help="sample K responses per prompt and rank them by a gold scorer (required: the only labeler)",
    )
    _common(label)

    report = commands.add_parser("report", help="one static HTML file with the tables, figures and samples of runs")
    report.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="experiment result dirs (runs/experiment/pii), red-team or training run dirs",
    )
    report.add_argument("-o", "--out", default="report.html", help="the HTML file to write (default: report.html)")
    report.add_argument("--samples", type=int, default=4, help="sample excerpts per model (default: 4)")
    report.add_argument("--title", default="prefer report")

    ppo = commands.add_parser(
        "ppo", help="PPO against a scorer or reward model, KL to the SFT model (PPO-ptx: ptx_coef>0)"
    )
    ppo.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    _common(ppo)

    convert = commands.add_parser(
        "convert",
        help="write rankings as preference pairs for other tools "
        '({"prompt", "chosen", "rejected"}: every non-tied pair)',
    )
    convert.add_argument("rankings", help="rankings JSONL (or pairs, or a saved data set directory)")
    convert.add_argument("--to", choices=["pairs"], default="pairs")
    convert.add_argument("-o", "--out", required=True, help="the JSONL file to write")

    dpo = commands.add_parser("dpo", help="DPO / IPO / listwise DPO on K-way rankings from the SFT model")
    dpo.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    _common(dpo)

    grpo = commands.add_parser("grpo", help="critic-free RL, K samples per prompt: group.algorithm=grpo|rloo")
    grpo.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    _common(grpo)

    redteam = commands.add_parser("redteam", help="stochastic few-shot red-teaming of a checkpoint (target=DIR)")
    _common(redteam)

    from prefer.labeling.app.cli import add_export_parser, add_serve_parser  # no torch: argparse only

    add_serve_parser(commands)
    add_export_parser(commands)
    return parser


RESUMABLE = ("pretrain", "sft", "reward", "ppo", "experiment", "demo")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        if args.command not in LIGHT_COMMANDS:  # the labeling app starts without torch or transformers
            _quiet_third_parties()
        code = COMMANDS[args.command](args)
        # As the program under torchrun, every rank got here and the process ends: leave the group and exit now
        # (end_rank). A caller passing argv may run more commands in this process, in the same group, and ends
        # the rank itself.
        if code == 0 and argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from prefer.training import end_rank

            end_rank()
        return code
    except PreferError as error:
        # Under torchrun, name the rank: its non-zero exit makes torchrun stop the other ranks and fail the job.
        world = int(os.environ.get("WORLD_SIZE", "1"))
        where = f" (rank {os.environ.get('RANK', '?')} of {world})" if world > 1 else ""
        message = " ".join(str(error).split())  # one line, whatever a wrapped library message held
        print(f"prefer: error{where}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = (
            "; the same command with --resume continues from the last checkpoint"
            if args.command in RESUMABLE[:4]
            else "; the same command continues where it stopped"
            if args.command in RESUMABLE
            else ""
        )
        print(f"prefer: interrupted{again}", file=sys.stderr)
        return 130
    finally:
        # As the program (argv from the command line): a Ctrl-C from here on would land in interpreter shutdown
        # (TensorBoard's writer thread, tqdm) as an "Exception ignored" traceback after the result is written.
        if argv is None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.unraisablehook = previous_hook


def _unraisable(unraisable) -> None:
    """A Ctrl-C that lands inside a finalizer (a `__del__` the garbage collector runs mid-step, or tqdm's and
    TensorBoard's as the stage winds down) cannot interrupt it: Python would print an "Exception ignored ...
    KeyboardInterrupt" traceback and carry on, and the run would go on as if no key had been pressed (seen once
    in the test suite: exit 0, nothing printed). Deliver it again a moment later, outside the finalizer; once the
    command has returned, SIGINT is ignored and that is a no-op. Report everything else as Python does."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        again = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def _quiet_third_parties() -> None:
    """Our errors are one line and our bars say what is happening: Hugging Face's load reports, progress bars
    and advisory warnings are noise around them (a reward head is expected to start untrained)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _stage_config(cls, args):
    """A stage's config. `--resume` without `--config` starts from the run's own saved config.yaml, so
    `prefer pretrain --resume out_dir=runs/x` continues exactly the run that was started there."""
    from pathlib import Path

    from prefer.config import load_config

    yaml_path = args.config
    if args.resume and yaml_path is None:
        out_dir = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("out_dir=")), None)
        if out_dir is None:
            out_dir = load_config(cls, overrides=args.overrides).out_dir
        saved = Path(out_dir) / "config.yaml"
        if not saved.is_file():
            raise PreferError(
                f"{saved}: no saved config, so there is no run to resume in {out_dir} (killed before "
                "it started?); start it without --resume"
            )
        yaml_path = saved
    return load_config(cls, yaml_path=yaml_path, overrides=args.overrides)


def _run_demo(args) -> int:
    if args.pipeline == "rlhf":
        if args.task not in (None, "pii"):
            raise PreferError("demo --pipeline rlhf: only the pii task has a short RLHF demo (configs/rlhf-demo.yaml)")
        args.config = args.config or str(_configs_dir() / "rlhf-demo.yaml")
        return _run_rlhf(args)
    args.objectives = "mle,conditional"
    args.overrides = ["out_dir=runs/demo", *args.overrides]
    return _run_experiment(args)


def _run_experiment(args) -> int:
    from prefer.config import ExperimentConfig, load_config
    from prefer.experiments import experiment

    overrides = [*(["objectives=[" + args.objectives + "]"] if args.objectives else []), *args.overrides]
    overrides += [f"task={args.task}"] if args.task else []
    experiment(load_config(ExperimentConfig, yaml_path=args.config, overrides=overrides))
    return 0


def _configs_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "configs"


def _run_rlhf(args) -> int:
    from prefer.config import RLHFConfig, load_config
    from prefer.experiments.rlhf import rlhf

    rlhf(load_config(RLHFConfig, yaml_path=args.config, overrides=args.overrides))
    return 0


def _run_pretrain(args) -> int:
    from prefer.config import PretrainConfig
    from prefer.stages.pretrain import pretrain

    if args.init_from:
        args.overrides = [*args.overrides, f"model.init_from={args.init_from}"]
    pretrain(_stage_config(PretrainConfig, args), resume=args.resume)
    return 0


def _run_corpus(args) -> int:
    from prefer.config import PretrainConfig, load_config
    from prefer.data.pipeline import build_corpus
    from prefer.tasks import get_task

    config = load_config(PretrainConfig, yaml_path=args.config, overrides=args.overrides)
    task = get_task(config.data.task)
    if config.data.shard_index is not None:  # one machine's part of a sharded scoring run
        from prefer.data.pipeline import score_shard

        print(
            json.dumps(
                score_shard(
                    task,
                    source=config.data.source,
                    max_bytes=config.data.max_bytes,
                    cache_dir=config.data.cache_dir,
                    workers=config.data.workers,
                    shard_index=config.data.shard_index,
                    num_shards=config.data.num_shards,
                ),
                indent=2,
            )
        )
        return 0
    threshold = config.objective.resolved(task.name).threshold
    corpus = build_corpus(
        task,
        source=config.data.source,
        max_bytes=config.data.max_bytes,
        threshold=threshold,
        validation_fraction=config.data.validation_fraction,
        cache_dir=config.data.cache_dir,
        workers=config.data.workers,
        num_shards=config.data.num_shards,
    )
    print(
        json.dumps(
            {
                "provenance": corpus.provenance,
                "score_summary": corpus.summary,
                "train_documents": len(corpus.train),
                "validation_documents": len(corpus.validation),
            },
            indent=2,
        )
    )
    return 0


def _run_evaluate(args) -> int:
    from prefer.config import EvaluateConfig, load_config
    from prefer.stages.evaluate import evaluate

    config = load_config(
        EvaluateConfig, yaml_path=args.config, overrides=[f"checkpoint={args.checkpoint}", *args.overrides]
    )
    results = evaluate(config)
    summary = {k: v for k, v in results.items() if k not in ("samples",)}
    for scores in summary["scores"].values():
        scores.pop("per_sample")
    print(json.dumps(summary, indent=2))
    return 0


def _run_sample(args) -> int:
    from prefer.evaluation.misalignment import generate_texts, resolve_controls
    from prefer.models.build import load_checkpoint
    from prefer.training import resolve_device

    checks = (
        ("--num-samples", args.num_samples, args.num_samples > 0, "must be positive"),
        ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens > 0, "must be positive"),
        ("--temperature", args.temperature, args.temperature >= 0, "must be >= 0"),
        ("--top-p", args.top_p, 0 < args.top_p <= 1, "must be in (0, 1]"),
    )
    for flag, value, ok, rule in checks:  # before the model loads
        if not ok:
            raise PreferError(f"sample: {flag} {value}: {rule}")
    model, tokenizer, info = load_checkpoint(args.checkpoint, resolve_device("auto"))
    controls = resolve_controls(
        prompt=args.prompt, block=args.block, conditional=bool(info.get("control_tokens_trained"))
    )
    texts, _ = generate_texts(
        model,
        tokenizer,
        controls,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=64,
        seed=args.seed,
    )
    for i, text in enumerate(texts):
        print(f"----- sample {i} (prompt: {controls.prompt}, blocked: {controls.block})\n{text}")
    return 0


def _run_sft(args) -> int:
    from prefer.config import SFTConfig
    from prefer.stages.sft import sft

    sft(_stage_config(SFTConfig, args), resume=args.resume)
    return 0


def _run_reward(args) -> int:
    from prefer.config import RewardConfig
    from prefer.stages.reward import reward

    reward(_stage_config(RewardConfig, args), resume=args.resume)
    return 0


def _run_label(args) -> int:
    from dataclasses import asdict

    from prefer.config import LabelConfig, load_config
    from prefer.labeling import label_synthetic

    if not args.synthetic:
        raise PreferError("label: only synthetic labelers exist; pass --synthetic (a gold scorer ranks the samples)")
    report = label_synthetic(load_config(LabelConfig, yaml_path=args.config, overrides=args.overrides))
    print(
        json.dumps(
            {k: str(v) if k in ("rankings", "demonstrations") else v for k, v in asdict(report).items()}, indent=2
        )
    )
    return 0


def _run_ppo(args) -> int:
    from prefer.config import PPOConfig
    from prefer.stages.policy_gradient import ppo

    ppo(_stage_config(PPOConfig, args), resume=args.resume)
    return 0


def _run_dpo(args) -> int:
    from prefer.config import DPOConfig
    from prefer.stages.dpo import dpo

    dpo(_stage_config(DPOConfig, args), resume=args.resume)
    return 0


def _run_grpo(args) -> int:
    from prefer.config import GroupRLConfig
    from prefer.stages.policy_gradient import group_rl

    group_rl(_stage_config(GroupRLConfig, args), resume=args.resume)
    return 0


def _run_redteam(args) -> int:
    from prefer.config import RedteamConfig, load_config
    from prefer.stages.redteam import redteam

    results = redteam(load_config(RedteamConfig, yaml_path=args.config, overrides=args.overrides))
    print(json.dumps({k: results[k] for k in ("target", "task", "scorer", "score_on", "summary")}, indent=2))
    return 0


def _run_convert(args) -> int:
    from prefer.data.formats import read_rankings, write_pairs

    rankings = read_rankings(args.rankings)
    count = write_pairs(args.out, rankings)
    print(f"[convert] {len(rankings)} rankings -> {count} pairs in {args.out}")
    return 0


def _run_config(args) -> int:
    from prefer.config import STAGE_CONFIGS, default_yaml

    print(default_yaml(STAGE_CONFIGS[args.stage]), end="")
    return 0


def _run_report(args) -> int:
    from prefer.report import report

    path = report(args.run_dirs, out=args.out, title=args.title, samples_per_model=args.samples)
    print(f"[report] {path} ({path.stat().st_size / 1e6:.1f} MB): open it in any browser, no server needed")
    return 0


def _run_serve(args) -> int:
    from prefer.labeling.app.cli import run_serve

    return run_serve(args)


def _run_export(args) -> int:
    from prefer.labeling.app.cli import run_export

    return run_export(args)


LIGHT_COMMANDS = ("serve", "export")  # the labeling app starts without torch or transformers
COMMANDS = {
    "serve": _run_serve,
    "export": _run_export,
    "config": _run_config,
    "convert": _run_convert,
    "demo": _run_demo,
    "report": _run_report,
    "experiment": _run_experiment,
    "rlhf": _run_rlhf,
    "pretrain": _run_pretrain,
    "corpus": _run_corpus,
    "evaluate": _run_evaluate,
    "sample": _run_sample,
    "sft": _run_sft,
    "reward": _run_reward,
    "label": _run_label,
    "ppo": _run_ppo,
    "dpo": _run_dpo,
    "grpo": _run_grpo,
    "redteam": _run_redteam,
}

if __name__ == "__main__":
    sys.exit(main())
