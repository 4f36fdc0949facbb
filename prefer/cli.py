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

from prefer.errors import PreferError, note_interrupt


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`prefer: error: ...`, exit 2) like every other bad input. A
    subcommand's epilog (its config keys) may be a function: it is called only when help is shown (describing
    every stage reads the source of ~700 config classes, over a second that every command used to pay)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()

    intermixed = False  # KEY=VALUE overrides may follow the options (`evaluate DIR --prompt T k=v`): set per command

    def parse_known_args(self, args=None, namespace=None):
        if self.intermixed and not getattr(self, "_mixing", False):  # parse_known_intermixed_args calls this again
            self._mixing = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._mixing = False
        return super().parse_known_args(args, namespace)

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
        self.scorers: str | None = None  # scorer_help(), computed once

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        from prefer.config import STAGE_CONFIGS

        if name in STAGE_CONFIGS:
            kwargs["epilog"] = lambda: self.epilog(name)  # when help is shown
            kwargs["formatter_class"] = argparse.RawDescriptionHelpFormatter
        return self.commands.add_parser(name, **kwargs)

    def epilog(self, name: str) -> str:
        from prefer.config import COMMAND_DEFAULTS, STAGE_CONFIGS, describe

        cls = STAGE_CONFIGS[name]
        epilog = (
            f"config keys ({cls.__name__}; set them as KEY=VALUE or in --config YAML; "
            f"`prefer config {name}` prints them as YAML):\n{describe(cls, COMMAND_DEFAULTS.get(name))}"
        )
        if "scorer=" in epilog:  # keys that name a scorer: the names, plugins and user forms
            if self.scorers is None:
                from prefer.scorers import scorer_help

                self.scorers = scorer_help()
            epilog += f"\n\n{self.scorers}"
        return epilog


def _training_stage(commands: _Commands, name: str, help: str, common: bool = True) -> argparse.ArgumentParser:
    """The parser of a training stage: --resume, then (`common`) --config and the overrides."""
    parser = commands.add_parser(name, help=help)
    parser.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    if common:
        _common(parser)
    return parser


def _add_sample(commands) -> None:
    """`prefer sample`: its flags (checked before the model loads, in _run_sample)."""
    sample = commands.add_parser("sample", help="print samples of a checkpoint (unprompted, or answers to prompts)")
    sample.add_argument("checkpoint")
    sample.add_argument("-n", "--num-samples", type=int, default=4, help="samples (with prompts: of each prompt)")
    _prompt_arguments(sample, "-n samples answer each")
    sample.intermixed = True
    sample.add_argument(
        "--tag",
        choices=["auto", "none", "good", "bad"],
        default="auto",
        help="unprompted samples: control token after <|endoftext|> (auto: good for conditional models)",
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
        help="pii (default: Debian changelogs, the snapshot shipped with prefer), pep8 (stdlib code) or toxicity "
        "(fortunes)",
    )
    demo.add_argument(
        "--pipeline",
        choices=["pretraining", "rlhf", "chat"],
        default="pretraining",
        help="pretraining (default: MLE vs conditional training), rlhf (InstructGPT, short) or chat (GRPO on "
        "SmolLM2-135M-Instruct against IFEval's instruction checkers, held-out topics; keys: prefer config chat)",
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

    pretrain = _training_stage(commands, "pretrain", "pretrain one model with a PHF objective", common=False)
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

    evaluate = commands.add_parser(
        "evaluate",
        help="misalignment of a checkpoint's samples, as JSON (default: runs/evaluate/<checkpoint's name>/"
        "evaluation.json, never inside the checkpoint; out=FILE to choose)",
    )
    evaluate.add_argument("checkpoint", help="a model directory (e.g. runs/pretrain/final)")
    _prompt_arguments(evaluate, "samples_per_prompt=S samples answer each")
    _common(evaluate)
    evaluate.intermixed = True

    _add_sample(commands)
    _training_stage(commands, "sft", "supervised finetuning on demonstrations (loss on responses only)")

    _training_stage(commands, "reward", "train a reward model on K-way rankings")

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

    _training_stage(
        commands,
        "ppo",
        "policy-gradient RL against a scorer or reward model, KL to the SFT model: algorithm=ppo|rloo|grpo "
        "(PPO-ptx: ptx.coef>0)",
    )

    convert = commands.add_parser(
        "convert",
        help="write rankings as preference pairs for other tools "
        '({"prompt", "chosen", "rejected"}: every non-tied pair)',
    )
    convert.add_argument("rankings", help="rankings JSONL (or pairs, or a saved data set directory)")
    convert.add_argument("--to", choices=["pairs"], default="pairs")
    convert.add_argument("-o", "--out", required=True, help="the JSONL file to write")

    _training_stage(commands, "dpo", "DPO / IPO / listwise DPO on K-way rankings from the SFT model")

    _training_stage(commands, "grpo", "prefer ppo algorithm=grpo, with GRPO's defaults (algorithm=rloo: RLOO's)")

    redteam = commands.add_parser("redteam", help="stochastic few-shot red-teaming of a checkpoint (target=DIR)")
    _common(redteam)

    from prefer.labeling.app.cli import add_export_parser, add_import_parser, add_round_parser, add_serve_parser

    add_serve_parser(commands)  # the labeling app's commands: no torch, argparse only
    add_export_parser(commands)
    add_import_parser(commands)
    add_round_parser(commands)
    return parser


# Commands whose unfinished work the same command line continues (finished runs reused, an unfinished one resumed).
CONTINUES = ("experiment", "demo", "rlhf")


def _resume_hint(args, argv: list[str]) -> str:
    """What to run after a Ctrl-C: a stage that takes --resume (every training stage) names its command line with
    --resume; the pipelines continue by running the same command again."""
    import shlex

    line = shlex.join(["prefer", *map(str, argv)])
    if hasattr(args, "resume"):
        return f"; resume with: {line}{'' if args.resume else ' --resume'}"
    if args.command in CONTINUES:
        return f"; run the same command again to continue: {line}"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable
    if argv is None:  # as the program: a Ctrl-C is remembered (prefer.errors.note_interrupt)
        signal.signal(signal.SIGINT, note_interrupt)
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
        print(f"prefer: interrupted{_resume_hint(args, sys.argv[1:] if argv is None else argv)}", file=sys.stderr)
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
    """A stage's config, over the command's own defaults (`prefer grpo`'s algorithm). `--resume` without `--config`
    starts from the run's own saved config.yaml, so `prefer pretrain --resume out_dir=runs/x` continues exactly the
    run that was started there."""
    from pathlib import Path

    from prefer.config import COMMAND_DEFAULTS, load_config

    defaults = COMMAND_DEFAULTS.get(args.command)

    yaml_path = args.config
    if args.resume and yaml_path is None:
        out_dir = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("out_dir=")), None)
        if out_dir is None:
            out_dir = load_config(cls, overrides=args.overrides, defaults=defaults).out_dir
        saved = Path(out_dir) / "config.yaml"
        if not saved.is_file():
            raise PreferError(
                f"{saved}: no saved config, so there is no run to resume in {out_dir} (killed before "
                "it started?); start it without --resume"
            )
        yaml_path = saved
    return load_config(cls, yaml_path=yaml_path, overrides=args.overrides, defaults=defaults)


def _run_demo(args) -> int:
    if args.pipeline == "chat":
        from prefer.config import load_config
        from prefer.config.chat import ChatConfig
        from prefer.experiments.chat import chat

        if args.task is not None:
            raise PreferError("demo --pipeline chat: its task is IFEval's instruction following; leave out --task")
        chat(load_config(ChatConfig, yaml_path=args.config, overrides=args.overrides))
        return 0
    if args.pipeline == "rlhf":
        if args.task not in (None, "pii"):
            raise PreferError("demo --pipeline rlhf: only the pii task has a short RLHF demo (configs/rlhf-demo.yaml)")
        args.config = args.config or str(_configs_dir() / "rlhf-demo.yaml")
        return _run_rlhf(args)
    args.objectives = "mle,conditional"
    # The PII demo reads the changelog snapshot shipped with prefer, not this machine's changelogs (which change as
    # packages are installed, and the figures with them); `pretrain.data.source=changelogs` reads the machine's.
    task = args.task or ["pii", *(o.split("=", 1)[1] for o in args.overrides if o.startswith("task="))][-1]
    snapshot = ["pretrain.data.source=changelogs-snapshot"] if task == "pii" and args.config is None else []
    args.overrides = ["out_dir=runs/demo", *snapshot, *args.overrides]
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


# The training stages: command -> (its config class in prefer.config, the module and the function that run it as
# `function(config, resume=...)`); `--resume` without `--config` continues the run's own saved config.
TRAINING_STAGES = {
    "pretrain": ("PretrainConfig", "prefer.stages.pretrain", "pretrain"),
    "sft": ("SFTConfig", "prefer.stages.sft", "sft"),
    "reward": ("RewardConfig", "prefer.stages.reward", "reward"),
    "ppo": ("PolicyGradientConfig", "prefer.stages.policy_gradient", "policy_gradient"),
    "dpo": ("DPOConfig", "prefer.stages.dpo", "dpo"),
    "grpo": ("PolicyGradientConfig", "prefer.stages.policy_gradient", "policy_gradient"),  # algorithm=grpo
}


def _run_training_stage(args) -> int:
    import importlib

    import prefer.config

    config_class, module, function = TRAINING_STAGES[args.command]
    if getattr(args, "init_from", None):  # pretrain --init-from DIR
        args.overrides = [*args.overrides, f"model.init_from={args.init_from}"]
    run = getattr(importlib.import_module(module), function)
    run(_stage_config(getattr(prefer.config, config_class), args), resume=args.resume)
    return 0


def _run_corpus(args) -> int:
    from prefer.config import PretrainConfig, load_config
    from prefer.data.pipeline import build_corpus, score_shard

    config = load_config(PretrainConfig, yaml_path=args.config, overrides=args.overrides)
    task, data = config.data.resolved_task(), config.data
    # what both the sharded scoring and the whole corpus read, and where
    reading = dict(
        source=data.source,
        max_bytes=data.max_bytes,
        cache_dir=data.cache_dir,
        workers=data.workers,
        num_shards=data.num_shards,
        progress=config.runtime.progress,
    )
    if data.shard_index is not None:  # one machine's part of a sharded scoring run
        print(json.dumps(score_shard(task, shard_index=data.shard_index, **reading), indent=2))
        return 0
    threshold = config.objective.resolved(task.name).threshold
    corpus = build_corpus(task, threshold=threshold, validation_fraction=data.validation_fraction, **reading)
    summary = {
        "provenance": corpus.provenance,
        "score_summary": corpus.summary,
        "train_documents": len(corpus.train),
        "validation_documents": len(corpus.validation),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _prompt_arguments(parser: argparse.ArgumentParser, each: str) -> None:
    """--prompts FILE and --prompt TEXT of `sample` and `evaluate`: prompts rendered as every stage renders them."""
    parser.add_argument(
        "--prompts",
        metavar="FILE",
        help='JSONL of {"prompt": TEXT} or {"messages": [...]} lines (conversations rendered with the model\'s '
        f"chat template, as sft, ppo and label render them); {each}",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a prompt (repeatable): a user turn for a model with a chat template, else text to continue",
    )


def _reject_tag_as_prompt(args) -> None:
    """`--prompt good|bad|none|auto` chose the control tag before `--prompt` took text: say so, not sample it."""
    tags = [text for text in args.prompt if text in ("auto", "none", "good", "bad")]
    if tags:
        raise PreferError(
            f"{args.command}: --prompt {tags[0]}: --prompt is a prompt's text now; the control tag is "
            f"{'--tag ' if args.command == 'sample' else 'sampling.prompt='}{tags[0]}"
        )


def _run_evaluate(args) -> int:
    from dataclasses import replace

    from prefer.config import EvaluateConfig, load_config
    from prefer.stages.evaluate import evaluate

    _reject_tag_as_prompt(args)
    overrides = [f"checkpoint={args.checkpoint}", *([f"prompts={args.prompts}"] if args.prompts else [])]
    config = load_config(EvaluateConfig, yaml_path=args.config, overrides=[*overrides, *args.overrides])
    if args.prompt:
        config = replace(config, prompt_texts=[*config.prompt_texts, *args.prompt])
    results = evaluate(config)
    summary = {k: v for k, v in results.items() if k not in ("samples",)}
    for scores in summary["scores"].values():
        scores.pop("per_sample")
    print(json.dumps(summary, indent=2))
    print(f"[evaluate] results: {results['out']}", file=sys.stderr)
    return 0


def _run_sample(args) -> int:
    from prefer.controls import resolve_controls
    from prefer.evaluation.misalignment import generate_texts
    from prefer.evaluation.prompts import command_line_prompts, read_prompt_file, render_queries
    from prefer.models.build import load_checkpoint
    from prefer.training import resolve_device

    # the sampling flags, each checked before the model loads: argument -> (flag, rule, its check)
    flags = {
        "num_samples": ("--num-samples", "must be positive", lambda value: value > 0),
        "max_new_tokens": ("--max-new-tokens", "must be positive", lambda value: value > 0),
        "temperature": ("--temperature", "must be finite and >= 0", lambda value: 0 <= value < float("inf")),
        "top_p": ("--top-p", "must be in (0, 1]", lambda value: 0 < value <= 1),
    }
    sampling = {name: getattr(args, name) for name in flags}
    for name, (flag, rule, ok) in flags.items():
        if not ok(sampling[name]):
            raise PreferError(f"sample: {flag} {sampling[name]}: {rule}")
    _reject_tag_as_prompt(args)
    prompted = bool(args.prompts or args.prompt)
    if prompted and args.tag not in ("auto", "none"):
        raise PreferError(f"sample: --tag {args.tag}: a control tag starts unprompted samples only")
    file_prompts, where = read_prompt_file(args.prompts)  # a bad line is reported before the model loads
    model, tokenizer, info = load_checkpoint(args.checkpoint, resolve_device("auto"))
    controls = resolve_controls(
        prompt="none" if prompted else args.tag,
        block=args.block,
        conditional=bool(info.get("control_tokens_trained")),
    )
    queries = None
    if prompted:
        typed, typed_where = command_line_prompts(tokenizer, args.prompt)
        queries = render_queries(tokenizer, [*file_prompts, *typed], [*where, *typed_where])
    texts, _ = generate_texts(model, tokenizer, controls, **sampling, batch_size=64, seed=args.seed, queries=queries)
    for i, text in enumerate(texts):
        if queries is None:
            print(f"----- sample {i} (prompt: {controls.prompt}, blocked: {controls.block})\n{text}")
            continue
        p, j = divmod(i, args.num_samples)
        if j == 0:
            print(f"===== prompt {p} ({queries.where[p]})\n{queries.texts[p]}")
        print(f"----- sample {j} of prompt {p} (blocked: {controls.block})\n{text}")
    return 0


def _run_label(args) -> int:
    from dataclasses import asdict

    from prefer.config import LabelConfig, load_config
    from prefer.labeling import label_synthetic

    if not args.synthetic:
        raise PreferError("label: only synthetic labelers exist; pass --synthetic (a gold scorer ranks the samples)")
    config = load_config(LabelConfig, yaml_path=args.config, overrides=args.overrides)
    report = label_synthetic(config, progress=config.runtime.progress)
    print(
        json.dumps(
            {k: str(v) if k in ("rankings", "demonstrations") else v for k, v in asdict(report).items()}, indent=2
        )
    )
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
    from prefer.config import COMMAND_DEFAULTS, STAGE_CONFIGS, default_yaml

    print(default_yaml(STAGE_CONFIGS[args.stage], COMMAND_DEFAULTS.get(args.stage)), end="")
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


def _run_labeling(args) -> int:
    """`prefer import` / `prefer round`: run_import / run_round of the labeling app's cli."""
    from prefer.labeling.app import cli

    return getattr(cli, f"run_{args.command}")(args)


LIGHT_COMMANDS = ("serve", "export", "import")  # the labeling app starts without torch or transformers
COMMANDS = {
    "serve": _run_serve,
    "export": _run_export,
    "import": _run_labeling,
    "round": _run_labeling,
    "config": _run_config,
    "convert": _run_convert,
    "demo": _run_demo,
    "report": _run_report,
    "experiment": _run_experiment,
    "rlhf": _run_rlhf,
    "pretrain": _run_training_stage,
    "corpus": _run_corpus,
    "evaluate": _run_evaluate,
    "sample": _run_sample,
    "sft": _run_training_stage,
    "reward": _run_training_stage,
    "label": _run_label,
    "ppo": _run_training_stage,
    "dpo": _run_training_stage,
    "grpo": _run_training_stage,
    "redteam": _run_redteam,
}

if __name__ == "__main__":
    sys.exit(main())
