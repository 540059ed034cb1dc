"""Replay draft-length policies offline on the target's greedy output.

At temperature 0 a lossless method outputs the target's own greedy tokens
``y``, and every round starts from a prefix of ``y``. One teacher-forced draft
pass over prompt + ``y`` holds what a draft-length policy sees up to a round's
first rejected token (the draft's distribution and hidden state there) and
what verification decides (the draft's argmax against ``y``); past that token
the draft goes on from its own token, and that continuation is computed once
per rejection, from the pass's KV cache, and shared by every policy. Driving
the real policy objects over this gives the rounds, drafted and accepted
tokens of any lossless policy and setting without running the target, so
thresholds can be compared in minutes instead of hours; an *oracle* that
drafts exactly up to the first rejection bounds what any stopping rule can
reach. The tests check the counts against the engine's, token for token (fp32).

Only a generation cut by a stop string is not replayed exactly: its last
round cannot draft past the end of ``y``, while the engine's could.

Wall time comes from :class:`CostModel`, a least-squares fit of measured
generations: seconds = a·drafted + b·rounds + c·prompt tokens.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch

from ..errors import SpecAdaptError
from ..methods import Method
from ..policies.base import MAX_DRAFT_TOKENS, DraftStep, draft_round, finish_round
from ..sampling import SamplingParams
from ..stats import RequestStats

class Trajectory:
    """One greedy output ``y`` seen by the draft: teacher-forced rows along ``y``, and the draft's own
    continuation wherever it leaves ``y`` (computed on first use from the pass's KV cache, then kept)."""

    def __init__(self, prompt_tokens: int, tokens: list[int], draft_logits: torch.Tensor,
                 draft_hidden: torch.Tensor | None, max_new_tokens: int, eos=(), *, draft=None, cache=None) -> None:
        self.prompt_tokens = prompt_tokens
        self.tokens = list(tokens)  # the target's greedy output y
        self.draft_logits = draft_logits  # [N, V] fp32: row i = the draft's logits after prompt + y[:i]
        self.draft_hidden = draft_hidden  # [N, H]: the draft's last hidden state there (the state predicting y[i])
        self.draft_argmax: list[int] = draft_logits.argmax(-1).tolist()
        self.max_new_tokens = max_new_tokens
        self.eos = frozenset(eos)
        self._draft, self._cache = draft, cache  # the draft and its KV cache over prompt + y[:-1]
        self._branches: dict[int, tuple[object, list[tuple[torch.Tensor, torch.Tensor | None]]]] = {}

    def row(self, i: int, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The draft's logits and hidden state for its m-th own token after it proposed ``draft_argmax[i] != y[i]``
        (m = 0: the teacher-forced row i itself)."""
        if m == 0:
            return self.draft_logits[i], None if self.draft_hidden is None else self.draft_hidden[i]
        if self._draft is None:
            raise SpecAdaptError("this trajectory has no draft model to continue past a rejected token.")
        cache, rows = self._branches.get(i, (None, []))
        with torch.inference_mode():
            while len(rows) < m:
                if cache is None:
                    cache = copy.deepcopy(self._cache)
                    drop = cache.get_seq_length() - (self.prompt_tokens + i)
                    if drop:
                        cache.crop(-drop)  # keep prompt + y[:i]
                token = self.draft_argmax[i] if not rows else int(rows[-1][0].argmax())
                out = self._draft(input_ids=torch.tensor([[token]], device=self._draft.device), past_key_values=cache,
                                  use_cache=True, output_hidden_states=self.draft_hidden is not None)
                hidden = out.hidden_states[-1][0, -1] if self.draft_hidden is not None else None
                rows.append((out.logits[0, -1].float(), hidden))
        self._branches[i] = (cache, rows)
        return rows[m - 1]


@torch.inference_mode()
def make_trajectory(draft, prompt_ids: list[int], output_ids: list[int], max_new_tokens: int, eos=(),
                    *, want_hidden: bool = True) -> Trajectory:
    """One teacher-forced draft pass over prompt + ``output_ids`` (the target's greedy output)."""
    if not prompt_ids or not output_ids:
        raise SpecAdaptError("a trajectory needs a non-empty prompt and output.")
    ids = torch.tensor([list(prompt_ids) + list(output_ids[:-1])], device=draft.device)
    n = len(output_ids)
    out = draft(input_ids=ids, use_cache=True, logits_to_keep=n, output_hidden_states=want_hidden)
    hidden = out.hidden_states[-1][0, -n:] if want_hidden else None
    return Trajectory(len(prompt_ids), output_ids, out.logits[0].float(), hidden, max_new_tokens, eos,
                      draft=draft, cache=out.past_key_values)


def _check(method: Method, traj: Trajectory) -> None:
    name = method.spec or method.name
    if not method.needs_draft:
        raise SpecAdaptError(f"method {name!r} drafts nothing; replay is for drafting methods.")
    if not method.rule(SamplingParams()).lossless:
        raise SpecAdaptError(
            f"method {name!r} is lossy: its output leaves the target's greedy path, "
            "so it cannot be replayed on it; measure it with `specadapt bench`."
        )
    if method.lookup:
        raise SpecAdaptError(f"method {name!r} uses prompt lookup, which a replay does not model; measure it with "
                             "`specadapt bench`.")
    if method.policy.reads_scores:
        raise SpecAdaptError(f"method {name!r} reads its acceptance rule's {', '.join(method.policy.reads_scores)}, "
                             "which a replay does not have.")
    if method.policy.reads_cost:
        raise SpecAdaptError(f"method {name!r} prices its drafts from the rounds' measured seconds, which a replay does "
                             "not have; give it a fixed cost (e.g. marginal:cost=0.15) or measure it with `specadapt bench`.")
    if method.policy.needs_hidden and traj.draft_hidden is None:
        raise SpecAdaptError("this policy needs the draft's hidden states: build the trajectory with want_hidden=True.")


def replay(method: Method, traj: Trajectory) -> RequestStats:
    """The rounds, drafted and accepted tokens ``method`` would use to produce ``traj.tokens`` (batch 1, greedy).

    The policy object is driven through the same round protocol as in the engine (``begin`` per call, so
    state kept across requests carries over exactly as in a benchmark run).
    """
    _check(method, traj)
    policy, y, d = method.policy, traj.tokens, traj.draft_argmax
    n_total = len(y)
    stats = RequestStats(prompt_tokens=traj.prompt_tokens)
    slots = torch.zeros(1, dtype=torch.long)
    policy.begin(slots)
    r = 0
    while r < n_total:
        accepted = 0

        def propose(k: int, previous: DraftStep | None, drafting: torch.Tensor):
            nonlocal accepted
            i = r + k - 1  # the position of the token drafted now
            if accepted == k - 1:  # still on y: the teacher-forced row
                if i >= n_total:
                    return None  # y ended on a stop string: what the draft did past it is unknown
                logits, hidden = traj.row(i, 0)
                token = d[i]
                accepted += token == y[i]
            else:  # past the round's first rejection: the draft's own continuation
                diverged = r + accepted
                logits, hidden = traj.row(diverged, i - diverged)
                token = int(logits.argmax())
            return torch.tensor([token]), logits.softmax(-1)[None], None if hidden is None else hidden[None], False

        limit = torch.tensor([traj.max_new_tokens - r - 1])
        block = draft_round(policy, slots, limit, propose, lambda t: torch.tensor([int(t[0]) in traj.eos]))
        finish_round(policy, slots, block, torch.tensor([accepted]), (torch.arange(block.K) < accepted)[None])
        emitted = min(accepted + 1, n_total - r)
        stats.record_round(block.K, accepted, emitted)
        r += emitted
    return stats


def replay_oracle(traj: Trajectory, max_k: int = MAX_DRAFT_TOKENS) -> RequestStats:
    """An oracle stopping rule: each round drafts exactly the tokens the target will accept (none if the first is
    rejected), so no draft is wasted and no round ends before a rejection. No real policy can do better on
    both counts, so its cost bounds every stopping rule's."""
    y, d = traj.tokens, traj.draft_argmax
    stats = RequestStats(prompt_tokens=traj.prompt_tokens)
    r = 0
    while r < len(y):
        cap = min(max_k, traj.max_new_tokens - r - 1, len(y) - r)
        k = 0
        while k < cap and d[r + k] == y[r + k]:
            k += 1
            if d[r + k - 1] in traj.eos:  # the engine stops drafting after an EOS
                break
        emitted = min(k + 1, len(y) - r)
        stats.record_round(k, k, emitted)
        r += emitted
    return stats


@dataclass
class CostModel:
    """Seconds of one generation = a·drafted + b·rounds + c·prompt tokens, fitted on measured generations."""

    per_drafted: float
    per_round: float
    per_prompt_token: float

    def seconds(self, stats: RequestStats) -> float:
        return self.per_drafted * stats.drafted + self.per_round * stats.rounds + self.per_prompt_token * stats.prompt_tokens

    @classmethod
    def fit(cls, records: list[dict]) -> "CostModel":
        """Non-negative least squares over benchmark records (``drafted``, ``rounds``, ``prompt_tokens``,
        ``wall_s``): a cost is never negative, though timing noise on short generations can make a plain fit so."""
        if len(records) < 3:
            raise SpecAdaptError(f"fitting the cost model needs at least 3 measured generations, got {len(records)}.")
        x = torch.tensor([[r["drafted"], r["rounds"], r["prompt_tokens"]] for r in records], dtype=torch.float64)
        t = torch.tensor([[r["wall_s"]] for r in records], dtype=torch.float64)
        best, best_error = [0.0, 0.0, 0.0], float(t.square().sum())
        # Three unknowns: try every subset of free coefficients (the others held at 0), keep the best feasible fit.
        for subset in itertools.chain.from_iterable(itertools.combinations(range(3), n) for n in (1, 2, 3)):
            cols = list(subset)
            solution = torch.linalg.lstsq(x[:, cols], t).solution
            if bool((solution < 0).any()):
                continue
            error = float((x[:, cols] @ solution - t).square().sum())
            if error < best_error:
                best, best_error = [0.0, 0.0, 0.0], error
                for col, value in zip(cols, solution.flatten().tolist()):
                    best[col] = value
        return cls(*best)
