"""Agents (imported as ``mpo_gym.agents``): PPO, MPO, GRPO, GSPO, GMPO, RLOO, REINFORCE++, DAPO,
CISPO and windowed GMPO over an ``LMPolicy``.

``make_agent("mpo", **config)`` builds one by name; ``register_agent`` adds your own. The
critic-free group agents share :class:`GroupAgent`; a config declares what the trainer needs
(:meth:`AgentConfig.policy_spec`, :meth:`AgentConfig.batch_group_size`,
:meth:`AgentConfig.needs_reference_model`).
"""

from __future__ import annotations

from typing import Any

from .base import AgentConfig, BaseAgent, PolicySpec, RolloutBatch, Selection, build_batch
from .cispo import CISPOAgent, CISPOConfig
from .dapo import DAPOAgent, DAPOConfig
from .gmpo import GMPOAgent, GMPOConfig
from .group import GroupAgent, GroupConfig
from .grpo import GRPOAgent, GRPOConfig
from .gspo import GSPOAgent, GSPOConfig
from .mpo import MPOAgent, MPOConfig
from .ppo import PPOAgent, PPOConfig
from .reinforcepp import ReinforcePPAgent, ReinforcePPConfig
from .rloo import RLOOAgent, RLOOConfig
from .shaping import OverlongPenalty
from .wgmpo import WGMPOAgent, WGMPOConfig

__all__ = [
    "AGENTS",
    "AgentConfig",
    "BaseAgent",
    "CISPOAgent",
    "CISPOConfig",
    "DAPOAgent",
    "DAPOConfig",
    "GMPOAgent",
    "GMPOConfig",
    "GRPOAgent",
    "GRPOConfig",
    "GSPOAgent",
    "GSPOConfig",
    "GroupAgent",
    "GroupConfig",
    "MPOAgent",
    "MPOConfig",
    "OverlongPenalty",
    "PPOAgent",
    "PPOConfig",
    "PolicySpec",
    "RLOOAgent",
    "RLOOConfig",
    "ReinforcePPAgent",
    "ReinforcePPConfig",
    "RolloutBatch",
    "Selection",
    "WGMPOAgent",
    "WGMPOConfig",
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
    "rloo": (RLOOAgent, RLOOConfig),
    "reinforcepp": (ReinforcePPAgent, ReinforcePPConfig),
    "dapo": (DAPOAgent, DAPOConfig),
    "cispo": (CISPOAgent, CISPOConfig),
    "wgmpo": (WGMPOAgent, WGMPOConfig),
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
