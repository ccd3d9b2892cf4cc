"""Numerics in both dtypes: every forward sees the weights of the last optimizer step.

bf16 autocast keeps the low-precision copy of each weight for its whole outermost region; a
region spanning an optimizer step would make every later forward of the update run on the
rollout's weights (ratios stuck at 1, no clipping, a warm-up that does not train). These tests
run on every machine: bf16 autocast works on any CPU (emulated, slower, where not native).
"""

from __future__ import annotations

import copy
import json

import gymnasium as gym
import pytest
import torch

from mpo_gym.agents import MPOAgent, MPOConfig, PPOAgent, PPOConfig, make_agent
from mpo_gym.policy import LMPolicy, tiny_model
from mpo_gym.trainer import TrainConfig, train

DTYPES = ("float32", "bfloat16")
OFF_POLICY = {"lr": 1e-2, "minibatch_size": 4, "micro_batch_size": 2, "ppo_epochs": 2, "seed": 0}


def make_policy(dtype, **kwargs):
    torch.manual_seed(0)
    model, tok = tiny_model(seed=0)
    return LMPolicy(model, tok, compute_dtype=dtype, **kwargs)


def make_envs(n=8):
    return [gym.make("mpo_gym/Toy-v0", tokenizer="char") for _ in range(n)]


def spy_on_scores(agent):
    """Record, for each mini-batch forward of the update, max |new log-prob - rollout's|."""
    gaps, original = [], agent.score_current

    def spy(mb, **kwargs):
        out = original(mb, **kwargs)
        gaps.append(float((out.logprobs.detach() - mb.old_logprobs)[mb.mask].abs().max()))
        return out

    agent.score_current = spy
    return gaps


@pytest.mark.parametrize("outer_region", [False, True], ids=["plain", "inside-a-user-region"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_after_the_first_optimizer_step_the_next_minibatch_sees_new_weights(dtype, outer_region):
    policy = make_policy(dtype, value_head=True)
    agent = PPOAgent(PPOConfig(**OFF_POLICY), policy)
    batch = agent.collect(make_envs(), policy)
    gaps = spy_on_scores(agent)
    region = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16" and outer_region)
    with region:  # a caller's own region around the update must not freeze the weights either
        agent.update(batch)
    steps = 2 * 2 * 2  # epochs x mini-batches x micro-batches
    assert len(gaps) == steps
    assert max(gaps[:2]) < 0.05, gaps  # the first step's micro-batches: the rollout's weights
    assert min(gaps[2:]) > 0.05, gaps  # every later forward: weights moved by lr 1e-2


def run_metrics(tmp_path, dtype, agent, **agent_kwargs):
    ak = {"lr": 1e-3, "ppo_epochs": 4, "minibatch_size": 4, "micro_batch_size": 2, **agent_kwargs}
    cfg = TrainConfig(env="mpo_gym/Toy-v0", model="tiny", agent=agent, dtype=dtype, num_envs=8, updates=2,
                      eval_tasks=0, out_dir=str(tmp_path / f"{agent}-{dtype}"), threads=1, agent_kwargs=ak)
    train(cfg, progress=False)
    return [json.loads(line) for line in (tmp_path / f"{agent}-{dtype}" / "metrics.jsonl").read_text().splitlines()]


# Measured (2-core AVX2, bf16 emulated): PPO clip fractions 0.462 / 0.363 in fp32 against
# 0.462 / 0.359 in bf16, ratio variances 0.0947 / 0.0423 against 0.0946 / 0.0429; MPO window
# clip fractions 0.395 / 0.332 against 0.422 / 0.352. With a region spanning the update the
# bf16 run gave 0.129 / 0.000 and 0.0145 / 0.0010: far outside these tolerances.
CLIPFRAC_TOL = 0.06  # absolute
RATIO_VAR_TOL = 0.25  # relative


@pytest.mark.parametrize("agent,keys", [
    ("ppo", ("losses/clipfrac", "losses/ratio_var")),
    ("mpo", ("mpo/clipfrac_united", "mpo/ratio_var_united")),
])
def test_short_run_clip_fractions_and_ratio_variances_agree_across_dtypes(tmp_path, agent, keys):
    extra = {"mpo_k": 3, "warmup_steps": 2, "warmup_batch_size": 4} if agent == "mpo" else {}
    fp32, bf16 = (run_metrics(tmp_path, d, agent, **extra) for d in DTYPES)
    fp32, bf16 = ([r for r in rows if r["step"] >= 1] for rows in (fp32, bf16))
    clip, var = keys
    for a, b in zip(fp32, bf16):
        assert a[clip] > 0.2, a  # off-policy steps clip in fp32 ...
        assert abs(a[clip] - b[clip]) <= CLIPFRAC_TOL, (a["step"], a[clip], b[clip])  # ... and in bf16
        assert abs(a[var] - b[var]) <= RATIO_VAR_TOL * a[var], (a["step"], a[var], b[var])
        assert b["checks/sample_logprob_gap_mean"] < 0.01 and a["checks/sample_logprob_gap_max"] < 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_mtp_warmup_loss_falls_in_both_dtypes(dtype):
    policy = make_policy(dtype, value_head=True, num_mtp_modules=2)
    agent = make_agent("mpo", policy, mpo_k=3, warmup_steps=20, warmup_lr=3e-3, warmup_batch_size=8)
    losses = [row["warmup/loss"] for row in agent.warmup(make_envs(4), policy)]
    assert len(losses) == 20
    # fp32 and bf16 measured the same curve to 3 digits: 8.37 -> 5.53 (step 5) -> 1.03 (step 20);
    # with a region spanning the warm-up, bf16 stayed at its starting value
    assert losses[-1] < 0.3 * losses[0], losses
    assert all(b < a + 0.05 for a, b in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("dtype", DTYPES)
def test_mpo_with_k1_updates_like_ppo_over_several_optimizer_steps(dtype):
    policy = make_policy(dtype, value_head=True)
    twin = copy.deepcopy(policy)
    ppo = PPOAgent(PPOConfig(**OFF_POLICY), policy)
    batch = ppo.collect(make_envs(), policy)
    mpo = MPOAgent(MPOConfig(**OFF_POLICY, mpo_k=1, warmup_steps=0), twin)
    ppo.torch_rng.manual_seed(5)
    mpo.torch_rng.manual_seed(5)
    metrics_p, metrics_m = ppo.update(batch), mpo.update(copy.deepcopy(batch))
    assert metrics_p["losses/clipfrac"] > 0.1  # the later steps were off-policy
    assert metrics_m["losses/clipfrac"] == pytest.approx(metrics_p["losses/clipfrac"], abs=1e-6)
    for (name, a), b in zip(policy.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("agent", ["ppo", "mpo"])
def test_resume_is_bit_exact_under_bf16(tmp_path, agent):
    extra = {"mpo_k": 3, "warmup_steps": 1, "warmup_batch_size": 2} if agent == "mpo" else {}
    kwargs = {"lr": 1e-3, "minibatch_size": 4, "micro_batch_size": 2, "ppo_epochs": 2, **extra}

    def cfg(folder, updates):
        return TrainConfig(env="mpo_gym/Toy-v0", model="tiny", agent=agent, dtype="bfloat16", num_envs=4,
                           updates=updates, eval_tasks=0, out_dir=str(tmp_path / folder), agent_kwargs=kwargs)

    train(cfg("a", 3), progress=False)
    train(cfg("b", 1), progress=False)
    train(cfg("b", 3), progress=False)
    a, b = (torch.load(tmp_path / f / "checkpoint" / "policy.pt") for f in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["resolved_dtype"] == "bfloat16"


def test_a_policy_computes_in_its_dtype_and_says_so():
    fp32, bf16 = make_policy("float32"), make_policy("bfloat16")
    ids = torch.randint(3, 20, (2, 12))
    mask = torch.ones_like(ids)
    a, b = fp32.score(ids, mask, 4).logprobs, bf16.score(ids, mask, 4).logprobs
    assert a.dtype == b.dtype == torch.float32
    assert 0 < float((a - b).detach().abs().max()) < 0.1  # bf16 products: close, not equal
    with pytest.raises(ValueError, match="compute_dtype"):
        make_policy("float16")


# ------------------------------------------------------------------ one meaning of --dtype
def letters_run(tmp_path, dtype="bfloat16"):
    import tests.dist_envs  # noqa: F401  (registers dist_test/Letters-v0)

    cfg = TrainConfig(env="dist_test/Letters-v0", model="tiny", agent="grpo", dtype=dtype, num_envs=8, updates=3,
                      eval_tasks=8, eval_batch=8, out_dir=str(tmp_path / "run"), threads=1, imports="tests.dist_envs",
                      checkpoint_every=1, agent_kwargs={"lr": 1e-2, "group_size": 4, "minibatch_size": 8,
                                                        "micro_batch_size": 4})
    train(cfg, progress=False)
    return tmp_path / "run"


def test_evaluating_a_run_folder_reproduces_its_eval_json_in_its_numerics(tmp_path, capsys):
    from mpo_gym.cli import main
    from mpo_gym.evaluation import evaluate, load_policy

    run = letters_run(tmp_path)
    stored = json.loads((run / "eval.json").read_text())["after"]
    assert stored["accuracy"] > 0  # measured 0.50 (0.25 before)
    policy = load_policy(str(run))
    assert policy.compute_dtype == "bfloat16"  # the run's resolved dtype, whatever "auto" is here
    result = evaluate("dist_test/Letters-v0", policy, limit=8, batch_size=3, progress=False,
                      env_kwargs={"split": "test"})
    assert [s.status == "correct" for s in result.samples] == [bool(x) for x in stored["outcomes"]]
    assert result.pass_at_k[1] == pytest.approx(stored["accuracy"])
    # the command line, from the run folder, reports the same accuracy
    code = main(["eval", "--model", str(run), "--suite", "dist_test/Letters-v0", "--import", "tests.dist_envs",
                 "--limit", "8", "--no-progress", "--out-dir", str(tmp_path / "eval")])
    assert code == 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert f"pass@1={100 * stored['accuracy']:.1f}%" in capsys.readouterr().out, saved


def test_a_run_folder_whose_latest_checkpoint_is_torn_loads_the_previous_one(tmp_path, capsys):
    from mpo_gym.evaluation import load_policy
    from mpo_gym.trainer import load_run

    run = letters_run(tmp_path)
    previous = torch.load(run / "checkpoint.prev" / "policy.pt")
    (run / "checkpoint" / "policy.pt").write_bytes(b"torn")
    loaded = load_run(run)
    assert loaded.checkpoint.name == "checkpoint.prev" and loaded.step == 2
    assert "failed to load" in capsys.readouterr().err
    policy = load_policy(str(run))
    state = policy.state_dict()
    assert all(torch.equal(state[k], previous[k]) for k in previous)


@pytest.mark.parametrize("dtype,expected", [("auto", None), ("bfloat16", "bfloat16"), ("float32", "float32")])
def test_eval_dtype_has_trains_meaning_for_every_model_source(monkeypatch, dtype, expected):
    from mpo_gym import evaluation
    from mpo_gym.policy import compute_dtype

    monkeypatch.setattr(LMPolicy, "from_pretrained", classmethod(lambda cls, spec, dtype="float32": make_policy("float32")))
    policy = evaluation.load_policy("some/hub-model", dtype=dtype)
    assert policy.compute_dtype == (expected or compute_dtype("auto"))
    assert next(policy.parameters()).dtype == torch.float32  # fp32 master weights in every case
    assert evaluation.load_policy("some/hub-model").compute_dtype == compute_dtype("auto")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampler_gap_metrics_are_the_mean_and_max_over_response_tokens(dtype):
    policy = make_policy(dtype, value_head=True)
    agent = PPOAgent(PPOConfig(**OFF_POLICY), policy)
    batch = agent.collect(make_envs(), policy)
    gap = (batch.sample_logprobs - batch.old_logprobs).abs()[batch.mask]
    metrics = agent.batch_metrics(batch)
    assert metrics["checks/sample_logprob_gap_mean"] == pytest.approx(float(gap.mean()))
    assert metrics["checks/sample_logprob_gap_max"] == pytest.approx(float(gap.max()))
    assert (float(gap.max()) > 1e-5) == (dtype == "bfloat16")  # ~1e-6 in fp32 (reduction order); bf16 more
