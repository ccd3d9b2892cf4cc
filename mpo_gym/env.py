"""``ReasoningEnv``: one task per episode, actions are blocks of up to K token ids.

Observation (a ``gymnasium.spaces.Dict`` of fixed-shape arrays, so vector envs batch it):

- ``prompt_ids``: ``int64[max_prompt_tokens]``, the rendered prompt (chat template, few-shot
  turns and generation prompt included), left-aligned, padded with the tokenizer's pad id;
- ``prompt_length``: the number of real prompt tokens;
- ``response_ids``: ``int64[max_new_tokens]``, the response so far, left-aligned, padded;
- ``response_length``: the number of response tokens so far.

A step appends the block to the response. The episode is *terminated* when the block contains
EOS or the decoded response contains a stop string, and *truncated* when the response reaches
``max_new_tokens``. Tokens of a block after its first EOS, or beyond the budget, are dropped
(``info["accepted"]`` says how many were kept). The verifier runs once, on the final step; its
:class:`~mpo_gym.verifiers.Verdict` is ``info["verdict"]`` and its reward is the step's reward.

Optional per-block reward hook (``block_reward_fn``, off by default): a callable given the
response text so far returning a float. In ``"potential"`` mode (the default when a hook is set)
the step reward gets ``phi(text_t) - phi(text_{t-1})`` and the final step also subtracts
``phi(final text)``, so the shaping sums to ``-phi("")`` per episode: it changes credit assignment
(for GAE) but not which responses are best. In ``"raw"`` mode ``phi(text_t)`` is added at every
step; that *changes the objective* (a policy can farm the hook, e.g. by writing many well-formed
blocks), so use it only when that bias is wanted.

Batched verification: :class:`mpo_gym.vector.ReasoningVectorEnv` calls :meth:`preview` on
each sub-env before stepping it, verifies every episode that ends in that step with one
``verify_batch`` call, and hands each verdict over with :meth:`provide_verdict`; the final
``step`` then returns that verdict (and its reward) instead of verifying again, so wrappers
around the env see the same final step either way. A verdict given for another text is ignored
(the env verifies itself).

What this env does not do: it never re-tokenizes the response (token ids in, token ids out),
and it does not sample: the policy owns generation and its KV cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import timing
from ._imports import load_attr
from .spaces import TokenBlock
from .task import ListTaskSource, Task, TaskSource
from .tokenizers import get_tokenizer, render_messages
from .verifiers.base import Verdict, Verifier, make_verifier

__all__ = ["ReasoningEnv"]

Obs = dict[str, Any]


class ReasoningEnv(gym.Env[Obs, np.ndarray]):
    """A reasoning task as a Gymnasium env with K-token block actions.

    Args:
        tasks: a :class:`~mpo_gym.task.TaskSource`, a list of tasks/dicts, or an import string
            ``"pkg.module:factory"`` returning one (plain data, so specs stay JSON-able).
        verifier: a verifier name (``"math"``, ``"code"``, ``"exact"``, or registered) or object.
        verifier_kwargs: keyword options for a named verifier (e.g. ``{"timeout_s": 5.0}``).
        tokenizer: ``"char"``, ``"default"``, a local model directory, or a tokenizer object.
        block_size: K, the most tokens per action.
        max_new_tokens: the response budget; reaching it truncates the episode.
        max_prompt_tokens: size of the prompt buffer in the observation; longer prompts raise.
        stop: strings that end the episode when they appear in the response.
        system_prompt: a system message (defaults to the task source's, if any).
        fewshot: render the task source's example turns before the prompt.
        block_reward_fn: per-block reward hook (callable or import string), see module doc.
        block_reward_mode: ``"potential"`` (unbiased shaping) or ``"raw"`` (biased).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        tasks: TaskSource | Sequence[Task | dict[str, Any]] | str,
        verifier: str | Verifier = "exact",
        verifier_kwargs: dict[str, Any] | None = None,
        tokenizer: str | Any = "char",
        block_size: int = 8,
        max_new_tokens: int = 256,
        max_prompt_tokens: int = 1024,
        stop: Sequence[str] = (),
        system_prompt: str | None = None,
        fewshot: bool = True,
        block_reward_fn: Callable[[str], float] | str | None = None,
        block_reward_mode: str = "potential",
        render_mode: str | None = None,
    ):
        if max_new_tokens < 1 or max_prompt_tokens < 1:
            raise ValueError("max_new_tokens and max_prompt_tokens must be >= 1")
        if block_reward_mode not in ("potential", "raw"):
            raise ValueError(f"block_reward_mode must be 'potential' or 'raw'; got {block_reward_mode!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.tasks = _resolve_tasks(tasks)
        self.verifier = make_verifier(verifier, **(verifier_kwargs or {}))
        self.tokenizer = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
        self.vocab_size = len(self.tokenizer)
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self.pad_token_id = int(getattr(self.tokenizer, "pad_token_id", None) or 0)
        self.block_size = int(block_size)
        self.max_new_tokens = int(max_new_tokens)
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.stop = tuple(stop)
        self.system_prompt = system_prompt or getattr(self.tasks, "system_prompt", None)
        self.fewshot = fewshot
        self.block_reward_fn = load_attr(block_reward_fn) if isinstance(block_reward_fn, str) else block_reward_fn
        self.block_reward_mode = block_reward_mode
        self.render_mode = render_mode
        self.vector_index: int | None = None  # set by mpo_gym.make_vec for per-env task choice

        v, p, n = self.vocab_size, self.max_prompt_tokens, self.max_new_tokens
        self.action_space: TokenBlock = TokenBlock(v, self.block_size)
        self.observation_space = spaces.Dict(
            {
                "prompt_ids": spaces.Box(0, v - 1, shape=(p,), dtype=np.int64),
                "prompt_length": spaces.Discrete(p + 1),
                "response_ids": spaces.Box(0, v - 1, shape=(n,), dtype=np.int64),
                "response_length": spaces.Discrete(n + 1),
            }
        )
        self._prompt_cache: dict[int, np.ndarray] = {}
        self.task: Task | None = None
        self.task_index = -1
        self._prompt = np.zeros(0, dtype=np.int64)
        self._response: list[int] = []
        self._prompt_buf = np.full(p, self.pad_token_id, dtype=np.int64)  # observation buffers
        self._response_buf = np.full(n, self.pad_token_id, dtype=np.int64)
        self._done = True
        self._potential = 0.0
        self._advance_memo: tuple[tuple[int, ...], int, Any] | None = None
        self._provided: tuple[str, Verdict] | None = None

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        index = (options or {}).get("task_index")
        if index is None:
            index = int(self.np_random.integers(len(self.tasks)))
        else:
            index = self._own_index(index)
        if not 0 <= index < len(self.tasks):
            raise IndexError(f"task_index {index} out of range for {len(self.tasks)} tasks")
        self.task_index = index
        self.task = self.tasks[index]
        self._prompt = self.prompt_ids(index)
        self._response = []
        self._prompt_buf.fill(self.pad_token_id)
        self._prompt_buf[: self._prompt.size] = self._prompt
        self._response_buf.fill(self.pad_token_id)
        self._done = False
        self._potential = self._phi("") if self.block_reward_fn else 0.0
        self._advance_memo = self._provided = None
        return self._obs(), {"task_id": self.task.id, "task_index": index, "text": ""}

    def step(self, action: Any) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        if self._done or self.task is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        accepted, text, terminated, truncated = self._advance(action)
        start = len(self._response)
        self._response.extend(accepted)
        self._response_buf[start : len(self._response)] = accepted
        self._done = terminated or truncated
        self._advance_memo = None

        reward, info = 0.0, {"text": text, "accepted": len(accepted), "task_id": self.task.id}
        if self.block_reward_fn is not None:
            reward += self._shaping(text)
        if self._done:
            provided, self._provided = self._provided, None
            if provided is not None and provided[0] == text:
                verdict = provided[1]
            else:
                with timing.phase("verify"):
                    verdict = self.verifier.verify(text, self.task.reference)
            info["verdict"] = verdict
            reward += float(verdict.reward)
        return self._obs(), reward, terminated, truncated, info

    def preview(self, action: Any) -> tuple[str, Any] | None:
        """``(final text, reference)`` if stepping ``action`` now would end the episode, else None.

        Changes nothing the env reports (the work is kept for the next :meth:`step` with this
        action). Returns None for an invalid action (the step will raise) or a finished episode.
        """
        if self._done or self.task is None:
            return None
        try:
            _, text, terminated, truncated = self._advance(action)
        except ValueError:
            return None
        return (text, self.task.reference) if terminated or truncated else None

    def provide_verdict(self, text: str, verdict: Verdict) -> None:
        """Use ``verdict`` if this episode's final text is ``text`` (see module doc)."""
        self._provided = (text, verdict)

    def _advance(self, action: Any) -> tuple[list[int], str, bool, bool]:
        """``(accepted ids, text after them, terminated, truncated)`` for ``action`` (no change)."""
        block = self.action_space.check(action)
        key = tuple(block.tolist())
        memo = self._advance_memo
        if memo is not None and memo[0] == key and memo[1] == len(self._response):
            return memo[2]  # type: ignore[no-any-return]
        room = self.max_new_tokens - len(self._response)
        accepted = list(key[:room])
        if self.eos_token_id in accepted:
            accepted = accepted[: accepted.index(self.eos_token_id) + 1]
            ended_on_eos = True
        else:
            ended_on_eos = False
        text = self.tokenizer.decode(self._response + accepted, skip_special_tokens=True)
        terminated = ended_on_eos or any(s in text for s in self.stop)
        truncated = not terminated and len(self._response) + len(accepted) >= self.max_new_tokens
        result = (accepted, text, terminated, truncated)
        self._advance_memo = (key, len(self._response), result)
        return result

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self.response_text()
        return None

    # ------------------------------------------------------------------ helpers
    def prompt_messages(self, index: int) -> list[dict[str, str]]:
        """The chat messages for task ``index`` (system, few-shot turns, user prompt)."""
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        if self.fewshot:
            for user, assistant in getattr(self.tasks, "examples", ()):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": self.tasks[index].prompt})
        return messages

    def prompt_ids(self, index: int) -> np.ndarray:
        """Rendered prompt token ids for task ``index`` (cached)."""
        if index not in self._prompt_cache:
            ids = np.asarray(render_messages(self.tokenizer, self.prompt_messages(index)), dtype=np.int64)
            if ids.size > self.max_prompt_tokens:
                raise ValueError(
                    f"task {index} renders to {ids.size} prompt tokens > max_prompt_tokens="
                    f"{self.max_prompt_tokens}; raise max_prompt_tokens"
                )
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.clear()
            self._prompt_cache[index] = ids
        return self._prompt_cache[index]

    def response_text(self) -> str:
        return self.tokenizer.decode(self._response, skip_special_tokens=True)

    @property
    def response_ids(self) -> list[int]:
        return list(self._response)

    @property
    def num_tasks(self) -> int:
        """Number of tasks in this env's split (cheap to read through a vector env)."""
        return len(self.tasks)

    def verify(self, text: str) -> Verdict:
        """Verify ``text`` against the current task's reference."""
        if self.task is None:
            raise RuntimeError("no current task; call reset() first")
        return self.verifier.verify(text, self.task.reference)

    def _own_index(self, index: Any) -> int:
        if np.ndim(index) == 0:
            return int(index)
        if self.vector_index is None:
            raise ValueError(
                "options['task_index'] is a sequence, but this env does not know its position in a "
                "vector env; build vector envs with mpo_gym.make_vec"
            )
        return int(np.asarray(index)[self.vector_index])

    def _phi(self, text: str) -> float:
        return float(self.block_reward_fn(text))  # type: ignore[misc]

    def _shaping(self, text: str) -> float:
        value = self._phi(text)
        if self.block_reward_mode == "raw":
            return value
        delta = value - self._potential
        self._potential = value
        return delta - value if self._done else delta

    def _obs(self) -> Obs:
        """The observation: copies of the env's buffers (a caller may write to them)."""
        return {
            "prompt_ids": self._prompt_buf.copy(),
            "prompt_length": np.int64(self._prompt.size),
            "response_ids": self._response_buf.copy(),
            "response_length": np.int64(len(self._response)),
        }


def _resolve_tasks(tasks: Any) -> TaskSource:
    if isinstance(tasks, str):
        loaded = load_attr(tasks)
        tasks = loaded() if callable(loaded) and not isinstance(loaded, TaskSource) else loaded
    if isinstance(tasks, (list, tuple)):
        tasks = ListTaskSource(tasks)
    if not isinstance(tasks, TaskSource):
        raise TypeError(f"tasks must be a TaskSource, a list of tasks, or an import string; got {type(tasks)}")
    if len(tasks) == 0:
        raise ValueError("the task source is empty")
    return tasks
