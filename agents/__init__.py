"""Agents (imported as ``mpo_gym.agents``): PPO, MPO, GRPO, GSPO and GMPO over an ``LMPolicy``.

``make_agent("mpo", **config)`` builds one by name; ``register_agent`` adds your own.
"""

from __future__ import annotations

from typing import Any

from .base import AgentConfig, BaseAgent, PolicySpec, RolloutBatch, build_batch
from .gmpo import GMPOAgent, GMPOConfig
from .grpo import GRPOAgent, GRPOConfig
from .gspo import GSPOAgent, GSPOConfig
from .mpo import MPOAgent, MPOConfig
from .ppo import PPOAgent, PPOConfig

__all__ = [
    "AGENTS",
    "AgentConfig",
    "BaseAgent",
    "GMPOAgent",
    "GMPOConfig",
    "GRPOAgent",
    "GRPOConfig",
    "GSPOAgent",
    "GSPOConfig",
    "MPOAgent",
    "MPOConfig",
    "PPOAgent",
    "PPOConfig",
    "PolicySpec",
    "RolloutBatch",
    "build_batch",
    "make_agent",
    "register_agent",
]

# name -> (agent class, config class)
AGENTS: dict[str, tuple[type[BaseAgent], type[AgentConfig]]] = {
    "ppo": (PPOAgent, PPOConfig),
    "mpo": (MPOAgent, MPOConfig),
    "grpo": (GRPOAgent, GRPOConfig),
    "gspo": (GSPOAgent, GSPOConfig),
    "gmpo": (GMPOAgent, GMPOConfig),
}


def register_agent(name: str, agent_cls: type[BaseAgent], config_cls: type[AgentConfig]) -> None:
    """Make ``make_agent(name)`` and ``mpo-gym train --agent name`` build ``agent_cls``."""
    AGENTS[name] = (agent_cls, config_cls)


def make_agent(name: str, policy: Any = None, **config: Any) -> BaseAgent:
    """Build the agent ``name`` with ``config_cls(**config)``."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; known: {sorted(AGENTS)} (add one with register_agent)")
    agent_cls, config_cls = AGENTS[name]
    return agent_cls(config_cls(**config), policy)  # type: ignore[call-arg]
