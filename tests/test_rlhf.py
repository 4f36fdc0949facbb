"""`prefer rlhf` end to end on a tiny model and a learnable toy preference (the letter "a"), and its bad input.

The toy: a tiny GPT-2 trained on lines of random words; prompts are first lines ("cat sky banana"), the gold scorer
`not_a` (tests/toy_scorers.py, named by its `py:` spec) is the fraction of characters that are not "a". The command
runs every stage (labels, three reward models, SFT selection, best-of-n, PPO, PPO-ptx, PPO against the weak proxy)
and PPO must beat SFT by the gold judge.
"""

import itertools
import json
import random

import pytest
import torch
from toy_scorers import not_a, spec

from prefer.cli import main
from prefer.config import RLHFConfig, load_config
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.experiments.rlhf import entry_prompt, rlhf
from prefer.models.build import build_model
from prefer.objectives import mle_loss, next_token_targets
from prefer.report import report
from prefer.training import save_model

WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree", "lamp", "road", "aa", "red", "sun"]

pytestmark = pytest.mark.usefixtures("one_thread")


GOLD = spec("not_a")  # the toy gold, named as a user names their own scorer (no registry patching)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A corpus of two-line texts whose first lines are distinct word triples, and a tiny LM trained on it."""
    root = tmp_path_factory.mktemp("rlhf")
    rng = random.Random(0)
    triples = list(itertools.product(WORDS, repeat=3))
    rng.shuffle(triples)
    texts = [
        " ".join(t) + "\n" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + ".\n"
        for t in triples[:600]
    ]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    torch.manual_seed(0)
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    ids = [tokenizer.eos_token_id]
    for text in texts:
        ids += tokenizer.encode(text) + [tokenizer.eos_token_id]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        batch = blocks[torch.randint(len(blocks), (16,))]
        (targets,) = next_token_targets(batch)
        loss, _ = mle_loss(model(batch).logits[:, :-1], targets, torch.ones_like(targets, dtype=torch.bool))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_model(root / "lm", model, tokenizer, info={"task": "toy"})
    return root


def toy_overrides(toy, out, **extra):
    values = {
        "out_dir": out,
        "task": "pii",
        "source": toy / "corpus.jsonl",
        "gold_scorer": GOLD,
        "init_from": toy / "lm",
        "prompt_lines": 0,
        "label_prompts": 400,
        "validation_prompts": 8,
        "rl_prompts": 48,
        "eval.prompts": 64,
        "eval.max_new_tokens": 12,  # the labelers' length, as the protocol read it before it had a section
        "label.num_responses": 4,
        "label.generation.max_new_tokens": 12,
        "label_agreement": 0.726,
        "sft_epochs": "[2]",
        "sft.optimizer.lr": 1e-3,
        "reward.train.epochs": 3,
        "reward.optimizer.lr": 2e-3,
        "weak_fraction": 0.1,
        "best_of_n": "[1,2,4]",
        "ppo.train.iterations": 30,
        "ppo.train.batch_size": 16,
        "ppo.train.minibatch_size": 8,
        "ppo.train.epochs": 2,
        "ppo.rollout.max_new_tokens": 12,
        "ppo.optimizer.lr": 1e-3,
        "kl_coefs": "[0.05]",
        "ptx_coef": 0.5,
        "ppo.ptx.batch_size": 4,
        "overopt_iterations": 10,
        "overopt_every": 5,
        "eval.heldout_blocks": 16,
        "dpo_runs": "[dpo:0.1,listwise:0.1,kto:0.1]",
        "dpo.train.epochs": 1,
        "dpo.optimizer.lr": 1e-3,
        "ranking_sizes": "[2]",
        "group_algorithms": "[rloo,grpo]",
        "group.train.iterations": 8,
        "group.train.batch_size": 4,
        "group.rollout.max_new_tokens": 12,
        "group.optimizer.lr": 1e-3,
        "collection_rounds": 2,
        "runtime.device": "cpu",
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def results(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "rlhf"
    return rlhf(load_config(RLHFConfig, overrides=toy_overrides(toy, out))), out


def test_ppo_beats_sft_by_the_gold_judge_on_a_learnable_preference(results):
    results, _ = results
    policies = results["policies"]
    ppo = policies["ppo_kl0.05"]
    print(
        f"gold: SFT {policies['sft']['gold']['mean']:.3f}, PPO {ppo['gold']['mean']:.3f}; "
        f"win rate {ppo['win_rate']['win_rate']:.3f} {ppo['win_rate']['ci']}"
    )
    assert ppo["win_rate"]["win_rate"] > 0.5 and ppo["win_rate"]["ci"][0] > 0.5
    assert ppo["gold"]["mean"] < policies["sft"]["gold"]["mean"]  # misalignment: lower is better
    assert results["reward_models"]["rm"]["heldout_gold_accuracy"] > 0.7
    # the weak proxy learned from a tenth of the rankings: worse than the full reward model
    rm = results["reward_models"]
    assert rm["rm_weak"]["heldout_gold_accuracy"] < rm["rm"]["heldout_gold_accuracy"]
    assert abs(rm["noise"]["agreement_with_gold"] - 0.85) < 0.1  # two labelers agree 72.6% ~ each 85% right
    # KL to the SFT model: zero for the SFT model itself (the same log-probs on both sides), positive for a model
    # that is not it, measured on that model's own samples (the pretrained start, which SFT moved away from)
    assert policies["sft"]["kl"]["mean"] == 0
    assert ppo["kl"]["mean"] > 0 and policies["pretrained"]["kl"]["mean"] > 0.1


def test_every_policy_is_measured_on_one_protocol_and_written_out(results):
    results, out = results
    assert set(results["splits"].values()) == {400, 8, 48, 64}
    prompts = {
        name: [json.loads(line)["prompt"] for line in (out / "prompts" / f"{name}.jsonl").read_text().splitlines()]
        for name in results["splits"]
    }
    assert len(set().union(*prompts.values())) == sum(map(len, prompts.values()))  # disjoint splits
    assert set(results["policies"]) == {
        "sft",
        "pretrained",
        "ppo_kl0.05",
        "ppo_kl0.05_ptx",
        "dpo_b0.1",
        "listwise_b0.1",
        "kto_b0.1",
        "dpo_b0.1_k2",
        "listwise_b0.1_k2",
        "rloo_kl0.05",
        "grpo_kl0.05",
        "ppo_kl0.05_round2",
    }
    for entry in results["policies"].values():
        assert {"gold", "proxy_reward", "kl", "win_rate", "response_chars", "distinct_2", "heldout"} <= set(entry)
        assert set(entry["proxy_reward"]) == {"rm", "rm_weak"}
    bon = results["best_of_n"]["rm"]
    assert [e["n"] for e in bon] == [1, 2, 4] and bon[0]["kl"]["mean"] == 0.0
    assert bon[2]["kl_analytic"] == pytest.approx(1.3862944 - 0.75)
    assert bon[2]["proxy_reward"]["rm"]["mean"] > bon[0]["proxy_reward"]["rm"]["mean"]  # selection works
    assert [p["iterations"] for p in results["overoptimisation"]] == [5, 10]
    # the policy at each point is kept, a plain model directory, so a rerun evaluates it without the run
    assert all((out / "ppo_weak_points" / f"{n:04d}" / "config.json").exists() for n in (5, 10))
    for name in (
        "results.md",
        "results.csv",
        "results.json",
        "overoptimisation.png",
        "win_rate.png",
        "alignment_tax.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert "win rate vs SFT" in (out / "results.md").read_text()
    page = report([out], out=out / "report.html").read_text()  # `prefer report` shows the run
    assert f"RLHF: pii task, gold {GOLD}" in page and page.count("data:image/png;base64") == 3


def test_dpo_and_critic_free_policies_join_the_table(results):
    results, out = results
    policies = results["policies"]
    sft_gold = policies["sft"]["gold"]["mean"]
    for name in ("dpo_b0.1", "listwise_b0.1", "rloo_kl0.05", "grpo_kl0.05"):
        entry = policies[name]
        print(f"{name}: gold {entry['gold']['mean']:.3f} (SFT {sft_gold:.3f}), KL {entry['kl']['mean']:.2f}")
        assert entry["train_seconds"] > 0 and entry["kl"]["mean"] > 0
    # DPO learns the toy preference from the rankings: a better gold than SFT, and its implicit reward orders the
    # held-out rankings better than chance
    assert policies["dpo_b0.1"]["gold"]["mean"] < sft_gold
    assert policies["listwise_b0.1"]["implicit_reward_accuracy"] > 0.5
    # K = 2: listwise DPO is pairwise DPO exactly, so the two runs train the same policy
    assert policies["listwise_b0.1_k2"]["gold"]["mean"] == pytest.approx(
        policies["dpo_b0.1_k2"]["gold"]["mean"], rel=1e-4
    )
    table = (out / "results.md").read_text()
    assert (
        "| grpo_kl0.05 | grpo | KL coef 0.05 |" in table and "| listwise_b0.1 | listwise | beta 0.1, K = 4 |" in table
    )


def test_kto_on_the_labelers_binary_labels_joins_the_table_next_to_dpo(results):
    """The labelers mark each of the K responses good or bad (at most the median score: good); KTO trains on those
    labels of the same responses DPO's rankings order, and is measured on the same protocol."""
    results, out = results
    labels = results["labels"]
    assert labels["feedback_examples"] > 3.9 * labels["comparisons"]  # every non-empty response of K = 4
    assert 0.4 < labels["feedback_desirable"] / labels["feedback_examples"] < 0.7
    kto, sft_gold = results["policies"]["kto_b0.1"], results["policies"]["sft"]["gold"]["mean"]
    win = kto["win_rate"]
    print(
        f"kto: gold {kto['gold']['mean']:.3f} (SFT {sft_gold:.3f}), win rate {win['win_rate']:.3f} {win['ci']}, "
        f"KL {kto['kl']['mean']:.2f}; dpo: gold {results['policies']['dpo_b0.1']['gold']['mean']:.3f}"
    )
    assert kto["kind"] == "kto" and kto["train_seconds"] > 0 and kto["kl"]["mean"] > 0
    assert win["ci"][0] <= win["win_rate"] <= win["ci"][1] and 0 < win["ci"][1] - win["ci"][0] < 0.5
    assert kto["heldout_reward_margin"] > 0  # its implicit reward separates held-out good from bad responses
    assert kto["gold"]["mean"] < sft_gold  # and it learns the toy preference
    table = (out / "results.md").read_text()
    assert "| kto_b0.1 | kto | beta 0.1, binary labels of K = 4 samples |" in table
    assert (out / "labels" / "feedback.jsonl").exists()


def test_a_second_collection_round_ranks_the_policys_samples_and_trains_on_both_rounds(results, toy):
    """Round 2 (InstructGPT's collection in rounds): round 1's PPO policy answers the labelling prompts, the labelers
    rank its samples, a reward model learns from both rounds' rankings and PPO from SFT runs against it. Round 1's
    held-out prompts stay held out of every round, so both reward models are judged on prompts neither saw."""
    from prefer.data.formats import read_rankings
    from prefer.experiments.rlhf_data import heldout_split

    results, out = results
    (entry,) = results["rounds"]
    assert entry["round"] == 2 and entry["responses_from"] == "ppo_kl0.05"
    first = read_rankings(out / "labels" / "rankings.jsonl")
    second = read_rankings(out / "round2" / "labels" / "rankings.jsonl")
    responses = {c.prompt: set(c.responses) for c in first}
    shared = [c for c in second if c.prompt in responses]
    assert len(shared) > 0.8 * len(second)  # the same labelling prompts ...
    assert sum(set(c.responses) != responses[c.prompt] for c in shared) > 0.9 * len(shared)  # ... new responses
    config = load_config(RLHFConfig, overrides=toy_overrides(toy, out))
    train1, heldout1 = heldout_split(config, first)
    heldout_prompts = {c.prompt for c in heldout1}
    train2 = [c for c in second if c.prompt not in heldout_prompts]
    trained = read_rankings(out / "round2" / f"rankings_train_{entry['training_rankings']}.jsonl")
    assert [(c.prompt, c.responses) for c in trained] == [(c.prompt, c.responses) for c in train1 + train2]
    assert len(train2) < len(second)  # some of round 2's rankings are on the held-out prompts
    accuracy = entry["reward_model_accuracy"]
    assert set(accuracy) == {"round1_heldout", "round2_heldout"}
    for split in accuracy.values():
        assert set(split) == {"rm_round1", "rm_round2"}
        assert all(0 <= v["accuracy"] <= 1 and v["pairs"] > 0 for v in split.values())
    # round 1's reward model, judged on round 1's held-out rankings here and in the reward-model table: one number
    assert accuracy["round1_heldout"]["rm_round1"]["accuracy"] == pytest.approx(
        results["reward_models"]["rm"]["heldout_gold_accuracy"]
    )
    policy = results["policies"]["ppo_kl0.05_round2"]
    print(
        f"round 2: RM accuracy on round-2 held-out {accuracy['round2_heldout']}; PPO gold {policy['gold']['mean']:.3f} "
        f"(round 1 {results['policies']['ppo_kl0.05']['gold']['mean']:.3f}, SFT "
        f"{results['policies']['sft']['gold']['mean']:.3f}), win rate {policy['win_rate']['win_rate']:.3f}"
    )
    assert policy["kind"] == "ppo_round" and policy["train_seconds"] > 0
    assert policy["win_rate"]["ci"][0] > 0.5  # it too learns the toy preference
    table = (out / "results.md").read_text()
    assert "| 2 | ppo_kl0.05's |" in table and "| ppo_kl0.05_round2 | ppo_round | KL coef 0.05 |" in table


def test_a_second_run_reuses_every_stage(results, toy):
    results, out = results
    again = rlhf(load_config(RLHFConfig, overrides=toy_overrides(toy, out)))
    assert again["policies"]["ppo_kl0.05"]["gold"] == results["policies"]["ppo_kl0.05"]["gold"]
    assert again["seconds"]["total"] < results["seconds"]["total"] / 3


def test_a_cached_evaluation_is_not_reused_under_another_gold(results, toy, tmp_path):
    import shutil

    from prefer.experiments.rlhf_policies import Evaluator

    results, out = results
    run = tmp_path / "rlhf"
    shutil.copytree(out, run)  # the module's run stays as it is for the other tests
    config = load_config(RLHFConfig, overrides=toy_overrides(toy, run))
    rm_paths = {name: run / name / "final" for name in ("rm", "rm_weak")}
    prompts = [json.loads(line)["prompt"] for line in (run / "prompts" / "eval.jsonl").read_text().splitlines()]

    def evaluator(gold, name):
        made = Evaluator(config, run, prompts, rm_paths, gold, ["cat sky.\n"] * 4, "cpu", gold_name=name)
        made.set_reference(run / "sft_2ep" / "final")
        made.sft_gold = results["policies"]["sft"]["per_sample_gold"]
        return made

    cached = evaluator(not_a, GOLD).evaluate("pretrained", toy / "lm")
    assert cached["gold"] == results["policies"]["pretrained"]["gold"]  # same gold: the cached entry
    zero = evaluator(lambda texts: [0.0] * len(texts), "zero").evaluate("pretrained", toy / "lm")
    assert zero["gold"]["mean"] == 0.0 and cached["gold"]["mean"] > 0  # another gold: measured again


def test_entry_prompt_is_the_first_lines_without_the_final_newline():
    segments = ["pkg (1.0-1) unstable; urgency=medium\n", "\n", "  * New upstream release.\n", "\n", " -- A <a@b>\n"]
    first = "pkg (1.0-1) unstable; urgency=medium"
    assert entry_prompt(segments, lines=1, max_chars=200) == first + "\n\n  * New upstream release."
    assert entry_prompt(segments, lines=0, max_chars=200) == "pkg (1.0-1) unstable; urgency=medium"
    assert entry_prompt(segments, lines=1, max_chars=20) is None
    assert entry_prompt(segments[:1], lines=1, max_chars=200) is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("gold_scorer=no-such-scorer", "unknown scorer 'no-such-scorer'"),
        ("label_prompts=100000", "distinct prompts"),
        ("label.num_responses=12", "num_responses"),
        ("label.num_responses=1", "num_responses"),
        ("overopt_points=[0,4]", "overopt_points"),
        ("dpo_runs=[dpo:0]", "dpo_runs"),
        ("group_algorithms=[ppo]", "group_algorithms"),
        ("ranking_sizes=[4]", "ranking_sizes"),
        # keys the command sets for each run it makes are refused, naming the key that says it instead
        ("ppo.kl.coef=0.5", "ppo.kl.coef: prefer rlhf sets it for each run it makes; use kl_coefs"),
        ("ppo.ptx.source=corpus.jsonl", "ppo.ptx.source: prefer rlhf sets it for each run it makes; use source"),
        ("ppo.reward.scorer=pii", "ppo.reward.scorer"),
        ("dpo.dpo.beta=0.5", "use dpo_runs"),
        ("group.algorithm=rloo", "use group_algorithms"),
        ("ppo.algorithm=grpo", "use group_algorithms"),
        # every run of group_algorithms is checked before any starts: the RLOO run would ignore GRPO's own key
        (
            "group.group.scale=false",
            "group_algorithms: rloo with the group section: group.scale: read by algorithm=grpo",
        ),
        ("sft.runtime.seed=3", "sft.runtime.seed: prefer rlhf sets it for each run it makes; use runtime.seed"),
        ("group.runtime.device=cpu", "use runtime.device"),
        ("label.runtime.device=cpu", "use runtime.device"),
        # the old top-level keys are gone (no aliases): unknown keys
        ("eval_samples=2", "eval_samples"),
        ("seed=1", "seed"),
        ("runtime.precision=bf16", "runtime.precision"),
        ("eval.temperature=0", "eval.temperature"),
        ("ppo.model.init_from=/somewhere", "ppo.model.init_from: prefer rlhf fills this path in"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(toy, tmp_path, capsys, override, message):
    code = main(["rlhf", *toy_overrides(toy, tmp_path / "run"), override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "labels").exists()  # stopped before any work


@pytest.mark.parametrize("name", ["rlhf-pii", "rlhf-pep8", "rlhf-demo"])
def test_the_shipped_configs_load(name):
    from pathlib import Path

    config = load_config(RLHFConfig, yaml_path=Path(__file__).parent.parent / "configs" / f"{name}.yaml")
    assert config.label.num_responses == 4 and config.label_agreement == 0.726
    # the protocol samples as it did when it read the labelers' settings (so the tables stay the same)
    assert config.eval.max_new_tokens == config.label.generation.max_new_tokens
    assert config.eval.batch_size == config.label.batch_size
    assert (config.eval.samples, config.eval.temperature) == (1, 1.0)


def test_the_eval_section_defaults_are_the_values_the_protocol_read_before():
    """Before `eval:`, the protocol read eval_prompts 256, eval_samples 1, eval_temperature 1.0, heldout_blocks 64
    and the labelers' max_new_tokens (64) and batch_size (128) of the command's label template."""
    config = RLHFConfig()
    assert (config.eval.prompts, config.eval.samples, config.eval.temperature, config.eval.heldout_blocks) == (
        256,
        1,
        1.0,
        64,
    )
    assert (config.eval.max_new_tokens, config.eval.batch_size) == (64, 128)
    assert (config.label.generation.max_new_tokens, config.label.batch_size) == (64, 128)
    assert (config.runtime.seed, config.runtime.device, config.runtime.progress) == (0, "auto", False)


def test_the_evaluator_samples_and_measures_the_kl_with_the_eval_section(tmp_path, monkeypatch):
    from prefer.experiments import rlhf_policies

    seen = {}
    monkeypatch.setattr(rlhf_policies, "sample_policy", lambda *args, **kwargs: seen.setdefault("sample", kwargs))
    overrides = ["eval.max_new_tokens=7", "eval.batch_size=3", "eval.temperature=0.5", "runtime.seed=10"]
    config = load_config(RLHFConfig, overrides=overrides)
    evaluator = rlhf_policies.Evaluator(config, tmp_path, ["p"], {}, not_a, [], "cpu", gold_name=GOLD)
    evaluator.samples(None, None, ["p"], 2, seed_offset=5)
    assert {k: seen["sample"][k] for k in ("max_new_tokens", "batch_size", "temperature", "seed")} == {
        "max_new_tokens": 7,
        "batch_size": 3,
        "temperature": 0.5,
        "seed": 15,  # runtime.seed + the offset
    }
    assert seen["sample"]["samples_per_prompt"] == 2 and seen["sample"]["progress"] is False


def test_demo_rlhf_is_only_for_the_pii_task(capsys):
    assert main(["demo", "--pipeline", "rlhf", "--task", "pep8"]) == 2
    assert "only the pii task" in capsys.readouterr().err


def test_without_init_from_the_command_pretrains_the_starting_model_once(pii_corpus, tmp_path):
    from prefer.experiments.rlhf import starting_model

    overrides = [
        f"source={pii_corpus}",
        "pretrain.data.cache_dir=" + str(tmp_path / "cache"),
        "pretrain.data.workers=1",
        "pretrain.data.validation_fraction=0.1",
        "pretrain.model.size=tiny",
        "pretrain.model.vocab_size=400",
        "pretrain.model.context=64",
        "pretrain.train.tokens=20000",
        "pretrain.train.batch_size=16",
        "pretrain.train.eval_every=10",
        "pretrain.train.checkpoint_every=10",
        "runtime.device=cpu",
    ]
    config = load_config(RLHFConfig, overrides=overrides)
    final = starting_model(config, tmp_path / "run")
    assert final == tmp_path / "run" / "pretrain" / "final" and (final / "config.json").exists()
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    assert starting_model(config, tmp_path / "run") == final  # a second run resumes the finished run
    assert json.loads((final / "prefer.json").read_text())["tokens"] >= 20000
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp  # not trained (nor written) again


def test_a_gold_that_ties_every_response_stops_right_after_labelling(toy, tmp_path, capsys):
    """A constant gold leaves no preference to learn: one line naming gold_scorer, before any reward model trains."""
    constant = tmp_path / "constant_gold.py"
    constant.write_text("def score(texts):\n    return [0.0] * len(texts)\n")
    run = tmp_path / "run"
    code = main(["rlhf", *toy_overrides(toy, run), f"gold_scorer=py:{constant}:score", "fluency_weight=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert (
        err.startswith("prefer: error: gold_scorer: py:") and "ties every response" in err and "fluency_weight" in err
    )
    assert not (run / "rm").exists() and not (run / "labels" / "rankings.jsonl").exists()  # stopped at labelling


def test_too_few_rankings_for_a_held_out_split_stop_before_the_reward_models():
    from types import SimpleNamespace

    from prefer.experiments.rlhf_data import check_labels_separate

    report = SimpleNamespace(prompts=400, comparisons=3, dropped_all_tied=397)
    with pytest.raises(PreferError, match=r"gold_scorer: g ranked 400 .* tied every response of 397 .* leaving 3"):
        check_labels_separate(report, gold="g", validation_fraction=0.1)  # round(0.3) = 0 held out
    check_labels_separate(
        SimpleNamespace(prompts=400, comparisons=10, dropped_all_tied=390), gold="g", validation_fraction=0.1
    )
